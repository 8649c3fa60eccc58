"""SRL in your own regressor: a small model on synthetic long-tailed data, trained with plain L1
and with L1 + SRL, then compared on a balanced test set with the DIR metrics (All / Many / Medium /
Few shots). About ten seconds on one CPU core; nothing is downloaded.

    python examples/own_regressor.py                   # both runs, then the two DIR tables
    python examples/own_regressor.py --epochs 30 --json results.json

What it shows, in the order a training loop needs it (docs/library.md):
1. labels to bins: ``srl_ext.label_bins`` (one bin per integer label here);
2. the loss: ``srl_ext.SRLLoss.preset(..., num_bins=K)``, the released settings with your own K;
   its anchors are drawn once and kept as a buffer (``loss_fn.anchors``);
3. the memory: ``srl_ext.SurrogateMemory(mode="online")`` fed by the training steps' features,
   folded in at the end of each epoch;
4. the loss added to your own regression loss: weights as the AgeDB preset, whose L1 is also in
   label units of a few tens (how to choose them for another loss: docs/method.md, "Choosing SRL's
   weights");
5. the DIR evaluation: ``srl_ext.metrics``.

The data are synthetic and small: the numbers say that the pieces fit together, not how much SRL
helps on a real benchmark (README, docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import srl_ext
from srl_ext import metrics

NUM_BINS = 60  # labels 0..59, one bin per integer label
INPUT_DIM, HIDDEN, FEATURE_DIM = 16, 64, 32


def long_tailed_data(seed: int, train_size: int = 3000, test_size: int = 600):
    """(x_train, y_train, x_test, y_test): labels in [0, 60), the training labels a hump around 15
    with a long tail to 59 (the many-shot head and few-shot tail of a DIR benchmark), the test
    labels uniform (balanced, as the DIR test sets); inputs are a fixed random smooth function of
    the label plus noise."""
    rng = np.random.default_rng(seed)
    y_train = np.clip(rng.gamma(3.0, 6.0, train_size), 0, NUM_BINS - 1e-3)
    y_test = rng.uniform(0, NUM_BINS - 1e-3, test_size)
    frequencies = rng.uniform(0.02, 0.15, INPUT_DIM)
    phases = rng.uniform(0, 2 * np.pi, INPUT_DIM)

    def inputs(y: np.ndarray) -> torch.Tensor:
        clean = np.sin(np.outer(y, frequencies) + phases)
        return torch.tensor(clean + rng.normal(0, 0.3, clean.shape), dtype=torch.float32)

    as_tensor = lambda y: torch.tensor(y, dtype=torch.float32)  # noqa: E731
    return inputs(y_train), as_tensor(y_train), inputs(y_test), as_tensor(y_test)


class Regressor(nn.Module):
    """Your model: a trunk, your regression head, and SRL's projection head beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(INPUT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.regressor = nn.Linear(HIDDEN, 1)
        self.projector = nn.Linear(HIDDEN, FEATURE_DIM)  # the features the SRL terms act on

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.trunk(x)
        return self.regressor(feat).squeeze(1), self.projector(feat)


def train(x: torch.Tensor, y: torch.Tensor, *, use_srl: bool, epochs: int, seed: int) -> tuple[Regressor, dict]:
    """One run: L1, plus the SRL terms when ``use_srl``. Returns the model and the last epoch's mean losses."""
    torch.manual_seed(seed)
    model = Regressor()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    bins = srl_ext.label_bins(y, NUM_BINS)  # int64 in [0, NUM_BINS): floor of the label
    loss_fn = srl_ext.SRLLoss.preset("agedb", feature_dim=FEATURE_DIM, num_bins=NUM_BINS, num_anchors=500)
    memory = srl_ext.SurrogateMemory(NUM_BINS, FEATURE_DIM, mode="online")
    generator = torch.Generator().manual_seed(seed)
    batch_size = 128
    for epoch in range(epochs):
        sums = {"l1": 0.0, "srl": 0.0}
        order = torch.randperm(len(y), generator=generator)
        batches = order.split(batch_size)
        for index in batches:
            predictions, h = model(x[index])
            loss = nn.functional.l1_loss(predictions, y[index])
            sums["l1"] += float(loss.detach())
            if use_srl and epoch >= 1:  # the first epoch with the regression loss only (the paper's warm-up)
                out = loss_fn(h, bins[index], memory.table)
                loss = loss + out.total
                sums["srl"] += float(out.total.detach())
            if use_srl:
                memory.accumulate(h.detach(), bins[index])  # online: this step's features
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if use_srl:
            memory.update()  # the epoch's per-bin means folded into the memory
        last = {key: value / len(batches) for key, value in sums.items()}
    return model, last


def dir_table(predictions: torch.Tensor, y_test: torch.Tensor, y_train: torch.Tensor) -> dict:
    """The DIR table: shot groups from the training counts per bin (> 100 many, < 20 few)."""
    train_counts = np.bincount(srl_ext.label_bins(y_train, NUM_BINS).numpy(), minlength=NUM_BINS)
    groups = metrics.shot_groups_from_counts(train_counts)
    test_bins = srl_ext.label_bins(y_test, NUM_BINS).numpy()
    return metrics.dir_metrics(predictions.numpy(), y_test.numpy(), test_bins, groups)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of each run (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the runs (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; a model this small waits on thread sync with more, "
                             "and on a busy machine by far)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = long_tailed_data(args.seed)
    results = {"constant": dir_table(torch.full_like(y_test, float(y_train.mean())), y_test, y_train)}
    print(metrics.format_table(results["constant"], title="predict the training mean (no model)"))
    for name, use_srl in (("vanilla", False), ("srl", True)):
        model, losses = train(x_train, y_train, use_srl=use_srl, epochs=args.epochs, seed=args.seed)
        with torch.no_grad():
            predictions, _ = model.eval()(x_test)
        results[name] = dir_table(predictions, y_test, y_train)
        results[name + "_last_epoch_losses"] = losses
        title = "L1 + SRL" if use_srl else "L1 only"
        print(f"\n{metrics.format_table(results[name], title=f'{title} (last epoch: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()) + ')')}")
    print(f"\nsynthetic data, {args.epochs} epochs per run, {time.perf_counter() - started:.1f} s in all")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
