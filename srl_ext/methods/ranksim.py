"""RankSim: each sample's ranking of the others by feature similarity should match its ranking
of them by label closeness (docs/methods.md, "RankSim").

The ranking is piecewise constant; its gradient is the blackbox-combinatorial-solver one:
rank again at the input moved by lambda times the incoming gradient, and take the difference.

>>> loss = regression + gamma * ranksim_loss(features, labels, interpolation_lambda=2.0)
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from .. import validation as check
from . import _checks


def rank_normalised(scores: torch.Tensor) -> torch.Tensor:
    """Row-wise rank of each entry, largest first, as (1 + position) / n: the largest entry of
    a row of n gets 1/n, the smallest 1. Ties: stable order, so of two equal entries the one
    with the higher index ranks first (docs/methods.md, "RankSim")."""
    order = torch.argsort(scores, dim=-1, stable=True).flip(-1)  # descending, ties: higher index first
    n = scores.shape[-1]
    positions = torch.arange(1, n + 1, device=scores.device, dtype=torch.int64).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, positions)
    dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    return ranks.to(dtype) / n


class TrueRanker(torch.autograd.Function):
    """rank_normalised(scores) row-wise, with the blackbox gradient
    -(rank(s) - rank(s + lambda * g)) / (lambda + 1e-8)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, interpolation_lambda: float) -> torch.Tensor:
        ranks = rank_normalised(scores)
        ctx.interpolation_lambda = interpolation_lambda
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        scores, ranks = ctx.saved_tensors
        lam = ctx.interpolation_lambda
        moved = rank_normalised(scores + lam * grad_output.to(scores.dtype))
        return (-(ranks - moved) / (lam + 1e-8)).to(scores.dtype), None


def ranksim_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    interpolation_lambda: float = 2.0,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """The batch ranking-similarity term: sum over anchors i of mean_j (r_f,ij - r_l,ij)^2.

    Args:
        features: B x D (the SRL projector output, or h as in the RankSim code).
        labels: (B,) or (B, 1).
        interpolation_lambda: the blackbox gradient's lambda (2 in the released commands).
        rng: the random.Random that picks one sample per label when labels repeat; None uses
            the module-level `random` (the released code's stream, seeded with random.seed).

    Returns: a scalar in the features' dtype (float32 for half precision); 0 with a single
    distinct label. Reads the labels on the host (one sync on a GPU).
    """
    name = "ranksim_loss"
    features = _checks.features(name, features)
    labels = _checks.labels(name, labels, features.shape[0])
    check.same_device(name, "labels", labels, features)
    lam = _checks.number(name, "interpolation_lambda", interpolation_lambda, minimum=0.0, strict=True)
    if rng is not None and not isinstance(rng, random.Random):
        check.fail(name, "rng", "None or a random.Random", type(rng).__name__)
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    host_labels = labels.cpu()
    unique = torch.unique(host_labels)  # sorted
    if unique.shape[0] < host_labels.shape[0]:
        choose = (rng or random).choice
        picked = [choose((host_labels == value).nonzero()[:, 0].tolist()) for value in unique]
        index = torch.tensor(picked, device=features.device)
        features, labels = features[index], labels[index]
    z = F.normalize(features, dim=1)
    similarities = z @ z.t()
    y = labels if labels.dtype in (torch.float32, torch.float64) else labels.to(torch.float64)
    label_ranks = rank_normalised(-(y.unsqueeze(1) - y.unsqueeze(0)).abs()).to(similarities.dtype)
    feature_ranks = TrueRanker.apply(similarities, lam)
    return ((feature_ranks - label_ranks) ** 2).mean(dim=1).sum()
