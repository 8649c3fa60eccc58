"""What a training run is told: the released training recipes, ``TrainConfig`` and ``Task``.

The loss settings of a run are an ``srl_ext.settings.SRLSettings`` (``srl_settings``): the
drivers' SRL flags carry the field names, except ``--temp`` (tau, the field ``temperature``).
The settings of the methods that compose with SRL (LDS, FDS, RankSim, Balanced MSE, ConR;
docs/methods.md) are one ``MethodSettings`` (``method_settings``), whose fields are the drivers'
flag destinations; ``released_methods(preset)`` gives each benchmark's released defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..methods import FDS_RELEASED, LDS_RELEASED
from ..settings import FIELDS as SRL_FIELDS
from ..settings import SRLSettings

EARLY_STOP_RULES = ("released", "no_improvement")
REGRESSION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"l1": F.l1_loss, "mse": F.mse_loss}
# The config key of each SRL setting whose flag is not named after it.
SRL_FLAG_NAMES = {"temperature": "temp"}


@dataclass(frozen=True)
class Recipe:
    """The released code's training recipe for one benchmark (docs/training.md)."""

    regression_loss: str  # "l1", or "mse" (STS-B: on the score divided by 5)
    optimizer: str = "adam"
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int | None = None  # None: trained until early stopping
    lr_milestones: tuple[int, ...] = field(default_factory=tuple)  # epochs where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    grad_clip_norm: float | None = None
    eval_every_steps: int | None = None  # validation every so many steps instead of every epoch
    early_stop_patience: int | None = None  # in validations
    max_validations: int | None = None  # training stops after so many validations


RECIPES: dict[str, Recipe] = {
    "agedb": Recipe(regression_loss="l1", lr=2.5e-4, batch_size=64, epochs=120, lr_milestones=(60, 80)),
    "imdb_wiki": Recipe(regression_loss="l1", lr=1e-3, batch_size=256, epochs=90, lr_milestones=(60, 80)),
    "sts_b": Recipe(regression_loss="mse", lr=2.5e-4, weight_decay=1e-5, batch_size=16, epochs=None,
                    grad_clip_norm=5.0, eval_every_steps=400, early_stop_patience=30, max_validations=300),
}


# The recipes of other trainers of a benchmark, chosen with the drivers' --recipe (docs/training.md):
# "srl" is RECIPES' (the SRL code's); "dir" on STS-B-DIR is DIR's own trainer
# (YyzHarry/imbalanced-regression, sts-b-dir/train.py and trainer.py), with which the DIR paper
# ran LDS and FDS: batch 128, lr 1e-4, patience 10, at most 100 validations, the rest as the SRL code's.
TRAINER_RECIPES: dict[str, dict[str, Recipe]] = {
    "sts_b": {"srl": RECIPES["sts_b"],
              "dir": Recipe(regression_loss="mse", lr=1e-4, weight_decay=1e-5, batch_size=128, epochs=None,
                            grad_clip_norm=5.0, eval_every_steps=400, early_stop_patience=10, max_validations=100)},
}


def recipe(name: str, trainer: str = "srl") -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"preset must be one of {', '.join(map(repr, RECIPES))}, got {name!r}")
    if trainer == "srl":
        return RECIPES[name]
    choices = TRAINER_RECIPES.get(name, {"srl": RECIPES[name]})
    if trainer not in choices:
        raise ValueError(f"recipe of {name} must be one of {', '.join(map(repr, choices))}, got {trainer!r}")
    return choices[trainer]


def recipe_flags(r: Recipe) -> dict:
    """A recipe as the values of the drivers' flags (0 where a flag reads 0 as 'none')."""
    return {"lr": r.lr, "weight_decay": r.weight_decay, "batch_size": r.batch_size, "epoch": r.epochs,
            "lr_milestones": list(r.lr_milestones), "lr_gamma": r.lr_gamma, "grad_clip": r.grad_clip_norm or 0.0,
            "eval_every": r.eval_every_steps or 0, "patience": r.early_stop_patience or 0,
            "max_validations": r.max_validations or 0}


def srl_settings(config: dict) -> SRLSettings:
    """The SRL settings of a run's config (the drivers' flags), defaults for keys it lacks."""
    values = {}
    for name in SRL_FIELDS:
        key = SRL_FLAG_NAMES.get(name, name)
        if key in config:
            values[name] = config[key]
    return SRLSettings(**values)


