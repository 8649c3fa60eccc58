"""Running a run: train a new one, resume one, evaluate a checkpoint of this project or one the
SRL authors released, each under torchrun too. The one place that builds an ``Engine``.

A driver is ``main(benchmark, argv)``: the flags of ``cli`` and of the benchmark's record parsed
into a config, ``--demo`` data written if asked, then ``run``. Launched with ``torchrun``
(WORLD_SIZE > 1), ``run`` joins the process group first and the engine trains data-parallel
(docs/distributed.md); rank 0 alone makes the run folder and writes in it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import cli, ddp, demo, reporting
from .cli import command  # noqa: F401 (the drivers' entry point: run.command(main))
from .benchmarks import BENCHMARKS, Benchmark, data_dir_path
from .checkpoint import (BEST, LAST, PREVIOUS, RunFolderLock, data_fingerprint, file_digest, fingerprint_changes,
                         load_checkpoint, make_run_dir, seed_everything, set_aside)
from .config import method_settings
from .engine import Engine
from .errors import CheckpointError, UserError
from .released_checkpoints import is_srl_ext_checkpoint, read_checkpoint
from .released_checkpoints.mapping import released_model_for, released_run_settings
from .run_config import RunConfig
from .run_checks import (ENVIRONMENT_FLAGS, RESUME_FLAGS, check_benchmark, check_resumable, check_run_size,
                         merge_saved_config)


def driver(name: str) -> tuple[Callable, Callable, Callable]:
    """What a driver script in train/ is, for benchmark ``name``: ``parser()``, ``build(config)
    -> (task, model, datasets)`` and ``main(argv=None) -> the test table``."""
    benchmark = BENCHMARKS[name]

    def main_of_driver(argv: Sequence[str] | None = None) -> dict:
        return main(benchmark, argv)

    return (lambda: parser(benchmark)), benchmark.build, main_of_driver


def parser(benchmark: Benchmark) -> argparse.ArgumentParser:
    """The driver's parser: the shared flags with the benchmark's defaults, and its model flags."""
    p = cli.build_parser(benchmark)
    benchmark.add_model_flags(p)
    return p


def main(benchmark: Benchmark, argv: Sequence[str] | None = None) -> dict:
    """A whole driver: parse, prepare a --demo, run; returns the test table."""
    config, explicit = cli.parse(parser(benchmark), benchmark.name, argv)
    if config["demo"]:
        demo.prepare(config, explicit, benchmark.demo_settings, benchmark.write_demo)
    return run(RunConfig.from_dict(config), explicit, benchmark)  # the run's settings, built once


def run(config: RunConfig | dict, explicit: set[str], benchmark: Benchmark) -> dict:
    """Train, select and test a new run, or resume or evaluate a checkpoint; returns the test table.

    Under torchrun it joins the process group (``ddp.init_from_env``) and leaves it at the end."""
    config = RunConfig.from_dict(config)
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    joined = ddp.launched_by_torchrun() and not torch.distributed.is_initialized()
    ddp.init_from_env(config["device"])
    try:
        reporting.warn_missing_optional_packages()
        if config["evaluate"] is not None:
            table = evaluate(config, explicit, benchmark)
        elif config["resume"] is not None:
            table = resume(config, explicit, benchmark)
        else:
            if config.get("data_changed"):
                raise UserError("--data_changed: expected only with --resume, got no --resume")
            table = train(config, benchmark)
        # Rank 0 still writes files when the others are done: tearing gloo down on one rank while
        # another is busy can abort the process at exit, so every rank waits for all first.
        ddp.barrier()
        return table
    finally:
        if joined:
            ddp.leave()


def open_engine(config: RunConfig | dict, run_dir: str | Path, built: tuple | None = None) -> Engine:
    """The engine of ``config`` (its benchmark's data and model, or ``built`` = (task, model,
    datasets)) writing into ``run_dir``: every run and tool gets its engine here."""
    task, model, datasets = built if built is not None else BENCHMARKS[config["preset"]].build(config)
    return Engine(config, task, model, datasets, run_dir)


def train(config: RunConfig, benchmark: Benchmark) -> dict:
    """A new run: data and model first (a run that cannot start leaves no folder behind), then a
    run folder, training, the test."""
    main_process = ddp.is_main_process()
    if main_process:
        reporting.note_missing_tensorboard()
    seed_everything(config["seed"])
    task, model, datasets = benchmark.build(config)
    fingerprint = fingerprint_of(task, datasets)
    if config.get("init_from") is not None:  # recorded: whether the encoder was trained with SRL
        config = config.replace(init_from_srl=bool(init_from_run(model, config["init_from"], benchmark, fingerprint)["srl"]))
    check_run_size(config, task, model, datasets)
    run_dir, lock = None, None
    if main_process:  # one folder for the run: rank 0 makes it, the other ranks are told its path
        kind = "+".join(["srl" if config["srl"] else "vanilla"] + method_settings(config).names())
        name = config["run_name"] or f"{config['preset']}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = make_run_dir(config["runs_dir"], name)
        lock = RunFolderLock(run_dir).acquire()
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        print(f"run folder {run_dir}", flush=True)
    run_dir = Path(ddp.broadcast_object(None if run_dir is None else str(run_dir)))
    try:
        engine = None
        engine = open_engine(config, run_dir, (task, model, datasets))
        engine.data_fingerprint = fingerprint
        engine.fit()
        return engine.test()
    except BaseException:
        # a run that never trained a step leaves no folder behind
        if main_process and (engine is None or engine.global_step == 0) and not (run_dir / LAST).exists():
            lock.release()
            lock = None
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def resume(config: RunConfig, explicit: set[str], benchmark: Benchmark) -> dict:
    """--resume: the run continues exactly where its checkpoint stopped, with its saved config."""
    main_process = ddp.is_main_process()
    if main_process:
        reporting.note_missing_tensorboard()
    checkpoint, path = load_checkpoint(config["resume"], LAST)
    check_benchmark(checkpoint, path, benchmark, "resume")
    check_resumable(checkpoint, path)
    lock = RunFolderLock(path.parent).acquire() if main_process else None
    try:
        saved = merge_saved_config(checkpoint["config"], config.to_dict(), explicit, RESUME_FLAGS, benchmark)
        saved = RunConfig.from_dict(saved, checkpoint["format"])
        cli.check_backend(saved)  # the run's kernels, on this command's --device
        task, model, datasets = benchmark.build(saved)
        fingerprint = fingerprint_of(task, datasets)
        changes = fingerprint_changes(checkpoint["data_fingerprint"], fingerprint) if checkpoint.get("data_fingerprint") else []
        if changes and not config.get("data_changed"):
            raise CheckpointError(
                f"--resume {path}: the data changed since the run started ({'; '.join(changes)}); resume with "
                f"--data_changed if the change is intended"
            )
        if path.name == PREVIOUS and (path.parent / LAST).is_file() and main_process:
            aside = set_aside(path.parent / LAST)  # the damaged last.pt, kept under another name
            print(f"note: resuming from {path}; the damaged {LAST} is kept as {aside}", flush=True)
        engine = open_engine(saved, path.parent, (task, model, datasets))
        load_weights(lambda: engine.load_state_dict(checkpoint), "--resume", path)
        engine.data_fingerprint = fingerprint
        if main_process:
            print(f"resumed {path} after epoch {engine.epoch} step {engine.global_step}", flush=True)
        engine.fit()
        return engine.test()
    finally:
        if lock is not None:
            lock.release()


def load_weights(load: Callable[[], None], action: str, path: Path) -> None:
    """A checkpoint whose weights do not fit the model its config builds is a CheckpointError."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        first = " ".join(str(error).strip().splitlines()[0].split()) if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{action} {path}: expected weights that fit the model of its config, got: {first}") from None


