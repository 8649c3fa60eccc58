"""The SRL settings, written once: ``SRLSettings``, K per benchmark, and the loss presets.

``SRLSettings`` holds the eleven settings of the terms (weights, tau, anchors, homogeneity,
envelope, label weighting, anchor seed). It travels whole from a preset to ``SRLLoss``, to
``srl_ext.functional.srl_terms`` and to ``srl_ext.distributed.srl_terms``; those functions also
take any of its fields as keywords, which override the settings given (or the defaults).

Two temperatures, two names, the same everywhere down to the op schemas: ``temperature`` is tau
of the contrastive term; ``envelope_temperature`` is the smoothness s of the soft envelope, used
only with ``envelope="soft"`` (docs/method.md, "Enveloping").

The presets are the released code's settings per benchmark (docs/method.md, "Presets"); the
training recipes (optimiser, batch size, epochs) are in ``srl_ext.training.config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import validation as check

# K, the number of label bins of each benchmark: one per integer age (AgeDB-DIR 0-101, IMDB-WIKI-DIR
# 0-186), one per 0.1 of the STS-B score (0-5).
NUM_BINS: dict[str, int] = {"agedb": 102, "imdb_wiki": 187, "sts_b": 50}

ENVELOPES = ("hard", "soft")


@dataclass(frozen=True)
class SRLSettings:
    """Every setting of the SRL terms (docs/method.md). Checked when built: a ValueError names the
    setting, what was expected and what came."""

    w1: float = 1.0  # weight of the contrastive term
    w2: float = 1.0  # weight of the enveloping term
    w3: float = 1.0  # weight of the homogeneity term
    temperature: float = 0.1  # tau of the contrastive term
    num_anchors: int = 2000  # N anchor points of the enveloping term
    homogeneity_sign: float = -1.0  # sign of sum_k <c_{k+1}, c_k> (-1: the paper's term)
    homogeneity_beta: float = 0.1  # weight of the variance of the neighbouring cosines
    envelope: str = "hard"  # "hard" (max, released code) or "soft" (smooth max, paper)
    envelope_temperature: float | None = None  # smoothness s of the soft envelope; None when hard
    label_weighting: bool = False  # weight the contrastive denominator by label distance
    anchor_seed: int = 0  # seed of the anchor points

    def __post_init__(self) -> None:
        for name, value in _checked("SRLSettings", self).items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> "SRLSettings":
        """A copy with some settings changed (checked)."""
        return dataclasses.replace(self, **changes)

    @property
    def soft_envelope_temperature(self) -> float | None:
        """s for the soft envelope, None for the hard one: what the backends take."""
        return self.envelope_temperature if self.envelope == "soft" else None

    @classmethod
    def resolve(cls, function: str, settings: "SRLSettings | None" = None, **overrides) -> "SRLSettings":
        """``settings`` (the defaults if None) with the settings given as keywords; errors name `function`."""
        if settings is not None and not isinstance(settings, cls):
            check.fail(function, "settings", "an SRLSettings or None", f"{type(settings).__name__} {settings!r}")
        if settings is not None and not overrides:
            return settings  # frozen and checked when built: nothing to redo on every loss step
        unknown = sorted(set(overrides) - FIELDS)
        if unknown:
            raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
        values = dataclasses.asdict(settings if settings is not None else cls())
        values.update(overrides)
        return cls(**_checked(function, values))


FIELDS = frozenset(f.name for f in dataclasses.fields(SRLSettings))


def _checked(function: str, s) -> dict:
    """The settings of `s` (an SRLSettings or a dict of its fields) checked and normalised."""
    values = dataclasses.asdict(s) if isinstance(s, SRLSettings) else dict(s)
    for name in ("num_anchors", "anchor_seed"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or (name == "num_anchors" and value < 1):
            check.fail(function, name, "a positive int" if name == "num_anchors" else "an int", repr(value))
    values["temperature"] = check.positive(function, "temperature", values["temperature"])
    check.envelope(function, values["envelope"], values["envelope_temperature"])
    if values["envelope_temperature"] is not None:
        values["envelope_temperature"] = float(values["envelope_temperature"])
    for name in ("w1", "w2", "w3", "homogeneity_beta"):  # weights: a negative one would reverse its term
        values[name] = check.number(function, name, values[name], minimum=0)
    values["homogeneity_sign"] = check.number(function, "homogeneity_sign", values["homogeneity_sign"])
    values["label_weighting"] = check.boolean(function, "label_weighting", values["label_weighting"])
    return values


@dataclass(frozen=True)
class Preset:
    """The released code's loss settings for one benchmark."""

    name: str
    num_bins: int  # K
    srl: SRLSettings
    memory_normalized: bool = False  # the memory averages z = h/||h|| (STS-B code) instead of h


PRESETS: dict[str, Preset] = {
    "agedb": Preset("agedb", NUM_BINS["agedb"], SRLSettings(
        w1=10.0, w2=100.0, w3=0.01, temperature=0.3, num_anchors=2000, homogeneity_sign=-1.0)),
    "imdb_wiki": Preset("imdb_wiki", NUM_BINS["imdb_wiki"], SRLSettings(
        w1=10.0, w2=100.0, w3=0.01, temperature=0.3, num_anchors=2000, homogeneity_sign=+1.0)),
    "sts_b": Preset("sts_b", NUM_BINS["sts_b"], SRLSettings(
        w1=1e-4, w2=1e-2, w3=1e-4, temperature=0.1, num_anchors=1000, homogeneity_sign=+1.0), memory_normalized=True),
}


def preset(name: str) -> Preset:
    """The loss preset of benchmark 'agedb', 'imdb_wiki' or 'sts_b'."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    return PRESETS[name]
