"""What a representation looks like to the SRL terms, measured on any features (docs/method.md,
"Reading a representation").

``feature_geometry`` reads the geometry the three terms are meant to shape, from features and
their labels alone (no model, no loss): how well the per-bin centroids cover the sphere (what
the enveloping term maximises), how evenly neighbouring bins' centroids are spaced (what the
homogeneity term shapes), whether feature distance follows label distance (ordinal structure),
and how tightly each bin's samples gather (what the contrastive term pulls). ``gradient_share``
measures how strongly the SRL terms act on the parameters a regression loss shares with them.

All functions take plain tensors and return Python floats; nothing here trains or changes a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .loss import sample_anchors
from .metrics import pearson
from .reference import normalize, sum_by_bin

SHOT_GROUPS = ("many", "medium", "few")


def bin_centroids(features: torch.Tensor, bins: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K x D unit centroids, K counts): row b is the normalised mean of the unit features of the
    samples in bin b (the surrogate the SRL table would hold for a batch of all of them), a zero
    row for an empty bin."""
    z = normalize(features.detach().double())
    sums, counts = sum_by_bin(z, bins.long(), num_bins)
    return normalize(sums / counts.clamp_min(1).unsqueeze(1)), counts


def coverage(centroids: torch.Tensor, anchors: torch.Tensor) -> float:
    """Mean over the anchors of the largest cosine to a centroid: 1 when every anchor has a
    centroid on it, about 0 for a single centroid against uniform anchors."""
    cosines = anchors.to(centroids.dtype) @ centroids.T
    return float(cosines.max(dim=1).values.mean())


