"""The Triton backend (srl_ext.kernels.triton) against srl_ext.reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); the interpreter is about 1000x slower than eager, so the shapes are small,
and its single config uses tiles of 4 to 8 so that every loop still crosses several tiles (the
online max and log-sum-exp across K tiles, the anchor splits of the envelope gradient). On a GPU
the same tests run on CUDA tensors with the compiled, autotuned kernels; the torch.compile and
opcheck tests need the compiled kernels (PyTorch traces Triton kernels only outside the
interpreter) and run there only.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from srl_ext import backends, functional, reference

pytest.importorskip("triton")
tri = importlib.import_module("srl_ext.kernels.triton")
tri_utils = importlib.import_module("srl_ext.kernels.triton.utils")


def _device(name: str):
    if name == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device"
    else:
        reason = tri.unavailable_reason(torch.device(name))
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


DEVICES = [_device("cpu"), _device("cuda")]
CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs the compiled kernels on a CUDA device")
FULL_DTYPES = [torch.float32, torch.float64]
HALF_DTYPES = [torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
ENVELOPES = [pytest.param(None, id="hard"), pytest.param(0.2, id="soft")]
TEMPERATURE = 0.3
# Distinct weights for the three terms: a gradient routed to the wrong term would show.
TERM_WEIGHTS = (1.0, 2.0, 3.0)

# K = 11 bins for a batch of 14: bin 3 is crowded (6 samples), bin 7 holds a single sample,
# bins 0, 4, 6 are absent and take their memory rows, bins 2 and 8 are absent with zero memory
# rows (they stay zero).
BINS = [3, 3, 3, 3, 3, 3, 7, 1, 1, 5, 5, 9, 10, 10]
NUM_BINS = 11
ZERO_MEMORY_ROWS = [2, 8]


def make_case(device, dtype, bins=BINS, num_bins=NUM_BINS, dim=12, num_anchors=37, seed=0):
    """(features, bins, memory, anchors), drawn in float64 and then cast, so every dtype sees
    the same numbers up to rounding."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(bins), dim, generator=generator, dtype=torch.float64)
    memory = torch.randn(num_bins, dim, generator=generator, dtype=torch.float64)
    memory[[k for k in ZERO_MEMORY_ROWS if k < num_bins]] = 0
    anchors = F.normalize(torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64), dim=1)
    bins = torch.tensor(bins, dtype=torch.int64)
    return (
        features.to(device, dtype),
        bins.to(device),
        memory.to(device, dtype),
        anchors.to(device, dtype),
    )


def run_chain(impl, features, bins, memory, anchors, envelope_temperature=None, label_weighting=False):
    """The three terms from one surrogate table, and d(weighted sum)/d features."""
    features = features.detach().clone().requires_grad_()
    surrogates = impl.surrogate_table(features, bins, memory)
    terms = (
        impl.contrastive_loss(features, bins, surrogates, TEMPERATURE, label_weighting),
        impl.enveloping_loss(surrogates, anchors, envelope_temperature),
        impl.homogeneity_loss(surrogates, -1.0, 0.1),
    )
    sum(w * t for w, t in zip(TERM_WEIGHTS, terms)).backward()
    return surrogates.detach(), torch.stack([t.detach() for t in terms]), features.grad


def assert_chain_close(got, want, loss_tolerance, grad_tolerance):
    (got_table, got_terms, got_grad), (want_table, want_terms, want_grad) = got, want
    torch.testing.assert_close(got_table, want_table, **loss_tolerance)
    torch.testing.assert_close(got_terms, want_terms, **loss_tolerance)
    torch.testing.assert_close(got_grad.to(want_grad.dtype), want_grad, **grad_tolerance)


# ----------------------------------------------------------------------------------- wiring


def test_unavailable_reason_explains_the_interpreter(monkeypatch):
    monkeypatch.setattr(tri_utils, "INTERPRETING", False)
    reason = tri.unavailable_reason(torch.device("cpu"))
    assert "no CPU backend" in reason and "TRITON_INTERPRET=1" in reason
    assert "CUDA" in tri.unavailable_reason(torch.device("meta"))
    assert tri.unavailable_reason(torch.device("cuda")) is None
    monkeypatch.setattr(tri_utils, "INTERPRETING", True)
    assert tri.unavailable_reason(torch.device("cpu")) is None


