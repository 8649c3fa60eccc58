"""The command line shared by the drivers in ``train/``: one parser builder, one ``run``.

A driver names its preset (the released settings, docs/method.md "Presets"), adds its own flags, and gives a ``build``
function ``config -> (Task, model, datasets)``; ``run`` does the rest: a new run folder, training,
model selection and the test, or ``--resume`` / ``--evaluate`` of a checkpoint.

Launched with ``torchrun`` (WORLD_SIZE > 1), ``run`` joins the process group first and the engine
trains data-parallel (docs/distributed.md); rank 0 alone makes the run folder and writes in it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import backends, settings
from ..settings import ENVELOPES
from ..memory import MODES as MEMORY_MODES
from ..methods import LDS_RELEASED
from . import ddp, demo, released_checkpoints, reporting
from .checkpoint import (BEST, LAST, PREVIOUS, RunFolderLock, data_fingerprint, fingerprint_changes, load_checkpoint,
                         make_run_dir, seed_everything, set_aside)
from .config import (BMSE_MODES, EARLY_STOP_RULES, KERNELS, RANKSIM_FEATURES, RANKSIM_RELEASED_WEIGHT, REWEIGHTS,
                     TRAINER_RECIPES, method_settings, recipe, recipe_flags, released_methods)
from .engine import Engine
from .errors import CheckpointError, UserError

# Flags that set the SRL terms, their memory or their kernels: contradictions of --vanilla.
SRL_ONLY_FLAGS = ("warmup", "w1", "w2", "w3", "temp", "num_anchors", "anchor_seed", "homogeneity_sign",
                  "homogeneity_beta", "envelope", "envelope_temperature", "label_weighting", "backend",
                  "memory_update", "memory_momentum", "released_table")
# The float flags of the methods: finite (an infinite weight only diverges at the first step).
FINITE_METHOD_FLAGS = {"lds_sigma": "--lds_sigma", "fds_sigma": "--fds_sigma", "fds_mmt": "--fds_mmt",
                       "regularization_weight": "--regularization_weight",
                       "interpolation_lambda": "--interpolation_lambda", "init_noise_sigma": "--init_noise_sigma",
                       "sigma_lr": "--sigma_lr", "conr_w": "-w", "conr_beta": "--beta", "conr_e": "-e"}

# Flags that a --resume or --evaluate may change: where the data is and how to run, not what is trained.
# --epoch may be raised on --resume to train on.
ENVIRONMENT_FLAGS = ("data_dir", "workers", "threads", "device", "progress", "debug")
RESUME_FLAGS = ENVIRONMENT_FLAGS + ("epoch",)
# Settings whose absence from a saved config means the behaviour of the runs saved before they existed
# (config.method_settings: EARLIER_FDS_CLIP; train/sts_b.py: EARLIER_RECIPE): never filled in on resume.
EARLIER_WHEN_ABSENT = ("fds_clip", "regressor", "lstm_dropout", "oov", "released_table")
# Flags that act on this command only and are never taken from or compared with a saved config.
COMMAND_FLAGS = ("resume", "evaluate", "trust_checkpoint", "data_changed", "debug", "demo")
DRIVERS = {"agedb": "train/agedb.py", "imdb_wiki": "train/imdb_wiki.py", "sts_b": "train/sts_b.py"}
BENCHMARK_TITLES = {"agedb": "AgeDB-DIR", "imdb_wiki": "IMDB-WIKI-DIR", "sts_b": "STS-B-DIR"}
DEBUG_VARIABLE = "SRL_EXT_DEBUG"


def ranged(kind: type, low: float | None = None, high: float | None = None, *, above: bool = False,
           below: bool = False):
    """An argparse ``type`` that parses ``kind`` (int or float, finite) in [low, high] (``above``:
    strictly above low; ``below``: strictly below high), so that a flag out of range is refused
    when the command line is parsed: ``error: argument --temp: expected a number > 0, got '0'``."""
    bounds = []
    # an integer's bound in full (4294967295, not 4.29497e+09): the user must be able to type it
    shown = (lambda bound: str(int(bound))) if kind is int else (lambda bound: f"{bound:g}")
    if low is not None:
        bounds.append(f"{'>' if above else '>='} {shown(low)}")
    if high is not None:
        bounds.append(f"{'<' if below else '<='} {shown(high)}")
    expected = ("an integer" if kind is int else "a number") + (" " + " and ".join(bounds) if bounds else "")

    def parse_value(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)) or (
            high is not None and (value >= high if below else value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse_value.__name__ = kind.__name__
    return parse_value


NON_NEGATIVE_INT = ranged(int, 0)
SEED = ranged(int, 0, 2**32 - 1)  # numpy's seeds are 32-bit
POSITIVE = ranged(float, 0, above=True)
NON_NEGATIVE = ranged(float, 0)
FINITE = ranged(float)
FRACTION = ranged(float, 0, 1, below=True)  # [0, 1)


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


class OneLineParser(argparse.ArgumentParser):
    """A parse error is one line, ``error: ...``, and exit status 2, as every other user error;
    --help shows the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows each flag's default, except for switches and
    flags without one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def build_parser(preset_name: str, description: str, default_data_dir: str) -> argparse.ArgumentParser:
    """The common flags with the preset's defaults; the driver adds its own to the returned parser."""
    p = recipe(preset_name)
    loss = settings.preset(preset_name).srl
    parser = OneLineParser(description=description, formatter_class=HelpFormatter)

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
    if preset_name in TRAINER_RECIPES:
        trainers = TRAINER_RECIPES[preset_name]
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
    add_method_flags(parser, preset_name)
    return parser


