"""Faults of the library, round two (issue 23): second derivatives through the fused ops, every
raw op checking every tensor argument, and SRLSettings refusing values that only diverge later."""

import pytest
import torch
from helpers import make_inputs

from srl_ext import SRLSettings, backends, ops, reference
from srl_ext import functional as F

pytestmark = pytest.mark.skipif(not ops.available(), reason=ops.LOAD_ERROR or "")

FUSED_CPU = [b for b in ("cpu", "triton") if backends.unavailable_reason(b, torch.device("cpu")) is None]


def case(seed=0):
    features, bins, memory, anchors = make_inputs(6, 5, 20, 8, dtype=torch.float64, seed=seed)
    return features, bins, memory, anchors


@pytest.mark.parametrize("backend", FUSED_CPU)
@pytest.mark.parametrize("function", ["srl_loss", "srl_terms"])
def test_a_second_derivative_of_a_fused_backend_is_refused_not_silently_wrong(backend, function):
    features, bins, memory, anchors = case()
    settings = SRLSettings(w1=1.0, w2=2.0, w3=0.5)

    def loss(h, name):
        if function == "srl_loss":
            return F.srl_loss(h, bins, memory, anchors, settings, backend=name).total
        return sum(F.srl_terms(h, bins, memory, anchors, settings, backend=name))

    (expected,) = torch.autograd.grad(loss(features, "reference"), features, create_graph=True)
    assert expected.grad_fn is not None  # the reference is twice differentiable
    (grad,) = torch.autograd.grad(loss(features, backend), features, create_graph=True)
    torch.testing.assert_close(grad.detach(), expected.detach())  # the first derivative is the same
    assert grad.grad_fn is not None and grad.requires_grad  # it does not silently end the graph
    penalty = grad.pow(2).sum()
    with pytest.raises(RuntimeError, match="differentiable once.*backend='reference'"):
        penalty.backward()
    # without create_graph, nothing changes: a gradient without a graph
    (plain,) = torch.autograd.grad(loss(features, backend), features)
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, expected.detach())


def test_a_gradient_penalty_runs_with_the_reference_backend():
    features, bins, memory, anchors = case(1)
    settings = SRLSettings(w1=1.0, w2=2.0, w3=0.5, envelope="soft", envelope_temperature=0.5)
    total = F.srl_loss(features, bins, memory, anchors, settings, backend="reference").total
    (grad,) = torch.autograd.grad(total, features, create_graph=True)
    grad.pow(2).sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def table_inputs():
    h = torch.randn(4, 8, dtype=torch.float64)
    bins = torch.tensor([0, 1, 1, 3])
    surrogates, mean_norms, counts = torch.ops.srl_ext.surrogate_table(h, bins, torch.randn(5, 8, dtype=torch.float64))
    return dict(grad_surrogates=torch.randn(5, 8, dtype=torch.float64), features=h, bins=bins, surrogates=surrogates,
                mean_norms=mean_norms, counts=counts)


@pytest.mark.parametrize("argument, value, words", [
    ("grad_surrogates", torch.randn(3, 8, dtype=torch.float64), "'grad_surrogates' must have 5 rows"),  # wrote past its buffer
    ("grad_surrogates", torch.randn(1, 64, dtype=torch.float64), "'grad_surrogates' must have 8 columns"),
    ("grad_surrogates", torch.randn(5, 8).int(), "'grad_surrogates' must be floating point"),
    ("grad_surrogates", torch.randn(5, 8, device="meta"), "'grad_surrogates' must be"),
    ("grad_surrogates", torch.randn(40), "'grad_surrogates' must be 2-D"),
    ("bins", torch.tensor([0, 1, 1, 3], dtype=torch.int32), "'bins' must be"),
    ("bins", torch.tensor([0, 1, 1]), "'bins' must have shape"),
    ("bins", torch.tensor([0, 1, 1, 7]), r"'bins' must hold bin indices in \[0, 5\)"),
    ("surrogates", torch.randn(5, 4, dtype=torch.float64), "'surrogates' must have 8 columns"),
    ("mean_norms", torch.ones(3, dtype=torch.float64), r"'mean_norms' must have shape \(5,\)"),
    ("counts", torch.ones(5), "'counts' must be"),
    ("counts", torch.ones(9, dtype=torch.long), r"'counts' must have shape \(5,\)"),
    ("features", torch.randn(4, 8, 1, dtype=torch.float64), "'features' must be 2-D"),
])
def test_the_table_backward_op_checks_every_argument(argument, value, words):
    inputs = table_inputs()
    inputs[argument] = value
    with pytest.raises(ValueError, match=words):
        torch.ops.srl_ext.surrogate_table_backward(*inputs.values())


