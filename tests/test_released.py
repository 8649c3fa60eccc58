"""The released STS-B code's surrogate table and contrastive positives (``srl_ext.released``),
on small hand-made batches whose answer can be read off."""

import numpy as np
import torch

import srl_ext
from srl_ext import released
from srl_ext.training.data import sts_b
from srl_ext.reference import normalize


def unit(*values):
    v = torch.tensor(values, dtype=torch.float64)
    return v / v.norm()


def test_centroids_land_in_rows_of_the_truncated_score():
    # scores 0.4 and 0.4 share a centroid; 3.7 -> row 3; 5.0 -> row 5; 4.2 and 4.9 both go to
    # row 4, where the larger score's centroid stays
    scores = torch.tensor([0.4, 3.7, 0.4, 4.2, 4.9, 5.0])
    features = torch.tensor([
        [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0],
    ], dtype=torch.float64)
    memory = torch.zeros(50, 3, dtype=torch.float64)
    memory[10] = torch.tensor([0.0, 0.0, 7.0], dtype=torch.float64)
    table = released.sts_b_surrogate_table(features, scores, memory)
    assert table.shape == (50, 3)
    torch.testing.assert_close(table[0], unit(0.5, 0.0, 0.5))  # mean of z of the two 0.4s
    torch.testing.assert_close(table[3], unit(0.0, 1.0, 0.0))
    torch.testing.assert_close(table[4], unit(0.0, 1.0, 1.0))  # 4.9's, not 4.2's
    torch.testing.assert_close(table[5], unit(1.0, 0.0, 1.0))
    torch.testing.assert_close(table[10], unit(0.0, 0.0, 1.0))  # memory row, normalised
    received = {0, 3, 4, 5}
    for row in set(range(50)) - received - {10}:
        assert table[row].abs().sum() == 0  # zero memory rows stay zero
    # rows 6..49 never receive a centroid, whatever the scores
    assert np.array_equal(released.sts_b_surrogate_table(features, scores * 0 + 4.99, memory)[6:].numpy(),
                          normalize(memory)[6:].numpy())


def test_gradient_reaches_features_through_received_rows_only():
    features = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    scores = torch.tensor([1.0, 1.5, 2.25, 2.25])  # rows 1 (1.5 overwrites 1.0) and 2
    memory = torch.randn(50, 8, dtype=torch.float64)
    table = released.sts_b_surrogate_table(features, scores, memory)
    table[1].sum().backward()
    grad = features.grad
    assert grad[0].abs().sum() == 0  # 1.0's centroid was overwritten
    assert grad[1].abs().sum() > 0 and grad[2:].abs().sum() == 0
    torch.autograd.gradcheck(
        lambda h: released.sts_b_surrogate_table(h, scores, memory), (features.detach().requires_grad_(),)
    )


def test_positive_is_the_nearest_of_fifty_points_on_zero_to_five():
    points = np.linspace(0, 5, 50)  # spaced 5/49 ~ 0.102 apart, not the 0.1 of the bins
    scores = torch.tensor([0.0, 0.05, 0.052, 2.5, 4.95, 5.0, 1.0])
    rows = released.sts_b_positive_rows(scores)
    assert rows.tolist() == [0, 0, 1, 24, 49, 49, 10]
    for score, row in zip(scores.tolist(), rows.tolist()):
        assert row == int(np.argmin(np.abs(np.float32(score) - points.astype(np.float32))))
    # where the proper bins differ: score 1.0 is in bin 10 both ways, 2.5 is bin 25 but point 24
    assert sts_b.score_bins(torch.tensor([2.5])).item() == 25


def test_loss_on_the_released_table_uses_its_positives():
    torch.manual_seed(0)
    loss_fn = srl_ext.SRLLoss.preset("sts_b", feature_dim=8, num_anchors=32, backend="reference")
    features = torch.randn(6, 8, requires_grad=True)
    scores = torch.tensor([0.3, 1.2, 2.6, 3.3, 4.4, 5.0])
    memory = torch.randn(50, 8)
    surrogates, positives = released.sts_b_table_and_positives(features, scores, memory)
    terms = loss_fn.terms_from_table(features, positives, surrogates)
    from srl_ext import reference
    expected = reference.contrastive_loss(features, positives, surrogates, 0.1)
    torch.testing.assert_close(terms.contrastive, expected)
    torch.testing.assert_close(terms.enveloping, reference.enveloping_loss(surrogates, loss_fn.anchors))
    torch.testing.assert_close(terms.homogeneity, reference.homogeneity_loss(surrogates, 1.0, 0.1))
    torch.testing.assert_close(terms.total, 1e-4 * expected + 1e-2 * terms.enveloping + 1e-4 * terms.homogeneity)
    terms.total.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
