"""Faults given to the library API (issue 11, "The API"): anchors that are not unit vectors,
non-finite memory rows, norms that overflow, gradients to the anchors, a memory in half
precision, wrong constructor types, and which kernels backend="auto" picks on a GPU."""

import pytest
import torch

from srl_ext import SRLLoss, SurrogateMemory, backends, functional, ops, reference, sample_anchors

needs_cpu_ops = pytest.mark.skipif(not ops.available(), reason=str(ops.LOAD_ERROR))
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu_ops)]


def inputs(seed=0, batch=8, num_bins=5, dim=16, num_anchors=32):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=generator)
    bins = torch.randint(0, num_bins, (batch,), generator=generator)
    memory = torch.randn(num_bins, dim, generator=generator)
    return features, bins, memory, sample_anchors(num_anchors, dim, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anchors_that_are_not_unit_vectors_are_normalised(backend):
    features, bins, memory, anchors = inputs()
    unit = functional.srl_terms(features, bins, memory, anchors, backend=backend)
    scaled = functional.srl_terms(features, bins, memory, anchors * 10, backend=backend)
    torch.testing.assert_close(torch.stack(scaled), torch.stack(unit))
    assert 0 <= float(scaled[1]) <= 2  # 1 - a mean cosine
    alone = functional.enveloping_loss(reference.normalize(memory), anchors * 0.1, backend=backend)
    torch.testing.assert_close(alone, functional.enveloping_loss(reference.normalize(memory), anchors, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_anchors_get_no_gradient(backend):
    features, bins, memory, anchors = inputs()
    anchors.requires_grad_(True)
    features.requires_grad_(True)
    terms = functional.srl_terms(features, bins, memory, anchors, backend=backend)
    grad_features, grad_anchors = torch.autograd.grad(sum(terms), (features, anchors), allow_unused=True)
    assert grad_features is not None
    assert grad_anchors is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_used_memory_row_that_is_not_finite_raises(backend, bad):
    features, bins, memory, anchors = inputs()
    bins = torch.zeros_like(bins)  # bins 1..4 absent: their memory rows are used
    memory[3, 2] = bad
    with pytest.raises(ValueError, match=r"'memory'.*finite.*row 3"):
        functional.srl_terms(features, bins, memory, anchors, backend=backend)
    # a row of a bin present in the batch is not used: no error
    memory = inputs()[2]
    memory[0, 1] = bad
    functional.srl_terms(features, bins, memory, anchors, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_norm_that_overflows_says_so(backend):
    features, bins, memory, anchors = inputs()
    with pytest.raises(ValueError, match=r"'features'.*norm.*overflow.*row 0") as error:
        functional.srl_terms(features * 1e20, bins, memory, anchors, backend=backend)
    assert "must be finite" not in str(error.value)
    big_memory = memory.clone()
    big_memory[4] = 1e20
    with pytest.raises(ValueError, match=r"'memory'.*norm.*overflow.*row 4"):
        functional.srl_terms(features, torch.zeros_like(bins), big_memory, anchors, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("convert", ["to", "method"])
def test_surrogate_memory_in_lower_precision_keeps_accumulating_sums(dtype, convert):
    memory = SurrogateMemory(4, 3)
    if convert == "to":
        memory = memory.to(dtype)
    else:
        memory = {torch.float32: memory.float, torch.float16: memory.half, torch.bfloat16: memory.bfloat16}[dtype]()
    assert memory.table.dtype == dtype
    assert memory.sums.dtype == torch.float64 and memory.counts.dtype == torch.int64
    # 4096 samples of 1000.25 in bin 0: a float16 running sum could not hold them
    features = torch.full((4096, 3), 1000.25, dtype=dtype)
    bins = torch.zeros(4096, dtype=torch.int64)
    for _ in range(4):
        memory.accumulate(features, bins)
    memory.update()
    expected = torch.tensor(1000.25, dtype=dtype)
    assert torch.equal(memory.table[0], expected.expand(3))
    memory.accumulate(features.float(), bins)  # features of another dtype than the table
    memory.update()
    assert torch.equal(memory.table[0], expected.expand(3))
    state = memory.state_dict()
    restored = SurrogateMemory(4, 3).to(dtype)
    restored.load_state_dict(state)
    assert restored.sums.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(num_bins="10"), "num_bins"),
        (dict(num_bins=10.0), "num_bins"),
        (dict(num_bins=True), "num_bins"),
        (dict(feature_dim=None), "feature_dim"),
        (dict(feature_dim="128"), "feature_dim"),
        (dict(momentum="0.9"), "momentum"),
        (dict(momentum=float("nan")), "momentum"),
        (dict(normalize="yes"), "normalize"),
        (dict(mode=None), "mode"),
    ],
)
def test_surrogate_memory_wrong_constructor_types_name_the_argument(kwargs, argument):
    settings = dict(num_bins=5, feature_dim=4) | kwargs
    with pytest.raises(ValueError, match=f"'{argument}'"):
        SurrogateMemory(**settings)


def test_auto_on_cuda_tensors_uses_triton_and_cuda_only_by_name(monkeypatch):
    triton = object()
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device: None)
    monkeypatch.setattr(backends, "_triton_module", lambda: (triton, None))
    device = torch.device("cuda", 0)
    assert backends.resolve("auto", device) is triton
    assert backends.resolve("triton", device) is triton
    assert backends.resolve("cuda", device) is ops
    assert backends.auto_name(device) == "triton"
    assert backends.auto_name(torch.device("cpu")) == "cpu"
