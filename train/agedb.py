"""AgeDB-DIR: a ResNet-50 trained from scratch predicts a face's age (0-101), with the SRL terms
or, with --vanilla, as the plain regression baseline. `python train/agedb.py --help` lists the flags.

The benchmark is the AGEDB record of srl_ext.training.benchmarks; srl_ext.training.run parses the
flags, loads the data, builds the model and the loss, trains, selects on validation and tests.
"""

import sys

from srl_ext.training.run import command, driver

parser, build, main = driver("agedb")  # parser(); build(config) -> (task, model, datasets); main(argv) -> test table

if __name__ == "__main__":
    sys.exit(command(main))
