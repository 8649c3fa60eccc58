"""IMDB-WIKI-DIR (ages 0-186 of celebrity photos): the same ResNet-50 recipe as train/agedb.py on the
larger benchmark; `--help` shows its flags and their released defaults (batch 256, lr 1e-3, 90 epochs).

Everything this script knows about the benchmark is its record, benchmarks.IMDB_WIKI.
"""

import sys

from srl_ext.training.run import command, driver

parser, build, main = driver("imdb_wiki")  # parser(); build(config) -> (task, model, datasets); main(argv) -> test table

if __name__ == "__main__":
    sys.exit(command(main))
