"""What a run writes besides checkpoints: the metrics log, TensorBoard, the test report and plot,
and the progress bars. Only rank 0 writes (the engine decides)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
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

    def step(self, step: int, **losses) -> None:
        """One training step's losses as TensorBoard scalars ``train_step/<name>`` (None values
        skipped); flushed with the next ``write``. The per-epoch means stay in metrics.jsonl."""
        if self.writer is None:
            return
        for key, value in losses.items():
            if value is not None:
                self.writer.add_scalar(f"train_step/{key}", float(value), step)

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


def tensorboard_missing() -> str | None:
    """Why no TensorBoard logs are written (tensorboard cannot be imported), or None."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        return f"tensorboard cannot be imported ({error})"
    return None


def warn_missing_optional_packages() -> None:
    """Said at the start of a run: what an optional package that is missing will skip."""
    reason = matplotlib_missing()
    if reason is not None:
        print(f"warning: {reason}: the per-label plot {TEST_PLOT} will be skipped (pip install matplotlib)",
              file=sys.stderr, flush=True)


def note_missing_tensorboard() -> None:
    """Said at the start of a training run (stdout: a note, not a problem) when no TensorBoard logs
    will be written."""
    reason = tensorboard_missing()
    if reason is not None:
        print(f"note: {reason}: no TensorBoard logs, {METRICS_LOG} only (pip install 'srl-ext[tensorboard]')",
              flush=True)


def fingerprint_tag(fingerprint: dict) -> str:
    """A short name for a data fingerprint: ``data-<12 hex digits>``."""
    return "data-" + hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def report_names(suffix: str = "") -> tuple[str, str]:
    """(test table, plot) file names; ``suffix`` marks a table of other data than the run's."""
    return TEST_METRICS.replace(".json", f"{suffix}.json"), TEST_PLOT.replace(".png", f"{suffix}.png")


def write_test_report(task: Task, table: dict, predictions: np.ndarray, labels: np.ndarray, title: str,
                      out_dir: Path, suffix: str = "", synthetic: bool = False) -> None:
    """The test table printed and saved as JSON, and the per-label error plot (PNG and SVG), in
    ``out_dir``; ``synthetic`` marks the plot as made from synthetic demo data. Without matplotlib
    the plot is skipped with a warning; the table is written all the same."""
    print(dir_metrics.format_table(table, title=f"{task.name} {title}"), flush=True)
    metrics_name, plot_name = report_names(suffix)
    (out_dir / metrics_name).write_text(json.dumps({"title": title, "table": table}, indent=2) + "\n")
    reason = matplotlib_missing()
    if reason is not None:
        print(f"warning: {reason}: {plot_name} not drawn", file=sys.stderr, flush=True)
        return
    plot_errors_per_label(task, predictions, labels, out_dir / plot_name, synthetic=synthetic)


SHOT_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
EMPTY_COLOUR = "0.6"  # the outline of a bin without test samples


def plotted_range(x: np.ndarray, *counts: np.ndarray) -> tuple[float, float]:
    """The x range of the bins that hold any sample (of any of ``counts``), half a bin beyond
    each end: the axis covers the data, not the benchmark's whole label range."""
    used = np.flatnonzero(np.sum(counts, axis=0) > 0)
    half = (x[1] - x[0]) / 2 if len(x) > 1 else 0.5
    if not len(used):
        return float(x[0] - half), float(x[-1] + half)
    return float(x[used[0]] - half), float(x[used[-1]] + half)


