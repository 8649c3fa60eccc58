"""GPU tests: the CUDA kernels (backend "cuda") and the Triton kernels (backend "triton") against
``srl_ext.reference``, plus what only a GPU can show: CUDA-graph capture of a whole loss step,
run-to-run determinism, and the absence of host-device synchronisation.

Skipped entirely without a CUDA device. On a GPU machine run it through bench/gpu_check.sh, or
``python -m pytest -rs tests/test_gpu.py`` after building the extension with its CUDA kernels.

Tolerances: a compared value is a sum over up to max(D, K, N) products, so its rounding error
scales with the largest entry of the tensor: |actual - expected| <= rtol |expected| + atol max|expected|.
float32 is compared tightly; bfloat16 features are compared looser because the gradients come
back in bfloat16 (one bfloat16 ulp is 2^-8 relative).
"""

from __future__ import annotations

import pytest
import torch

from srl_ext import SRLLoss, SurrogateMemory, backends, functional, ops, reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: these tests need a GPU (see bench/gpu_check.sh)"
)

DEVICE = torch.device("cuda")
OPS = ("surrogate_table", "surrogate_table_backward", "contrastive", "envelope", "homogeneity")
FUSED = ("cuda", "triton")
# (B, K, N, D): the presets' sizes, and odd ones (D not a multiple of 32, N not of 128, K = 2).
SHAPES = [(64, 102, 2000, 128), (16, 50, 1000, 128), (33, 7, 300, 40), (5, 2, 129, 3)]
# D = 200 takes the envelope's general soft-gradient kernel (the register-blocked one is for D <= 128).
ENVELOPE_SHAPES = SHAPES + [(8, 37, 700, 200)]
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float64: (1e-10, 1e-10)}
# Anchors whose two largest cosines are closer than this are dropped from hard-envelope parity:
# their arg-max is decided by rounding (float32 dot products of unit vectors err by ~1e-6), not
# by the kernel. Exact ties are tested separately.
TIE_MARGIN = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOLERANCE[dtype]
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max() if expected.numel() else torch.tensor(0.0)
    error = (actual - expected).abs()
    bound = rtol * expected.abs() + atol * scale
    worst = (error - bound).argmax() if error.numel() else None
    assert bool((error <= bound).all()), (
        f"{what}: max |error| {error.max().item():.3e}, at index {worst.item()} "
        f"actual {actual.flatten()[worst].item():.8e} expected {expected.flatten()[worst].item():.8e}"
    )


def backend_or_skip(name: str) -> str:
    reason = backends.unavailable_reason(name, DEVICE)
    if reason is None:
        return name
    if name == "triton":
        pytest.skip(f"backend 'triton' unavailable: {reason}")
    pytest.fail(f"backend {name!r} unavailable on a GPU machine: {reason}")


def make_inputs(batch, num_bins, num_anchors, dim, dtype=torch.float32, seed=0):
    """Features (B x D, leaf), bins covering only part of the table, memory with zero rows
    (bins never seen), and unit anchors."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=generator)
    present = max(1, (2 * num_bins) // 3)  # the top third of the bins is absent from the batch
    bins = torch.randint(0, present, (batch,), generator=generator)
    memory = torch.randn(num_bins, dim, generator=generator)
    memory[::3] = 0  # bins never seen: zero rows stay zero
    anchors = torch.randn(num_anchors, dim, generator=generator)
    anchors = anchors / anchors.norm(dim=1, keepdim=True)
    features = features.to(DEVICE, dtype).requires_grad_()
    return features, bins.to(DEVICE), memory.to(DEVICE), anchors.to(DEVICE)


def clear_of_ties(surrogates: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The anchors whose arg-max over the surrogates is not within TIE_MARGIN of a tie (float64)."""
    cosines = anchors.double() @ surrogates.detach().double().T
    top2 = cosines.topk(min(2, cosines.shape[1]), dim=1).values
    if top2.shape[1] < 2:
        return anchors
    return anchors[(top2[:, 0] - top2[:, 1]) > TIE_MARGIN]


