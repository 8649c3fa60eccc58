"""The command line shared by the drivers in ``train/``: the flags, their parsing and their checks.

``build_parser(benchmark)`` gives the flags every driver shares, with the benchmark's defaults
(the released settings, docs/method.md "Presets"); ``parse`` checks them into a run's config
before anything is read or written (docs/training.md, "Errors" 1). ``command`` runs a driver's
``main`` and turns a user mistake into one line. What a run does with the config is
``srl_ext.training.run``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import backends, settings
from ..memory import MODES as MEMORY_MODES
from ..settings import ENVELOPES
from .checkpoint import BEST, LAST
from .config import EARLY_STOP_RULES, recipe, recipe_flags
from .errors import UserError
from .flags import (FINITE, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, SEED, HelpFormatter, OneLineParser,
                    add_method_flags, method_flag_errors, ranged)

# Flags that set the SRL terms, their memory or their kernels: contradictions of --vanilla.
SRL_ONLY_FLAGS = ("warmup", "w1", "w2", "w3", "temp", "num_anchors", "anchor_seed", "homogeneity_sign",
                  "homogeneity_beta", "envelope", "envelope_temperature", "label_weighting", "backend",
                  "memory_update", "memory_momentum", "released_table")
DEBUG_VARIABLE = "SRL_EXT_DEBUG"


def command(main: Callable[[Sequence[str] | None], dict], argv: Sequence[str] | None = None) -> int:
    """A driver's ``main`` run from the command line: 0 when it finishes; on a user mistake
    (``errors.UserError``, a missing file, a released checkpoint that cannot be used) one line
    ``error: ...`` on stderr and 2, without a traceback, unless ``--debug`` is given or
    SRL_EXT_DEBUG=1 (then the traceback too)."""
    from .released_checkpoints import ReleasedCheckpointError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        main(args)
    # A user can cause: the project's errors, any file-system error (a missing, unreadable or
    # unwritable path; a file where a folder is expected; a full disk) and running out of memory.
    except (UserError, ReleasedCheckpointError, OSError, UnicodeDecodeError, MemoryError,
            torch.OutOfMemoryError) as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split("\n")[0].split()) if not isinstance(error, UserError) else str(error)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0


def build_parser(benchmark) -> argparse.ArgumentParser:
    """The common flags with the defaults of ``benchmark`` (its ``benchmarks.Benchmark`` record);
    the benchmark's model flags are added to the returned parser (``run.parser``)."""
    parser = OneLineParser(description=benchmark.description, formatter_class=HelpFormatter)
    _add_data_flags(parser, benchmark.default_data_dir)
    _add_optimisation_flags(parser, benchmark)
    _add_srl_flags(parser, benchmark.name)
    add_method_flags(parser, benchmark)
    return parser


def _add_data_flags(parser: argparse.ArgumentParser, default_data_dir: str) -> None:
    data = parser.add_argument_group("data and run folder")
    data.add_argument("--data_dir", default=default_data_dir, help="folder holding the dataset files")
    data.add_argument("--runs_dir", "--store_root", default="runs", help="parent folder of the run folders")
    data.add_argument("--run_name", "--store_name", default=None,
                      help="run folder name (default: <preset>-<srl|vanilla>-<date-time>); an existing one is never "
                           "reused: a suffix -2, -3, ... is added")
    data.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="data loader worker processes")
    data.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="CPU threads of torch (0: torch's default)")
    data.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    data.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    data.add_argument("--resume", metavar="CHECKPOINT", default=None,
                      help=f"continue the run of this checkpoint (a run folder means its {LAST}) exactly where it "
                           "stopped, with its saved config; only --data_dir, --workers, --threads, --device, "
                           "--no_progress and --epoch (to train longer) may change")
    data.add_argument("--evaluate", metavar="CHECKPOINT", nargs="?", const="", default=None,
                      help=f"only evaluate this checkpoint (a run folder means its {BEST}) on the test set: print "
                           "the DIR table, write test_metrics.json and test_errors.png beside it. A checkpoint "
                           "released by the SRL authors is converted to this project's model and its table written "
                           "to a new run folder under --runs_dir (docs/training.md)")
    data.add_argument("--eval_model", metavar="CHECKPOINT", default=None,
                      help="the released STS-B code's way to name it: --evaluate --eval_model CHECKPOINT is "
                           "--evaluate CHECKPOINT")
    data.add_argument("--demo", action="store_true",
                      help="try the driver without the benchmark: write a small SYNTHETIC dataset in its layout "
                           "(under --runs_dir/demo-data) and train a small model on it, about a minute on a CPU")
    data.add_argument("--data_changed", action="store_true",
                      help="with --resume: continue although the data files differ from those the run started with "
                           "(their sizes, SHA-256 and split counts are stored in the checkpoint)")
    data.add_argument("--debug", action="store_true",
                      help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1 in the environment)")
    data.add_argument("--trust_checkpoint", action="store_true",
                      help="with --evaluate: load a checkpoint file that pickles Python objects besides tensors "
                           "(an argparse namespace, ...), which runs code the file names; only for files you trust")


