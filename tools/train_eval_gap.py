"""Does a run's model predict in evaluation what it predicted in training?

For each run folder, its selected model (best.pt; ``--checkpoint last`` for the last one) on the
chosen splits, three ways, in score units:

- ``eval``: eval mode, what the run's validations and its test saw (no dropout, no FDS);
- ``dropout``: train mode without FDS: dropout on, as in a training step;
- ``fds``: train mode with the run's FDS calibrating h from the true labels, what the regressor
  saw in training (runs with ``--fds`` only). The labels pick each sample's calibration, so this
  way leaks them: a diagnostic, never a score.

Per way: the MSE and the mean prediction (beside the mean label). A model whose ``eval`` mean
sits far from its ``dropout`` one has learned features that change with dropout: what it learned
in training is not what evaluation reads (docs/results.md, "LDS+FDS and Balanced MSE as
released").

    python tools/train_eval_gap.py runs/A runs/B [--splits train,val] [--checkpoint last]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch

from srl_ext.training import run
from srl_ext.training.checkpoint import BEST, LAST, read_checkpoint
from srl_ext.training.errors import UserError

WAYS = ("eval", "dropout", "fds")
SPLITS = ("train", "val", "test")


@torch.no_grad()
def predictions(engine, split: str, way: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, labels) of `split`'s samples as its loader gives them (the training split's
    may drop a last batch of one), in label units, the `way` of WAYS."""
    model = engine.model
    model.train(way != "eval")
    fds = way == "fds"
    epoch = int(model.fds.epoch) + 1 if fds else 0  # any epoch past start_smooth: calibrate
    torch.manual_seed(seed)  # the dropout masks
    out, targets = [], []
    for inputs, labels in engine.loader(split, stream=2):
        inputs, _ = engine._to_device(inputs, labels)
        batch = model(*inputs, labels=labels.float() if fds else None, epoch=epoch)[0]
        out.append(batch.reshape(-1).double().cpu() * engine.task.target_scale)
        targets.append(labels.double().reshape(-1))
    model.eval()
    return torch.cat(out), torch.cat(targets)


def measure(folder: Path, splits: list[str], checkpoint_name: str) -> list[dict]:
    """One row per split and way: the MSE, the mean prediction and the mean label."""
    path = folder / checkpoint_name
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint (expected a run folder with {checkpoint_name})")
    checkpoint = read_checkpoint(path)
    config = dict(checkpoint["config"], resume=None, evaluate=None, progress=False, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:  # the engine's log goes there, not into the run
        with contextlib.redirect_stdout(sys.stderr):  # the data's notes, away from the table
            engine = run.open_engine(config, scratch)
        engine.model.load_state_dict(checkpoint["model"])
        ways = [w for w in WAYS if w != "fds" or engine.model.fds is not None]
        for split in splits:
            for way in ways:
                p, y = predictions(engine, split, way)
                rows.append({"run": folder.name, "split": split, "way": way, "mse": float(((p - y) ** 2).mean()),
                             "mean_prediction": float(p.mean()), "mean_label": float(y.mean())})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| run | split | way | MSE | mean prediction | mean label |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['split']} | {r['way']} | {r['mse']:.3f} | {r['mean_prediction']:.2f} | "
              f"{r['mean_label']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--splits", default="val", help="comma-separated, of train, val, test (default val)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the selected model (best, the default) or the last one")
    args = parser.parse_args(argv)
    splits = args.splits.split(",")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        parser.error(f"argument --splits: expected a comma-separated list of {', '.join(SPLITS)}, got {unknown[0]!r}")
    name = BEST if args.checkpoint == "best" else LAST
    try:
        rows = [row for folder in args.runs for row in measure(folder, splits, name)]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