def unit_surrogates(num_bins, dim, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(num_bins, dim, generator=generator, dtype=torch.float64)
    table = table / table.norm(dim=1, keepdim=True)
    table[num_bins // 2] = 0  # a zero row: cosine 0 with every anchor
    return table.to(DEVICE, dtype).requires_grad_()


def grad_of(loss: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, inputs)
    return grad


def test_cuda_kernels_are_registered():
    backend_or_skip("cuda")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"srl_ext::{op}", "CUDA"), op


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_K{}_N{}_D{}".format(*s))
def test_surrogate_table(backend, dtype, shape):
    backend = backend_or_skip(backend)
    features, bins, memory, _ = make_inputs(*shape, dtype=dtype)
    expected = reference.surrogate_table(features, bins, memory)
    actual = functional.surrogate_table(features, bins, memory, backend=backend)
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, dtype, "table")
    # absent bins with a zero memory row stay exactly zero
    absent = torch.ones(memory.shape[0], dtype=torch.bool, device=DEVICE)
    absent[bins] = False
    zero = absent & (memory.abs().sum(dim=1) == 0)
    assert bool((actual[zero] == 0).all())
    upstream = torch.randn_like(expected)
    assert_close(grad_of((actual * upstream).sum(), features), grad_of((expected * upstream).sum(), features),
                 dtype, "d table / d features")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label_weighting", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_K{}_N{}_D{}".format(*s))
def test_contrastive(backend, dtype, label_weighting, shape):
    backend = backend_or_skip(backend)
    features, bins, memory, _ = make_inputs(*shape, dtype=dtype)
    surrogates = reference.surrogate_table(features, bins, memory).detach()
    expected = reference.contrastive_loss(features, bins, surrogates, 0.3, label_weighting)
    actual = functional.contrastive_loss(
        features, bins, surrogates, temperature=0.3, label_weighting=label_weighting, backend=backend
    )
    assert actual.dtype == expected.dtype == reference.accumulation_dtype(dtype)
    assert_close(actual, expected, dtype, "loss")
    grad = grad_of(actual, features)
    assert grad.dtype == dtype
    assert_close(grad, grad_of(expected, features), dtype, "d loss / d features")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("temperature", [None, 0.05], ids=["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", ENVELOPE_SHAPES, ids=lambda s: "B{}_K{}_N{}_D{}".format(*s))
def test_envelope(backend, temperature, dtype, shape):
    backend = backend_or_skip(backend)
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels are tested in float32")
    _, num_bins, num_anchors, dim = shape
    surrogates = unit_surrogates(num_bins, dim, dtype=dtype)
    anchors = make_inputs(*shape)[3].to(dtype)
    if temperature is None:
        anchors = clear_of_ties(surrogates, anchors)
    envelope = "hard" if temperature is None else "soft"
    expected = reference.enveloping_loss(surrogates, anchors, temperature)
    actual = functional.enveloping_loss(
        surrogates, anchors, envelope=envelope, envelope_temperature=temperature, backend=backend
    )
    assert_close(actual, expected, dtype, "loss")
    assert_close(grad_of(actual, surrogates), grad_of(expected, surrogates), dtype, "d loss / d surrogates")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("temperature", [None, 0.1], ids=["hard", "soft"])
def test_envelope_large(backend, temperature):
    """N = 10^5, K = 1000: many surrogate tiles (the last one partial) and many anchor chunks."""
    backend = backend_or_skip(backend)
    surrogates = unit_surrogates(1000, 128)
    generator = torch.Generator().manual_seed(3)
    anchors = torch.randn(100_000, 128, generator=generator)
    anchors = (anchors / anchors.norm(dim=1, keepdim=True)).to(DEVICE)
    if temperature is None:
        anchors = clear_of_ties(surrogates, anchors)
    expected = reference.enveloping_loss(surrogates.double(), anchors.double(), temperature)
    actual = functional.enveloping_loss(
        surrogates, anchors, envelope="hard" if temperature is None else "soft",
        envelope_temperature=temperature, backend=backend,
    )
    assert_close(actual, expected, torch.float32, "loss")
    expected_grad = grad_of(expected, surrogates)
    assert_close(grad_of(actual, surrogates), expected_grad, torch.float32, "d loss / d surrogates")


@pytest.mark.parametrize("backend", FUSED)
def test_envelope_exact_ties_go_to_the_lowest_bin(backend):
    backend = backend_or_skip(backend)
    surrogates = unit_surrogates(12, 64).detach()
    surrogates[7] = surrogates[2]  # identical rows: every anchor nearest to row 2 ties with row 7
    surrogates[9] = surrogates[2]
    surrogates.requires_grad_()
    distinct = [k for k in range(12) if k not in (7, 9)]
    anchors = clear_of_ties(surrogates[distinct], make_inputs(8, 12, 3000, 64)[3])  # only the exact ties remain
    expected = reference.enveloping_loss(surrogates, anchors)
    actual = functional.enveloping_loss(surrogates, anchors, backend=backend)
    assert_close(actual, expected, torch.float32, "loss")
    grad = grad_of(actual, surrogates)
    assert bool((grad[7] == 0).all()) and bool((grad[9] == 0).all()), "a tie must go to the lowest k"
    assert bool((grad[2] != 0).any())
    assert_close(grad, grad_of(expected, surrogates), torch.float32, "d loss / d surrogates")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("sign", [-1.0, 1.0])
@pytest.mark.parametrize("num_bins", [2, 3, 102, 1000])
def test_homogeneity(backend, sign, num_bins):
    backend = backend_or_skip(backend)
    surrogates = unit_surrogates(num_bins, 128)
    expected = reference.homogeneity_loss(surrogates, sign, 0.1)
    actual = functional.homogeneity_loss(surrogates, sign=sign, beta=0.1, backend=backend)
    assert_close(actual, expected, torch.float32, "loss")
    assert_close(grad_of(actual, surrogates), grad_of(expected, surrogates), torch.float32, "d loss / d surrogates")


def make_loss(backend: str, preset: str = "agedb", **overrides) -> SRLLoss:
    return SRLLoss.preset(preset, feature_dim=128, backend=backend, **overrides).to(DEVICE)


def filtered_loss(backend: str, features, bins, memory, **overrides) -> SRLLoss:
    """An SRLLoss whose anchors are clear of near ties for these inputs (see TIE_MARGIN)."""
    loss_fn = make_loss(backend, **overrides)
    surrogates = reference.surrogate_table(features.detach().double(), bins, memory.double())
    loss_fn.anchors = clear_of_ties(surrogates, loss_fn.anchors)
    return loss_fn


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "overrides", [{}, {"envelope": "soft", "envelope_temperature": 0.1, "label_weighting": True}],
    ids=["released", "soft_weighted"],
)
def test_whole_loss(backend, dtype, overrides):
    backend = backend_or_skip(backend)
    features, bins, memory, _ = make_inputs(64, 102, 0, 128, dtype=dtype)
    fused = filtered_loss(backend, features, bins, memory, **overrides)
    plain = make_loss("reference", **overrides)
    plain.anchors = fused.anchors
    actual, expected = fused(features, bins, memory), plain(features, bins, memory)
    for name in actual._fields:
        assert_close(getattr(actual, name), getattr(expected, name), dtype, name)
    assert_close(grad_of(actual.total, features), grad_of(expected.total, features), dtype, "d total / d features")


