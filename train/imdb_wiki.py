"""Train and evaluate a ResNet-50 on IMDB-WIKI-DIR with SRL (or the plain regression baseline).

`python train/imdb_wiki.py --help` lists the flags; this is the driver of train/agedb.py on the
IMDB-WIKI-DIR benchmark (srl_ext.training.data.images.IMDB_WIKI).
"""

import sys
from functools import partial

from srl_ext.training import cli
from srl_ext.training.cli import command
from srl_ext.training.data import images

main = partial(cli.image_main, images.IMDB_WIKI)  # main(argv=None) -> the test table
build = cli.image_builder(images.IMDB_WIKI)  # build(config) -> (task, model, datasets) of a run's config

if __name__ == "__main__":
    sys.exit(command(main))
