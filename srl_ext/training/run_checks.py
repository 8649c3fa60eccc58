"""The checks of a run before it trains or writes: a checkpoint's benchmark and kind, its saved
config merged with this command's flags, and a new run's size (docs/training.md, "Errors" 3 and 4)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import ddp
from .benchmarks import BENCHMARKS
from .checkpoint import BEST, LAST, PREVIOUS, load_checkpoint
from .cli import device_problem
from .loaders import train_steps
from .models import feature_dim
from .errors import CheckpointError, UserError

# Flags that a --resume or --evaluate may change: where the data is and how to run, not what is trained.
# --epoch may be raised on --resume to train on.
ENVIRONMENT_FLAGS = ("data_dir", "workers", "threads", "device", "progress", "debug")
RESUME_FLAGS = ENVIRONMENT_FLAGS + ("epoch",)
# Settings whose absence from a saved config means the behaviour of the runs saved before they existed
# (config.method_settings: EARLIER_FDS_CLIP; a benchmark's earlier_when_absent): never filled in on resume.
EARLIER_WHEN_ABSENT = ("fds_clip",)
# Flags that act on this command only and are never taken from or compared with a saved config.
COMMAND_FLAGS = ("resume", "evaluate", "trust_checkpoint", "data_changed", "debug", "demo")


def check_benchmark(checkpoint: dict, path: Path, benchmark, action: str) -> None:
    """A checkpoint of another benchmark is refused, naming the driver that takes it."""
    theirs = checkpoint.get("config", {}).get("preset")
    if theirs is not None and theirs != benchmark.name:
        other = BENCHMARKS.get(theirs)
        raise CheckpointError(
            f"--{action} {path}: expected a {benchmark.title} checkpoint, got a "
            f"{other.title if other else theirs} run ({theirs}): use python "
            f"{other.driver if other else 'train/' + theirs + '.py'} "
            f"--{action} {path.parent if path.name in (LAST, BEST) else path}"
        )


def check_resumable(checkpoint: dict, path: Path) -> None:
    """A training state (not a best.pt), not a last.prev.pt beside a sound last.pt, and the
    best.pt it names still there."""
    if "optimizer" not in checkpoint:
        raise CheckpointError(
            f"--resume {path}: expected a training state (last.pt), got the model selected on validation "
            f"(best.pt), which holds no optimiser, memory or RNG state to continue from: resume with "
            f"--resume {path.parent} (its last.pt); to test this model use --evaluate {path}"
        )
    if path.name == PREVIOUS and (path.parent / LAST).is_file():
        _refuse_a_sound_last(path)
    if checkpoint.get("best") is not None and not (path.parent / BEST).is_file():
        raise CheckpointError(
            f"--resume {path}: expected {path.parent / BEST} (the model selected at epoch "
            f"{checkpoint['best'].get('epoch')}, which the test evaluates), got no such file: put it back, "
            f"or start a new run")


def _refuse_a_sound_last(previous: Path) -> None:
    """--resume RUN/last.prev.pt is for a damaged last.pt: a sound one is newer, and is kept."""
    try:
        epoch = load_checkpoint(previous.parent / LAST, LAST)[0].get("epoch")
    except CheckpointError:
        return  # damaged: resuming from the previous one is what it is kept for
    raise CheckpointError(
        f"--resume {previous}: expected a damaged {LAST} beside it, got a sound one (epoch {epoch}, newer): resume "
        f"with --resume {previous.parent}; {PREVIOUS} is only for a {LAST} that cannot be read")


def merge_saved_config(saved: dict, given: dict, explicit: set[str], changeable: Sequence[str], benchmark) -> dict:
    """The checkpoint's config, with the changeable flags given on this command line."""
    merged = dict(saved)
    merged.setdefault("early_stop", "no_improvement")  # the only rule of runs saved before --early_stop
    # Settings added since the checkpoint was saved: this version's defaults (or this command's values),
    # except those whose absence the code reads as the behaviour before they existed.
    kept_absent = COMMAND_FLAGS + EARLIER_WHEN_ABSENT + tuple(benchmark.earlier_when_absent)
    missing = sorted(key for key in given if key not in merged and key not in kept_absent)
    if missing:
        print(f"note: the checkpoint's config predates {', '.join('--' + key for key in missing)}: "
              "the defaults are used", file=sys.stderr)
        merged.update({key: given[key] for key in missing})
    ignored = sorted(key for key in explicit - set(changeable) if key not in COMMAND_FLAGS and given[key] != saved.get(key))
    if ignored:
        print(f"note: the checkpoint's config is used; ignored: {', '.join('--' + key for key in ignored)}", file=sys.stderr)
    for key in changeable:
        if key in explicit:
            merged[key] = given[key]
    merged["resume"], merged["evaluate"] = given["resume"], given["evaluate"]
    if merged.get("threads"):  # the run's own thread count (or this command's): exact resume in a new process
        torch.set_num_threads(merged["threads"])
    if (problem := device_problem(merged["device"])) is not None:
        raise UserError(f"--device: expected {problem[0]}, got {problem[1]}")
    return merged


def check_run_size(config: dict, task, model, datasets: dict) -> None:
    """Before a run folder is made: an epoch has at least one training step, and the anchors'
    tables fit in the device's memory (FDS's statistics are checked where they are built,
    ``Benchmark.build``)."""
    per_rank = math.ceil(len(datasets["train"]) / ddp.world_size())
    if train_steps(per_rank, config["batch_size"]) == 0:
        raise UserError(
            f"--batch_size: expected a train split with at least one training step, got {len(datasets['train'])} "
            f"training sample(s) for --batch_size {config['batch_size']}" + (
                f" on {ddp.world_size()} processes" if ddp.world_size() > 1 else "")
            + " (a last batch of one sample is dropped: BatchNorm cannot train on it); nothing would be trained")
    if config["srl"]:  # float32 anchors, N x D, and the envelope's K x N cosines (FDS's tables: Benchmark.build)
        ddp.check_tables_fit(config["device"], "--num_anchors", config["num_anchors"],
                             4 * config["num_anchors"] * (feature_dim(model) + task.num_bins),
                             "the anchors and the K x N cosines of the enveloping term")
