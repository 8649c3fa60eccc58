"""The public functional API: checked inputs, then the chosen backend (``srl_ext.backends``).

The math of each term is in ``srl_ext.reference`` and docs/method.md; every backend returns the
same numbers. ``srl_loss`` and ``srl_terms`` take an ``SRLSettings`` and/or any of its fields as
keywords.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import backends
from . import validation as check
from .settings import SRLSettings


class SRLTerms(NamedTuple):
    total: torch.Tensor  # w1 * contrastive + w2 * enveloping + w3 * homogeneity
    contrastive: torch.Tensor
    enveloping: torch.Tensor
    homogeneity: torch.Tensor


# The signature (shapes, dtypes, devices) of the last inputs of ``srl_loss`` whose metadata
# passed the checks: a training loop calls it with the same shapes at every step.
_last_checked: list = [None]


def srl_loss(features: Tensor, bins: Tensor, memory: Tensor, anchors: Tensor, settings: SRLSettings | None = None,
             *, backend: str = "auto", **options) -> SRLTerms:
    """The weighted SRL loss and its terms for one batch: ``SRLTerms(total, contrastive,
    enveloping, homogeneity)`` (docs/method.md, "The loss"); each is differentiable.

    The arguments are those of ``srl_terms``, the weights ``w1``, ``w2``, ``w3`` included. Where
    the backend has a whole-loss op ("cpu", "triton") one op computes the surrogate table, the
    three terms, the total and their gradients (one call, one autograd node); elsewhere ("cuda",
    "reference") the backend's term functions are weighed together. The inputs' metadata are
    checked once per signature (shapes, dtypes, devices). The CPU kernel checks the values as it
    reads them (bins in [0, K), finite features and used memory rows, norms that fit) and divides
    each cosine by its anchor's norm, so the anchors are not copied; on the other backends the
    values are checked and the anchors normalised as ``srl_terms`` does.
    """
    name = "srl_loss"
    settings = SRLSettings.resolve(name, settings, **options)
    if torch.compiler.is_compiling():  # traced once per graph anyway
        check.srl_inputs(name, features, bins, memory, anchors, read_data=False)
    else:
        signature = check.signature(features, bins, memory, anchors)
        if signature is None or signature != _last_checked[0]:
            check.srl_inputs(name, features, bins, memory, anchors, read_data=False)
            _last_checked[0] = signature
    impl = backends.resolve(backend, features.device, name)
    if not backends.checks_data(impl, features.device):  # the values, and the anchors normalised (a copy)
        features, bins, memory, anchors = check.srl_inputs(name, features, bins, memory, anchors)
    try:
        return SRLTerms(*backends.whole_loss(impl, features, bins, memory, anchors, settings))
    except ValueError as error:  # the kernel's own checks: named after this function, as the others
        message = str(error)
        if message.startswith("srl_ext: "):
            raise ValueError(f"{name}: {message[len('srl_ext: '):]}") from None
        raise


def srl_terms(features: Tensor, bins: Tensor, memory: Tensor, anchors: Tensor, settings: SRLSettings | None = None,
              *, backend: str = "auto", **options) -> tuple[Tensor, Tensor, Tensor]:
    """The three SRL terms ``(contrastive, enveloping, homogeneity)`` for one batch.

    Args:
        features: B x D raw projector outputs h (normalised inside); gradients flow to them.
        bins: B int64 bin indices in [0, K).
        memory: K x D surrogate memory; its rows stand in for bins absent from the batch
            (detached; an all-zero row stays zero).
        anchors: N x D unit vectors for the enveloping term.
        settings: the terms' settings (``SRLSettings``; its defaults if None). The weights,
            ``num_anchors`` and ``anchor_seed`` play no part here.
        **options: any field of ``SRLSettings`` (``temperature``, ``homogeneity_sign``,
            ``homogeneity_beta``, ``envelope``, ``envelope_temperature``, ``label_weighting``...),
            overriding ``settings``.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (``srl_ext.backends``).
    """
    name = "srl_terms"
    features, bins, memory, anchors = check.srl_inputs(name, features, bins, memory, anchors)
    settings = SRLSettings.resolve(name, settings, **options)
    impl = backends.resolve(backend, features.device, name)
    surrogates = impl.surrogate_table(features, bins, memory)
    return backends.apply_terms(impl, features, bins, surrogates, anchors, settings)


def terms_from_table(features: Tensor, positives: Tensor, surrogates: Tensor, anchors: Tensor,
                     settings: SRLSettings | None = None, *, backend: str = "auto", **options) -> tuple:
    """The three terms on a K x D surrogate table built elsewhere (``srl_ext.released``);
    ``positives`` are the table rows of the contrastive positives (B int64)."""
    name = "terms_from_table"
    features, positives, surrogates = check.table_inputs(name, features, positives, surrogates, "surrogates")
    anchors = check.anchors(name, anchors, features.shape[1], features)
    settings = SRLSettings.resolve(name, settings, **options)
    impl = backends.resolve(backend, features.device, name)
    return backends.apply_terms(impl, features, positives, surrogates, anchors, settings)


def surrogate_table(features: Tensor, bins: Tensor, memory: Tensor, *, backend: str = "auto") -> Tensor:
    """The K x D table of unit surrogates (docs/method.md, "The surrogate table"): bin means of the
    normalised features for bins in the batch, memory rows for the others, normalised; zero rows
    stay zero."""
    name = "surrogate_table"
    features, bins, memory = check.table_inputs(name, features, bins, memory)
    return backends.resolve(backend, features.device, name).surrogate_table(features, bins, memory)


def contrastive_loss(features: Tensor, bins: Tensor, surrogates: Tensor, *, temperature: float,
                     label_weighting: bool = False, backend: str = "auto") -> Tensor:
    """L_con (docs/method.md, "Contrastive"): cross-entropy of each sample against the K
    surrogates, which are detached."""
    name = "contrastive_loss"
    features, bins, surrogates = check.table_inputs(name, features, bins, surrogates, "surrogates")
    temperature = check.positive(name, "temperature", temperature)
    impl = backends.resolve(backend, features.device, name)
    return impl.contrastive_loss(features, bins, surrogates, temperature, bool(label_weighting))


def enveloping_loss(surrogates: Tensor, anchors: Tensor, *, envelope: str = "hard",
                    envelope_temperature: float | None = None, backend: str = "auto") -> Tensor:
    """L_env (docs/method.md, "Enveloping"): 1 - mean over anchors of the (hard or smooth) max
    cosine to the surrogates."""
    name = "enveloping_loss"
    surrogates = _check_surrogates(name, surrogates)
    anchors = check.anchors(name, anchors, surrogates.shape[1], surrogates)
    envelope_temperature = check.envelope(name, envelope, envelope_temperature)
    return backends.resolve(backend, surrogates.device, name).enveloping_loss(surrogates, anchors, envelope_temperature)


def homogeneity_loss(surrogates: Tensor, *, sign: float = -1.0, beta: float = 0.1, backend: str = "auto") -> Tensor:
    """L_homo (docs/method.md, "Homogeneity"): sign * sum of neighbouring cosines + beta * their variance."""
    name = "homogeneity_loss"
    surrogates = _check_surrogates(name, surrogates)
    return backends.resolve(backend, surrogates.device, name).homogeneity_loss(surrogates, float(sign), float(beta))


def _check_surrogates(function: str, surrogates: object) -> torch.Tensor:
    surrogates = check.tensor(function, "surrogates", surrogates, 2, "K x D")
    check.floating(function, "surrogates", surrogates)
    check.columns(function, "surrogates", surrogates)
    check.num_bins(function, "surrogates", surrogates)
    return surrogates