def _add_optimisation_flags(parser: argparse.ArgumentParser, benchmark) -> None:
    p = recipe(benchmark.name)
    train = parser.add_argument_group("optimisation")
    train.add_argument("--seed", "--random_seed", type=SEED, default=0, help="seed of the initialisation, shuffling, augmentations and dropout")
    train.add_argument("--epoch", type=ranged(int, 1), default=p.epochs,
                       help="number of training epochs" + (" (none: until early stopping)" if p.epochs is None else ""))
    train.add_argument("--batch_size", type=ranged(int, 2), default=p.batch_size,
                       help="batch size (per process under torchrun: the global batch is this times the "
                            "number of processes)")
    train.add_argument("--lr", type=POSITIVE, default=p.lr, help="Adam learning rate")
    train.add_argument("--weight_decay", type=NON_NEGATIVE, default=p.weight_decay, help="Adam weight decay")
    train.add_argument("--lr_milestones", "--schedule", type=NON_NEGATIVE_INT, nargs="*", default=list(p.lr_milestones),
                       help="epochs at which the learning rate is multiplied by --lr_gamma")
    train.add_argument("--lr_gamma", type=POSITIVE, default=p.lr_gamma, help="learning rate factor at each milestone")
    train.add_argument("--grad_clip", "--max_grad_norm", type=NON_NEGATIVE, default=p.grad_clip_norm or 0.0,
                       help="clip the gradient norm to this value (0: no clipping)")
    train.add_argument("--eval_every", "--val_interval", type=NON_NEGATIVE_INT, default=p.eval_every_steps or 0,
                       help="validate every so many training steps (0: at the end of every epoch)")
    train.add_argument("--patience", type=NON_NEGATIVE_INT, default=p.early_stop_patience or 0,
                       help="early stopping, read by --early_stop (0: no early stopping)")
    train.add_argument("--early_stop", choices=EARLY_STOP_RULES, default="released",
                       help="released: stop when the validation score is the worst of the last --patience + 1 "
                            "(the released STS-B trainer); no_improvement: stop after --patience validations "
                            "without a better model")
    train.add_argument("--max_vals", dest="max_validations", type=NON_NEGATIVE_INT, default=p.max_validations or 0,
                       help="stop after so many validations (0: no limit)")
    if benchmark.trainers:
        trainers = benchmark.trainers
        train.add_argument("--recipe", choices=tuple(trainers), default="srl",
                           help="whose trainer sets the defaults of the flags above; flags given explicitly win: "
                                + "; ".join(f"{name} = batch {r.batch_size}, lr {r.lr:g}, patience "
                                            f"{r.early_stop_patience}, at most {r.max_validations} validations"
                                            for name, r in trainers.items())
                                + " (srl: the SRL code's trainer; dir: the DIR code's own, with which the DIR paper "
                                  "ran LDS and FDS)")
    train.add_argument("--init_from", metavar="RUN", default=None,
                       help=f"start a new run from the model selected in RUN (its {BEST}): every weight but the "
                            "regressor's, which starts afresh (the released two-stage training); the model flags must "
                            "build the same network, and the data must be RUN's")
    train.add_argument("--retrain_regressor", action="store_true",
                       help="with --init_from and --vanilla: train the regressor only, every other parameter frozen "
                            "(the released second stage, RRT; Balanced MSE's released recipe)")


