"""ConR (docs/methods.md, "ConR"): the worked cases, and values and gradients against a float64
transcription of the released loss, with and without sample weights."""

from __future__ import annotations

import pytest
import torch

from srl_ext.methods import conr_loss

# ----- a transcription of the released function, exp and log as released (float64) -----


def released_conr(features, targets, preds, w=1.0, weights=1.0, t=0.07, e=0.01, clean=False, parts=False):
    """targets, preds, weights: (n, 1) columns (weights may be the number 1). parts: the
    per-anchor terms and the counts of positives and negatives instead of the loss."""
    q = features / features.norm(dim=1, keepdim=True)
    label_dist = (targets - targets.T).abs()
    pred_dist = (preds - preds.T).abs()
    pos = label_dist <= w
    neg = (~pos) & (pred_dist <= w)
    pos = pos & ~torch.eye(len(features), dtype=torch.bool)
    prod = q @ q.T / t
    pos_prod = prod * pos
    neg_prod = prod * neg
    pushing = weights * torch.exp(label_dist * e)
    neg_sum = (pushing * torch.exp(neg_prod) * neg).sum(1)
    first = (torch.exp(pos_prod) * pos).sum(1) if clean else torch.exp(pos_prod).sum(1)
    per_anchor = ((-torch.log(torch.exp(pos_prod) / (first + neg_sum).unsqueeze(-1))) * pos).sum(1) / pos.sum(1)
    if parts:
        return per_anchor, pos.sum(1), neg.sum(1)
    return (weights * (per_anchor * neg.any(1)).unsqueeze(-1)).mean()


H = torch.tensor([[1, 0], [0.8, 0.6], [0, 1], [0.9, -0.1], [0.6, 0.8], [-0.2, 1]], dtype=torch.float64)
Y = torch.tensor([20.0, 21, 30, 20, 21, 30], dtype=torch.float64)
P = torch.tensor([22.0, 21.5, 22.5, 21, 25, 30], dtype=torch.float64)


# ----- the worked cases -----

def test_worked_case():
    h = H.clone().requires_grad_()
    loss = conr_loss(h, Y, P)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.810961, abs=1e-6)
    assert h.grad[0].tolist() == pytest.approx([0.0, -1.528939], abs=1e-6)
    assert h.grad[1].tolist() == pytest.approx([-0.967339, 1.289786], abs=1e-6)
    assert float(conr_loss(H, Y, P, clean=True)) == pytest.approx(0.810960, abs=1e-6)


def test_worked_case_per_anchor_terms_of_the_transcription():
    """The transcription's parts on the worked case; anchors 3, 4 and 5 have no negatives, so
    their terms are zeroed but still count in the mean over six."""
    per_anchor, positives, negatives = released_conr(H, Y.unsqueeze(1), P.unsqueeze(1), parts=True)
    assert per_anchor.tolist() == pytest.approx([2.863067, 1.997944, 0.004757, 3.599252, 3.874123, 4e-6], abs=1e-6)
    assert positives.tolist() == [3, 3, 1, 3, 3, 1] and negatives.tolist() == [1, 1, 2, 0, 0, 0]
    assert float(conr_loss(H, Y, P)) == pytest.approx(float(per_anchor[:3].sum()) / 6, rel=1e-12)


def test_worked_case_with_weights_and_without_negatives():
    weights = torch.tensor([1, 2, 0.5, 1, 2, 0.5], dtype=torch.float64)
    assert float(conr_loss(H, Y, P, weights=weights)) == pytest.approx(1.145213, abs=1e-6)
    h = H.clone().requires_grad_()
    loss = conr_loss(h, Y, torch.tensor([0.0, 10, 20, 30, 40, 50], dtype=torch.float64))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(h.grad, torch.zeros_like(h))


# ----- random cases against the transcription -----

def _views(seed, batch=10, dim=6):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(20, 32, (batch,), generator=generator).to(torch.float64)
    base = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    h = torch.cat([base + 0.3 * torch.randn(batch, dim, generator=generator, dtype=torch.float64),
                   base + 0.3 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)])
    p = torch.cat([y, y]) + torch.randn(2 * batch, generator=generator, dtype=torch.float64) * 3
    w = torch.rand(batch, generator=generator, dtype=torch.float64) * 2 + 0.2
    return h, torch.cat([y, y]), p, torch.cat([w, w])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("clean", [False, True])
@pytest.mark.parametrize("settings", [dict(), dict(w=2.0, temperature=0.2, e=0.05)])
def test_values_and_gradients_match_the_transcription(seed, weighted, clean, settings):
    h, y, p, w = _views(seed)
    mine_h, ref_h = h.clone().requires_grad_(), h.clone().requires_grad_()
    mine = conr_loss(mine_h, y, p, weights=w if weighted else None, clean=clean, **settings)
    expected = released_conr(ref_h, y.unsqueeze(1), p.unsqueeze(1), w=settings.get("w", 1.0),
                             weights=w.unsqueeze(1) if weighted else 1.0, t=settings.get("temperature", 0.07),
                             e=settings.get("e", 0.01), clean=clean)
    assert float(mine.detach()) == pytest.approx(float(expected.detach()), rel=1e-11)
    mine.backward()
    expected.backward()
    assert torch.allclose(mine_h.grad, ref_h.grad, rtol=1e-9, atol=1e-12)
    assert float(mine.detach()) > 0


def test_clean_variant_drops_the_ones_of_the_non_positives():
    h, y, p, _ = _views(5)
    loss = float(conr_loss(h, y, p, temperature=1.0))
    clean = float(conr_loss(h, y, p, temperature=1.0, clean=True))
    assert clean < loss  # every denominator loses one exp(0) per non-positive j


def test_predictions_get_no_gradient_and_half_precision_runs_in_float32():
    h, y, p, _ = _views(6)
    p = p.clone().requires_grad_()
    loss = conr_loss(h.float().requires_grad_(), y, p)
    loss.backward()
    assert p.grad is None
    assert conr_loss(h.to(torch.bfloat16), y, p.detach()).dtype == torch.float32
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("call, words", [
    (lambda: conr_loss(H[:5], Y[:5], P[:5]), ["conr_loss", "'features'", "2B rows", "5 rows"]),
    (lambda: conr_loss(H, torch.tensor([20.0, 21, 30, 20, 21, 31]), P),
     ["conr_loss", "'labels'", "repeated for the second view", "30.0 and 31.0 at rows 2 and 5"]),
    (lambda: conr_loss(H, Y, P[:4]), ["'predictions'", "B = 6", "length 4"]),
    (lambda: conr_loss(H, Y, P, weights=torch.ones(3)), ["'weights'", "B = 6", "length 3"]),
    (lambda: conr_loss(H, Y, P, weights=-torch.ones(6)), ["'weights'", ">= 0", "-1.0 at index 0"]),
    (lambda: conr_loss(H, Y, P, weights=torch.ones(6, dtype=torch.int64)), ["'weights'", "float", "int64"]),
    (lambda: conr_loss(H, Y, P, temperature=0.0), ["'temperature'", "> 0"]),
    (lambda: conr_loss(H, Y, P, w=-1.0), ["'w'", ">= 0"]),
    (lambda: conr_loss(H.reshape(-1), Y, P), ["'features'", "2-D", "(12,)"]),
])
def test_bad_inputs_raise_value_errors(call, words):
    with pytest.raises(ValueError) as error:
        call()
    for word in words:
        assert word in str(error.value)
