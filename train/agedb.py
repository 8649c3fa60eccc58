"""Train and evaluate a ResNet-50 on AgeDB-DIR with SRL (or the plain regression baseline).

`python train/agedb.py --help` lists the flags. The driver is srl_ext.training.cli.image_main
on the AgeDB-DIR benchmark: parse the flags, load the data, build the model and the loss, train
with validation and model selection, test the selected model.
"""

import sys
from functools import partial

from srl_ext.training.cli import command, image_builder, image_main
from srl_ext.training.data.images import AGEDB

main = partial(image_main, AGEDB)  # main(argv=None) -> the test table
build = image_builder(AGEDB)  # build(config) -> (task, model, datasets) of a run's config

if __name__ == "__main__":
    sys.exit(command(main))
