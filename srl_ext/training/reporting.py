"""What a run writes besides checkpoints: the metrics log, TensorBoard, the test report and plot,
and the progress bars. Only rank 0 writes (the engine decides)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import metrics as dir_metrics
from .config import Task

METRICS_LOG, TEST_METRICS, TEST_PLOT = "metrics.jsonl", "test_metrics.json", "test_errors.png"


class RunLog:
    """``metrics.jsonl`` (one JSON line per record) and TensorBoard scalars of one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_LOG
        self.writer = _tensorboard(Path(run_dir))

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
            self.writer.flush()

    def rewrite(self, history: list[dict]) -> None:
        """The log restarts from a checkpoint's history: lines written after it by the interrupted run go."""
        with self.path.open("w") as handle:
            for record in history:
                handle.write(json.dumps(record) + "\n")


def matplotlib_missing() -> str | None:
    """Why the per-label plot cannot be drawn (matplotlib cannot be imported), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return f"matplotlib cannot be imported ({error})"
    return None


def warn_missing_optional_packages() -> None:
    """Said at the start of a run: what an optional package that is missing will skip."""
    reason = matplotlib_missing()
    if reason is not None:
        print(f"warning: {reason}: the per-label plot {TEST_PLOT} will be skipped (pip install matplotlib)",
              file=sys.stderr, flush=True)


def fingerprint_tag(fingerprint: dict) -> str:
    """A short name for a data fingerprint: ``data-<12 hex digits>``."""
    return "data-" + hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def report_names(suffix: str = "") -> tuple[str, str]:
    """(test table, plot) file names; ``suffix`` marks a table of other data than the run's."""
    return TEST_METRICS.replace(".json", f"{suffix}.json"), TEST_PLOT.replace(".png", f"{suffix}.png")


def write_test_report(task: Task, table: dict, predictions: np.ndarray, labels: np.ndarray, title: str,
                      out_dir: Path, suffix: str = "") -> None:
    """The test table printed and saved as JSON, and the per-label error plot, in ``out_dir``.
    Without matplotlib the plot is skipped with a warning; the table is written all the same."""
    print(dir_metrics.format_table(table, title=f"{task.name} {title}"), flush=True)
    metrics_name, plot_name = report_names(suffix)
    (out_dir / metrics_name).write_text(json.dumps({"title": title, "table": table}, indent=2) + "\n")
    reason = matplotlib_missing()
    if reason is not None:
        print(f"warning: {reason}: {plot_name} not drawn", file=sys.stderr, flush=True)
        return
    plot_errors_per_label(task, predictions, labels, out_dir / plot_name)


def plot_errors_per_label(task: Task, predictions: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Mean absolute test error per bin (bars coloured by shot group), the training count per bin below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = task.label_bins(torch.from_numpy(labels)).numpy()
    errors = np.abs(predictions - labels)
    sums = np.bincount(bins, weights=errors, minlength=task.num_bins)
    counts = np.bincount(bins, minlength=task.num_bins)
    mean_errors = np.divide(sums, counts, out=np.full(task.num_bins, np.nan), where=counts > 0)
    train_bins = task.label_bins(torch.from_numpy(np.asarray(task.train_labels, dtype=np.float32))).numpy()
    train_counts = np.bincount(train_bins, minlength=task.num_bins)
    x = np.asarray(task.bin_values) if len(task.bin_values) else np.arange(task.num_bins)
    width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.9
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), gridspec_kw={"height_ratios": [2, 1]})
    top.bar(x, np.nan_to_num(mean_errors), width=width, color=[colours[g] for g in task.bin_groups])
    top.set_ylabel("test MAE")
    top.set_title(f"{task.name}: test error per label (blue many-, orange medium-, red few-shot)")
    bottom.bar(x, train_counts, width=width, color="grey")
    bottom.set_ylabel("training samples")
    bottom.set_xlabel(task.label_name)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def progress(iterable, enabled: bool, description: str):
    """A tqdm progress bar over `iterable` when enabled and tqdm is installed, else `iterable`."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True, disable=None)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
