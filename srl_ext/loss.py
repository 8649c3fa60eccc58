"""``SRLLoss``: the weighted SRL terms as a module that owns its anchors."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from . import backends, functional, presets
from . import validation as check
from .distributed import srl_terms as global_batch_srl_terms
from .functional import srl_terms


def sample_anchors(num_anchors: int, dim: int, seed: int = 0) -> torch.Tensor:
    """N points uniform on the unit sphere S^{D-1}: normalised standard Gaussian vectors, seeded."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(num_anchors, dim, generator=generator)
    return points / points.norm(dim=1, keepdim=True)


class SRLTerms(NamedTuple):
    total: torch.Tensor  # w1 * contrastive + w2 * enveloping + w3 * homogeneity
    contrastive: torch.Tensor
    enveloping: torch.Tensor
    homogeneity: torch.Tensor


class SRLLoss(nn.Module):
    """w1 * L_con + w2 * L_env + w3 * L_homo (SPEC section 8), without the regression loss.

    The anchors are drawn once from `anchor_seed` and kept as a buffer, so they are saved in
    the state_dict and follow the module across devices.

    With ``distributed=True`` the terms are those of the global batch of a data-parallel step
    (``srl_ext.distributed.srl_terms`` on `process_group`, None for the default group): call it
    on every rank, and DDP's gradient averaging gives the single-process gradients. Without
    torch.distributed initialised it is the single-process loss.

    >>> loss_fn = SRLLoss.preset("agedb", feature_dim=128)
    >>> out = loss_fn(features, bins, memory)   # features B x D, bins B, memory K x D
    >>> (regression_loss + out.total).backward()
    """

    def __init__(
        self,
        num_bins: int,
        feature_dim: int = 128,
        *,
        w1: float = 1.0,
        w2: float = 1.0,
        w3: float = 1.0,
        temperature: float = 0.1,
        num_anchors: int = 2000,
        homogeneity_sign: float = -1.0,
        homogeneity_beta: float = 0.1,
        envelope: str = "hard",
        envelope_temperature: float | None = None,
        label_weighting: bool = False,
        anchor_seed: int = 0,
        backend: str = "auto",
        distributed: bool = False,
        process_group: "torch.distributed.ProcessGroup | None" = None,
    ) -> None:
        super().__init__()
        name = "SRLLoss"
        for argument, value in (("num_bins", num_bins), ("feature_dim", feature_dim), ("num_anchors", num_anchors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                check.fail(name, argument, "a positive int", repr(value))
        if num_bins < 2:
            check.fail(name, "num_bins", "at least 2", num_bins)
        if backend not in backends.NAMES:
            check.fail(name, "backend", f"one of {', '.join(map(repr, backends.NAMES))}", repr(backend))
        self.num_bins = num_bins
        self.feature_dim = feature_dim
        self.w1, self.w2, self.w3 = float(w1), float(w2), float(w3)
        self.temperature = check.positive(name, "temperature", temperature)
        self.homogeneity_sign = float(homogeneity_sign)
        self.homogeneity_beta = float(homogeneity_beta)
        check.envelope(name, envelope, envelope_temperature)
        self.envelope = envelope
        self.envelope_temperature = envelope_temperature
        self.label_weighting = bool(label_weighting)
        self.backend = backend
        self.distributed = bool(distributed)
        self.process_group = process_group
        self.register_buffer("anchors", sample_anchors(num_anchors, feature_dim, anchor_seed))

    @classmethod
    def preset(cls, name: str, feature_dim: int = 128, **overrides) -> "SRLLoss":
        """The loss settings of the released code for 'agedb', 'imdb_wiki' or 'sts_b'."""
        p = presets.get(name)
        settings = dict(
            num_bins=p.num_bins, w1=p.w1, w2=p.w2, w3=p.w3, temperature=p.temperature,
            num_anchors=p.num_anchors, homogeneity_sign=p.homogeneity_sign, homogeneity_beta=p.homogeneity_beta,
        )
        settings.update(overrides)
        return cls(feature_dim=feature_dim, **settings)

    def forward(self, features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> SRLTerms:
        if isinstance(memory, torch.Tensor) and memory.dim() == 2 and memory.shape[0] != self.num_bins:
            check.fail("SRLLoss", "memory", f"{self.num_bins} rows (num_bins)", f"shape {tuple(memory.shape)}")
        if self.distributed:
            terms_of = functools.partial(global_batch_srl_terms, group=self.process_group)
        else:
            terms_of = srl_terms
        contrastive, enveloping, homogeneity = terms_of(
            features, bins, memory, self.anchors,
            temperature=self.temperature, homogeneity_sign=self.homogeneity_sign,
            homogeneity_beta=self.homogeneity_beta, envelope=self.envelope,
            envelope_temperature=self.envelope_temperature, label_weighting=self.label_weighting,
            backend=self.backend,
        )
        return self._weighted(contrastive, enveloping, homogeneity)

    def terms_from_table(self, features: torch.Tensor, positives: torch.Tensor, surrogates: torch.Tensor) -> SRLTerms:
        """The weighted terms on a surrogate table built elsewhere (``srl_ext.released``):
        ``positives`` are the table rows of the contrastive positives. Single process only."""
        if self.distributed:
            check.fail("SRLLoss.terms_from_table", "distributed", "False (a table built elsewhere is not global)", True)
        contrastive = functional.contrastive_loss(
            features, positives, surrogates, temperature=self.temperature, label_weighting=self.label_weighting,
            backend=self.backend,
        )
        enveloping = functional.enveloping_loss(
            surrogates, self.anchors, envelope=self.envelope, envelope_temperature=self.envelope_temperature,
            backend=self.backend,
        )
        homogeneity = functional.homogeneity_loss(
            surrogates, sign=self.homogeneity_sign, beta=self.homogeneity_beta, backend=self.backend
        )
        return self._weighted(contrastive, enveloping, homogeneity)

    def _weighted(self, contrastive: torch.Tensor, enveloping: torch.Tensor, homogeneity: torch.Tensor) -> SRLTerms:
        total = self.w1 * contrastive + self.w2 * enveloping + self.w3 * homogeneity
        return SRLTerms(total, contrastive, enveloping, homogeneity)

    def extra_repr(self) -> str:
        return (
            f"num_bins={self.num_bins}, feature_dim={self.feature_dim}, num_anchors={self.anchors.shape[0]}, "
            f"w=({self.w1}, {self.w2}, {self.w3}), temperature={self.temperature}, envelope={self.envelope!r}, "
            f"backend={self.backend!r}, distributed={self.distributed}"
        )