def plot_errors_per_label(task: Task, predictions: np.ndarray, labels: np.ndarray, path: Path,
                          synthetic: bool = False) -> None:
    """Mean absolute test error per bin (bars coloured by shot group, a legend; a bin without
    test samples drawn as an empty grey outline, not as a zero error), the training count per
    bin below, the axis over the bins that hold data. Written as ``path`` (PNG) and beside it as
    SVG; ``synthetic`` writes SYNTHETIC across the plot and in its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    bins = task.label_bins(torch.from_numpy(labels)).numpy()
    errors = np.abs(predictions - labels)
    sums = np.bincount(bins, weights=errors, minlength=task.num_bins)
    counts = np.bincount(bins, minlength=task.num_bins)
    mean_errors = np.divide(sums, counts, out=np.full(task.num_bins, np.nan), where=counts > 0)
    train_bins = task.label_bins(torch.from_numpy(np.asarray(task.train_labels, dtype=np.float32))).numpy()
    train_counts = np.bincount(train_bins, minlength=task.num_bins)
    x = np.asarray(task.bin_values) if len(task.bin_values) else np.arange(task.num_bins)
    width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.9
    tested, empty = counts > 0, counts == 0
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), gridspec_kw={"height_ratios": [2, 1]})
    top.bar(x[tested], mean_errors[tested], width=width,
            color=[SHOT_COLOURS[g] for g, t in zip(task.bin_groups, tested) if t])
    # no test sample: an outline as high as the axis, so that it cannot be read as a zero error
    ceiling = float(np.nanmax(mean_errors)) if tested.any() else 1.0
    top.bar(x[empty], np.full(int(empty.sum()), ceiling), width=width, fill=False, edgecolor=EMPTY_COLOUR,
            linestyle=":", linewidth=0.8)
    handles = [Patch(color=SHOT_COLOURS[g], label=f"{g}-shot") for g in dir_metrics.GROUPS if g in task.bin_groups]
    if empty.any():
        handles.append(Patch(fill=False, edgecolor=EMPTY_COLOUR, linestyle=":", label="no test sample"))
    # beside the plot, where it hides no bar
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
               title="shot group of the bin", title_fontsize="small")
    top.set_ylabel("test MAE")
    top.set_title(f"{task.name}: test error per label" + (" - SYNTHETIC demo data, not the benchmark" if synthetic else ""))
    bottom.bar(x, train_counts, width=width, color="grey")
    bottom.set_ylabel("training samples")
    bottom.set_xlabel(task.label_name)
    bottom.set_xlim(*plotted_range(x, counts, train_counts))
    if synthetic:
        for axis in (top, bottom):
            axis.text(0.5, 0.5, "SYNTHETIC", transform=axis.transAxes, ha="center", va="center", fontsize=48,
                      color="grey", alpha=0.25, rotation=15, zorder=0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    figure.savefig(Path(path).with_suffix(".svg"))
    plt.close(figure)


# Seconds between two plain-text progress lines (output that is not a terminal: logs, nohup, SLURM).
PROGRESS_EVERY_S = 30.0


def progress(iterable, enabled: bool, description: str):
    """Progress over `iterable` when enabled: a tqdm bar on a terminal (stderr a TTY, tqdm
    installed), else ``PlainProgress``'s lines on stdout every ``PROGRESS_EVERY_S`` seconds."""
    if not enabled:
        return iterable
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True, disable=None)
    return PlainProgress(iterable, description)


class PlainProgress:
    """Iterates `iterable` and prints one line ``<description>: step i/n (p %), t s, about r s
    left, loss x`` every ``every_s`` seconds, for output that a progress bar would garble (files,
    pipes). ``set_postfix`` takes what a tqdm bar takes (the engine's loss)."""

    def __init__(self, iterable, description: str, every_s: float | None = None, clock=time.monotonic,
                 stream=None) -> None:
        self.iterable, self.description, self.clock = iterable, description, clock
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.stream = stream
        self.postfix: dict = {}
        try:
            self.total: int | None = len(iterable)
        except TypeError:
            self.total = None

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = values

    def __iter__(self):
        started = last = self.clock()
        for done, item in enumerate(self.iterable, start=1):
            yield item
            now = self.clock()
            if now - last >= self.every_s:
                last = now
                print(self.line(done, now - started), file=self.stream or sys.stdout, flush=True)

    def line(self, done: int, elapsed: float) -> str:
        text = f"{self.description}: step {done}"
        if self.total:
            left = elapsed / done * (self.total - done)
            text += f"/{self.total} ({100 * done / self.total:.0f} %), {elapsed:.0f} s, about {left:.0f} s left"
        else:
            text += f", {elapsed:.0f} s"
        return text + "".join(f", {key} {value}" for key, value in self.postfix.items())


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
