"""Train and evaluate a ResNet-50 on IMDB-WIKI-DIR with SRL (or the plain regression baseline).

Run `python train/imdb_wiki.py --help` for the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from srl_ext import cli  # noqa: E402
from srl_ext.data import images  # noqa: E402

DESCRIPTION = """\
IMDB-WIKI-DIR: predict a person's age (0-186) from a face image. A ResNet-50 trained from scratch at
224 x 224, a regressor trained with L1 and, by default, the SRL terms on a 128-d projection head
(one bin per age). Validation after every epoch selects the model (lowest validation MAE); the
test set is evaluated once, on it, in the DIR protocol (All / Many / Medium / Few shots).

Data: --data_dir holds imdb_wiki.csv (columns age, path, split) and the images at the CSV's paths
(imdb_crop/..., wiki_crop/...).

Examples:
  python train/imdb_wiki.py --data_dir path/to/imdb_wiki                   # SRL, released settings
  python train/imdb_wiki.py --data_dir path/to/imdb_wiki --vanilla         # regression baseline
  python train/imdb_wiki.py --data_dir path/to/imdb_wiki --backbone resnet18 --epoch 10 --img_size 112
  torchrun --standalone --nproc_per_node 8 train/imdb_wiki.py --data_dir path/to/imdb_wiki --batch_size 32
                                             # 8 GPUs, global batch 256 (docs/distributed.md)
  python train/imdb_wiki.py --resume runs/imdb_wiki-srl-20260101-120000    # continue a run
  python train/imdb_wiki.py --evaluate runs/imdb_wiki-srl-20260101-120000  # test table of its best model
  python train/imdb_wiki.py --data_dir path/to/imdb_wiki --evaluate ckpt.best.pth.tar
                                             # a checkpoint released by the SRL authors (docs/training.md)
"""


def main(argv=None) -> dict:
    return cli.image_main(images.IMDB_WIKI, DESCRIPTION, argv, default_data_dir="data/imdb-wiki-dir")


if __name__ == "__main__":
    main()
