"""The fused C++ CPU ops against the reference: values, gradients, dtypes, opcheck, compile."""

import pytest
import torch
from hypothesis import given, settings

from helpers import assert_compiled_matches_eager, loss_case_strategies, make_inputs, mixed_bins, terms_and_grad
from srl_ext import functional, ops, reference
from srl_ext.settings import PRESETS

pytestmark = pytest.mark.skipif(not ops.available(), reason=str(ops.LOAD_ERROR))

PRESET_SIZES = {  # (B, K, N, D)
    "agedb": (64, 102, 2000, 128),
    "imdb_wiki": (256, 187, 2000, 128),
    "sts_b": (16, 50, 1000, 128),
}


@pytest.mark.parametrize("preset", PRESET_SIZES)
@pytest.mark.parametrize("envelope_temperature", [None, 0.1])
@pytest.mark.parametrize("label_weighting", [False, True])
def test_float32_parity_at_preset_sizes(preset, envelope_temperature, label_weighting):
    """The issue's bar: max abs difference at most 1e-5 in float32, forward and backward."""
    batch, num_bins, num_anchors, dim = PRESET_SIZES[preset]
    p = PRESETS[preset].srl  # the loss settings of the benchmark
    # Half the bins present, a few never seen: absent rows come from memory, some are zero.
    inputs = make_inputs(batch, num_bins, num_anchors, dim, present_bins=num_bins // 2, zero_memory_rows=3)
    options = dict(temperature=p.temperature, envelope_temperature=envelope_temperature,
                   label_weighting=label_weighting, sign=p.homogeneity_sign)
    expected_terms, expected_grad = terms_and_grad(reference, *inputs, **options)
    terms, grad = terms_and_grad(ops, *inputs, **options)
    assert (terms - expected_terms).abs().max() <= 1e-5
    assert (grad - expected_grad).abs().max() <= 1e-5


@pytest.mark.parametrize("envelope_temperature", [None, 0.2])
@pytest.mark.parametrize("label_weighting", [False, True])
def test_gradcheck_float64(envelope_temperature, label_weighting):
    features, bins, memory, anchors = make_inputs(6, 5, 7, 4, dtype=torch.float64, present_bins=3, zero_memory_rows=1)

    # The contrastive term sees the surrogates detached, so its analytic gradient ignores how the
    # table moves with h; gradcheck's finite differences would not: hold its table fixed.
    fixed_table = reference.surrogate_table(features, bins, memory).detach()

    def total(h):
        table = ops.surrogate_table(h, bins, memory)
        return (
            ops.contrastive_loss(h, bins, fixed_table, 0.3, label_weighting)
            + ops.enveloping_loss(table, anchors, envelope_temperature)
            + ops.homogeneity_loss(table, -1.0, 0.1)
        )

    assert torch.autograd.gradcheck(total, (features,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["contrastive", "envelope", "homogeneity", "table"])
def test_gradcheck_each_op(op):
    features, bins, memory, anchors = make_inputs(5, 4, 9, 3, dtype=torch.float64, present_bins=3)
    surrogates = reference.surrogate_table(features, bins, memory).detach().requires_grad_()
    functions = {
        "contrastive": (lambda h: ops.contrastive_loss(h, bins, surrogates, 0.2, True), features),
        "envelope": (lambda c: ops.enveloping_loss(c, anchors, 0.3), surrogates),
        "homogeneity": (lambda c: ops.homogeneity_loss(c, 1.0, 0.5), surrogates),
        "table": (lambda h: ops.surrogate_table(h, bins, memory), features),
    }
    function, argument = functions[op]
    assert torch.autograd.gradcheck(function, (argument,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_features_accumulate_in_float32(dtype):
    features, bins, memory, anchors = make_inputs(32, 20, 300, 16, dtype=dtype, present_bins=12, zero_memory_rows=2)
    terms, grad = terms_and_grad(ops, features, bins, memory, anchors, envelope_temperature=0.1)
    assert terms.dtype == torch.float32 and grad.dtype == dtype
    upcast = features.detach().float().requires_grad_()
    expected_terms, expected_grad = terms_and_grad(reference, upcast, bins, memory, anchors, envelope_temperature=0.1)
    # The kernels read the same half values as the upcast reference: only rounding of the
    # gradient back to half separates them.
    torch.testing.assert_close(terms, expected_terms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=2e-2, atol=1e-3)


def test_exact_argmax_ties_go_to_the_lowest_bin():
    # Rows 1 and 3 are equal and exactly representable, so every anchor that prefers them sees
    # an exact tie; the gradient must land on row 1 only, as torch.max picks the first index.
    surrogates = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        requires_grad=True,
    )
    anchors = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    for module in (reference, ops):
        loss = module.enveloping_loss(surrogates, anchors)
        (grad,) = torch.autograd.grad(loss, surrogates)
        assert grad[3].abs().sum() == 0 and grad[1, 1] == -(1.0 + 0.5) / 4
        # Anchors 3 and 4 see max 0 at k = 1 (c_1 before the zero row c_4 and c_3): lowest k.
        assert grad[4].abs().sum() == 0
        assert loss.item() == pytest.approx(1 - (1.0 + 0.5 + 0.0 + 0.0) / 4)


@settings(max_examples=40, deadline=None)
@given(
    **loss_case_strategies(),
)
def test_property_matches_reference(batch, num_bins, num_anchors, dim, mix, zero_rows, envelope_temperature,
                                    label_weighting, seed):
    features, _, memory, anchors = make_inputs(batch, num_bins, num_anchors, dim, dtype=torch.float64, seed=seed,
                                               zero_memory_rows=min(zero_rows, num_bins))
    bins = mixed_bins(mix, batch, num_bins, seed)
    options = dict(temperature=0.2, envelope_temperature=envelope_temperature, label_weighting=label_weighting)
    expected_terms, expected_grad = terms_and_grad(reference, features, bins, memory, anchors, **options)
    terms, grad = terms_and_grad(ops, features, bins, memory, anchors, **options)
    torch.testing.assert_close(terms, expected_terms, rtol=1e-10, atol=1e-10)
    # Bin means of few unit vectors can be short, and 1/||mean|| scales the gradient's round-off.
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9 * (1 + float(expected_grad.abs().max())))


def test_million_anchors():
    """N = 10^6 anchors against a chunked reference (the kernel never holds the K x N matrix)."""
    surrogates = reference.normalize(torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    surrogates.requires_grad_()
    anchors = reference.normalize(torch.randn(10**6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    for temperature in (None, 0.1):
        loss = ops.enveloping_loss(surrogates, anchors, temperature)
        (grad,) = torch.autograd.grad(loss, surrogates)
        expected = reference.enveloping_loss(surrogates, anchors, temperature)
        (expected_grad,) = torch.autograd.grad(expected, surrogates)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def transposed(x: torch.Tensor) -> torch.Tensor:
    """The same values in a column-major layout (strides (1, rows)): the kernels return contiguous
    outputs for it, and the fake kernels must say so."""
    return x.detach().t().contiguous().t().requires_grad_(x.requires_grad)


def _sample_op_inputs():
    features, bins, memory, anchors = make_inputs(9, 6, 40, 5, present_bins=4, zero_memory_rows=1)
    surrogates = reference.surrogate_table(features, bins, memory).detach().requires_grad_()
    table, norms, counts = torch.ops.srl_ext.surrogate_table(features.detach(), bins, memory)
    features_t, surrogates_t = transposed(features), transposed(surrogates)
    return {
        "surrogate_table": [(features, bins, memory), (features_t, bins, transposed(memory))],
        "surrogate_table_backward": [(torch.randn(6, 5), features.detach(), bins, table, norms, counts),
                                     (torch.randn(6, 5), features_t.detach(), bins, table, norms, counts)],
        "contrastive": [(features, bins, surrogates.detach(), 0.3, False), (features, bins, surrogates.detach(), 0.3, True),
                        (features_t, bins, surrogates_t.detach(), 0.3, True)],
        "envelope": [(surrogates, anchors, None), (surrogates, anchors, 0.1), (surrogates_t, transposed(anchors), None)],
        "homogeneity": [(surrogates, -1.0, 0.1), (surrogates_t, 1.0, 0.0)],
    }


@pytest.mark.parametrize("op_name", ["surrogate_table", "surrogate_table_backward", "contrastive", "envelope", "homogeneity"])
def test_opcheck(op_name):
    op = getattr(torch.ops.srl_ext, op_name).default
    for args in _sample_op_inputs()[op_name]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    features, bins, memory, anchors = make_inputs(32, 12, 200, 16, present_bins=8, zero_memory_rows=1)

    def total(h):
        con, env, homo = functional.srl_terms(h, bins, memory, anchors, temperature=0.3, backend="cpu")
        return 10 * con + 100 * env + 0.01 * homo

    assert_compiled_matches_eager(total, features)


def test_kernels_refuse_zero_feature_columns():
    # The CUDA envelope divided by D on the host (SIGFPE at D = 0): every device's op refuses it.
    features, bins, memory, anchors = make_inputs(4, 3, 5, 2)
    empty, table = features.detach()[:, :0], memory[:, :0]
    calls = {
        "'features'": [lambda: torch.ops.srl_ext.surrogate_table(empty, bins, table),
                       lambda: torch.ops.srl_ext.contrastive(empty, bins, table, 0.1, False)],
        "'surrogates'": [lambda: torch.ops.srl_ext.envelope(table, anchors[:, :0], None),
                         lambda: torch.ops.srl_ext.homogeneity(table, -1.0, 0.1)],
    }
    for argument, ops_calls in calls.items():
        for call in ops_calls:
            with pytest.raises(ValueError, match=f"{argument} must have D >= 1 columns, got 0"):
                call()


def test_kernels_check_bins_when_python_checks_are_bypassed():
    features, _, memory, anchors = make_inputs(4, 3, 5, 2)
    bad = torch.tensor([0, 1, 3, 0])
    with pytest.raises(ValueError, match="'bins'.*\\[0, 3\\).*got 3"):
        torch.ops.srl_ext.surrogate_table(features, bad, memory)
    with pytest.raises(ValueError, match="'bins'"):
        torch.ops.srl_ext.contrastive(features, bad, memory, 0.1, False)
