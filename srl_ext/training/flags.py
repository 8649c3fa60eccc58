"""The drivers' flag types and the flags of the methods that compose with SRL.

``ranged`` makes an argparse ``type`` that refuses a value out of range when the command line is
parsed; ``OneLineParser`` turns a parse error into one line; ``add_method_flags`` /
``method_flag_errors`` are the LDS, FDS, RankSim, Balanced MSE and ConR flags (docs/methods.md)
with the released repositories' names and their parse-time checks.
"""

from __future__ import annotations

import argparse
import importlib.util
import math

from ..methods import LDS_RELEASED
from .config import BMSE_MODES, KERNELS, RANKSIM_FEATURES, REWEIGHTS, released_methods

# The float flags of the methods: finite (an infinite weight only diverges at the first step).
FINITE_METHOD_FLAGS = {"lds_sigma": "--lds_sigma", "fds_sigma": "--fds_sigma", "fds_mmt": "--fds_mmt",
                       "regularization_weight": "--regularization_weight",
                       "interpolation_lambda": "--interpolation_lambda", "init_noise_sigma": "--init_noise_sigma",
                       "sigma_lr": "--sigma_lr", "conr_w": "-w", "conr_beta": "--beta", "conr_e": "-e"}


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


def add_method_flags(parser: argparse.ArgumentParser, benchmark) -> None:
    """The flags of the methods that compose with SRL (docs/methods.md), with the released
    repositories' names; the defaults are the benchmark's released settings (``released_methods``),
    each method off until its switch is given. Any subset combines, with SRL or with --vanilla.
    ``benchmark``: its ``benchmarks.Benchmark`` record."""
    m = released_methods(benchmark.name)
    text = benchmark.family == "sts_b"
    _add_lds_flags(parser, m, benchmark.released_reweight)
    _add_fds_flags(parser, m, text)
    rank = parser.add_argument_group("RankSim: ranking similarity (docs/methods.md, RankSim)")
    rank.add_argument("--regularization_weight", type=float, default=m.regularization_weight,
                      help="gamma, the weight of the RankSim term; 0 = off (released command on this benchmark: "
                           f"{benchmark.ranksim_released_weight:g})")
    rank.add_argument("--interpolation_lambda", type=float, default=m.interpolation_lambda,
                      help="lambda of the ranking's blackbox gradient (released commands: 2; released argparse: 1)")
    rank.add_argument("--ranksim_features", choices=RANKSIM_FEATURES, default=m.ranksim_features,
                      help="the feature ranked: h = the regressor's input before FDS (RankSim code); projector = the "
                           "SRL projection head's output (SRL code)")
    _add_bmse_flags(parser, m, text)
    if benchmark.conr:  # ConR needs two augmented views of each sample
        conr = parser.add_argument_group("ConR: contrastive regularisation on two augmented views (docs/methods.md, ConR)")
        conr.add_argument("--conr", action="store_true",
                          help="add beta * ConR on two extra augmented views of every training sample (a second "
                               "forward per step on 2B images)")
        conr.add_argument("-w", "--conr_w", type=float, default=m.conr_w, help="ConR's label and prediction window")
        conr.add_argument("--beta", "--conr_beta", dest="conr_beta", type=float, default=m.conr_beta,
                          help="weight of the ConR term")
        conr.add_argument("-e", "--conr_e", type=float, default=m.conr_e,
                          help="ConR's push strength growth with the label distance")


def _add_lds_flags(parser: argparse.ArgumentParser, m, released_reweight: str) -> None:
    lds = parser.add_argument_group("LDS: label distribution smoothing (docs/methods.md, LDS)")
    lds.add_argument("--reweight", choices=REWEIGHTS, default=m.reweight,
                     help="weight each sample's regression loss by its label bin's inverse count: sqrt_inv, inverse; "
                          f"none = off (released command on this benchmark: {released_reweight} --lds)")
    lds.add_argument("--lds", action="store_true", help="smooth the counts with the LDS window before inverting")
    lds.add_argument("--lds_kernel", choices=KERNELS, default=m.lds_kernel, help="LDS window")
    lds.add_argument("--lds_ks", type=int, default=m.lds_ks, help="LDS window size (odd)")
    lds.add_argument("--lds_sigma", type=float, default=m.lds_sigma, help="LDS window width (gaussian, laplace)")


def _add_fds_flags(parser: argparse.ArgumentParser, m, text: bool) -> None:
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
                     help="FDS buckets" + (" (equal bins of the scores on [0, 5])" if text else
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


def _add_bmse_flags(parser: argparse.ArgumentParser, m, text: bool) -> None:
    bmse = parser.add_argument_group("Balanced MSE (docs/methods.md, Balanced MSE)")
    bmse.add_argument("--bmse", action="store_true", help="Balanced MSE replaces the regression loss")
    bmse.add_argument("--imp", choices=BMSE_MODES if not text else ("bmc", "gai"), default=m.imp,
                      help="bmc = batch Monte Carlo (no table); gai = a Gaussian mixture of the training targets "
                           "(needs scikit-learn)" + ("" if text else "; bni = the integer-label histogram"))
    bmse.add_argument("--init_noise_sigma", type=float, default=m.init_noise_sigma,
                      help="initial noise scale sigma, in the units of the regression targets ("
                           + ("1 / 5 of the released argparse default 1, since STS-B regresses score / 5: an assumption, "
                              "there is no released STS-B recipe)" if text else
                              "released argparse default; the released IMDB-WIKI second-stage commands use 10)"))
    bmse.add_argument("--sigma_lr", type=float, default=m.sigma_lr,
                      help="Adam learning rate of sigma, its own optimiser group outside the lr schedule")
    bmse.add_argument("--fix_noise_sigma", action="store_true", help="keep sigma fixed at --init_noise_sigma")


def method_flag_errors(config: dict) -> list[tuple[bool, str, str, object]]:
    """The parse-time checks of the method flags: (failed, flag, expected, actual)."""
    c = config
    rows = c["bucket_num"] - c["bucket_start"]
    sklearn_missing = False
    if c["bmse"] and c["imp"] == "gai":
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