# ConR needs two augmented views of each sample: the image benchmarks only.
CONR_PRESETS = ("agedb", "imdb_wiki")


def add_method_flags(parser: argparse.ArgumentParser, preset_name: str) -> None:
    """The flags of the methods that compose with SRL (docs/methods.md), with the released
    repositories' names; the defaults are the benchmark's released settings (``released_methods``),
    each method off until its switch is given. Any subset combines, with SRL or with --vanilla."""
    m = released_methods(preset_name)
    gamma = RANKSIM_RELEASED_WEIGHT[preset_name]
    lds = parser.add_argument_group("LDS: label distribution smoothing (docs/methods.md, LDS)")
    lds.add_argument("--reweight", choices=REWEIGHTS, default=m.reweight,
                     help="weight each sample's regression loss by its label bin's inverse count: sqrt_inv, inverse; "
                          "none = off (released command on this benchmark: "
                          f"{'inverse' if preset_name == 'sts_b' else 'sqrt_inv'} --lds)")
    lds.add_argument("--lds", action="store_true", help="smooth the counts with the LDS window before inverting")
    lds.add_argument("--lds_kernel", choices=KERNELS, default=m.lds_kernel, help="LDS window")
    lds.add_argument("--lds_ks", type=int, default=m.lds_ks, help="LDS window size (odd)")
    lds.add_argument("--lds_sigma", type=float, default=m.lds_sigma, help="LDS window width (gaussian, laplace)")
    fds = parser.add_argument_group("FDS: feature distribution smoothing (docs/methods.md, FDS)")
    fds.add_argument("--fds", action="store_true",
                     help="calibrate the regressor's input feature by bucket statistics smoothed across neighbouring "
                          "buckets (statistics from the end-of-epoch pass that also refills the SRL memory)")
    fds.add_argument("--fds_kernel", choices=KERNELS, default=m.fds_kernel, help="FDS window")
    fds.add_argument("--fds_ks", type=int, default=m.fds_ks, help="FDS window size (odd)")
    fds.add_argument("--fds_sigma", type=float, default=m.fds_sigma, help="FDS window width (gaussian, laplace)")
    fds.add_argument("--start_update", type=int, default=m.start_update, help="first epoch whose statistics are kept")
    fds.add_argument("--start_smooth", type=int, default=m.start_smooth, help="first epoch that is calibrated")
    fds.add_argument("--bucket_num", type=int, default=m.bucket_num,
                     help="FDS buckets" + (" (equal bins of the scores on [0, 5])" if preset_name == "sts_b" else
                                           " (label int(y); labels past the last pool into it)"))
    fds.add_argument("--bucket_start", type=int, default=m.bucket_start, help="first FDS bucket (lower labels pool into it)")
    fds.add_argument("--fds_mmt", type=float, default=m.fds_mmt, help="momentum of FDS's running statistics")
    fds.add_argument("--fds_clip", type=POSITIVE, nargs=2, metavar=("LOW", "HIGH"), default=list(m.fds_clip),
                     help="bounds of the variance ratio in the calibration (the released code's on this benchmark)")
    fds.add_argument("--fds_alias_last_epoch", action="store_true",
                     help="released quirk (a), on in the released code: the calibration's source statistics are the "
                          "running ones, the latest pass included, while its smoothed target lags one pass behind")
    fds.add_argument("--fds_inplace", action="store_true",
                     help="released quirk (b), on in the released code: the calibration overwrites h, so the "
                          "statistics pass, RankSim and the projector read the calibrated h")
    rank = parser.add_argument_group("RankSim: ranking similarity (docs/methods.md, RankSim)")
    rank.add_argument("--regularization_weight", type=float, default=m.regularization_weight,
                      help=f"gamma, the weight of the RankSim term; 0 = off (released command on this benchmark: {gamma:g})")
    rank.add_argument("--interpolation_lambda", type=float, default=m.interpolation_lambda,
                      help="lambda of the ranking's blackbox gradient (released commands: 2; released argparse: 1)")
    rank.add_argument("--ranksim_features", choices=RANKSIM_FEATURES, default=m.ranksim_features,
                      help="the feature ranked: h = the regressor's input before FDS (RankSim code); projector = the "
                           "SRL projection head's output (SRL code)")
    bmse = parser.add_argument_group("Balanced MSE (docs/methods.md, Balanced MSE)")
    bmse.add_argument("--bmse", action="store_true", help="Balanced MSE replaces the regression loss")
    bmse.add_argument("--imp", choices=BMSE_MODES if preset_name != "sts_b" else ("bmc", "gai"), default=m.imp,
                      help="bmc = batch Monte Carlo (no table); gai = a Gaussian mixture of the training targets "
                           "(needs scikit-learn)" + ("" if preset_name == "sts_b" else "; bni = the integer-label histogram"))
    bmse.add_argument("--init_noise_sigma", type=float, default=m.init_noise_sigma,
                      help="initial noise scale sigma, in the units of the regression targets ("
                           + ("1 / 5 of the released argparse default 1, since STS-B regresses score / 5: an assumption, "
                              "there is no released STS-B recipe)" if preset_name == "sts_b" else
                              "released argparse default; the released IMDB-WIKI second-stage commands use 10)"))
    bmse.add_argument("--sigma_lr", type=float, default=m.sigma_lr,
                      help="Adam learning rate of sigma, its own optimiser group outside the lr schedule")
    bmse.add_argument("--fix_noise_sigma", action="store_true", help="keep sigma fixed at --init_noise_sigma")
    if preset_name in CONR_PRESETS:
        conr = parser.add_argument_group("ConR: contrastive regularisation on two augmented views (docs/methods.md, ConR)")
        conr.add_argument("--conr", action="store_true",
                          help="add beta * ConR on two extra augmented views of every training sample (a second "
                               "forward per step on 2B images)")
        conr.add_argument("-w", "--conr_w", type=float, default=m.conr_w, help="ConR's label and prediction window")
        conr.add_argument("--beta", "--conr_beta", dest="conr_beta", type=float, default=m.conr_beta,
                          help="weight of the ConR term")
        conr.add_argument("-e", "--conr_e", type=float, default=m.conr_e,
                          help="ConR's push strength growth with the label distance")


