"""The public functional API: checked inputs, then the chosen backend (``srl_ext.backends``).

The math of each term is in ``srl_ext.reference``; every backend returns the same numbers.
"""

from __future__ import annotations

import torch

from . import backends
from . import validation as check


def srl_terms(
    features: torch.Tensor,
    bins: torch.Tensor,
    memory: torch.Tensor,
    anchors: torch.Tensor,
    *,
    temperature: float,
    homogeneity_sign: float = -1.0,
    homogeneity_beta: float = 0.1,
    envelope: str = "hard",
    envelope_temperature: float | None = None,
    label_weighting: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three SRL terms ``(contrastive, enveloping, homogeneity)`` for one batch.

    Args:
        features: B x D raw projector outputs h (normalised inside); gradients flow to them.
        bins: B int64 bin indices in [0, K).
        memory: K x D surrogate memory; its rows stand in for bins absent from the batch
            (detached; an all-zero row stays zero).
        anchors: N x D unit vectors for the enveloping term.
        temperature: tau of the contrastive term.
        homogeneity_sign, homogeneity_beta: sign of sum_k <c_{k+1}, c_k> and weight of its
            variance (-1 is the paper's term; the IMDB-WIKI and STS-B code used +1).
        envelope: "hard" (max, released code) or "soft" (smooth max at envelope_temperature).
        label_weighting: weight the contrastive denominator by label distance (SPEC 4).
        backend: "auto", "reference", "cpu", "cuda" or "triton" (``srl_ext.backends``).
    """
    name = "srl_terms"
    features, bins, memory, anchors = _check_inputs(name, features, bins, memory, anchors)
    temperature = check.positive(name, "temperature", temperature)
    soft_temperature = check.envelope(name, envelope, envelope_temperature)
    impl = backends.resolve(backend, features.device, name)
    surrogates = impl.surrogate_table(features, bins, memory)
    return (
        impl.contrastive_loss(features, bins, surrogates, temperature, bool(label_weighting)),
        impl.enveloping_loss(surrogates, anchors, soft_temperature),
        impl.homogeneity_loss(surrogates, float(homogeneity_sign), float(homogeneity_beta)),
    )


def surrogate_table(
    features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """The K x D table of unit surrogates (SPEC 3): bin means of the normalised features for bins
    in the batch, memory rows for the others, normalised; zero rows stay zero."""
    name = "surrogate_table"
    features = check.features(name, features)
    memory = check.table(name, "memory", memory, features.shape[1], features, "K x D")
    bins = check.bins(name, bins, features.shape[0], check.num_bins(name, "memory", memory), features)
    return backends.resolve(backend, features.device, name).surrogate_table(features, bins, memory)


def contrastive_loss(
    features: torch.Tensor,
    bins: torch.Tensor,
    surrogates: torch.Tensor,
    *,
    temperature: float,
    label_weighting: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """L_con (SPEC 4): cross-entropy of each sample against the K surrogates, which are detached."""
    name = "contrastive_loss"
    features = check.features(name, features)
    surrogates = check.table(name, "surrogates", surrogates, features.shape[1], features, "K x D")
    bins = check.bins(name, bins, features.shape[0], check.num_bins(name, "surrogates", surrogates), features)
    temperature = check.positive(name, "temperature", temperature)
    impl = backends.resolve(backend, features.device, name)
    return impl.contrastive_loss(features, bins, surrogates, temperature, bool(label_weighting))


def enveloping_loss(
    surrogates: torch.Tensor,
    anchors: torch.Tensor,
    *,
    envelope: str = "hard",
    envelope_temperature: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """L_env (SPEC 5): 1 - mean over anchors of the (hard or smooth) max cosine to the surrogates."""
    name = "enveloping_loss"
    surrogates = _check_surrogates(name, surrogates)
    anchors = check.anchors(name, anchors, surrogates.shape[1], surrogates)
    soft_temperature = check.envelope(name, envelope, envelope_temperature)
    return backends.resolve(backend, surrogates.device, name).enveloping_loss(surrogates, anchors, soft_temperature)


def homogeneity_loss(
    surrogates: torch.Tensor, *, sign: float = -1.0, beta: float = 0.1, backend: str = "auto"
) -> torch.Tensor:
    """L_homo (SPEC 6): sign * sum of neighbouring cosines + beta * their variance."""
    name = "homogeneity_loss"
    surrogates = _check_surrogates(name, surrogates)
    return backends.resolve(backend, surrogates.device, name).homogeneity_loss(surrogates, float(sign), float(beta))


def _check_surrogates(function: str, surrogates: object) -> torch.Tensor:
    surrogates = check.tensor(function, "surrogates", surrogates, 2, "K x D")
    check.floating(function, "surrogates", surrogates)
    check.columns(function, "surrogates", surrogates)
    check.num_bins(function, "surrogates", surrogates)
    return surrogates


def _check_inputs(function, features, bins, memory, anchors):
    features = check.features(function, features)
    dim = features.shape[1]
    memory = check.table(function, "memory", memory, dim, features, "K x D")
    bins = check.bins(function, bins, features.shape[0], check.num_bins(function, "memory", memory), features)
    anchors = check.anchors(function, anchors, dim, features)
    return features, bins, memory, anchors
