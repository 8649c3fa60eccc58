"""srl_ext.analysis on constructed features whose geometry is known in closed form."""

import math

import pytest
import torch

from srl_ext import analysis


def circle_points(angles: torch.Tensor, dim: int = 8, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Points at ``angles`` on a great circle of S^{dim-1} (the first two coordinates)."""
    points = torch.zeros(len(angles), dim, dtype=torch.float64)
    points[:, 0], points[:, 1] = torch.cos(angles), torch.sin(angles)
    return points if norms is None else points * norms.unsqueeze(1)


def test_points_ordered_on_a_great_circle():
    # 10 bins, 3 samples each at the bin's angle b * pi/12 (so the whole trace spans 135 degrees),
    # with different norms: only directions count.
    step = math.pi / 12
    bins = torch.arange(10).repeat_interleave(3)
    features = circle_points(bins.double() * step, norms=torch.linspace(0.5, 3.0, 30, dtype=torch.float64))
    labels = bins.double() * 0.5
    geometry = analysis.feature_geometry(features, labels, bins)
    assert geometry["neighbour_cosine_mean"] == pytest.approx(math.cos(step), abs=1e-12)
    assert geometry["neighbour_cosine_cv"] == pytest.approx(0.0, abs=1e-10)
    assert geometry["rank_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert geometry["within_bin_spread"] == pytest.approx(0.0, abs=1e-12)
    assert geometry["present_bins"] == 10
    # fewer pairs than there are: a random subset keeps the exact ordering
    assert analysis.rank_correlation(features, labels, max_pairs=200) == pytest.approx(1.0, abs=1e-12)


def test_uneven_spacing_shows_in_the_coefficient_of_variation():
    angles = torch.tensor([0.0, 0.1, 0.2, 0.6, 1.0], dtype=torch.float64)  # steps 0.1, 0.1, 0.4, 0.4
    geometry = analysis.feature_geometry(circle_points(angles), torch.arange(5.0), torch.arange(5))
    a = torch.cos(torch.tensor([0.1, 0.1, 0.4, 0.4], dtype=torch.float64))
    assert geometry["neighbour_cosine_mean"] == pytest.approx(float(a.mean()), abs=1e-12)
    assert geometry["neighbour_cosine_cv"] == pytest.approx(float(a.std(unbiased=False) / a.mean()), abs=1e-12)


@pytest.mark.parametrize("num_centroids", [1, 2, 4, 7])
def test_coverage_of_evenly_spaced_centroids_on_a_circle(num_centroids):
    # Anchors uniform on the circle: the angle to the nearest of K evenly spaced centroids is
    # uniform on [0, pi/K], so the mean largest cosine is sin(pi/K) / (pi/K).
    anchors = circle_points(2 * math.pi * (torch.arange(36000, dtype=torch.float64) + 0.5) / 36000, dim=2)
    bins = torch.arange(num_centroids)
    features = circle_points(2 * math.pi * bins.double() / num_centroids, dim=2)
    geometry = analysis.feature_geometry(features, bins.double(), bins, anchors=anchors)
    half_gap = math.pi / num_centroids
    assert geometry["coverage"] == pytest.approx(math.sin(half_gap) / half_gap, abs=1e-6)


def test_collapsed_points():
    features = torch.ones(40, 16)
    bins = torch.arange(8).repeat_interleave(5)
    anchors = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    anchors = torch.cat([anchors, -anchors])  # symmetric: a single direction covers exactly 0 on average
    anchors = anchors / anchors.norm(dim=1, keepdim=True)
    geometry = analysis.feature_geometry(features, bins.double(), bins, anchors=anchors)
    assert geometry["coverage"] == pytest.approx(0.0, abs=1e-12)
    assert geometry["neighbour_cosine_mean"] == pytest.approx(1.0, abs=1e-12)
    assert geometry["neighbour_cosine_cv"] == pytest.approx(0.0, abs=1e-12)
    assert geometry["within_bin_spread"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(geometry["rank_correlation"])  # every feature distance is 0: no ranking


def test_random_points():
    # Gaussian points in 256 dimensions with labels unrelated to them: no ordinal structure,
    # centroids nearly orthogonal, and a bin of n samples spreads to 1 - ||mean of n unit
    # vectors|| = 1 - 1/sqrt(n) up to O(1/sqrt(D n)).
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1000, 256, generator=generator, dtype=torch.float64)
    bins = torch.arange(10).repeat_interleave(100)
    labels = bins.double() + torch.rand(1000, generator=generator, dtype=torch.float64)
    geometry = analysis.feature_geometry(features, labels, bins)
    assert abs(geometry["rank_correlation"]) < 0.02
    assert abs(geometry["neighbour_cosine_mean"]) < 0.1
    assert geometry["within_bin_spread"] == pytest.approx(1 - 1 / math.sqrt(100), abs=0.01)
    # uniform anchors against 10 nearly orthogonal directions in 256-d: little of the sphere is near any
    assert 0.0 < geometry["coverage"] < 0.2


def test_spread_per_shot_group():
    # bins 0, 1: many-shot, each sample on the same point; bin 2: few-shot, two opposite points
    # (spread 1); bin 3: medium, one sample (no spread to measure).
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    bins = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    geometry = analysis.feature_geometry(features, bins.double(), bins, shot_groups=["many", "many", "few", "medium"])
    assert geometry["within_bin_spread_many"] == pytest.approx(0.0, abs=1e-12)
    assert geometry["within_bin_spread_few"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(geometry["within_bin_spread_medium"])
    assert geometry["within_bin_spread"] == pytest.approx(2 / 6, abs=1e-12)  # sample-weighted over bins 0-2


def test_gradient_share_of_two_linear_losses():
    # L_reg = a.p and L_srl = b.p: the gradients are a and b.
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 0.5, 0.0])
    share = analysis.gradient_share((a * p).sum(), (b * p).sum(), [p])
    assert share["ratio"] == pytest.approx(0.5 / 5.0)
    assert share["cosine"] == pytest.approx(0.0)
    share = analysis.gradient_share((a * p).sum(), (-2 * a * p).sum(), [p])
    assert share["ratio"] == pytest.approx(2.0) and share["cosine"] == pytest.approx(-1.0)
    assert p.grad is None  # measuring leaves the training step's gradients alone


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same number of samples"):
        analysis.feature_geometry(torch.ones(4, 3), torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"bins: expected values in \[0, 2\)"):
        analysis.feature_geometry(torch.ones(2, 3), torch.zeros(2), torch.tensor([0, 2]), num_bins=2)
    with pytest.raises(ValueError, match="one name per bin"):
        analysis.feature_geometry(torch.ones(2, 3), torch.zeros(2), torch.tensor([0, 1]), shot_groups=["many"])


def test_rank_correlation_of_many_samples_reads_pairs_in_chunks():
    # more samples than the Gram-matrix path takes: pairs drawn at random, cosines in chunks
    angles = torch.linspace(0.0, 3.0, 9000, dtype=torch.float64)
    features = circle_points(angles, dim=3)
    assert analysis.rank_correlation(features, angles, max_pairs=100_000) == pytest.approx(1.0, abs=1e-6)
    shuffled = angles[torch.randperm(9000, generator=torch.Generator().manual_seed(0))]
    assert abs(analysis.rank_correlation(features, shuffled, max_pairs=100_000)) < 0.02  # labels unrelated to place