REWEIGHTS = ("none", "sqrt_inv", "inverse")
KERNELS = ("gaussian", "triang", "laplace")
BMSE_MODES = ("bmc", "gai", "bni")
RANKSIM_FEATURES = ("h", "projector")


@dataclass(frozen=True)
class MethodSettings:
    """The methods that compose with SRL, as one run uses them (docs/methods.md). Each is off
    unless switched on: LDS by ``reweight`` != "none", FDS by ``fds``, RankSim by
    ``regularization_weight`` > 0, Balanced MSE by ``bmse``, ConR by ``conr``. The field names
    are the drivers' flag destinations (the released repositories' flag names; ConR's ``-w``,
    ``--beta``, ``-e`` are ``conr_w``, ``conr_beta``, ``conr_e``)."""

    # LDS: sample weights on the regression loss (lds_weights); bins and clip from LDS_RELEASED
    reweight: str = "none"
    lds: bool = False
    lds_kernel: str = "gaussian"
    lds_ks: int = 5
    lds_sigma: float = 2.0
    # FDS: calibration of h before the regressor; binning from FDS_RELEASED
    fds: bool = False
    fds_kernel: str = "gaussian"
    fds_ks: int = 5
    fds_sigma: float = 2.0
    start_update: int = 0
    start_smooth: int = 1
    bucket_num: int = 100
    bucket_start: int = 0
    fds_mmt: float = 0.9
    fds_clip: tuple[float, float] = (0.1, 10.0)  # bounds of the variance ratio (released: per benchmark)
    fds_alias_last_epoch: bool = False  # released quirk (a)
    fds_inplace: bool = False  # released quirk (b): the statistics pass records the calibrated h
    # RankSim: gamma (0: off), lambda, and which feature is ranked
    regularization_weight: float = 0.0
    interpolation_lambda: float = 2.0
    ranksim_features: str = "h"
    # Balanced MSE: replaces the regression loss; sigma has its own optimiser, no lr schedule
    bmse: bool = False
    imp: str = "bmc"
    init_noise_sigma: float = 1.0
    sigma_lr: float = 1e-2
    fix_noise_sigma: bool = False
    # ConR: a term on two extra augmented views (image benchmarks)
    conr: bool = False
    conr_w: float = 1.0
    conr_beta: float = 4.0
    conr_e: float = 0.01

    @property
    def any(self) -> bool:
        return self.reweight != "none" or self.fds or self.ranksim or self.bmse or self.conr

    @property
    def ranksim(self) -> bool:
        return self.regularization_weight > 0

    def names(self) -> list[str]:
        """The methods switched on, for run names and logs ("lds", "fds", "ranksim", "bmse", "conr")."""
        on = [("lds" if self.lds else "rw"), "fds", "ranksim", "bmse", "conr"]
        flags = [self.reweight != "none", self.fds, self.ranksim, self.bmse, self.conr]
        return [name for name, flag in zip(on, flags) if flag]


METHOD_FIELDS = tuple(f.name for f in fields(MethodSettings))


def released_methods(preset: str) -> MethodSettings:
    """Each method's released defaults for a benchmark (docs/methods.md), all methods off:
    LDS's and FDS's windows, buckets and variance clip (LDS_RELEASED, FDS_RELEASED), RankSim's lambda 2,
    ConR's w 1, beta 4, e 0.01, Balanced MSE's sigma 1 (its argparse default; on STS-B, whose
    targets are score / 5, 1 / 5: an assumption of this project, there is no released STS-B
    recipe) with lr 1e-2."""
    recipe(preset)  # the name check
    lds, fds = LDS_RELEASED[preset], FDS_RELEASED[preset]
    return MethodSettings(
        lds_kernel=lds["kernel"], lds_ks=lds["ks"], lds_sigma=lds["sigma"],
        fds_kernel=fds["kernel"], fds_ks=fds["ks"], fds_sigma=fds["sigma"], start_update=fds["start_update"],
        start_smooth=fds["start_smooth"], bucket_num=fds["num_buckets"], bucket_start=fds["bucket_start"],
        fds_mmt=fds["momentum"], fds_clip=fds["clip"], init_noise_sigma=0.2 if preset == "sts_b" else 1.0,
    )


