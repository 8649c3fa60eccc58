"""Train and evaluate a ResNet-50 on IMDB-WIKI-DIR with SRL (or the plain regression baseline).

Run `python train/imdb_wiki.py --help` for the flags; what it does: srl_ext.training.cli.image_main
(parse the flags, load the data and build the model, then train, select and test).
"""

from srl_ext.training import cli
from srl_ext.training.data import images


def main(argv=None) -> dict:
    return cli.image_main(images.IMDB_WIKI, argv)


if __name__ == "__main__":
    main()
