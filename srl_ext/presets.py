"""Deprecated: the loss presets are ``srl_ext.settings`` (``preset(name)``: K and an
``SRLSettings``), the training recipes ``srl_ext.training.config.RECIPES``.

``get`` still returns the earlier flat record of both, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field

from . import settings


@dataclass(frozen=True)
class Preset:
    name: str
    num_bins: int
    regression_loss: str
    w1: float
    w2: float
    w3: float
    temperature: float
    num_anchors: int
    homogeneity_sign: float
    homogeneity_beta: float = 0.1
    memory_normalized: bool = False
    optimizer: str = "adam"
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int | None = None
    lr_milestones: tuple[int, ...] = field(default_factory=tuple)
    lr_gamma: float = 0.1
    grad_clip_norm: float | None = None
    eval_every_steps: int | None = None
    early_stop_patience: int | None = None
    max_validations: int | None = None


def get(name: str) -> Preset:
    warnings.warn("srl_ext.presets.get is deprecated: use srl_ext.settings.preset (loss) and "
                  "srl_ext.training.config.recipe (training)", DeprecationWarning, stacklevel=2)
    return _flat(name)


def _flat(name: str) -> Preset:
    loss = settings.preset(name)
    recipe = importlib.import_module("srl_ext.training.config").recipe(name)  # the deprecated view joins both
    s = loss.srl
    return Preset(
        name=name, num_bins=loss.num_bins, w1=s.w1, w2=s.w2, w3=s.w3, temperature=s.temperature,
        num_anchors=s.num_anchors, homogeneity_sign=s.homogeneity_sign, homogeneity_beta=s.homogeneity_beta,
        memory_normalized=loss.memory_normalized, **recipe.__dict__,
    )


def __getattr__(name: str):
    if name == "PRESETS":
        warnings.warn("srl_ext.presets.PRESETS is deprecated: use srl_ext.settings.PRESETS", DeprecationWarning, stacklevel=2)
        return {key: _flat(key) for key in settings.PRESETS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