def test_a_gradient_far_too_small_for_a_large_table_is_refused():
    h = torch.randn(2, 64)
    bins = torch.tensor([0, 199999])
    surrogates, mean_norms, counts = torch.ops.srl_ext.surrogate_table(h, bins, torch.zeros(200000, 64))
    with pytest.raises(ValueError, match="'grad_surrogates' must have 200000 rows"):  # segfaulted
        torch.ops.srl_ext.surrogate_table_backward(torch.randn(1, 64), h, bins, surrogates, mean_norms, counts)


@pytest.mark.parametrize("op, args, words", [
    ("surrogate_table", lambda h, b, m, a: (h, b.int(), m), "'bins' must be"),
    ("surrogate_table", lambda h, b, m, a: (h, b[:2], m), "'bins' must have shape"),
    ("surrogate_table", lambda h, b, m, a: (h, b, m[:, :3]), "'memory' must have 8 columns"),
    ("surrogate_table", lambda h, b, m, a: (h[0], b, m), "'features' must be 2-D"),
    ("contrastive", lambda h, b, m, a: (h, b, m[:, :3], 0.1, False), "'surrogates' must have 8 columns"),
    ("contrastive", lambda h, b, m, a: (h, b[:2], m, 0.1, False), "'bins' must have shape"),
    ("contrastive", lambda h, b, m, a: (h, b, m, 0.0, False), "'temperature' must be > 0"),
    ("envelope", lambda h, b, m, a: (m, a[:, :3], None), "'anchors' must have 8 columns"),
    ("envelope", lambda h, b, m, a: (m[0], a, None), "'surrogates' must be 2-D"),
    ("homogeneity", lambda h, b, m, a: (m.int(), -1.0, 0.1), "'surrogates' must be floating point"),
    ("srl_loss", lambda h, b, m, a: (h, b, m, a.to("meta"), 1.0, 1.0, 1.0, 0.1, -1.0, 0.1, None, False),
     "'anchors' must be"),
])
def test_every_raw_cpu_op_checks_shapes_dtypes_and_devices(op, args, words):
    features, bins, memory, anchors = case()
    with pytest.raises(ValueError, match=words):
        getattr(torch.ops.srl_ext, op)(*args(features.detach(), bins, memory, anchors))


@pytest.mark.parametrize("name, value, words", [
    ("w1", -1.0, "'w1' must be a finite number >= 0, got -1.0"),
    ("w2", float("inf"), "'w2' must be a finite number >= 0, got inf"),
    ("w3", float("nan"), "'w3' must be a finite number >= 0"),
    ("homogeneity_sign", float("nan"), "'homogeneity_sign' must be a finite number, got nan"),
    ("homogeneity_beta", -0.1, "'homogeneity_beta' must be a finite number >= 0, got -0.1"),
    ("label_weighting", "no", "'label_weighting' must be True or False, got str 'no'"),
    ("label_weighting", 1, "'label_weighting' must be True or False"),
    ("w1", True, "'w1' must be a finite number"),
])
def test_settings_refuse_values_that_would_diverge_or_mean_the_opposite(name, value, words):
    with pytest.raises(ValueError, match=words):
        SRLSettings(**{name: value})
    features, bins, memory, anchors = case()
    with pytest.raises(ValueError, match=words):
        F.srl_terms(features, bins, memory, anchors, **{name: value})


def test_settings_still_take_the_ordinary_values():
    s = SRLSettings(w1=0, w2=2, w3=0.5, homogeneity_sign=1, homogeneity_beta=0, label_weighting=True)
    assert (s.w1, s.w2, s.homogeneity_sign, s.label_weighting) == (0.0, 2.0, 1.0, True)
    assert isinstance(s.w1, float)


@pytest.mark.parametrize("function", ["srl_loss", "srl_terms", "surrogate_table"])
def test_meta_tensors_are_a_value_error_naming_the_argument(function):
    features, bins, memory, anchors = (x.detach().to("meta") for x in case())
    call = {"srl_loss": lambda: F.srl_loss(features, bins, memory, anchors),
            "srl_terms": lambda: F.srl_terms(features, bins, memory, anchors),
            "surrogate_table": lambda: F.surrogate_table(features, bins, memory)}[function]
    with pytest.raises(ValueError, match="argument 'features' must be a tensor with data.*got a tensor on the meta device"):
        call()