def test_out_of_range_bins_give_nan_not_a_crash():
    """The CUDA kernels do not check bins on the host (that would synchronise): a bin outside
    [0, K) indexes nothing and shows as NaN in the contrastive loss and gradient."""
    backend_or_skip("cuda")
    features, bins, memory, _ = make_inputs(16, 10, 0, 32)
    bins = bins.clone()
    bins[3] = 10
    bins[5] = -1
    surrogates, _, counts = torch.ops.srl_ext.surrogate_table(features.detach(), bins, memory)
    assert int(counts.sum()) == 14  # the two bad samples belong to no bin
    valid = torch.ones(16, dtype=torch.bool, device=DEVICE)
    valid[[3, 5]] = False
    assert_close(surrogates, reference.surrogate_table(features.detach()[valid], bins[valid], memory),
                 torch.float32, "table without the bad samples")
    loss, grad = torch.ops.srl_ext.contrastive(features.detach(), bins, surrogates, 0.3, False)
    torch.cuda.synchronize()  # a kernel fault would surface here
    assert torch.isnan(loss)
    assert bool(torch.isnan(grad[3]).all()) and bool(torch.isnan(grad[5]).all())
    assert bool(torch.isfinite(grad[valid]).all())


@pytest.mark.parametrize("backend", ("reference", "triton"))
def test_out_of_range_bins_outside_the_cuda_ops_give_nan_not_a_device_assert(backend):
    """Backend "reference" and "triton", and SurrogateMemory, leave such samples out of every bin
    (a device-side assert would leave the process unusable) and give them a NaN contrastive loss."""
    backend = backend_or_skip(backend)
    features, bins, memory, anchors = make_inputs(16, 10, 50, 32)
    bins = bins.clone()
    bins[3], bins[5] = 10, -1
    terms = functional.srl_terms(features, bins, memory, anchors, temperature=0.3, backend=backend)
    (grad,) = torch.autograd.grad(terms[0], features)
    surrogate_memory = SurrogateMemory(10, 32).to(DEVICE)
    surrogate_memory.accumulate(features.detach(), bins)
    torch.cuda.synchronize()  # a device-side assert would surface here
    assert torch.isnan(terms[0]) and bool(torch.isfinite(torch.stack(terms[1:])).all())
    assert bool(torch.isnan(grad[[3, 5]]).all())
    assert int(surrogate_memory.counts.sum()) == 14


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("op", ["contrastive", "envelope", "homogeneity", "surrogate_table"])
def test_opcheck(op, layout):
    """Schema, fake kernels and autograd registration, with CUDA tensors; column-major inputs
    too, for which the kernels (and so the fake kernels) return contiguous outputs."""
    backend_or_skip("cuda")
    features, bins, memory, anchors = make_inputs(8, 6, 300, 16)
    surrogates = reference.surrogate_table(features.detach(), bins, memory)
    if layout == "transposed":
        features = features.detach().t().contiguous().t().requires_grad_()
        memory, surrogates, anchors = (x.t().contiguous().t() for x in (memory, surrogates, anchors))
    args = {
        "contrastive": (features, bins, surrogates, 0.3, True),
        "envelope": (surrogates.clone().requires_grad_(), anchors, None),
        "homogeneity": (surrogates.clone().requires_grad_(), -1.0, 0.1),
        "surrogate_table": (features, bins, memory),
    }[op]
    torch.library.opcheck(getattr(torch.ops.srl_ext, op).default, args)


