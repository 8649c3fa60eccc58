"""Run folders, checkpoint files and the RNG state that makes a resume exact.

A checkpoint is a torch pickle of a plain dict (tensors, numbers, strings, lists, dicts and the
RNG states of python, numpy and torch): no class of this package is pickled, so moving code
never breaks loading one.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, RunFolderInUse

# The version of the checkpoint layout and of the config saved in it. Checkpoints of version 1
# (and those that predate the versions of their settings: run_checks.merge_saved_config) resume
# and evaluate; a newer version, written by a newer srl-ext, is refused naming both.
CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"
PREVIOUS = "last.prev.pt"  # the checkpoint last.pt replaced, kept in case last.pt is damaged
LOCK = ".lock"


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


def atomic_save(obj, path: Path, keep_previous: Path | None = None) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash leaves the old file
    whole, and a failed save (disk full, an object that cannot be pickled) leaves no temporary
    file. With ``keep_previous``, the file that ``path`` held is renamed to it first, so that a
    ``path`` damaged later (a copy cut short, a full disk) still has a good predecessor."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.is_file():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict of file ``path``; CheckpointError if it cannot be read or is no
    training checkpoint of this project."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch.load raises whatever its zip and pickle readers raise
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt): {type(error).__name__}: {str(error)[:120]}"
        ) from error
    version = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: expected a checkpoint of format {CHECKPOINT_FORMAT} or older (what this srl-ext reads), got format "
            f"{version}: it was written by a newer srl-ext; resume or evaluate it with that version")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an srl-ext training checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def load_checkpoint(path: str | Path, default_name: str) -> tuple[dict, Path]:
    """(checkpoint, its file); ``path`` is the file or a run folder holding ``default_name``.

    A run folder whose last.pt is gone but whose last.prev.pt is there (a crash between the two
    renames of ``atomic_save``) gives last.prev.pt. A last.pt that cannot be read names the
    previous checkpoint, which is kept, and how to resume from it."""
    path = Path(path)
    if path.is_dir():
        if default_name == LAST and not (path / LAST).is_file() and (path / PREVIOUS).is_file():
            print(f"note: {path / LAST} is missing; using {path / PREVIOUS}", flush=True)
            default_name = PREVIOUS
        path = path / default_name
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as error:
        previous = path.with_name(PREVIOUS)
        if path.name == LAST and previous.is_file() and "unreadable" in str(error):
            try:
                epoch = read_checkpoint(previous).get("epoch")
                hint = f"; the previous checkpoint {previous} (epoch {epoch}) is kept: resume from it with --resume {previous}"
            except CheckpointError:
                hint = f"; the previous checkpoint {previous} is unreadable too"
            raise CheckpointError(str(error) + hint) from error.__cause__
        raise
    return checkpoint, path


def set_aside(path: Path) -> Path:
    """Rename a damaged file out of the way (never delete it): ``<name>.damaged-<time>``."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


class RunFolderLock:
    """An exclusive lock on a run folder while a process trains in it (``fcntl.flock`` on
    ``<run>/.lock``, which the system releases when the process dies, so a killed run leaves no
    stale lock; a run that ends removes the file). A second process, or a second run in the same
    process, is refused."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.handle = None

    def acquire(self) -> "RunFolderLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderInUse(
                f"run folder {self.path.parent} is in use by {holder} (lock {self.path}): a run still trains in it; "
                "wait for it to end or stop it before resuming"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """End of the run: the lock file goes, then the lock (removed while still held, so no
        other process can have locked it in between)."""
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()  # closing releases the flock
            self.handle = None


def file_digest(path: Path) -> dict:
    """{"size", "sha256"} of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def data_fingerprint(files, split_sizes: dict) -> dict:
    """What identifies the data of a run: size and SHA-256 of each split file (by name) and the
    number of samples of each split."""
    return {"files": {Path(f).name: file_digest(f) for f in files}, "splits": {k: int(v) for k, v in split_sizes.items()}}


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two data fingerprints, one phrase per difference."""
    changes = []
    for name in sorted(set(saved.get("files", {})) | set(current.get("files", {}))):
        old, new = saved.get("files", {}).get(name), current.get("files", {}).get(name)
        if old is None or new is None:
            changes.append(f"{name} {'is new' if old is None else 'is gone'}")
        elif old != new:
            changes.append(f"{name} changed ({old['size']} -> {new['size']} bytes, sha256 {old['sha256'][:12]} -> "
                           f"{new['sha256'][:12]})")
    for split in sorted(set(saved.get("splits", {})) | set(current.get("splits", {}))):
        old, new = saved.get("splits", {}).get(split), current.get("splits", {}).get(split)
        if old != new:
            changes.append(f"split {split} has {new} samples, the run started with {old}")
    return changes


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
