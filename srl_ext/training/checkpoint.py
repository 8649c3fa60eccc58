"""Run folders, checkpoint files and the RNG state that makes a resume exact.

A checkpoint is a torch pickle of a plain dict (tensors, numbers, strings, lists, dicts and the
RNG states of python, numpy and torch): no class of this package is pickled, so moving code
never breaks loading one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"


def make_run_dir(runs_dir: str | Path, name: str) -> Path:
    """A new folder ``runs_dir/name``; if that exists, ``name-2``, ``name-3``, ... (never reused)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        candidate = runs_dir / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        if attempt > 1:
            print(f"run folder {runs_dir / name} exists; this run writes to {candidate}")
        return candidate
    raise RuntimeError(f"no free run folder name for {runs_dir / name}")


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash leaves the old file whole."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, default_name: str) -> tuple[dict, Path]:
    """(checkpoint, its file); ``path`` is the file or a run folder holding ``default_name``."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an srl-ext training checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint, path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one loader in one epoch, independent of how the run got there."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])
