"""The whole-loss CPU op (torch.ops.srl_ext.srl_loss, csrc/cpu/srl_loss.cpp) against the reference:
the four losses and the four gradients it returns, float32 and float64, hard and soft envelope,
label weighting, absent bins, zero memory rows; its input checks; its BLAS fallback; its kernel sets
(SRL_EXT_CPU_ISA), its record of phase times and its eager entry from Python (srl_ext._C.srl_loss)."""

import os
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_compiled_matches_eager, loss_case_strategies, make_inputs, mixed_bins
from srl_ext import SRLLoss, SRLSettings, functional, ops, reference
from srl_ext.settings import preset as loss_preset

pytestmark = pytest.mark.skipif(not ops.available(), reason=str(ops.LOAD_ERROR))

PRESET_SIZES = {  # (B, K, N, D)
    "agedb": (64, 102, 2000, 128),
    "imdb_wiki": (256, 187, 2000, 128),
    "sts_b": (16, 50, 1000, 128),
}
WEIGHTS = (10.0, 100.0, 0.01)


def fused(features, bins, memory, anchors, *, weights=WEIGHTS, temperature=0.3, sign=-1.0, beta=0.1,
          envelope_temperature=None, label_weighting=False):
    """The raw op: (losses: total, contrastive, enveloping, homogeneity; grads 4 x B x D)."""
    total, contrastive, enveloping, homogeneity, grads = torch.ops.srl_ext.srl_loss(
        features.detach(), bins, memory, anchors, *weights, temperature, sign, beta, envelope_temperature,
        label_weighting,
    )
    return torch.stack([total, contrastive, enveloping, homogeneity]), grads


def expected(features, bins, memory, anchors, *, weights=WEIGHTS, temperature=0.3, sign=-1.0, beta=0.1,
             envelope_temperature=None, label_weighting=False):
    """The same from the reference: each loss, and its gradient by autograd."""
    h = features.detach().to(reference.accumulation_dtype(features.dtype)).requires_grad_()
    terms = reference.srl_terms(
        h, bins, memory, anchors, temperature=temperature, homogeneity_sign=sign, homogeneity_beta=beta,
        envelope="hard" if envelope_temperature is None else "soft", envelope_temperature=envelope_temperature,
        label_weighting=label_weighting,
    )
    total = weights[0] * terms[0] + weights[1] * terms[1] + weights[2] * terms[2]
    losses = (total, *terms)
    grads = [torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in losses]
    return torch.stack([loss.detach() for loss in losses]), torch.stack(grads)