def method_flag_errors(config: dict) -> list[tuple[bool, str, str, object]]:
    """The parse-time checks of the method flags: (failed, flag, expected, actual)."""
    c = config
    rows = c["bucket_num"] - c["bucket_start"]
    sklearn_missing = False
    if c["bmse"] and c["imp"] == "gai":
        import importlib.util

        sklearn_missing = importlib.util.find_spec("sklearn") is None
    lds_bins = LDS_RELEASED[c["preset"]]["num_bins"]
    return [
        (c["lds"] and c["reweight"] == "none", "--lds", "--reweight sqrt_inv or inverse with it", "--reweight none"),
        (c["lds_ks"] < 1 or c["lds_ks"] % 2 == 0, "--lds_ks", "an odd number >= 1", c["lds_ks"]),
        (not c["lds_sigma"] > 0, "--lds_sigma", "a positive number", c["lds_sigma"]),
        (c["fds_ks"] < 1 or c["fds_ks"] % 2 == 0, "--fds_ks", "an odd number >= 1", c["fds_ks"]),
        (not c["fds_sigma"] > 0, "--fds_sigma", "a positive number", c["fds_sigma"]),
        (c["start_update"] < 0, "--start_update", "0 or more", c["start_update"]),
        (c["start_smooth"] < 0, "--start_smooth", "0 or more", c["start_smooth"]),
        (c["bucket_start"] < 0, "--bucket_start", "0 or more", c["bucket_start"]),
        (rows < 2 or rows <= c["fds_ks"] // 2, "--bucket_num",
         f"at least --bucket_start + max(2, --fds_ks // 2 + 1) = {c['bucket_start'] + max(2, c['fds_ks'] // 2 + 1)}",
         c["bucket_num"]),
        (not 0 <= c["fds_mmt"] < 1, "--fds_mmt", "a number in [0, 1)", c["fds_mmt"]),
        (c["fds_clip"][0] > c["fds_clip"][1], "--fds_clip", "LOW <= HIGH", " ".join(f"{v:g}" for v in c["fds_clip"])),
        (not c["regularization_weight"] >= 0, "--regularization_weight", "0 or more", c["regularization_weight"]),
        (not c["interpolation_lambda"] > 0, "--interpolation_lambda", "a positive number", c["interpolation_lambda"]),
        (c["bmse"] and c["reweight"] != "none", "--reweight", "none with --bmse (Balanced MSE replaces the weighted "
         "regression loss)", c["reweight"]),
        (c["init_noise_sigma"] == 0 or c["init_noise_sigma"] != c["init_noise_sigma"], "--init_noise_sigma",
         "a number other than 0", c["init_noise_sigma"]),
        (not c["sigma_lr"] > 0, "--sigma_lr", "a positive number", c["sigma_lr"]),
        (sklearn_missing, "--imp", "bmc or bni: gai fits its Gaussian mixture with scikit-learn, which is not "
         "installed (pip install scikit-learn)", "gai"),
        (not c.get("conr_w", 1.0) > 0, "-w", "a positive number", c.get("conr_w")),
        (not c.get("conr_beta", 0.0) >= 0, "--beta", "0 or more", c.get("conr_beta")),
        (not c.get("conr_e", 0.0) >= 0, "-e", "0 or more", c.get("conr_e")),
        (c["retrain_regressor"] and c["init_from"] is None, "--retrain_regressor",
         "--init_from RUN with it (a trained encoder to freeze)", "no --init_from"),
        (c["retrain_regressor"] and (c["srl"] or c["regularization_weight"] > 0 or c.get("conr", False)),
         "--retrain_regressor", "--vanilla and no RankSim or ConR with it (those terms act on the frozen encoder's "
         "features only)", "SRL" if c["srl"] else "RankSim" if c["regularization_weight"] > 0 else "ConR"),
        # a window wider than twice the bins has taps that never meet a bin, and costs its width in time
        (c["lds_ks"] > 2 * lds_bins - 1, "--lds_ks", f"at most 2 x {lds_bins} LDS bins - 1 = {2 * lds_bins - 1}",
         c["lds_ks"]),
        (c["fds_ks"] > 2 * max(rows, 1) - 1, "--fds_ks",
         f"at most 2 x (--bucket_num - --bucket_start) - 1 = {2 * max(rows, 1) - 1}", c["fds_ks"]),
    ] + [(not math.isfinite(c[key]), flag, "a finite number", c[key]) for key, flag in FINITE_METHOD_FLAGS.items()
         if key in c]


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