def test_device_of_makes_a_gpu_current_and_leaves_the_cpu_alone():
    # Built without touching CUDA: entering it is what makes cuda:1 current.
    guard = tri_utils.device_of(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(tri_utils.device_of(torch.device("cpu")), torch.cuda.device)


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_runs_on_its_inputs_device(device, monkeypatch):
    # Triton launches on the current device; the inputs may be on another GPU (cuda:1 while 0
    # is current), so each op makes its inputs' device current while it runs.
    entered = []
    device_of = tri_utils.device_of
    monkeypatch.setattr(tri_utils, "device_of", lambda d: entered.append(d) or device_of(d))
    case = make_case(device, torch.float32, bins=[1, 1, 0], num_bins=3, dim=4, num_anchors=5)
    run_chain(tri, *case)
    ops = ["surrogate_table", "contrastive", "envelope", "homogeneity", "surrogate_table_backward"]
    assert entered == [case[0].device] * len(ops)


@pytest.mark.parametrize("device", DEVICES)
def test_backend_resolves_to_the_triton_module(device):
    assert backends.resolve("triton", torch.device(device)) is tri


@pytest.mark.parametrize("device", DEVICES)
def test_functional_api_with_triton_backend(device):
    features, bins, memory, anchors = make_case(device, torch.float32)
    kwargs = {"temperature": TEMPERATURE, "envelope": "soft", "envelope_temperature": 0.2, "label_weighting": True}
    got = functional.srl_terms(features, bins, memory, anchors, backend="triton", **kwargs)
    want = functional.srl_terms(features, bins, memory, anchors, backend="reference", **kwargs)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), **TOLERANCE[torch.float32])


def test_bad_arguments_raise_value_errors():
    too_wide = torch.zeros(2, tri_utils.MAX_FEATURE_DIM + 1)
    with pytest.raises(ValueError, match="feature dimension D"):
        tri.surrogate_table(too_wide, torch.zeros(2, dtype=torch.int64), too_wide)
    with pytest.raises(ValueError, match="temperature"):
        tri.enveloping_loss(torch.zeros(3, 4), torch.zeros(5, 4), 0.0)
    with pytest.raises(ValueError, match="K >= 2"):
        tri.homogeneity_loss(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="'surrogates' must have D >= 1 columns, got 0"):
        tri.enveloping_loss(torch.zeros(3, 0), torch.zeros(5, 0), None)
    with pytest.raises(ValueError, match="'features' must have D >= 1 columns, got 0"):
        tri.contrastive_loss(torch.zeros(2, 0), torch.zeros(2, dtype=torch.int64), torch.zeros(3, 0), 0.1)


