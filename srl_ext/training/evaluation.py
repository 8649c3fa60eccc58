"""Evaluation and model selection of a run: predictions over a split (gathered across ranks), the
DIR table, the validation that selects ``best.pt`` and decides early stopping, the test on the
selected model and its report. ``Engine`` (engine.py) is an ``Evaluation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import metrics as dir_metrics
from . import ddp
from .checkpoint import BEST, CHECKPOINT_FORMAT, atomic_save, load_checkpoint
from .config import EARLY_STOP_RULES
from .reporting import write_test_report


def out_of_patience(scores: Sequence[float], patience: int | None, rule: str = "released") -> bool:
    """Whether training stops after the validation scores ``scores`` (lower is better, the
    current one last).

    - "released" (the released STS-B trainer): the current score is the worst of the last
      ``patience + 1``, which needs more than ``patience + 1`` validations.
    - "no_improvement": ``patience`` validations in a row without a new best.
    """
    if patience is None or not scores:
        return False
    if rule == "released":
        window = patience + 1
        return len(scores) > window and max(scores[-window:]) <= scores[-1]
    if rule == "no_improvement":
        best = min(range(len(scores)), key=lambda i: (scores[i], i))  # the first of equal bests
        return len(scores) - 1 - best >= patience
    raise ValueError(f"early stop rule must be one of {', '.join(map(repr, EARLY_STOP_RULES))}, got {rule!r}")


class Evaluation:
    """The evaluation half of ``Engine``: it reads the engine's model, task, loaders, settings,
    run folder and selection state (``best``, ``val_scores``, ...)."""

    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) in label units over one split, eval mode; under torch.distributed
        each rank predicts its shard and every rank gets the whole split, in order."""
        self.model.eval()
        self._sync_buffers()
        predictions, labels = [], []
        for inputs, batch_labels in self.loader(split, stream=2):
            inputs, _ = self._to_device(inputs, batch_labels)
            batch_predictions, _ = self.model(*inputs)
            predictions.append(batch_predictions.float() * self.task.target_scale)
            labels.append(batch_labels.float().to(self.device))
        empty = torch.zeros(0, device=self.device)  # a rank whose shard is empty still gathers
        predictions = ddp.gather_tensors(torch.cat(predictions) if predictions else empty)
        labels = ddp.gather_tensors(torch.cat(labels) if labels else empty)
        return predictions.cpu().numpy(), labels.cpu().numpy()

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank: the ranks' last training or
        memory-pass forwards updated their own, and the model that is evaluated is rank 0's."""
        ddp.broadcast_buffers(self.model)

    def evaluate(self, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
        predictions, labels = self.predict(split)
        bins = self.task.label_bins(torch.from_numpy(labels)).numpy()
        table = dir_metrics.dir_metrics(
            predictions, labels, bins, self.task.bin_groups, gm_floor=self.task.gm_floor, correlations=self.task.correlations
        )
        return table, predictions, labels

    def validate(self) -> dict:
        table, _, _ = self.evaluate("val")
        row, metric = self.task.selection
        value = table[row][metric]
        # Every rank computed the same table from the gathered predictions; rank 0's decision is
        # broadcast all the same, so that the ranks cannot part ways (one stopping, one training on).
        improved = bool(ddp.broadcast_object(self.best is None or value < self.best["value"]))
        if improved:
            self.best = {"value": value, "epoch": self.epoch_number, "step": self.global_step}
            self.bad_validations = 0
            if self.main:
                atomic_save({"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "model": self.model.state_dict(),
                             "best": self.best, "val": table, "data_fingerprint": self.data_fingerprint}, self.run_dir / BEST)
        else:
            self.bad_validations += 1
        self.val_scores.append(value)
        s = self.settings
        if out_of_patience(self.val_scores, s.patience, s.early_stop) or (
            s.max_validations is not None and len(self.val_scores) >= s.max_validations
        ):
            self.stopped = True
        self.last_validated_step = self.global_step
        record = {"split": "val", "epoch": self.epoch_number, "step": self.global_step, "selected": improved}
        record.update(dir_metrics.flatten(table))
        self._log(record)
        if self.main:
            print(
                f"val epoch {self.epoch_number} step {self.global_step}: {row} {metric.upper()} {value:.4f}"
                f" (best {self.best['value']:.4f} at step {self.best['step']})" + (" - early stop" if self.stopped else ""),
                flush=True,
            )
        return table

    def test(self) -> dict:
        """Load the selected model (best.pt), evaluate the test set once, write the report."""
        title = None
        if self.main:  # rank 0 reads its best.pt and sends the weights: no shared file system needed
            checkpoint, _ = load_checkpoint(self.run_dir, BEST)
            self.model.load_state_dict(checkpoint["model"])
            title = f"test, model selected at epoch {checkpoint['best']['epoch']} step {checkpoint['best']['step']}"
        if self.distributed:
            for tensor in self.model.state_dict().values():
                ddp.broadcast_(tensor)
        return self.report(title=ddp.broadcast_object(title))

    def report(self, title: str = "test", out_dir: Path | None = None, suffix: str = "") -> dict:
        """Test table printed and saved as JSON, and the per-label error plot, in ``out_dir``
        (``suffix`` in their names: a table of other data than the run's)."""
        out_dir = Path(out_dir or self.run_dir)
        if self.config.get("demo"):
            title = f"{title} [SYNTHETIC DEMO DATA, not the benchmark]"
        table, predictions, labels = self.evaluate("test")
        if self.main:
            write_test_report(self.task, table, predictions, labels, title, out_dir, suffix,
                              synthetic=bool(self.config.get("demo")))
        return table