def assert_matches(actual, wanted, rtol, atol):
    """Each loss to rtol (and atol), each gradient to atol times its largest entry."""
    (losses, grads), (wanted_losses, wanted_grads) = actual, wanted
    torch.testing.assert_close(losses, wanted_losses, rtol=rtol, atol=atol)
    for name, grad, wanted_grad in zip(("total", "contrastive", "enveloping", "homogeneity"), grads, wanted_grads):
        scale = 1 + float(wanted_grad.abs().max())
        torch.testing.assert_close(grad, wanted_grad, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("preset", PRESET_SIZES)
@pytest.mark.parametrize("envelope_temperature", [None, 0.1])
@pytest.mark.parametrize("label_weighting", [False, True])
def test_float32_parity_at_preset_sizes(preset, envelope_temperature, label_weighting):
    batch, num_bins, num_anchors, dim = PRESET_SIZES[preset]
    p = loss_preset(preset).srl
    # Half the bins present, a few never seen: absent rows come from memory, some are zero.
    inputs = make_inputs(batch, num_bins, num_anchors, dim, present_bins=num_bins // 2, zero_memory_rows=3)
    options = dict(weights=(p.w1, p.w2, p.w3), temperature=p.temperature, sign=p.homogeneity_sign,
                   envelope_temperature=envelope_temperature, label_weighting=label_weighting)
    assert_matches(fused(*inputs, **options), expected(*inputs, **options), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    **loss_case_strategies(),
    weights=st.sampled_from([WEIGHTS, (1.0, 1.0, 1.0), (1e-4, 1e-2, 1e-4), (0.0, 1.0, -2.0)]),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_float64_property_matches_reference(batch, num_bins, num_anchors, dim, mix, zero_rows, envelope_temperature,
                                            label_weighting, weights, sign, seed):
    features, _, memory, anchors = make_inputs(batch, num_bins, num_anchors, dim, dtype=torch.float64, seed=seed,
                                               zero_memory_rows=min(zero_rows, num_bins))
    bins = mixed_bins(mix, batch, num_bins, seed)
    options = dict(weights=weights, temperature=0.2, sign=sign, envelope_temperature=envelope_temperature,
                   label_weighting=label_weighting)
    # Bin means of few unit vectors can be short, and 1/||mean|| scales the gradient's round-off.
    assert_matches(fused(features, bins, memory, anchors, **options),
                   expected(features, bins, memory, anchors, **options), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_split_the_work_alike(threads):
    """Parts follow the thread count (also an odd one, and more parts than rows); the numbers agree."""
    inputs = make_inputs(5, 40, 3001, 64, present_bins=20, zero_memory_rows=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        result = fused(*inputs, envelope_temperature=0.2)
    finally:
        torch.set_num_threads(before)
    assert_matches(result, expected(*inputs, envelope_temperature=0.2), rtol=1e-5, atol=1e-5)


def test_repeated_calls_reuse_buffers_without_stale_state():
    """The kept buffers hold the previous call's sums and gradients: a smaller call after a larger
    one, and the same call twice, give the same numbers as fresh."""
    large = make_inputs(64, 30, 500, 32, present_bins=20, seed=1)
    small = make_inputs(3, 4, 9, 5, present_bins=2, seed=2)
    first = fused(*small)
    fused(*large, envelope_temperature=0.3, label_weighting=True)
    again = fused(*small)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_features_accumulate_in_float32(dtype):
    features, bins, memory, anchors = make_inputs(32, 20, 300, 16, dtype=dtype, present_bins=12, zero_memory_rows=2)
    losses, grads = fused(features, bins, memory, anchors, envelope_temperature=0.1)
    assert losses.dtype == torch.float32 and grads.dtype == torch.float32
    # The kernel reads the same half values as the upcast reference.
    assert_matches((losses, grads), expected(features.float(), bins, memory, anchors, envelope_temperature=0.1),
                   rtol=1e-5, atol=1e-5)


def test_exact_argmax_ties_go_to_the_lowest_bin():
    # Memory rows 1 and 3 are equal (all bins absent but 0), so anchors that prefer them see an
    # exact tie; as torch.max, the lowest bin wins, and the gradient is the reference's.
    memory = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    anchors = reference.normalize(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    features = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    bins = torch.tensor([0, 0])
    losses, grads = fused(features, bins, memory, anchors)
    assert losses[2].item() == pytest.approx(1 - (1.0 + 0.5**0.5 + 0.0 + 0.0) / 4)
    assert_matches((losses, grads), expected(features, bins, memory, anchors), rtol=1e-6, atol=1e-6)


def test_million_anchors():
    """N = 10^6 anchors: the kernel never holds the K x N matrix; float64 against the reference."""
    features, bins, memory, _ = make_inputs(24, 8, 1, 16, dtype=torch.float64, present_bins=5, zero_memory_rows=1)
    anchors = reference.normalize(torch.randn(10**6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    for envelope_temperature in (None, 0.1):
        options = dict(envelope_temperature=envelope_temperature)
        assert_matches(fused(features, bins, memory, anchors, **options),
                       expected(features, bins, memory, anchors, **options), rtol=1e-10, atol=1e-10)


def test_inputs_of_other_layouts_and_dtypes():
    """Transposed (non-contiguous) inputs, and float64 memory and anchors with float32 features."""
    features, bins, memory, anchors = make_inputs(9, 6, 40, 5, present_bins=4, zero_memory_rows=1)
    wanted = expected(features, bins, memory, anchors)
    transposed = [x.detach().t().contiguous().t() for x in (features, memory, anchors)]
    assert_matches(fused(transposed[0], bins, transposed[1], transposed[2]), wanted, rtol=1e-6, atol=1e-6)
    assert_matches(fused(features, bins, memory.double(), anchors.double()), wanted, rtol=1e-6, atol=1e-6)


def test_aten_gemm_fallback_gives_the_same_numbers():
    """SRL_EXT_GEMM=aten: the products through ATen instead of the BLAS that torch exports."""
    script = (
        "import torch, srl_ext.ops\n"
        "from helpers import make_inputs\n"
        "f, b, m, a = make_inputs(40, 12, 700, 16, dtype=torch.float64, present_bins=8, zero_memory_rows=1)\n"
        "for t in (None, 0.2):\n"
        "    out = torch.ops.srl_ext.srl_loss(f.detach(), b, m, a, 1.0, 2.0, 3.0, 0.3, -1.0, 0.1, t, True)\n"
        "    print(repr(torch.stack(out[:4]).tolist()), float(out[4].abs().sum()))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    runs = [
        subprocess.run([sys.executable, "-c", script], env={**env, "SRL_EXT_GEMM": choice}, capture_output=True,
                       text=True, check=True).stdout.splitlines()
        for choice in ("blas", "aten")
    ]
    for blas_line, aten_line in zip(*runs, strict=True):
        blas_values, aten_values = eval(blas_line.rsplit(" ", 1)[0]), eval(aten_line.rsplit(" ", 1)[0])
        assert blas_values == pytest.approx(aten_values, rel=1e-12, abs=1e-12)
        assert float(blas_line.rsplit(" ", 1)[1]) == pytest.approx(float(aten_line.rsplit(" ", 1)[1]), rel=1e-12)


def _call(features, bins, memory, anchors, temperature=0.3, envelope_temperature=None):
    return torch.ops.srl_ext.srl_loss(features, bins, memory, anchors, 1.0, 1.0, 1.0, temperature, -1.0, 0.1,
                                      envelope_temperature, False)


def test_kernel_checks_bins_and_finite_features():
    """The range of the bins and the finiteness of the features are checked in the table's sweep:
    the Python layer need not read the data first."""
    features, _, memory, anchors = make_inputs(4, 3, 5, 2, requires_grad=False)
    for bad, position in ((torch.tensor([0, 1, 3, 0]), 2), (torch.tensor([0, -1, 2, 0]), 1)):
        with pytest.raises(ValueError, match=rf"'bins' must hold bin indices in \[0, 3\), got {int(bad[position])} "
                                             rf"at position {position}"):
            _call(features, bad, memory, anchors)
    for value in (float("nan"), float("inf")):
        broken = features.clone()
        broken[2, 1] = value
        with pytest.raises(ValueError, match="'features' must be finite, got a non-finite value in row 2"):
            _call(broken, torch.tensor([0, 1, 2, 0]), memory, anchors)


def test_kernel_checks_shapes_and_settings():
    features, bins, memory, anchors = make_inputs(4, 3, 5, 2, requires_grad=False)
    bad_calls = {
        "'features' must have D >= 1 columns, got 0": lambda: _call(features[:, :0], bins, memory[:, :0], anchors[:, :0]),
        "'features' must have B >= 1 rows": lambda: _call(features[:0], bins[:0], memory, anchors),
        "'features' must be 2-D": lambda: _call(features[0], bins, memory, anchors),
        "'bins' must be an int64 tensor of shape \\(4,\\)": lambda: _call(features, bins[:3], memory, anchors),
        "'bins' must be an int64 tensor": lambda: _call(features, bins.int(), memory, anchors),
        "'memory' must have 2 columns": lambda: _call(features, bins, torch.zeros(3, 3), anchors),
        "'memory' must have K >= 2 rows, got 1": lambda: _call(features, torch.zeros(4, dtype=torch.long),
                                                               memory[:1], anchors),
        "'anchors' must have N >= 1 rows, got 0": lambda: _call(features, bins, memory, anchors[:0]),
        "'anchors' must have 2 columns": lambda: _call(features, bins, memory, torch.zeros(5, 3)),
        "'temperature' must be > 0": lambda: _call(features, bins, memory, anchors, temperature=0.0),
        "'envelope_temperature' must be > 0": lambda: _call(features, bins, memory, anchors, envelope_temperature=-1.0),
    }
    for message, call in bad_calls.items():
        with pytest.raises(ValueError, match=message):
            call()


# ----- the op as the library uses it: autograd, opcheck, torch.compile, SRLLoss -----


@pytest.mark.parametrize("envelope_temperature", [None, 0.2])
@pytest.mark.parametrize("label_weighting", [False, True])
def test_gradcheck_float64(envelope_temperature, label_weighting):
    """Each loss's gradient is d loss / d features through the table too, except the contrastive
    term's, whose surrogates are detached: gradcheck holds them fixed through a reference table."""
    features, bins, memory, anchors = make_inputs(6, 5, 7, 4, dtype=torch.float64, present_bins=3, zero_memory_rows=1)
    s = SRLSettings(w1=0.0, w2=2.0, w3=3.0, temperature=0.3, label_weighting=label_weighting,
                    envelope="hard" if envelope_temperature is None else "soft", envelope_temperature=envelope_temperature)
    # The contrastive weight is 0 here; its gradient alone is checked against the reference below.
    assert torch.autograd.gradcheck(lambda h: ops.srl_loss(h, bins, memory, anchors, s)[0], (features,),
                                    eps=1e-6, atol=1e-6)
    h = features.detach().requires_grad_()
    contrastive = ops.srl_loss(h, bins, memory, anchors, s.replace(w1=1.0))[1]
    wanted = reference.contrastive_loss(h, bins, reference.surrogate_table(h, bins, memory), 0.3, label_weighting)
    torch.testing.assert_close(torch.autograd.grad(contrastive, h)[0], torch.autograd.grad(wanted, h)[0])


def test_each_loss_is_differentiable_on_its_own():
    """The backward weighs the four saved gradients by the incoming ones, whichever losses are used."""
    features, bins, memory, anchors = make_inputs(12, 7, 50, 6, dtype=torch.float64, present_bins=5)
    s = SRLSettings(w1=2.0, w2=3.0, w3=0.5, homogeneity_sign=1.0)
    out = functional.srl_loss(features, bins, memory, anchors, s)
    wanted = expected(features, bins, memory, anchors, weights=(2.0, 3.0, 0.5), sign=1.0, temperature=0.1)[1]
    for coefficients in ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (0.5, -2, 0, 7)):
        chosen = sum(c * loss for c, loss in zip(coefficients, out) if c)
        (grad,) = torch.autograd.grad(chosen, features, retain_graph=True)
        torch.testing.assert_close(grad, sum(c * g for c, g in zip(coefficients, wanted)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_comes_back_in_the_features_dtype(dtype):
    features, bins, memory, anchors = make_inputs(8, 5, 20, 4, dtype=dtype, present_bins=3)
    out = functional.srl_loss(features, bins, memory, anchors)
    out.total.backward()
    assert out.total.dtype == torch.float32 and features.grad.dtype == dtype


def _sample_op_inputs():
    features, bins, memory, anchors = make_inputs(9, 6, 40, 5, present_bins=4, zero_memory_rows=1)
    transposed = [x.detach().t().contiguous().t().requires_grad_(x.requires_grad) for x in (features, memory, anchors)]
    values = (10.0, 100.0, 0.01, 0.3, -1.0, 0.1)
    return [
        (features, bins, memory, anchors, *values, None, False),
        (features, bins, memory, anchors, *values, 0.1, True),
        (transposed[0], bins, transposed[1], transposed[2], *values, None, True),
    ]


@pytest.mark.parametrize("case", range(3))
def test_opcheck(case):
    torch.library.opcheck(torch.ops.srl_ext.srl_loss.default, _sample_op_inputs()[case])


def test_the_op_has_no_cuda_kernel_and_cuda_inputs_take_the_term_ops():
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("srl_ext::srl_loss", "CUDA")
    assert ops.whole_loss_devices() == frozenset({"cpu"})


def test_torch_compile_fullgraph_matches_eager():
    features, bins, memory, anchors = make_inputs(32, 12, 200, 16, present_bins=8, zero_memory_rows=1)
    s = SRLSettings(w1=10.0, w2=100.0, w3=0.01, temperature=0.3)

    def total(h):
        return functional.srl_loss(h, bins, memory, anchors, s, backend="cpu").total

    assert_compiled_matches_eager(total, features)


def test_srl_loss_module_uses_the_whole_loss_op():
    loss_fn = SRLLoss.preset("agedb", feature_dim=16, num_anchors=300)
    features, bins, memory, _ = make_inputs(40, 102, 1, 16, present_bins=30, zero_memory_rows=2)
    out = loss_fn(features, bins, memory)
    assert "SRLLossFunction" in out.total.grad_fn.name()
    assert all(t.grad_fn is out.total.grad_fn for t in out)  # one node for the four losses
    reference_fn = SRLLoss.preset("agedb", feature_dim=16, num_anchors=300, backend="reference")
    wanted = reference_fn(features, bins, memory)
    torch.testing.assert_close(torch.stack(out), torch.stack(wanted), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.total, features)
    (wanted_grad,) = torch.autograd.grad(wanted.total, features)
    torch.testing.assert_close(grad, wanted_grad, rtol=1e-5, atol=1e-5)


def test_functional_errors_name_the_function_and_shapes_are_checked_once_per_signature():
    features, bins, memory, anchors = make_inputs(6, 4, 10, 3)
    with pytest.raises(ValueError, match=r"^srl_loss: argument 'bins' must hold bin indices in \[0, 4\), got 4"):
        functional.srl_loss(features, bins.clone().fill_(4), memory, anchors)
    with pytest.raises(ValueError, match=r"^srl_loss: argument 'features' must be finite"):
        functional.srl_loss(torch.full((6, 3), float("nan")), bins, memory, anchors)
    functional.srl_loss(features, bins, memory, anchors)  # checked, then remembered
    # A new signature is checked again, whatever came before.
    with pytest.raises(ValueError, match=r"^srl_loss: argument 'anchors' must be 3 columns"):
        functional.srl_loss(features, bins, memory, anchors[:, :2])
    with pytest.raises(ValueError, match=r"^srl_loss: argument 'memory' must be at least K = 2 rows"):
        functional.srl_loss(features, bins.clone().fill_(0), memory[:1], anchors)


@pytest.mark.parametrize("envelope_temperature", [None, 0.2])
def test_anchors_of_any_scale_count_as_unit_vectors(envelope_temperature):
    """As the public API normalises the anchors (srl_ext/validation.py, anchors), the kernel divides
    each cosine by its anchor's norm, without a copy: scaled and zero anchors give the numbers of
    the normalised ones."""
    features, bins, memory, anchors = make_inputs(10, 6, 50, 8, dtype=torch.float64, present_bins=4, zero_memory_rows=1)
    scales = torch.rand(50, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 20 + 0.05
    scaled = anchors * scales
    scaled[7] = 0  # a zero anchor stays zero: cosine 0 with every surrogate
    unit = reference.normalize(scaled)
    options = dict(envelope_temperature=envelope_temperature)
    assert_matches(fused(features, bins, memory, scaled, **options),
                   expected(features, bins, memory, unit, **options), rtol=1e-10, atol=1e-10)
    s = SRLSettings(envelope="hard" if envelope_temperature is None else "soft", envelope_temperature=envelope_temperature)
    torch.testing.assert_close(torch.stack(functional.srl_loss(features, bins, memory, scaled * 10, s)),
                               torch.stack(functional.srl_loss(features, bins, memory, unit, s)))


def test_kernel_refuses_norms_that_overflow_and_bad_used_memory_rows():
    """The checks of the public API (srl_ext/validation.py, finite_rows, used_memory_rows), made by
    the kernel as it reads the rows: features whose norm overflows, memory rows of absent bins
    that are not finite or whose norm overflows; rows of present bins are not read."""
    features, bins, memory, anchors = make_inputs(8, 5, 32, 16, requires_grad=False)
    with pytest.raises(ValueError, match=r"^srl_loss: argument 'features' must be rows whose norm fits in "
                                         r"torch.float32 .*overflows\), got row 0 with values up to .*e\+20"):
        functional.srl_loss(features * 1e20, bins, memory, anchors)
    zeros = torch.zeros_like(bins)  # bins 1..4 absent: their memory rows are used
    for bad, words in ((float("nan"), "must be finite, got a non-finite value in row 3"),
                       (1e20, "must be rows whose norm fits in torch.float32")):
        broken = memory.clone()
        broken[3] = bad
        with pytest.raises(ValueError, match=f"^srl_loss: argument 'memory' {words}"):
            functional.srl_loss(features, zeros, broken, anchors)
        broken = memory.clone()
        broken[0] = bad  # bin 0 is present: its memory row is not used
        functional.srl_loss(features, zeros, broken, anchors)


# (B + K) * D at least 2^14 (srl_loss.cpp, kMinRowPartWork): the table and the gradients go in parts.
ROW_PARTS_SIZE = (300, 40, 200, 64)


def _skewed_bins(batch, num_bins, generator):
    """Half the samples in one bin, the rest over bins 5..num_bins-6: runs of bins of very
    different sizes for the parts, and absent bins at both ends."""
    bins = torch.randint(5, num_bins - 5, (batch,), generator=generator)
    bins[::2] = 7
    return bins


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("envelope_temperature", [None, 0.2])
def test_table_and_gradients_in_parts_match_the_reference(threads, envelope_temperature):
    """At a size where the table and the gradients are split by bins across threads, with one bin
    holding half the batch, absent bins at both ends and zero memory rows, float64: the reference's
    numbers; and two calls agree bit for bit."""
    batch, num_bins, num_anchors, dim = ROW_PARTS_SIZE
    features, _, memory, anchors = make_inputs(batch, num_bins, num_anchors, dim, dtype=torch.float64,
                                               zero_memory_rows=3)
    bins = _skewed_bins(batch, num_bins, torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        first = fused(features, bins, memory, anchors, envelope_temperature=envelope_temperature)
        again = fused(features, bins, memory, anchors, envelope_temperature=envelope_temperature)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    wanted = expected(features, bins, memory, anchors, envelope_temperature=envelope_temperature)
    assert_matches(first, wanted, rtol=1e-10, atol=1e-10)


def test_bad_rows_found_in_parts_are_reported_as_a_serial_sweep_would():
    """With the table split by bins across two threads, each part meets its own bad row; the error
    names the first in sample order (a feature row before a bin out of range after it, feature rows
    before memory rows, the lowest memory row)."""
    batch, num_bins, num_anchors, dim = ROW_PARTS_SIZE
    features, _, memory, anchors = make_inputs(batch, num_bins, num_anchors, dim, requires_grad=False)
    bins = _skewed_bins(batch, num_bins, torch.Generator().manual_seed(3))
    bins[250], bins[9] = 5, num_bins - 6  # sample 250 in the first part's bins, sample 9 in the last's
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        broken = features.clone()
        broken[250, 0], broken[9, 3] = float("nan"), float("inf")
        with pytest.raises(ValueError, match="'features' must be finite, got a non-finite value in row 9$"):
            _call(broken, bins, memory, anchors)
        out_of_range = bins.clone()
        out_of_range[280] = num_bins
        with pytest.raises(ValueError, match="'features' must be finite, got a non-finite value in row 9$"):
            _call(broken, out_of_range, memory, anchors)
        broken = features.clone()
        broken[290] = float("nan")
        with pytest.raises(ValueError, match=rf"'bins' must hold bin indices in \[0, {num_bins}\), got {num_bins} "
                                             "at position 280"):
            _call(broken, out_of_range, memory, anchors)
        bad_memory = memory.clone()
        bad_memory[num_bins - 2], bad_memory[2] = float("nan"), float("nan")  # absent bins, one per part
        with pytest.raises(ValueError, match="'memory' must be finite, got a non-finite value in row 2$"):
            _call(features, bins, bad_memory, anchors)
        broken = features.clone()
        broken[9, 0] = float("nan")
        with pytest.raises(ValueError, match="'features' must be finite, got a non-finite value in row 9$"):
            _call(broken, bins, bad_memory, anchors)
    finally:
        torch.set_num_threads(before)


# ----- the kernel sets (SRL_EXT_CPU_ISA, ops.cpu_isa) and the phase record -----
def _supported_isas() -> list[str]:
    default, supported = ops.cpu_isa(), []
    try:
        for isa in ("avx512", "avx2", "baseline"):
            try:
                ops.cpu_isa(isa)
                supported.append(isa)
            except ValueError:
                pass
    finally:
        ops.cpu_isa(default)
    return supported


@pytest.fixture
def restore_isa():
    default = ops.cpu_isa()
    yield
    ops.cpu_isa(default)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("envelope_temperature", [None, 0.1])
def test_kernel_sets_give_the_same_numbers(restore_isa, dtype, envelope_temperature):
    """Every set the CPU runs matches the reference; the FMA sets (AVX-512, AVX2) bit for bit."""
    inputs = make_inputs(70, 37, 1500, 48, dtype=dtype, present_bins=25, zero_memory_rows=2, seed=3)
    options = dict(envelope_temperature=envelope_temperature, label_weighting=True)
    wanted = expected(*inputs, **options)
    results = {}
    for isa in _supported_isas():
        assert ops.cpu_isa(isa) == isa
        results[isa] = fused(*inputs, **options)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-10
        assert_matches(results[isa], wanted, rtol=tolerance, atol=tolerance)
    assert "baseline" in results
    fma_sets = [isa for isa in ("avx512", "avx2") if isa in results]
    for isa in fma_sets[1:]:
        assert torch.equal(results[isa][0], results[fma_sets[0]][0]) and torch.equal(results[isa][1],
                                                                                     results[fma_sets[0]][1])


def test_cpu_isa_auto_picks_the_best_set_and_refuses_other_names(restore_isa):
    supported = _supported_isas()
    assert ops.cpu_isa("auto") == supported[0]
    with pytest.raises(ValueError, match=r"argument 'isa' must be one of auto, avx512, avx2, baseline, got 'sse4'"):
        ops.cpu_isa("sse4")
    assert ops.cpu_isa() == supported[0]  # a refused name changes nothing
    if "avx512" not in supported:
        with pytest.raises(ValueError, match="asks for the avx512 kernels, which this CPU cannot run"):
            ops.cpu_isa("avx512")


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess:
    script = (
        "import torch, srl_ext.ops as ops\n"
        "from helpers import make_inputs\n"
        "f, b, m, a = make_inputs(4, 3, 5, 8)\n"
        "torch.ops.srl_ext.srl_loss(f.detach(), b, m, a, 1.0, 1.0, 1.0, 0.3, -1.0, 0.1, None, False)\n"
        "print(ops.cpu_isa())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]), SRL_EXT_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)


def test_environment_variable_picks_the_kernel_set():
    done = _isa_in_subprocess("baseline")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "baseline"
    done = _isa_in_subprocess("avx-2")
    assert done.returncode != 0
    assert ("ValueError: srl_ext: the environment variable SRL_EXT_CPU_ISA must be one of auto, avx512, avx2, "
            "baseline, got 'avx-2'") in done.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_phase_times_add_up_to_the_call(threads):
    inputs = make_inputs(64, 50, 4000, 64, present_bins=30)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        fused(*inputs)  # buffers and threads ready
        start = time.perf_counter()
        fused(*inputs)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    phases = ops.srl_loss_phase_times()
    assert tuple(phases) == ops.SRL_LOSS_PHASES
    assert all(value >= 0 for value in phases.values())
    assert phases["parts"] > 0 and phases["table"] > 0
    assert 0 < sum(phases.values()) <= elapsed
    if threads == 1:  # one part, on the calling thread: no region to start or join
        assert phases["region_start"] < 1e-4 and phases["join"] < 1e-4


def test_eager_calls_take_the_fast_entry_and_match_the_dispatched_op(monkeypatch):
    """functional.srl_loss on plain CPU tensors calls srl_ext._C.srl_loss (no torch.ops argument
    parsing): the same losses and gradient as torch.ops.srl_ext.srl_loss; under a
    __torch_function__ mode the op goes through torch.ops, where the mode sees it."""
    features, bins, memory, anchors = make_inputs(30, 12, 300, 16, present_bins=8, zero_memory_rows=1)
    s = SRLSettings(w1=2.0, w2=3.0, w3=0.5, temperature=0.2, envelope="soft", envelope_temperature=0.1,
                    label_weighting=True)
    calls = []
    fast = ops._fast_srl_loss
    monkeypatch.setattr(ops, "_fast_srl_loss", lambda *args: calls.append(1) or fast(*args))
    out = functional.srl_loss(features, bins, memory, anchors, s, backend="cpu")
    assert calls == [1]
    (grad,) = torch.autograd.grad(out.total, features)
    dispatched = torch.ops.srl_ext.srl_loss(features, bins, memory, anchors, s.w1, s.w2, s.w3, s.temperature,
                                            s.homogeneity_sign, s.homogeneity_beta, s.soft_envelope_temperature,
                                            s.label_weighting)
    (wanted_grad,) = torch.autograd.grad(dispatched[0], features)
    assert torch.equal(torch.stack(tuple(out)), torch.stack(dispatched[:4])) and torch.equal(grad, wanted_grad)

    seen = []

    class Recorder(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder():
        again = functional.srl_loss(features, bins, memory, anchors, s, backend="cpu")
    assert calls == [1] and "srl_ext.srl_loss" in " ".join(seen)
    assert torch.equal(torch.stack(tuple(again)), torch.stack(tuple(out)))


def test_fast_entry_refuses_arguments_of_the_wrong_kind():
    features, bins, memory, anchors = make_inputs(4, 3, 5, 8)
    settings_args = (1.0, 1.0, 1.0, 0.3, -1.0, 0.1, None)
    with pytest.raises(TypeError, match="takes 12 arguments, got 3"):
        ops._fast_srl_loss(features, bins, memory)
    with pytest.raises(TypeError, match="argument 3 must be a Tensor"):
        ops._fast_srl_loss(features, bins, memory, anchors.tolist(), *settings_args, False)
    with pytest.raises(TypeError, match="'label_weighting' must be a bool"):
        ops._fast_srl_loss(features, bins, memory, anchors, *settings_args, 1)
    with pytest.raises(ValueError, match="argument 'bins' must hold bin indices in"):  # the kernel's own checks
        ops._fast_srl_loss(features, bins + 10, memory, anchors, *settings_args, False)