def evaluate(config: RunConfig, explicit: set[str], benchmark: Benchmark) -> dict:
    """--evaluate: the test table of a checkpoint of this project, or of a released one."""
    # Read without running pickled code; a file that is no checkpoint of this project is
    # taken for a released SRL checkpoint.
    source = Path(config["evaluate"])
    source = source / BEST if source.is_dir() else source
    if source.is_file():
        loaded = read_checkpoint(source, config.get("trust_checkpoint", False))
        if not is_srl_ext_checkpoint(loaded):
            return evaluate_released(config, explicit, benchmark, source, loaded)
    checkpoint, path = load_checkpoint(config["evaluate"], BEST)
    check_benchmark(checkpoint, path, benchmark, "evaluate")
    saved = merge_saved_config(checkpoint["config"], config.to_dict(), explicit, ENVIRONMENT_FLAGS, benchmark)
    saved = RunConfig.from_dict(saved, checkpoint["format"])
    task, model, datasets = benchmark.build(saved)
    # the run's folder is written to: not while a live run holds it
    lock = RunFolderLock(path.parent).acquire() if ddp.is_main_process() else None
    try:
        return _evaluate_into(saved, checkpoint, path, (task, model, datasets))
    finally:
        if lock is not None:
            lock.release()


def _evaluate_into(saved: RunConfig, checkpoint: dict, path: Path, built: tuple) -> dict:
    task, _, datasets = built
    fingerprint = fingerprint_of(task, datasets)
    engine = open_engine(saved, path.parent, built)
    load_weights(lambda: engine.model.load_state_dict(checkpoint["model"]), "--evaluate", path)
    best = checkpoint.get("best") or {}
    # The run's own table (test_metrics.json) is only ever rewritten from the run's own data; a
    # table from other data goes beside it, named after that data's fingerprint.
    trained_on = checkpoint.get("data_fingerprint")
    if trained_on is not None:
        same_data = not fingerprint_changes(trained_on, fingerprint)
    else:  # a run saved before fingerprints: the same --data_dir
        same_data = Path(checkpoint["config"]["data_dir"]).expanduser().resolve() == data_dir_path(saved).resolve()
    suffix = "" if same_data else "." + reporting.fingerprint_tag(fingerprint)
    title = f"test, {path.name} (epoch {best.get('epoch')} step {best.get('step')})"
    if not same_data:
        title += f", data {saved['data_dir']}"
    table = engine.report(title=title, out_dir=path.parent, suffix=suffix)
    if ddp.is_main_process():
        note = "" if same_data else " (other data than the run's: its own table is left as it is)"
        print(f"wrote {reporting.TEST_METRICS.replace('.json', suffix + '.json')} to {path.parent}{note}", flush=True)
    return table


