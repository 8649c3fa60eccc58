"""RankSim (docs/methods.md, "RankSim"): the worked cases, and values and gradients against a
float64 transcription of the released per-anchor loop (ties, duplicate labels)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from srl_ext.methods import TrueRanker, rank_normalised, ranksim_loss

# ----- a transcription of the released code (the STS-B flavour: numpy stable argsort) -----


def _stable_rank(row: torch.Tensor) -> torch.Tensor:
    """(1 + position in descending order) / n; ascending stable argsort, reversed."""
    values = row.detach().cpu().numpy()
    descending = np.argsort(values, kind="stable")[::-1]
    ranks = np.empty(len(values))
    ranks[descending] = np.arange(len(values))
    return torch.from_numpy((ranks + 1) / len(values))


class _ReleasedRanker(torch.autograd.Function):
    @staticmethod
    def forward(ctx, row, lam):
        ranks = _stable_rank(row)
        ctx.lam = lam
        ctx.save_for_backward(row, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad):
        row, ranks = ctx.saved_tensors
        moved = _stable_rank(row + ctx.lam * grad)
        return -(ranks - moved) / (ctx.lam + 1e-8), None


def released_ranksim(features, labels, lam, rng):
    labels = labels.reshape(-1)
    unique = torch.unique(labels)
    if len(unique) < len(labels):
        chosen = [rng.choice((labels == value).nonzero()[:, 0]).item() for value in unique]
        x, y = features[chosen], labels[chosen]
    else:
        x, y = features, labels
    z = x / x.norm(dim=1, keepdim=True)
    similarities = z @ z.t()
    loss = 0
    for i in range(len(y)):
        label_ranks = _stable_rank(-torch.abs(y[i] - y))
        feature_ranks = _ReleasedRanker.apply(similarities[i], lam)
        loss = loss + torch.mean((feature_ranks - label_ranks) ** 2)
    return loss


# ----- the worked cases -----

def test_worked_case_value_and_gradient():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    loss = ranksim_loss(x, y, interpolation_lambda=2.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.15625, abs=1e-12)
    expected = [[0, -0.25], [-0.284184, 0], [-0.044194, 0.044194], [0.023572, 0.117858]]
    assert np.allclose(x.grad.numpy(), expected, atol=1e-6)
    # per anchor: the feature and label ranks of each row
    z = torch.nn.functional.normalize(x.detach(), dim=1)
    per_anchor = ((rank_normalised(z @ z.t()) - rank_normalised(-(y[:, None] - y[None, :]).abs())) ** 2).mean(dim=1)
    assert per_anchor.tolist() == pytest.approx([0.03125, 0.09375, 0.0, 0.03125], abs=1e-12)


def test_feature_order_matching_the_label_order_gives_zero():
    angles = torch.tensor([0.0, 0.3, 0.9, 2.1], dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], dim=1).requires_grad_()
    loss = ranksim_loss(x, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert float(loss.detach()) == 0.0


def test_ties_rank_the_higher_index_first():
    assert rank_normalised(torch.tensor([[-2.0, 0.0, -2.0]], dtype=torch.float64)).tolist() == [[1.0, 1 / 3, 2 / 3]]
    assert rank_normalised(torch.tensor([[5.0, 5.0, 5.0, 1.0]])).tolist() == [[3 / 4, 2 / 4, 1 / 4, 1.0]]


@pytest.mark.parametrize("batch", [1, 5])
def test_one_distinct_label_gives_zero_and_no_gradient(batch):
    x = torch.randn(batch, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = ranksim_loss(x, torch.full((batch,), 7.0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# ----- random cases against the transcription -----

def _case(seed, batch, dim, *, duplicate_labels, tied_features):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    if tied_features:  # repeated rows (and a scaled copy): exact ties in the similarities
        x[3] = x[1]
        x[5] = 2.5 * x[2]
    if duplicate_labels:
        y = torch.randint(0, batch // 2, (batch,), generator=generator).to(torch.float64)
    else:
        # distinct labels on a grid: y_i - d and y_i + d tie in the label ranks of anchor i
        y = torch.randperm(batch, generator=generator).to(torch.float64) * 1.5
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("duplicate_labels", [False, True])
@pytest.mark.parametrize("tied_features", [False, True])
@pytest.mark.parametrize("lam", [2.0, 0.5])
def test_values_and_gradients_match_the_transcription(seed, duplicate_labels, tied_features, lam):
    x, y = _case(seed, 12, 5, duplicate_labels=duplicate_labels, tied_features=tied_features)
    mine_x = x.clone().requires_grad_()
    ref_x = x.clone().requires_grad_()
    mine = ranksim_loss(mine_x, y, interpolation_lambda=lam, rng=random.Random(seed))
    expected = released_ranksim(ref_x, y, lam, random.Random(seed))
    assert float(mine.detach()) == pytest.approx(float(expected.detach()), abs=1e-12)
    upstream = 3.0  # a weight gamma on the term scales the blackbox gradient's perturbation
    (mine * upstream).backward()
    (expected * upstream).backward()
    assert torch.allclose(mine_x.grad, ref_x.grad, atol=1e-10, rtol=0)
    if duplicate_labels or tied_features:
        assert float(mine.detach()) > 0


def test_default_rng_is_the_random_module():
    x, y = _case(4, 16, 3, duplicate_labels=True, tied_features=False)
    random.seed(11)
    mine = ranksim_loss(x, y)
    random.seed(11)
    expected = released_ranksim(x, y, 2.0, random)
    assert float(mine) == pytest.approx(float(expected), abs=1e-12)
    state = random.getstate()
    ranksim_loss(x, y, rng=random.Random(0))
    assert random.getstate() == state  # an own rng leaves the module's stream alone


def test_duplicate_labels_keep_one_sample_each():
    """Each label twice: the loss is the one of the rows the rng picks, one per label in sorted
    label order, and another pick gives another loss."""
    x, _ = _case(5, 8, 4, duplicate_labels=False, tied_features=False)
    y = torch.tensor([3.0, 1.0, 2.0, 0.0, 3.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    losses = set()
    for seed in range(6):
        replay = random.Random(seed)
        rows = [replay.choice((y == value).nonzero()[:, 0].tolist()) for value in torch.unique(y)]
        loss = ranksim_loss(x, y, rng=random.Random(seed))
        assert float(loss) == pytest.approx(float(ranksim_loss(x[rows], y[rows])), abs=1e-15)
        losses.add(round(float(loss), 12))
    assert len(losses) > 1


def test_true_ranker_backward_is_the_blackbox_difference():
    scores = torch.tensor([[0.3, -0.2, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    ranks = TrueRanker.apply(scores, 2.0)
    grad = torch.tensor([[0.0, 0.5, -0.4, 0.0]], dtype=torch.float64)
    ranks.backward(grad)
    moved = rank_normalised(scores.detach() + 2.0 * grad)
    assert torch.allclose(scores.grad, -(rank_normalised(scores.detach()) - moved) / (2.0 + 1e-8))
    assert scores.grad.abs().sum() > 0


def test_half_precision_features_are_ranked_in_float32():
    x, y = _case(6, 10, 4, duplicate_labels=False, tied_features=False)
    loss = ranksim_loss(x.to(torch.bfloat16), y)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("call, words", [
    (lambda: ranksim_loss(torch.zeros(4), torch.zeros(4)), ["ranksim_loss", "'features'", "2-D", "shape (4,)"]),
    (lambda: ranksim_loss(torch.ones(4, 2), torch.zeros(3)), ["ranksim_loss", "'labels'", "B = 4", "length 3"]),
    (lambda: ranksim_loss(torch.ones(4, 2), torch.zeros(4, 2)), ["'labels'", "(B,) or (B, 1)", "(4, 2)"]),
    (lambda: ranksim_loss(torch.ones(4, 2), torch.zeros(4), interpolation_lambda=0), ["'interpolation_lambda'", "> 0"]),
    (lambda: ranksim_loss(torch.ones(4, 2), torch.zeros(4), rng=np.random.default_rng(0)), ["'rng'", "random.Random"]),
    (lambda: ranksim_loss(torch.tensor([[1.0, float("inf")]]), torch.zeros(1)), ["'features'", "finite", "row 0"]),
    (lambda: ranksim_loss(torch.ones(2, 2), torch.tensor([1.0, float("nan")])), ["'labels'", "finite", "index 1"]),
])
def test_bad_inputs_raise_value_errors(call, words):
    with pytest.raises(ValueError) as error:
        call()
    for word in words:
        assert word in str(error.value)