def check_run_size(config: dict, task, model, datasets: dict) -> None:
    """Before a run folder is made: an epoch has at least one training step, and the tables the
    flags size (the anchors, FDS's statistics) fit in the device's memory."""
    from .engine import feature_dim, train_steps

    per_rank = math.ceil(len(datasets["train"]) / ddp.world_size())
    if train_steps(per_rank, config["batch_size"]) == 0:
        raise UserError(
            f"--batch_size: expected a train split with at least one training step, got {len(datasets['train'])} "
            f"training sample(s) for --batch_size {config['batch_size']}" + (
                f" on {ddp.world_size()} processes" if ddp.world_size() > 1 else "")
            + " (a last batch of one sample is dropped: BatchNorm cannot train on it); nothing would be trained")
    device = torch.device(config["device"])
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        available = torch.cuda.get_device_properties(index).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needs = []
    if config["srl"]:  # float32 anchors, N x D, and the envelope's K x N cosines
        needs.append(("--num_anchors", config["num_anchors"], 4 * config["num_anchors"] * (feature_dim(model) + task.num_bins),
                      "the anchors and the K x N cosines of the enveloping term"))
    if config["fds"]:  # six float32 tables of buckets x h's width (fds.FDS's statistics)
        buckets = config["bucket_num"] - config["bucket_start"]
        needs.append(("--bucket_num", config["bucket_num"], 4 * 6 * buckets * getattr(model, "feature_width", 1),
                      "FDS's statistics"))
    for flag, value, size, what in needs:
        if size > available:
            raise UserError(f"{flag}: expected a size whose tables fit in the {available / 2**30:.0f} GiB of {device}, "
                            f"got {value}: {what} need {size / 2**30:.0f} GiB")