def fds_arguments(m: MethodSettings, preset: str) -> dict:
    """``FDS``'s keyword arguments (after feature_dim) from the flags: the benchmark's binning
    (FDS_RELEASED), the flags' window, buckets, epochs, momentum, variance clip and released quirks
    (a) and (b)."""
    released = FDS_RELEASED[preset]
    arguments = {key: released[key] for key in ("binning", "value_range") if key in released}
    return dict(arguments, num_buckets=m.bucket_num, bucket_start=m.bucket_start, kernel=m.fds_kernel, ks=m.fds_ks,
                sigma=m.fds_sigma, momentum=m.fds_mmt, start_update=m.start_update, start_smooth=m.start_smooth,
                clip=m.fds_clip, alias_last_epoch=m.fds_alias_last_epoch, inplace=m.fds_inplace)


# The FDS variance clip of every run saved before --fds_clip existed, whatever its benchmark: such a
# run resumes and evaluates with it (the released STS-B clip, (0.5, 2), became that default later).
EARLIER_FDS_CLIP = (0.1, 10.0)


def method_settings(config: dict) -> MethodSettings:
    """The methods' settings of a run's config: its keys, the preset's released defaults for keys
    it lacks (runs saved before the methods existed: every method off; before --fds_clip: the
    clip they ran with, EARLIER_FDS_CLIP)."""
    preset = config.get("preset")
    base = released_methods(preset) if preset in RECIPES else MethodSettings()
    values = {name: config[name] for name in METHOD_FIELDS if name in config}
    values["fds_clip"] = tuple(values.get("fds_clip", EARLIER_FDS_CLIP))  # a list in a saved config
    return MethodSettings(**{**{f: getattr(base, f) for f in METHOD_FIELDS}, **values})


@dataclass
class TrainConfig:
    """The settings the engine reads (the drivers' flags of the same names fill them)."""

    seed: int = 0
    epoch: int | None = None  # number of epochs; None: until early stopping
    warmup: int = 0  # first epochs with the regression loss only
    batch_size: int = 64
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    lr_milestones: Sequence[int] = ()
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    eval_every: int | None = None  # validate every so many steps; None: at the end of each epoch
    patience: int | None = None  # early stopping after so many validations (see `early_stop`)
    early_stop: str = "released"  # the rule that reads `patience`: one of EARLY_STOP_RULES
    max_validations: int | None = None  # stop after so many validations
    regression_loss: str = "l1"
    srl: bool = True  # False: the plain regression baseline
    loss: SRLSettings = field(default_factory=SRLSettings)  # the SRL terms' settings
    methods: MethodSettings = field(default_factory=MethodSettings)  # LDS, FDS, RankSim, Balanced MSE, ConR
    backend: str = "auto"
    retrain_regressor: bool = False  # train the regressor only, every other parameter frozen (after --init_from)
    memory_update: str = "epoch_pass"
    memory_momentum: float = 0.9
    memory_normalized: bool = False
    # every so many steps, the SRL terms' gradient on the shared encoder is measured against the
    # regression loss's (analysis.gradient_share) and logged per epoch; 0: never
    grad_share_every: int = 50
    workers: int = 0
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)} - {"loss", "methods"}
        return cls(loss=srl_settings(values), methods=method_settings(values),
                   **{key: value for key, value in values.items() if key in names})


@dataclass
class Task:
    """What the engine needs to know about a benchmark.

    Attributes:
        name: the preset name ("agedb", "imdb_wiki", "sts_b").
        num_bins: K.
        label_bins: labels (label units) -> int64 bins in [0, K).
        bin_groups: per bin, "many", "medium" or "few" (docs/method.md, "DIR protocol").
        target_scale: the model regresses label / target_scale; predictions are multiplied back.
        selection: (row, metric) of the validation table that selects the model, lower is better.
        gm_floor, correlations: DIR metric options (STS-B: 1e-10 and Pearson/Spearman).
        label_name: the x-axis name of the per-label error plot.
        data_files: the files that hold the splits and labels; their sizes and SHA-256 are stored
            in the checkpoints, so that a resume on changed data is noticed.
        table_rule: None for the library's surrogate table on ``label_bins``; else
            ``(features, labels, memory) -> (table, positive rows)``, a table built another way
            (``srl_ext.released``), single process only.
    """

    name: str
    num_bins: int
    label_bins: Callable[[torch.Tensor], torch.Tensor]
    bin_groups: Sequence[str]
    train_labels: np.ndarray
    collate: Callable | None = None
    target_scale: float = 1.0
    selection: tuple[str, str] = ("all", "mae")
    gm_floor: float | None = None
    correlations: bool = False
    label_name: str = "label"
    bin_values: Sequence[float] = field(default_factory=tuple)  # the label value of each bin, for plots
    table_rule: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    data_files: Sequence[str] = field(default_factory=tuple)  # the split files, fingerprinted in checkpoints