def evaluate_released(config: RunConfig, explicit: set[str], benchmark: Benchmark, path: Path, obj) -> dict:
    """Test a released checkpoint like a run of this project: the DIR table printed, and
    ``test_metrics.json``, ``test_errors.png`` and ``config.json`` (with the file's path, SHA-256
    and the conversion notes) in a new run folder under ``--runs_dir`` (the download folder is
    left alone)."""
    layout, settings = released_run_settings(config, explicit, benchmark, path, obj)
    settings = RunConfig.from_dict(settings)
    task, built, datasets = benchmark.build(settings)
    released = released_model_for(layout, settings, built)
    if getattr(built, "fds", None) is not None:  # --fds: the flags' FDS module, fresh (the file's statistics are left out)
        released.model.fds = built.fds
    run_dir = None
    if ddp.is_main_process():
        name = config["run_name"] or f"{benchmark.name}-released-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = make_run_dir(config["runs_dir"], name)
        record = {**settings.to_dict(), "released_checkpoint": {
            "path": str(Path(path).resolve()), "sha256": file_digest(Path(path))["sha256"],
            "layout": layout.description, "metadata": layout.metadata, "model_settings": layout.settings,
            "notes": released.notes}}
        (run_dir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        print(f"released checkpoint {path}: {layout.description}", flush=True)
        for note in released.notes:
            print(f"  {note}", flush=True)
    run_dir = Path(ddp.broadcast_object(None if run_dir is None else str(run_dir)))
    engine = open_engine(settings, run_dir, (task, released.model, datasets))
    epoch = layout.metadata.get("epoch")
    title = f"test, released {Path(path).name}" + (f" (epoch {epoch})" if epoch is not None else "")
    table = engine.report(title=title, out_dir=run_dir)
    if ddp.is_main_process():
        print(f"wrote {reporting.TEST_METRICS}, {reporting.TEST_PLOT} and config.json to {run_dir}", flush=True)
    return table


def init_from_run(model: torch.nn.Module, source: str, benchmark: Benchmark, fingerprint: dict) -> dict:
    """--init_from: every weight of the model selected in run ``source`` (its best.pt) but the
    regressor's (and FDS's statistics), as the released second stage loads them; returns that
    run's config. A run of another benchmark or other data, or a network of other shapes, is refused."""
    checkpoint, path = load_checkpoint(source, BEST)
    check_benchmark(checkpoint, path, benchmark, "init_from")
    changes = fingerprint_changes(checkpoint["data_fingerprint"], fingerprint) if checkpoint.get("data_fingerprint") else []
    if changes:
        raise UserError(f"--init_from {path}: expected a run on this data, got a run on other data ({'; '.join(changes)})")
    kept = lambda key: not key.startswith(("regressor.", "fds."))  # noqa: E731
    saved = {key: value for key, value in checkpoint["model"].items() if kept(key)}
    own = {key: value for key, value in model.state_dict().items() if kept(key)}
    hint = f"give the model flags of {path.parent / 'config.json'}"
    for key in sorted(set(own) | set(saved)):
        if key not in saved or key not in own:
            raise UserError(f"--init_from {path}: expected the same network, got {'no' if key not in saved else 'an extra'} "
                            f"tensor {key} in the file; {hint}")
        if saved[key].shape != own[key].shape:
            raise UserError(f"--init_from {path}: expected {key} of shape {tuple(own[key].shape)}, got "
                            f"{tuple(saved[key].shape)}; {hint}")
    model.load_state_dict(saved, strict=False)
    if ddp.is_main_process():
        print(f"initialised from {path} (every weight but the regressor's)", flush=True)
    return checkpoint["config"]


def fingerprint_of(task, datasets) -> dict:
    return data_fingerprint(task.data_files, {split: len(dataset) for split, dataset in datasets.items()})