# ------------------------------------------------------------- the whole chain, every option


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
@pytest.mark.parametrize("label_weighting", [False, True], ids=["unweighted", "label-weighted"])
def test_chain_matches_reference(device, dtype, envelope_temperature, label_weighting):
    case = make_case(device, dtype)
    got = run_chain(tri, *case, envelope_temperature, label_weighting)
    want = run_chain(reference, *case, envelope_temperature, label_weighting)
    assert got[1].dtype == dtype and got[2].dtype == dtype
    assert_chain_close(got, want, TOLERANCE[dtype], TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_chain_with_two_bins(device, dtype, envelope_temperature):
    # K = 2: a single neighbour pair, whose variance is taken as 0; bin 0 is absent.
    case = make_case(device, dtype, bins=[1, 1, 1], num_bins=2, dim=5, num_anchors=9)
    got = run_chain(tri, *case, envelope_temperature, label_weighting=True)
    want = run_chain(reference, *case, envelope_temperature, label_weighting=True)
    assert_chain_close(got, want, TOLERANCE[dtype], TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_half_features_match_reference_on_float32(device, dtype, envelope_temperature):
    # Half inputs are accumulated in float32: the losses equal the float32 reference on the
    # upcast inputs; the gradient comes back in the input dtype (rounded to it).
    case = make_case(device, dtype)
    got = run_chain(tri, *case, envelope_temperature, label_weighting=True)
    want = run_chain(reference, *(x.float() if x.is_floating_point() else x for x in case), envelope_temperature, True)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[2].dtype == dtype
    assert_chain_close(got, want, TOLERANCE[torch.float32], {"rtol": 2e-2, "atol": 2e-3})


# ------------------------------------------------------------------------------- per term


def tables_and_grads(features, bins, memory, seed):
    """[(table, d <table, upstream> / d features)] of the Triton backend and of the reference."""
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(memory.shape, generator=generator, dtype=memory.dtype).to(memory.device)
    results = []
    for impl in (tri, reference):
        h = features.clone().requires_grad_()
        table = impl.surrogate_table(h, bins, memory)
        (table * upstream).sum().backward()
        results.append((table.detach(), h.grad))
    return results


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_surrogate_table_matches_reference(device, dtype):
    (got_table, got_grad), (want_table, want_grad) = tables_and_grads(*make_case(device, dtype)[:3], seed=1)
    torch.testing.assert_close(got_table, want_table, **TOLERANCE[dtype])
    torch.testing.assert_close(got_grad, want_grad, **TOLERANCE[dtype])
    assert torch.equal(got_table[ZERO_MEMORY_ROWS], torch.zeros_like(got_table[ZERO_MEMORY_ROWS]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("label_weighting", [False, True], ids=["unweighted", "label-weighted"])
def test_contrastive_matches_reference_and_detaches_surrogates(device, dtype, label_weighting):
    features, bins, memory, _ = make_case(device, dtype)
    table = reference.surrogate_table(features, bins, memory)  # with its zero rows
    results = []
    for impl in (tri, reference):
        h = features.clone().requires_grad_()
        surrogates = table.clone().requires_grad_()
        loss = impl.contrastive_loss(h, bins, surrogates, TEMPERATURE, label_weighting)
        (1.7 * loss).backward()
        assert surrogates.grad is None
        results.append((loss.detach(), h.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


def assert_surrogate_term_matches(surrogates, term):
    """term(impl, surrogates) -> loss: the Triton backend's loss and d (1.7 loss) / d surrogates
    equal the reference's, to the tolerance of the surrogates' dtype."""
    results = []
    for impl in (tri, reference):
        leaf = surrogates.detach().clone().requires_grad_()
        loss = term(impl, leaf)
        (1.7 * loss).backward()
        results.append((loss.detach(), leaf.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOLERANCE[surrogates.dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_envelope_matches_reference(device, dtype, envelope_temperature):
    # Rows of any norm, one of them zero: the kernels do not assume unit surrogates.
    _, _, memory, anchors = make_case(device, dtype)
    assert_surrogate_term_matches(memory, lambda impl, c: impl.enveloping_loss(c, anchors, envelope_temperature))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("sign", [-1.0, 1.0])
@pytest.mark.parametrize("num_bins", [2, 3, NUM_BINS])
def test_homogeneity_matches_reference(device, dtype, sign, num_bins):
    _, _, memory, _ = make_case(device, dtype)
    surrogates = F.normalize(memory[:num_bins], dim=1)
    assert_surrogate_term_matches(surrogates, lambda impl, c: impl.homogeneity_loss(c, sign, 0.25))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_half_surrogates_in_envelope_and_homogeneity(device, dtype, envelope_temperature):
    _, _, memory, anchors = make_case(device, dtype)
    results = []
    for impl, cast in ((tri, dtype), (reference, torch.float32)):
        surrogates = memory.detach().to(cast).clone().requires_grad_()
        envelope = impl.enveloping_loss(surrogates, anchors.to(cast), envelope_temperature)
        homogeneity = impl.homogeneity_loss(surrogates, 1.0, 0.1)
        (envelope + 2 * homogeneity).backward()
        results.append((torch.stack([envelope.detach(), homogeneity.detach()]), surrogates.grad))
    (got_losses, got_grad), (want_losses, want_grad) = results
    assert got_losses.dtype == torch.float32 and got_grad.dtype == dtype
    torch.testing.assert_close(got_losses, want_losses, **TOLERANCE[torch.float32])
    torch.testing.assert_close(got_grad.float(), want_grad, rtol=2e-2, atol=2e-3)


# --------------------------------------------- bad inputs the GPU does not check (host sync)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_bins_give_nan_rows_as_the_cuda_kernels(device):
    # Such a sample belongs to no bin; its contrastive loss and its gradient rows are NaN, the
    # other samples are untouched.
    features, bins, memory, _ = make_case(device, torch.float32)
    bad = bins.clone()
    bad[2], bad[9] = -1, NUM_BINS
    valid = torch.ones(len(BINS), dtype=torch.bool, device=device)
    valid[[2, 9]] = False
    h = features.clone().requires_grad_()
    table = tri.surrogate_table(h, bad, memory)
    torch.testing.assert_close(table, reference.surrogate_table(features[valid], bins[valid], memory),
                               **TOLERANCE[torch.float32])
    table.sum().backward()
    assert bool(torch.isnan(h.grad[~valid]).all()) and bool(torch.isfinite(h.grad[valid]).all())

    loss, grad = torch.ops.srl_ext_triton.contrastive(features, bad, table.detach(), TEMPERATURE, True)
    assert torch.isnan(loss)
    assert bool(torch.isnan(grad[~valid]).all())
    # The valid rows' gradients are those of their share of the batch mean.
    share = features[valid].clone().requires_grad_()
    want = reference.contrastive_loss(share, bins[valid], table.detach(), TEMPERATURE, True) * valid.sum() / len(BINS)
    want.backward()
    torch.testing.assert_close(grad[valid], share.grad, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_a_non_finite_feature_spoils_only_its_own_bin(device):
    # As the reference: one NaN (or inf) feature makes its bin's mean NaN; the one-hot GEMM must
    # not spread it (0 * NaN) to the other bins of its tile.
    features, bins, memory, _ = make_case(device, torch.float64)
    features[0, 1] = float("nan")  # bin 3
    features[6, 0] = float("inf")  # bin 7
    (got_table, got_grad), (want_table, want_grad) = tables_and_grads(features, bins, memory, seed=2)
    torch.testing.assert_close(got_table, want_table, equal_nan=True, **TOLERANCE[torch.float64])
    spoiled = torch.isnan(got_table).all(dim=1)
    assert spoiled.nonzero().flatten().tolist() == [3, 7]
    # The samples of the other bins keep their gradients. (Those sharing a spoiled bin get no
    # meaningful one: NaN in the reference, finite in the fused kernels, CUDA's included.)
    clean = ~spoiled[bins]
    torch.testing.assert_close(got_grad[clean], want_grad[clean], **TOLERANCE[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_envelope_gradient_without_anchors_is_zero(device, envelope_temperature):
    # -1/N at N = 0 would make it 0 * -inf = NaN; the CUDA kernels return zeros.
    _, _, memory, anchors = make_case(device, torch.float32)
    _, grad = torch.ops.srl_ext_triton.envelope(memory, anchors[:0], envelope_temperature)
    assert torch.equal(grad, torch.zeros_like(memory))


# -------------------------------------------------------------------------- arg-max ties


def _grid_vectors(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Entries in {-1, -1/2, 0, 1/2, 1}: every dot product of two such rows is exact in every
    dtype and summation order, so all backends see the same cosines, ties included."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (rows, dim), generator=generator).to(torch.float64) / 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_hard_envelope_tie_goes_to_the_lowest_bin(device, dtype):
    # Rows 1, 2 (same K tile of the interpreter's config) and 6 (a later tile) are equal, and
    # the first anchors point along them: their maximum is tied between the three rows.
    surrogates = _grid_vectors(NUM_BINS, 8, seed=2)
    tied = torch.tensor([1.0, 0.5, 0, 0, 0, 0, 0, 1.0], dtype=torch.float64)
    surrogates[[1, 2, 6]] = tied
    anchors = torch.cat([tied.expand(4, 8), _grid_vectors(20, 8, seed=3)])
    surrogates, anchors = surrogates.to(device, dtype), anchors.to(device, dtype)
    results = []
    for impl, cast in ((tri, dtype), (reference, torch.float32 if dtype == torch.bfloat16 else dtype)):
        c = surrogates.to(cast).clone().requires_grad_()
        loss = impl.enveloping_loss(c, anchors.to(cast), None)
        loss.backward()
        results.append((loss.detach(), c.grad.to(cast)))
    (got_loss, got_grad), (want_loss, want_grad) = results
    tolerance = TOLERANCE[want_loss.dtype]
    torch.testing.assert_close(got_loss, want_loss, **tolerance)
    torch.testing.assert_close(got_grad, want_grad.to(dtype), **tolerance)
    assert got_grad[1].abs().sum() > 0
    assert torch.equal(got_grad[[2, 6]], torch.zeros_like(got_grad[[2, 6]]))


@pytest.mark.parametrize("device", DEVICES)
def test_hard_envelope_tie_through_the_table(device):
    # Bins 1 and 6 hold one sample each, both (2, 0, ..., 0): both surrogates are exactly e_0,
    # and the anchors e_0 are tied between them. Their gradient goes to bin 1, none to bin 6.
    dim = 8
    bins = torch.tensor([1, 6, 3, 3, 9], device=device)
    features = _grid_vectors(len(bins), dim, seed=4)
    features[:2] = 0
    features[:2, 0] = 2
    memory = _grid_vectors(NUM_BINS, dim, seed=5)
    e0 = torch.zeros(1, dim, dtype=torch.float64)
    e0[0, 0] = 1
    anchors = torch.cat([e0.expand(3, dim), F.normalize(_grid_vectors(10, dim, seed=6), dim=1)])
    features, memory, anchors = (x.to(device, torch.float32) for x in (features, memory, anchors))
    results = []
    for impl in (tri, reference):
        h = features.clone().requires_grad_()
        loss = impl.enveloping_loss(impl.surrogate_table(h, bins, memory), anchors, None)
        loss.backward()
        results.append((loss.detach(), h.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    got_grad = results[0][1]
    assert got_grad[0].abs().sum() > 0
    assert torch.equal(got_grad[1], torch.zeros_like(got_grad[1]))


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_envelope_is_deterministic(device, envelope_temperature):
    # The gradient is reduced over anchor splits in a fixed order, without atomics.
    _, _, memory, anchors = make_case(device, torch.float32, num_anchors=40)
    runs = []
    for _ in range(2):
        surrogates = memory.clone().requires_grad_()
        tri.enveloping_loss(surrogates, anchors, envelope_temperature).backward()
        runs.append(surrogates.grad)
    assert torch.equal(runs[0], runs[1])


@pytest.fixture
def timed_mode_after(monkeypatch):
    """The deterministic mode is back off after the test."""
    monkeypatch.delenv(tri_utils.DETERMINISTIC_ENV, raising=False)
    yield
    tri.set_deterministic(False)


def test_deterministic_mode_pins_the_last_config_of_each_gpu(monkeypatch, timed_mode_after):
    # Timing picks the tiles, which set the summation order: not reproducible across processes.
    # The pinned config is the one every list ends with, small enough for every dtype and D.
    monkeypatch.setattr(tri_utils, "INTERPRETING", False)  # the GPU lists (the interpreter has one config)
    space = tri_utils.autotune_configs(("BLOCK",), hopper=[(64,), (32,)], ampere=[(32,)], fallback=(8,), interpreter=(4,))
    prune = space.prune_configs_by["early_config_prune"]
    for capability, gpu in (((9, 0), "hopper"), ((8, 0), "ampere")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device, c=capability: c)
        assert prune(space.configs, {}) == space.by_gpu[gpu]
        assert len(space.by_gpu[gpu]) > 1
        tri.set_deterministic(True)
        assert tri.deterministic()
        assert [c.kwargs for c in prune(space.configs, {})] == [{"BLOCK": 8}]
        tri.set_deterministic(False)
        monkeypatch.setenv(tri_utils.DETERMINISTIC_ENV, "1")
        assert prune(space.configs, {}) == space.by_gpu[gpu][-1:]
        monkeypatch.delenv(tri_utils.DETERMINISTIC_ENV)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            assert prune(space.configs, {}) == space.by_gpu[gpu][-1:]
        finally:
            torch.use_deterministic_algorithms(previous)
        assert not tri.deterministic()


def test_switching_the_mode_keeps_the_autotuned_choices_apart(timed_mode_after):
    # An autotuner only asks for configs on a shape it has no choice for yet: a choice timed
    # before the switch must not be used in deterministic mode, and comes back after it.
    kernel = importlib.import_module("srl_ext.kernels.triton.contrastive")._contrastive_kernel
    tri_utils.launch(kernel)
    kernel.cache["shape"] = "timed choice"
    tri.set_deterministic(True)
    tri_utils.launch(kernel)
    assert "shape" not in kernel.cache
    tri.set_deterministic(False)
    tri_utils.launch(kernel)
    assert kernel.cache.pop("shape") == "timed choice"


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_mode_matches_the_reference(device, timed_mode_after):
    tri.set_deterministic(True)
    case = make_case(device, torch.float32)
    got = run_chain(tri, *case, 0.2, label_weighting=True)
    want = run_chain(reference, *case, 0.2, label_weighting=True)
    assert_chain_close(got, want, TOLERANCE[torch.float32], TOLERANCE[torch.float32])


def test_only_config_runs_one_listed_config_of_either_gpu(monkeypatch, timed_mode_after):
    # bench/check_triton_configs.py runs each place of the lists in turn: both GPUs' lists on any
    # GPU, the last config where a list is shorter, whatever the deterministic mode says.
    monkeypatch.setattr(tri_utils, "INTERPRETING", False)
    monkeypatch.setattr(tri_utils, "TUNING_SPACES", [])
    space = tri_utils.autotune_configs(("BLOCK",), hopper=[(64,), (32,)], ampere=[(16,)], fallback=(8,), interpreter=(4,))
    assert tri_utils.TUNING_SPACES == [space]
    prune = space.prune_configs_by["early_config_prune"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    blocks = lambda: [c.kwargs["BLOCK"] for c in prune(space.configs, {})]  # noqa: E731
    assert tri_utils.num_configs("hopper") == 3 and tri_utils.num_configs("ampere") == 2
    with tri_utils.only_config("ampere", 0):
        assert blocks() == [16]
        with tri_utils.only_config("hopper", 1):
            assert blocks() == [32]
        with tri_utils.only_config("ampere", 5):
            assert blocks() == [8]
        tri.set_deterministic(True)
        assert blocks() == [16]
        tri.set_deterministic(False)
    assert blocks() == [64, 32, 8]


def test_configs_up_to_a_row_block_are_not_tried_beyond_it(monkeypatch, timed_mode_after):
    # Tiles that spill registers at D = 256 (tools/check_triton_kernels.py) are left out there;
    # the fallback always stays.
    monkeypatch.setattr(tri_utils, "INTERPRETING", False)
    monkeypatch.setattr(tri_utils, "TUNING_SPACES", [])
    space = tri_utils.autotune_configs(("BLOCK",), hopper=[tri_utils.UpTo(128, (64,)), (32,)], ampere=[(16,)],
                                       fallback=(8,), interpreter=(4,))
    prune = space.prune_configs_by["early_config_prune"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    blocks = lambda block_d: [c.kwargs["BLOCK"] for c in prune(space.configs, {}, BLOCK_D=block_d)]  # noqa: E731
    assert blocks(64) == blocks(128) == [64, 32, 8]
    assert blocks(256) == [32, 8]
    tri.set_deterministic(True)
    assert blocks(256) == [8]


def test_only_config_keeps_its_choices_apart(timed_mode_after):
    kernel = importlib.import_module("srl_ext.kernels.triton.contrastive")._contrastive_kernel
    tri_utils.launch(kernel)
    kernel.cache["shape"] = "timed choice"
    with tri_utils.only_config("hopper", 1):
        tri_utils.launch(kernel)
        assert "shape" not in kernel.cache
        kernel.cache["shape"] = "config 1"
    with tri_utils.only_config("hopper", 2):
        tri_utils.launch(kernel)
        assert "shape" not in kernel.cache
    tri_utils.launch(kernel)
    assert kernel.cache.pop("shape") == "timed choice"


def test_sizes_past_the_32_bit_offsets_are_refused():
    # Expanded views hold 2^31 elements in no memory: the checks come before any copy.
    wide = torch.zeros(1, 256).expand(2**23, 256)
    bins = torch.zeros(1, dtype=torch.int64).expand(2**23)
    memory = torch.zeros(4, 256)
    message = r"argument '{}' needs {} elements.*32-bit offsets.*at most 2147483647"
    with pytest.raises(ValueError, match="contrastive_loss: " + message.format("features", 2**31)):
        torch.ops.srl_ext_triton.contrastive(wide, bins, memory, TEMPERATURE, False)
    with pytest.raises(ValueError, match="surrogate_table: " + message.format("memory", 2**31)):
        torch.ops.srl_ext_triton.surrogate_table(wide[:4], bins[:4], wide)
    with pytest.raises(ValueError, match="homogeneity_loss: " + message.format("surrogates", 2**31)):
        torch.ops.srl_ext_triton.homogeneity(wide, -1.0, 0.1)
    # The whole loss writes four B x D gradients: a quarter of the rows is already too many.
    quarter = wide[: 2**21]
    four = message.format("features", 2**31).replace("elements", r"elements \(the four gradients, 4 x B x D\)")
    with pytest.raises(ValueError, match="srl_loss: " + four):
        torch.ops.srl_ext_triton.srl_loss(quarter, bins[: 2**21], memory, memory, 1.0, 1.0, 1.0, TEMPERATURE, -1.0,
                                          0.1, None, False)
    assert tri_utils.MAX_OFFSET == 2**31


def test_autotune_keys_bucket_the_batch_and_anchor_counts():
    # The number of programs (or of loop trips) changes the best tiles: timed once per bucket.
    assert [tri_utils.size_bucket(n) for n in (1, 16, 17, 64, 100, 2000, 10**6)] == [16, 16, 32, 64, 128, 2048, 2**20]
    contrastive = importlib.import_module("srl_ext.kernels.triton.contrastive")
    envelope = importlib.import_module("srl_ext.kernels.triton.envelope")
    assert "B_BUCKET" in contrastive._contrastive_kernel.keys
    assert "N_BUCKET" in envelope._coverage_kernel.keys and "N_BUCKET" in envelope._gradient_partials_kernel.keys


# ------------------------------------------------ torch.compile and opcheck (compiled only)


def column_major(x: torch.Tensor) -> torch.Tensor:
    """The same values with strides (1, rows), as a transposed tensor has them."""
    return x.detach().t().contiguous().t().requires_grad_(x.requires_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_column_major_inputs_give_contiguous_outputs(device):
    # The op bodies are also the ops' fake kernels (triton_op), so this is what opcheck and
    # inductor see as well: contiguous outputs whatever the inputs' strides.
    features, bins, memory, anchors = (column_major(x) if x.dim() == 2 else x for x in make_case(device, torch.float32))
    assert not features.is_contiguous()
    table, norms, counts = torch.ops.srl_ext_triton.surrogate_table(features, bins, memory)
    outputs = [
        table,
        torch.ops.srl_ext_triton.surrogate_table_backward(column_major(table), features, bins, table, norms, counts),
        torch.ops.srl_ext_triton.contrastive(features, bins, column_major(table), TEMPERATURE, True)[1],
        torch.ops.srl_ext_triton.envelope(column_major(table), anchors, 0.2)[1],
        torch.ops.srl_ext_triton.homogeneity(column_major(table), -1.0, 0.1)[1],
    ]
    assert all(out.is_contiguous() for out in outputs)
    want = reference.surrogate_table(features, bins, memory)
    torch.testing.assert_close(table, want, **TOLERANCE[torch.float32])


@CUDA_ONLY
@pytest.mark.parametrize("layout", ["contiguous", "column-major"])
def test_opcheck(layout):
    features, bins, memory, anchors = make_case("cuda", torch.float32)
    table = reference.surrogate_table(features, bins, memory)
    if layout == "column-major":
        features, memory, anchors, table = (column_major(x) for x in (features, memory, anchors, table))
    cases = [
        (torch.ops.srl_ext_triton.surrogate_table.default, (features.requires_grad_(), bins, memory)),
        (torch.ops.srl_ext_triton.contrastive.default, (features, bins, table, TEMPERATURE, True)),
        (torch.ops.srl_ext_triton.envelope.default, (table.requires_grad_(), anchors, None)),
        (torch.ops.srl_ext_triton.envelope.default, (table, anchors, 0.2)),
        (torch.ops.srl_ext_triton.homogeneity.default, (table, -1.0, 0.1)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@CUDA_ONLY
@pytest.mark.parametrize("envelope_temperature", ENVELOPES)
def test_torch_compile_traces_the_terms_without_graph_breaks(envelope_temperature):
    features, bins, memory, anchors = make_case("cuda", torch.float32)

    def terms(features):
        surrogates = tri.surrogate_table(features, bins, memory)
        return surrogates, torch.stack([
            tri.contrastive_loss(features, bins, surrogates, TEMPERATURE, True),
            tri.enveloping_loss(surrogates, anchors, envelope_temperature),
            tri.homogeneity_loss(surrogates, -1.0, 0.1),
        ])

    torch._dynamo.reset()
    results = []
    for fn in (torch.compile(terms, fullgraph=True), terms):
        h = features.clone().requires_grad_()
        surrogates, values = fn(h)
        (values * torch.tensor(TERM_WEIGHTS, device="cuda")).sum().backward()
        results.append((surrogates.detach(), values.detach(), h.grad))
    assert_chain_close(*results, TOLERANCE[torch.float32], TOLERANCE[torch.float32])