Build = Callable[[dict], tuple]  # config -> (Task, model, {"train", "val", "test"} datasets)


def run(config: dict, explicit: set[str], build: Build) -> dict:
    """Train, select and test a new run, or resume or evaluate a checkpoint; returns the test table.

    Under torchrun it joins the process group (``ddp.init_from_env``) and leaves it at the end."""
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    joined = ddp.launched_by_torchrun() and not torch.distributed.is_initialized()
    ddp.init_from_env(config["device"])
    try:
        table = _run(config, explicit, build)
        # Rank 0 still writes files when the others are done: tearing gloo down on one rank while
        # another is busy can abort the process at exit, so every rank waits for all first.
        ddp.barrier()
        return table
    finally:
        if joined:
            ddp.leave()


def _run(config: dict, explicit: set[str], build: Build) -> dict:
    main_process = ddp.is_main_process()
    reporting.warn_missing_optional_packages()
    if config["evaluate"] is not None:
        return _evaluate(config, explicit, build)
    if config.get("data_changed") and config["resume"] is None:
        raise UserError("--data_changed: expected only with --resume, got no --resume")
    if main_process:
        reporting.note_missing_tensorboard()

    lock = None
    try:
        if config["resume"] is not None:
            checkpoint, path = load_checkpoint(config["resume"], LAST)
            _check_benchmark(checkpoint, path, config["preset"], "resume")
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
            if main_process:
                lock = RunFolderLock(path.parent).acquire()
            saved = _merge(checkpoint["config"], config, explicit, RESUME_FLAGS)
            check_backend(saved)  # the run's kernels, on this command's --device
            task, model, datasets = build(saved)
            fingerprint = _fingerprint(task, datasets)
            changes = fingerprint_changes(checkpoint["data_fingerprint"], fingerprint) if checkpoint.get("data_fingerprint") else []
            if changes and not config.get("data_changed"):
                raise CheckpointError(
                    f"--resume {path}: the data changed since the run started ({'; '.join(changes)}); resume with "
                    f"--data_changed if the change is intended"
                )
            if path.name == PREVIOUS and (path.parent / LAST).is_file() and main_process:
                aside = set_aside(path.parent / LAST)  # the damaged last.pt, kept under another name
                print(f"note: resuming from {path}; the damaged {LAST} is kept as {aside}", flush=True)
            engine = Engine(saved, task, model, datasets, path.parent)
            _load(lambda: engine.load_state_dict(checkpoint), "--resume", path)
            engine.data_fingerprint = fingerprint
            if main_process:
                print(f"resumed {path} after epoch {engine.epoch} step {engine.global_step}", flush=True)
        else:
            seed_everything(config["seed"])
            # The data first: a run that cannot start leaves no folder behind.
            task, model, datasets = build(config)
            fingerprint = _fingerprint(task, datasets)
            if config.get("init_from") is not None:  # recorded: whether the encoder was trained with SRL
                config["init_from_srl"] = bool(init_from_run(model, config["init_from"], config["preset"], fingerprint)["srl"])
            check_run_size(config, task, model, datasets)
            run_dir = None
            if main_process:  # one folder for the run: rank 0 makes it, the other ranks are told its path
                kind = "+".join(["srl" if config["srl"] else "vanilla"] + method_settings(config).names())
                name = config["run_name"] or f"{config['preset']}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
                run_dir = make_run_dir(config["runs_dir"], name)
                lock = RunFolderLock(run_dir).acquire()
                (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
                print(f"run folder {run_dir}", flush=True)
            run_dir = Path(ddp.broadcast_object(None if run_dir is None else str(run_dir)))
            try:
                engine = None
                engine = Engine(config, task, model, datasets, run_dir)
                engine.data_fingerprint = fingerprint
                engine.fit()
            except BaseException:
                # a run that never trained a step leaves no folder behind
                if main_process and (engine is None or engine.global_step == 0) and not (run_dir / LAST).exists():
                    lock.release()
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            return engine.test()
        engine.fit()
        return engine.test()
    finally:
        if lock is not None:
            lock.release()


def _refuse_a_sound_last(previous: Path) -> None:
    """--resume RUN/last.prev.pt is for a damaged last.pt: a sound one is newer, and is kept."""
    try:
        epoch = load_checkpoint(previous.parent / LAST, LAST)[0].get("epoch")
    except CheckpointError:
        return  # damaged: resuming from the previous one is what it is kept for
    raise CheckpointError(
        f"--resume {previous}: expected a damaged {LAST} beside it, got a sound one (epoch {epoch}, newer): resume "
        f"with --resume {previous.parent}; {PREVIOUS} is only for a {LAST} that cannot be read")


def _load(load: Callable[[], None], action: str, path: Path) -> None:
    """A checkpoint whose weights do not fit the model its config builds is a CheckpointError."""
    try:
        load()
    except (RuntimeError, KeyError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        first = " ".join(str(error).strip().splitlines()[0].split()) if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{action} {path}: expected weights that fit the model of its config, got: {first}") from None


def _evaluate(config: dict, explicit: set[str], build: Build) -> dict:
    """--evaluate: the test table of a checkpoint of this project, or of a released one."""
    # Read without running pickled code; a file that is no checkpoint of this project is
    # taken for a released SRL checkpoint (released_checkpoints.evaluate_released).
    source = Path(config["evaluate"])
    source = source / BEST if source.is_dir() else source
    if source.is_file():
        loaded = released_checkpoints.read_checkpoint(source, config.get("trust_checkpoint", False))
        if not released_checkpoints.is_srl_ext_checkpoint(loaded):
            return released_checkpoints.evaluate_released(config, explicit, build, source, loaded)
    checkpoint, path = load_checkpoint(config["evaluate"], BEST)
    _check_benchmark(checkpoint, path, config["preset"], "evaluate")
    saved = _merge(checkpoint["config"], config, explicit, ENVIRONMENT_FLAGS)
    task, model, datasets = build(saved)
    # the run's folder is written to: not while a live run holds it
    lock = RunFolderLock(path.parent).acquire() if ddp.is_main_process() else None
    try:
        return _evaluate_into(saved, checkpoint, path, task, model, datasets)
    finally:
        if lock is not None:
            lock.release()


def _evaluate_into(saved: dict, checkpoint: dict, path: Path, task, model, datasets) -> dict:
    fingerprint = _fingerprint(task, datasets)
    engine = Engine(saved, task, model, datasets, path.parent)
    _load(lambda: engine.model.load_state_dict(checkpoint["model"]), "--evaluate", path)
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


def _check_benchmark(checkpoint: dict, path: Path, preset: str, action: str) -> None:
    """A checkpoint of another benchmark is refused, naming the driver that takes it."""
    theirs = checkpoint.get("config", {}).get("preset")
    if theirs is not None and theirs != preset:
        raise CheckpointError(
            f"--{action} {path}: expected a {BENCHMARK_TITLES[preset]} checkpoint, got a "
            f"{BENCHMARK_TITLES.get(theirs, theirs)} run ({theirs}): use python {DRIVERS.get(theirs, 'train/' + theirs + '.py')} "
            f"--{action} {path.parent if path.name in (LAST, BEST) else path}"
        )


def init_from_run(model: torch.nn.Module, source: str, preset: str, fingerprint: dict) -> dict:
    """--init_from: every weight of the model selected in run ``source`` (its best.pt) but the
    regressor's (and FDS's statistics), as the released second stage loads them; returns that
    run's config. A run of another benchmark or other data, or a network of other shapes, is refused."""
    checkpoint, path = load_checkpoint(source, BEST)
    _check_benchmark(checkpoint, path, preset, "init_from")
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


def _fingerprint(task, datasets) -> dict:
    return data_fingerprint(task.data_files, {split: len(dataset) for split, dataset in datasets.items()})


def _merge(saved: dict, given: dict, explicit: set[str], changeable: Sequence[str]) -> dict:
    """The checkpoint's config, with the changeable flags given on this command line."""
    merged = dict(saved)
    merged.setdefault("early_stop", "no_improvement")  # the only rule of runs saved before --early_stop
    # Settings added since the checkpoint was saved: this version's defaults (or this command's values),
    # except those whose absence the code reads as the behaviour before they existed.
    missing = sorted(key for key in given if key not in merged and key not in COMMAND_FLAGS + EARLIER_WHEN_ABSENT)
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


def data_dir_path(config: dict) -> Path:
    return Path(config["data_dir"]).expanduser()


def image_main(benchmark, argv: Sequence[str] | None = None) -> dict:
    """The whole driver of an image benchmark (``srl_ext.training.data.images.AGEDB`` or ``IMDB_WIKI``)."""
    from .data import images
    from .models import IMAGE_BACKBONES, ImageRegressor

    parser = build_parser(benchmark.preset, benchmark.description(), benchmark.default_data_dir)
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", "--model", choices=IMAGE_BACKBONES, default="resnet50",
                       help="trained from scratch: resnet50 (the benchmark's), resnet18, or tiny (a small conv net for "
                            "quick runs and tests)")
    model.add_argument("--img_size", type=ranged(int, 16, 1024), default=images.IMAGE_SIZE, help="images are resized to this square size")

    config, explicit = parse(parser, benchmark.preset, argv)
    if config["demo"]:
        demo.prepare(config, explicit, demo.IMAGE_SETTINGS, lambda root: demo.write_images(benchmark, root))
    return run(config, explicit, image_builder(benchmark))


def image_builder(benchmark) -> Build:
    """The ``build(config) -> (task, model, datasets)`` of an image benchmark's runs."""
    from .data import images
    from .models import ImageRegressor

    def build(config: dict):
        task, datasets = images.load_benchmark(benchmark, data_dir_path(config), config["img_size"],
                                               train_views=2 if config.get("conr") else 0,
                                               progress=config.get("progress", False) and ddp.is_main_process())
        return task, ImageRegressor(config["backbone"]), datasets

    return build