def _add_srl_flags(parser: argparse.ArgumentParser, preset_name: str) -> None:
    loss = settings.preset(preset_name).srl
    srl = parser.add_argument_group("SRL loss (docs/method.md)")
    srl.add_argument("--vanilla", dest="srl", action="store_false",
                     help="train the plain regression baseline: no SRL terms, no surrogate memory")
    srl.add_argument("--warmup", type=NON_NEGATIVE_INT, default=0, help="first epochs trained with the regression loss only")
    srl.add_argument("--w1", type=NON_NEGATIVE, default=loss.w1, help="weight of the contrastive term")
    srl.add_argument("--w2", type=NON_NEGATIVE, default=loss.w2, help="weight of the enveloping term")
    srl.add_argument("--w3", type=NON_NEGATIVE, default=loss.w3, help="weight of the homogeneity term")
    srl.add_argument("--temp", type=POSITIVE, default=loss.temperature, help="temperature of the contrastive term")
    srl.add_argument("--num_anchors", type=ranged(int, 1), default=loss.num_anchors, help="anchor points of the enveloping term")
    srl.add_argument("--anchor_seed", type=NON_NEGATIVE_INT, default=loss.anchor_seed, help="seed of the anchor points")
    srl.add_argument("--homogeneity_sign", type=FINITE, default=loss.homogeneity_sign,
                     help="sign of the sum of neighbouring surrogate cosines (-1: the paper's term)")
    srl.add_argument("--homogeneity_beta", type=NON_NEGATIVE, default=loss.homogeneity_beta,
                     help="weight of the variance of neighbouring cosines")
    srl.add_argument("--envelope", choices=ENVELOPES, default=loss.envelope,
                     help="enveloping term: hard max (released code) or smooth max (paper)")
    srl.add_argument("--envelope_temperature", type=POSITIVE, default=loss.envelope_temperature,
                     help="smoothness s of the soft envelope (the smooth max s * logsumexp(cos / s))")
    srl.add_argument("--label_weighting", action="store_true",
                     help="weight the contrastive denominator by label distance")
    srl.add_argument("--backend", choices=backends.NAMES, default="auto", help="kernels computing the SRL terms")
    srl.add_argument("--memory_update", choices=MEMORY_MODES, default="epoch_pass",
                     help="refill of the surrogate memory: epoch_pass = one extra no-grad pass over the training set "
                          "at the end of each epoch (released code); online = the features of the training steps")
    srl.add_argument("--memory_momentum", type=FRACTION, default=0.9, help="weight of the old memory in each update")
    srl.add_argument("--grad_share_every", type=NON_NEGATIVE_INT, default=50,
                     help="every so many steps, measure the SRL terms' gradient on the shared encoder against the "
                          "regression loss's (norm ratio and cosine, logged per epoch in metrics.jsonl; 0: never)")


