"""The reference terms on small cases worked out by hand (docs/method.md)."""

import math

import pytest
import torch

from srl_ext import reference

BACKENDS = ["reference", "cpu"]


def backend_module(name):
    from srl_ext import backends

    return backends.resolve(name, torch.device("cpu"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_surrogate_table_by_hand(backend):
    # Bin 0 holds h = (3, 4) and (0, 2): z = (0.6, 0.8) and (0, 1), mean (0.3, 0.9), normalised.
    # Bin 1 is absent: its memory row (0, 5) normalised. Bin 2 is absent with a zero row: stays 0.
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    bins = torch.tensor([0, 0])
    memory = torch.tensor([[7.0, 7.0], [0.0, 5.0], [0.0, 0.0]], dtype=torch.float64)
    table = backend_module(backend).surrogate_table(features, bins, memory)
    norm = math.sqrt(0.3**2 + 0.9**2)
    expected = torch.tensor([[0.3 / norm, 0.9 / norm], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contrastive_by_hand(backend):
    # z = (1, 0); c_0 = (1, 0), c_1 = (0, 1); tau = 0.5: logits (2, 0), label 0.
    features = torch.tensor([[2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    bins = torch.tensor([0])
    surrogates = torch.eye(2, dtype=torch.float64)
    impl = backend_module(backend)
    loss = impl.contrastive_loss(features, bins, surrogates, 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-14)
    # Label-distance weights over the 1 x 2 table: (|0-0|+1)/2 = 1/2 and (|0-1|+1)/2 = 1;
    # the numerator keeps weight 1: loss = log(0.5 e^2 + e^0) - 2.
    weighted = impl.contrastive_loss(features, bins, surrogates, 0.5, label_weighting=True)
    assert weighted.item() == pytest.approx(math.log(0.5 * math.exp(2.0) + 1.0) - 2.0, abs=1e-14)
    # d loss / d z = (p_1 (c_1 - c_0)) / tau with p_1 = 1/(1+e^2); projected on the tangent of
    # z = (1, 0) and divided by ||h|| = 2: only the second component survives.
    (grad,) = torch.autograd.grad(loss, features)
    p1 = 1 / (1 + math.exp(2.0))
    torch.testing.assert_close(grad, torch.tensor([[0.0, p1 / 0.5 / 2.0]], dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_enveloping_hard_by_hand(backend):
    # Anchors (1,0), (0,1), (-1,0); surrogates c_0 = (1,0), c_1 = 0 (a zero row: cosine 0).
    # Max cosines: 1 (k=0); tie 0 = 0 (lowest k wins: k=0); 0 from the zero row (k=1).
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    surrogates = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = backend_module(backend).enveloping_loss(surrogates, anchors)
    assert loss.item() == pytest.approx(1 - 1 / 3, abs=1e-15)
    (grad,) = torch.autograd.grad(loss, surrogates)
    expected = torch.tensor([[-1 / 3, -1 / 3], [1 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_enveloping_soft_by_hand(backend):
    # One anchor (1, 0), surrogates (1, 0) and (0, 1), s = 0.5: coverage s*log(e^2 + e^0).
    anchors = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    surrogates = torch.eye(2, dtype=torch.float64, requires_grad=True)
    loss = backend_module(backend).enveloping_loss(surrogates, anchors, 0.5)
    assert loss.item() == pytest.approx(1 - 0.5 * math.log(math.exp(2.0) + 1.0), abs=1e-14)
    (grad,) = torch.autograd.grad(loss, surrogates)
    weight = math.exp(2.0) / (math.exp(2.0) + 1.0)  # softmax weight of c_0
    expected = torch.tensor([[-weight, 0.0], [-(1 - weight), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_homogeneity_by_hand(backend, sign):
    # Rows (1,0), (1,0), (0,1): neighbour cosines a = (1, 0), sum 1, unbiased variance 0.5.
    surrogates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = backend_module(backend).homogeneity_loss(surrogates, sign, 0.1)
    assert loss.item() == pytest.approx(sign * 1.0 + 0.1 * 0.5, abs=1e-15)
    # dL/da = sign + 0.1 * 2 (a - 0.5) / 1 = (sign + 0.1, sign - 0.1).
    (grad,) = torch.autograd.grad(loss, surrogates)
    da0, da1 = sign + 0.1, sign - 0.1
    # dL/dc_k = dL/da_k c_{k+1} + dL/da_{k-1} c_{k-1}.
    expected = torch.tensor([[da0, 0.0], [da0, da1], [da1, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_homogeneity_two_bins_has_no_variance_term(backend):
    surrogates = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    assert backend_module(backend).homogeneity_loss(surrogates, -1.0, 0.1).item() == pytest.approx(-0.6, abs=1e-15)


def test_label_weights_match_the_spec_formula():
    bins = torch.tensor([0, 3])
    log_w = reference.label_distance_log_weights(bins, 5, torch.float64)
    distance = torch.tensor([[1, 2, 3, 4, 5], [4, 3, 2, 1, 2]], dtype=torch.float64)
    torch.testing.assert_close(log_w.exp(), distance / 5)


@pytest.fixture
def unchecked_bins(monkeypatch):
    """The public API as on GPU tensors: bins are not checked (that needs a host sync)."""
    from srl_ext import validation

    monkeypatch.setattr(validation, "reads_data", lambda x: False)


def test_out_of_range_bins_without_the_check(unchecked_bins):
    # As in the fused GPU kernels: such a sample belongs to no bin, its contrastive loss and
    # gradient row are NaN; nothing indexes out of range (a device-side assert on CUDA).
    from srl_ext import distributed, functional

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    anchors = reference.normalize(torch.randn(9, 3, generator=generator, dtype=torch.float64))
    bins = torch.tensor([0, -1, 2, 2, 4, 1, 0])
    valid = (bins >= 0) & (bins < 4)
    table = functional.surrogate_table(features, bins, memory, backend="reference")
    torch.testing.assert_close(table, reference.surrogate_table(features[valid], bins[valid], memory))
    torch.testing.assert_close(distributed.surrogate_table(features, bins, memory), table)
    contrastive, enveloping, homogeneity = functional.srl_terms(
        features, bins, memory, anchors, temperature=0.5, label_weighting=True, backend="reference")
    assert torch.isnan(contrastive) and torch.isfinite(enveloping) and torch.isfinite(homogeneity)
    (grad,) = torch.autograd.grad(contrastive, features)
    assert bool(torch.isnan(grad[~valid]).all()) and bool(torch.isfinite(grad[valid]).all())
