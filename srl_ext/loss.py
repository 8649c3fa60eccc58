"""``SRLLoss``: the weighted SRL terms as a module that owns its anchors."""

from __future__ import annotations

import torch
from torch import nn

from . import backends, distributed, functional
from . import validation as check
from .functional import SRLTerms
from .settings import FIELDS, SRLSettings
from .settings import preset as loss_preset


def sample_anchors(num_anchors: int, dim: int, seed: int = 0) -> torch.Tensor:
    """N points uniform on the unit sphere S^{D-1}: normalised standard Gaussian vectors, seeded."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(num_anchors, dim, generator=generator)
    return points / points.norm(dim=1, keepdim=True)


class SRLLoss(nn.Module):
    """w1 * L_con + w2 * L_env + w3 * L_homo (docs/method.md, "The loss"), without the regression loss.

    The settings are an ``SRLSettings`` (``settings``), or its fields as keywords (they override
    ``settings``); they are readable as attributes (``loss_fn.temperature``, ``loss_fn.w1``...).
    The anchors are drawn once from ``anchor_seed`` and kept as a buffer, so they are saved in
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
        settings: SRLSettings | None = None,
        backend: str = "auto",
        distributed: bool = False,
        process_group: "torch.distributed.ProcessGroup | None" = None,
        **options,
    ) -> None:
        super().__init__()
        name = "SRLLoss"
        for argument, value in (("num_bins", num_bins), ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                check.fail(name, argument, "a positive int", repr(value))
        if num_bins < 2:
            check.fail(name, "num_bins", "at least 2", num_bins)
        self.settings = SRLSettings.resolve(name, settings, **options)
        if backend not in backends.NAMES:
            check.fail(name, "backend", f"one of {', '.join(map(repr, backends.NAMES))}", repr(backend))
        self.num_bins = num_bins
        self.feature_dim = feature_dim
        self.backend = backend
        self.distributed = bool(distributed)
        self.process_group = process_group
        self.register_buffer("anchors", sample_anchors(self.settings.num_anchors, feature_dim, self.settings.anchor_seed))

    @classmethod
    def preset(cls, name: str, feature_dim: int = 128, **overrides) -> "SRLLoss":
        """The loss settings of the released code for 'agedb', 'imdb_wiki' or 'sts_b'.

        ``overrides``: ``num_bins`` (K of your own labels instead of the benchmark's), ``backend``,
        ``distributed``, or any ``SRLSettings`` field (``SRLLoss.preset("agedb", num_bins=60, w2=10)``)."""
        p = loss_preset(name)
        num_bins = overrides.pop("num_bins", p.num_bins)
        return cls(num_bins, feature_dim, settings=p.srl, **overrides)

    def forward(self, features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> SRLTerms:
        if isinstance(memory, torch.Tensor) and memory.dim() == 2 and memory.shape[0] != self.num_bins:
            check.fail("SRLLoss", "memory", f"{self.num_bins} rows (num_bins)", f"shape {tuple(memory.shape)}")
        if self.distributed:
            terms = distributed.srl_terms(
                features, bins, memory, self.anchors, self.settings, backend=self.backend, group=self.process_group
            )
            return self._weighted(*terms)
        # The whole loss in one fused op where the backend has one (the CPU kernel).
        return functional.srl_loss(features, bins, memory, self.anchors, self.settings, backend=self.backend)

    def terms_from_table(self, features: torch.Tensor, positives: torch.Tensor, surrogates: torch.Tensor) -> SRLTerms:
        """The weighted terms on a surrogate table built elsewhere (``srl_ext.released``):
        ``positives`` are the table rows of the contrastive positives. Single process only."""
        if self.distributed:
            check.fail("SRLLoss.terms_from_table", "distributed", "False (a table built elsewhere is not global)", True)
        return self._weighted(*functional.terms_from_table(
            features, positives, surrogates, self.anchors, self.settings, backend=self.backend
        ))

    def _weighted(self, contrastive: torch.Tensor, enveloping: torch.Tensor, homogeneity: torch.Tensor) -> SRLTerms:
        s = self.settings
        total = s.w1 * contrastive + s.w2 * enveloping + s.w3 * homogeneity
        return SRLTerms(total, contrastive, enveloping, homogeneity)

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"num_bins={self.num_bins}, feature_dim={self.feature_dim}, num_anchors={self.anchors.shape[0]}, "
            f"w=({s.w1}, {s.w2}, {s.w3}), temperature={s.temperature}, envelope={s.envelope!r}, "
            f"backend={self.backend!r}, distributed={self.distributed}"
        )


# Every setting readable as an attribute of the loss (loss_fn.temperature, loss_fn.w1, ...).
for _field in sorted(FIELDS):
    setattr(SRLLoss, _field, property(lambda self, _name=_field: getattr(self.settings, _name)))
del _field
