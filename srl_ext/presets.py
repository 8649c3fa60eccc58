"""Per-dataset settings of the released code (SPEC section 8), the one place they are written.

The loss settings feed ``SRLLoss.preset``; the training settings feed the drivers in ``train/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    num_bins: int  # K
    regression_loss: str  # "l1", or "mse" (STS-B: on the score divided by 5)
    w1: float  # contrastive weight
    w2: float  # enveloping weight
    w3: float  # homogeneity weight
    temperature: float  # tau of the contrastive term
    num_anchors: int  # N
    homogeneity_sign: float
    homogeneity_beta: float = 0.1
    memory_normalized: bool = False  # the memory averages z = h/||h|| (STS-B code) instead of h
    optimizer: str = "adam"
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int | None = None  # None: trained until early stopping
    lr_milestones: tuple[int, ...] = field(default_factory=tuple)  # epochs where lr is multiplied by 0.1
    lr_gamma: float = 0.1
    grad_clip_norm: float | None = None
    eval_every_steps: int | None = None  # validation every so many steps instead of every epoch
    early_stop_patience: int | None = None  # in validations
    max_validations: int | None = None  # training stops after so many validations


PRESETS: dict[str, Preset] = {
    "agedb": Preset(
        name="agedb", num_bins=102, regression_loss="l1", w1=10.0, w2=100.0, w3=0.01, temperature=0.3,
        num_anchors=2000, homogeneity_sign=-1.0, lr=2.5e-4, batch_size=64, epochs=120, lr_milestones=(60, 80),
    ),
    "imdb_wiki": Preset(
        name="imdb_wiki", num_bins=187, regression_loss="l1", w1=10.0, w2=100.0, w3=0.01, temperature=0.3,
        num_anchors=2000, homogeneity_sign=+1.0, lr=1e-3, batch_size=256, epochs=90, lr_milestones=(60, 80),
    ),
    "sts_b": Preset(
        name="sts_b", num_bins=50, regression_loss="mse", w1=1e-4, w2=1e-2, w3=1e-4, temperature=0.1,
        num_anchors=1000, homogeneity_sign=+1.0, memory_normalized=True, lr=2.5e-4, weight_decay=1e-5, batch_size=16, epochs=None,
        grad_clip_norm=5.0, eval_every_steps=400, early_stop_patience=30, max_validations=300,
    ),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    return PRESETS[name]