def test_zero_feature_columns_are_refused():
    # The envelope plans its shared memory per column: D = 0 divided by zero on the host.
    backend_or_skip("cuda")
    surrogates, anchors = torch.zeros(3, 0, device=DEVICE), torch.zeros(5, 0, device=DEVICE)
    with pytest.raises(ValueError, match="'surrogates' must have D >= 1 columns"):
        torch.ops.srl_ext.envelope(surrogates, anchors, None)
    with pytest.raises(ValueError, match="'surrogates' must have D >= 1 columns"):
        torch.ops.srl_ext.homogeneity(surrogates, -1.0, 0.1)


def training_step(loss_fn: SRLLoss, features, bins, memory) -> torch.Tensor:
    total = loss_fn(features, bins, memory).total
    total.backward()
    return total


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("envelope", ["hard", "soft"])
def test_cuda_graph_capture_of_a_loss_step(backend, envelope):
    """The whole SRL loss, forward and backward, captured once and replayed on new data."""
    backend = backend_or_skip(backend)
    overrides = {"envelope": "soft", "envelope_temperature": 0.1} if envelope == "soft" else {}
    loss_fn = make_loss(backend, **overrides)
    features, bins, memory, _ = make_inputs(64, 102, 0, 128)
    features = features.detach().requires_grad_()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles, allocator pools) outside the capture
        for _ in range(3):
            features.grad = None
            training_step(loss_fn, features, bins, memory)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    features.grad = None
    with torch.cuda.graph(graph):
        static_total = training_step(loss_fn, features, bins, memory)
    static_grad = features.grad

    new_features, new_bins, new_memory, _ = make_inputs(64, 102, 0, 128, seed=7)
    with torch.no_grad():
        features.copy_(new_features)
        bins.copy_(new_bins)
        memory.copy_(new_memory)
    graph.replay()
    torch.cuda.synchronize()

    eager_features = new_features.detach().clone().requires_grad_()
    eager_total = training_step(loss_fn, eager_features, new_bins, new_memory)
    if backend == "cuda":  # the same kernels, atomic-free: bitwise equal
        assert torch.equal(static_total, eager_total.detach())
        assert torch.equal(static_grad, eager_features.grad)
    else:
        assert_close(static_total, eager_total.detach(), torch.float32, "total")
        assert_close(static_grad, eager_features.grad, torch.float32, "d total / d features")


@pytest.mark.parametrize("envelope", ["hard", "soft"])
def test_deterministic(envelope):
    """No float atomics: two runs are bitwise equal, in deterministic mode and out of it."""
    backend_or_skip("cuda")
    overrides = {"envelope": "soft", "envelope_temperature": 0.1} if envelope == "soft" else {}
    loss_fn = make_loss("cuda", preset="imdb_wiki", num_anchors=100_000, **overrides)
    features, bins, memory, _ = make_inputs(256, 187, 0, 128)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (True, False):
            torch.use_deterministic_algorithms(deterministic)
            runs = []
            for _ in range(2):
                leaf = features.detach().clone().requires_grad_()
                total = training_step(loss_fn, leaf, bins, memory)
                runs.append((total.detach(), leaf.grad))
            assert torch.equal(runs[0][0], runs[1][0])
            assert torch.equal(runs[0][1], runs[1][1])
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("backend", FUSED)
def test_no_host_sync_in_a_training_step(backend):
    backend = backend_or_skip(backend)
    soft = make_loss(backend, envelope="soft", envelope_temperature=0.1, label_weighting=True)
    hard = make_loss(backend)
    features, bins, memory, _ = make_inputs(64, 102, 0, 128)
    for loss_fn in (soft, hard):  # warm-up: compilation, allocations
        training_step(loss_fn, features, bins, memory)
    features.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for loss_fn in (soft, hard):
            training_step(loss_fn, features, bins, memory)
    finally:
        torch.cuda.set_sync_debug_mode(0)