def _resolve_eval_model(parser: argparse.ArgumentParser, config: dict) -> None:
    """The released STS-B code's ``--evaluate --eval_model X`` as this project's ``--evaluate X``."""
    evaluate, eval_model = config["evaluate"], config.pop("eval_model", None)
    if eval_model is not None and evaluate is None:
        parser.error(f"--eval_model: expected --evaluate with it (--evaluate --eval_model {eval_model}, or "
                     f"--evaluate {eval_model}), got no --evaluate")
    if eval_model is not None and evaluate not in ("", eval_model):
        parser.error(f"--evaluate/--eval_model: expected one checkpoint, got {evaluate} and {eval_model}")
    if evaluate == "" and eval_model is None:
        parser.error("--evaluate: expected a checkpoint (--evaluate CHECKPOINT, or --evaluate --eval_model "
                     "CHECKPOINT), got none")
    if eval_model is not None:
        config["evaluate"] = eval_model


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags given on the command line (not left at their default)."""
    defaults = {action.dest: action.default for action in parser._actions}
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        given = parser.parse_args(argv)
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]
    given = set(vars(given))
    if "eval_model" in given:  # resolved into --evaluate (_resolve_eval_model)
        given = (given - {"eval_model"}) | {"evaluate"}
    return given


def parse(parser: argparse.ArgumentParser, preset_name: str, argv: Sequence[str] | None = None) -> tuple[dict, set[str]]:
    """(config, explicitly given flags). The config adds the preset's fixed settings and maps the
    '0 means off' flags to None."""
    args = parser.parse_args(argv)
    config = vars(args)
    _resolve_eval_model(parser, config)
    explicit = explicit_flags(parser, argv)
    if config.get("recipe", "srl") != "srl":  # another trainer's values for the flags not given
        values = recipe_flags(recipe(preset_name, config["recipe"]))
        config.update({key: value for key, value in values.items() if key not in explicit})
    config["runs_dir"] = os.path.expanduser(config["runs_dir"])  # also when quoted: never a folder named ~
    config.update(preset=preset_name, regression_loss=recipe(preset_name).regression_loss,
                  memory_normalized=settings.preset(preset_name).memory_normalized)
    for key in ("grad_clip", "eval_every", "patience", "max_validations"):
        if not config[key]:
            config[key] = None
    checks = [
        (config["epoch"] is None and config["patience"] is None and config["max_validations"] is None, "--epoch",
         "a number of epochs when --patience and --max_vals are 0", "none"),
        (config["max_validations"] is not None and config["max_validations"] < 0, "--max_vals", "0 or more",
         config["max_validations"]),
        (config["patience"] is not None and config["patience"] < 0, "--patience", "0 or more", config["patience"]),
        (config["epoch"] is not None and config["epoch"] < 1, "--epoch", "at least 1", config["epoch"]),
        (config["batch_size"] < 2, "--batch_size", "at least 2", config["batch_size"]),
        (config["lr"] <= 0, "--lr", "a positive number", config["lr"]),
        (config["warmup"] < 0, "--warmup", "0 or more", config["warmup"]),
        (config["envelope"] == "soft" and not config["envelope_temperature"], "--envelope_temperature",
         "a positive number with --envelope soft", config["envelope_temperature"]),
        (config["resume"] is not None and config["evaluate"] is not None, "--resume/--evaluate", "only one of them", "both"),
        (config["trust_checkpoint"] and config["evaluate"] is None, "--trust_checkpoint", "only with --evaluate",
         "no --evaluate"),
        (Path(config["runs_dir"]).exists() and not Path(config["runs_dir"]).is_dir(), "--runs_dir", "a folder",
         f"the file {config['runs_dir']}"),
        (config["srl"] and config["epoch"] is not None and config["warmup"] >= config["epoch"] and config["resume"] is None
         and config["evaluate"] is None, "--warmup", f"fewer epochs than --epoch {config['epoch']} (the SRL terms "
         "would never be on; --vanilla trains without them)", config["warmup"]),
    ] + method_flag_errors(config)
    if not config["srl"]:
        contradictions = sorted(flag for flag in SRL_ONLY_FLAGS if flag in explicit)
        checks.append((bool(contradictions), "--vanilla", "no SRL flag with it (the baseline has no SRL terms, memory "
                       "or kernels)", ", ".join(f"--{flag}" for flag in contradictions)))
    problem = device_problem(config["device"])
    if problem is not None:
        checks.append((True, "--device", *problem))
    for failed, flag, expected, actual in checks:
        if failed:
            parser.error(f"{flag}: expected {expected}, got {actual}")
    if config["resume"] is None and config["evaluate"] is None:
        check_backend(config)
    return config, explicit


def device_problem(name: str) -> tuple[str, str] | None:
    """(expected, actual) when torch device `name` does not exist on this machine, else None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return "a torch device such as cpu, cuda or cuda:1", repr(name)
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "is_available") or not module.is_available():
        return "a device of this machine", f"{name!r}, but torch finds no {device.type} device here"
    count = module.device_count() if hasattr(module, "device_count") else 1
    if device.index is not None and device.index >= count:
        return f"a device index below {count} (the {device.type} devices of this machine)", repr(name)
    return None


def check_backend(config: dict) -> None:
    """The SRL kernels of `config` (--backend) can run on its --device, or a UserError says why."""
    if not config["srl"]:
        return
    device = torch.device(config["device"])
    name = backends.auto_name(device) if config["backend"] == "auto" else config["backend"]
    reason = backends.unavailable_reason(name, device)
    if reason is not None:
        raise UserError(f"--backend: expected kernels that run on --device {config['device']}, got "
                        f"{config['backend']!r}: {reason}")