def neighbour_cosines(centroids: torch.Tensor) -> torch.Tensor:
    """Cosines of consecutive rows (the centroids of neighbouring present bins, in label order)."""
    return (centroids[1:] * centroids[:-1]).sum(dim=1)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (vectorised: a pair list has many ties)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def rank_correlation(features: torch.Tensor, labels: torch.Tensor, max_pairs: int = 1_000_000, seed: int = 0) -> float:
    """Spearman correlation between label distance |y_i - y_j| and cosine distance 1 - cos(h_i, h_j)
    over sample pairs i < j (all of them, or ``max_pairs`` drawn at random when there are more):
    1 when feature distance grows with label distance, about 0 for features unrelated to the
    labels; NaN when either distance is constant."""
    z = normalize(features.detach().double())
    y = labels.detach().double().reshape(-1)
    n = z.shape[0]
    if n < 2:
        return math.nan
    if n * (n - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        generator = torch.Generator().manual_seed(seed)
        i = torch.randint(0, n, (max_pairs,), generator=generator)
        j = (i + torch.randint(1, n, (max_pairs,), generator=generator)) % n  # j != i
    label_distance = (y[i] - y[j]).abs().numpy()
    if n <= 8192:  # the Gram matrix is small: read the pairs' cosines from it
        cosines = (z @ z.T)[i, j]
    else:  # pair by pair, in chunks that keep the gathered rows small
        cosines = torch.cat([(z[i[k:k + 65536]] * z[j[k:k + 65536]]).sum(dim=1) for k in range(0, len(i), 65536)])
    feature_distance = (1.0 - cosines).numpy()
    value = pearson(_average_ranks(label_distance), _average_ranks(np.round(feature_distance, 12)))
    return math.nan if value is None else value


def within_bin_spread(features: torch.Tensor, bins: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K spreads, K counts): 1 - ||mean of the bin's unit features||, which is the mean of
    1 - cos(h_i, c_b) over the bin's samples: 0 when they coincide, near 1 when they point every
    way. NaN for bins with fewer than 2 samples (a lone sample has no spread to measure)."""
    z = normalize(features.detach().double())
    sums, counts = sum_by_bin(z, bins.long(), num_bins)
    spread = 1.0 - (sums / counts.clamp_min(1).unsqueeze(1)).norm(dim=1)
    return torch.where(counts >= 2, spread, torch.full_like(spread, math.nan)), counts


def feature_geometry(
    features: torch.Tensor,
    labels: torch.Tensor,
    bins: torch.Tensor,
    *,
    num_bins: int | None = None,
    shot_groups: Sequence[str] | None = None,
    anchors: torch.Tensor | None = None,
    num_anchors: int = 4096,
    anchor_seed: int = 0,
    max_pairs: int = 1_000_000,
) -> dict[str, float]:
    """The geometry the SRL terms shape, read from ``features`` (N x D, any feature: the SRL head's
    output or the one a regressor reads), their ``labels`` (N) and label ``bins`` (N, in [0, K)).

    Returns a dict of floats:

    - ``coverage``: mean over ``anchors`` (default ``num_anchors`` uniform points on the sphere,
      seeded) of the largest cosine to the per-bin unit centroids (what the enveloping term
      maximises; it is 1 - L_env of the hard envelope);
    - ``neighbour_cosine_mean``, ``neighbour_cosine_cv``: mean and coefficient of variation
      (std / |mean|) of the cosines between the centroids of neighbouring present bins (the a_k
      of the homogeneity term, over the bins the features fill);
    - ``rank_correlation``: Spearman correlation of label distance and cosine distance over pairs;
    - ``within_bin_spread``: the sample-weighted mean of each bin's spread (``within_bin_spread``),
      over bins with at least 2 samples, and ``within_bin_spread_many`` / ``_medium`` / ``_few``
      for the bins of each shot group when ``shot_groups`` (K names) is given;
    - ``present_bins``: the number of bins with a sample.
    """
    features = features.detach().reshape(features.shape[0], -1)
    bins = bins.detach().long().reshape(-1)
    if features.shape[0] != bins.shape[0] or labels.reshape(-1).shape[0] != bins.shape[0]:
        raise ValueError(
            f"features, labels and bins: expected the same number of samples, got {features.shape[0]}, "
            f"{labels.reshape(-1).shape[0]} and {bins.shape[0]}"
        )
    num_bins = int(bins.max()) + 1 if num_bins is None else num_bins
    if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= num_bins):
        raise ValueError(f"bins: expected values in [0, {num_bins}), got [{int(bins.min())}, {int(bins.max())}]")
    if shot_groups is not None and len(shot_groups) != num_bins:
        raise ValueError(f"shot_groups: expected one name per bin ({num_bins}), got {len(shot_groups)}")
    centroids, counts = bin_centroids(features, bins, num_bins)
    present = centroids[counts > 0]
    if anchors is None:
        anchors = sample_anchors(num_anchors, features.shape[1], anchor_seed)
    a = neighbour_cosines(present)
    mean = float(a.mean()) if a.numel() else math.nan
    cv = float(a.std(unbiased=False)) / abs(mean) if a.numel() and mean != 0 else math.nan
    spread, counts = within_bin_spread(features, bins, num_bins)
    result = {
        "coverage": coverage(present, anchors.double()),
        "neighbour_cosine_mean": mean,
        "neighbour_cosine_cv": cv,
        "rank_correlation": rank_correlation(features, labels, max_pairs),
        "within_bin_spread": _weighted_mean(spread, counts),
        "present_bins": int((counts > 0).sum()),
    }
    if shot_groups is not None:
        for group in SHOT_GROUPS:
            members = torch.tensor([name == group for name in shot_groups])
            result[f"within_bin_spread_{group}"] = _weighted_mean(spread[members], counts[members])
    return result


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean of the non-NaN values weighted by ``weights``; NaN when there is none."""
    keep = ~torch.isnan(values)
    if not bool(keep.any()):
        return math.nan
    w = weights[keep].double()
    return float((values[keep] * w).sum() / w.sum())


def gradient_share(
    regression: torch.Tensor, srl: torch.Tensor, parameters: Sequence[torch.nn.Parameter]
) -> dict[str, float]:
    """How strongly the SRL loss acts on ``parameters`` (those it shares with the regression loss,
    e.g. the encoder) next to the regression loss: ``ratio`` = ||grad srl|| / ||grad regression||
    and ``cosine`` between the two gradients, each taken over all the parameters as one vector.

    Both losses' graphs are kept (``retain_graph``), so the training step's own backward can
    follow; the parameters' ``.grad`` is not touched.
    """
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("parameters: expected at least one parameter that requires a gradient")
    g_reg = torch.autograd.grad(regression, parameters, retain_graph=True, allow_unused=True)
    g_srl = torch.autograd.grad(srl, parameters, retain_graph=True, allow_unused=True)
    flat_reg = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(g_reg, parameters)])
    flat_srl = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(g_srl, parameters)])
    norm_reg, norm_srl = float(flat_reg.norm()), float(flat_srl.norm())
    ratio = norm_srl / norm_reg if norm_reg > 0 else math.inf if norm_srl > 0 else math.nan
    cosine = float(flat_reg @ flat_srl) / (norm_reg * norm_srl) if norm_reg > 0 and norm_srl > 0 else math.nan
    return {"ratio": ratio, "cosine": cosine}
