"""The public API: checked inputs with clear errors, backends, SRLLoss and its presets."""

import pytest
import torch

from helpers import make_inputs
from srl_ext import SRLLoss, SRLSettings, functional, ops, reference, sample_anchors, settings

needs_cpu_ops = pytest.mark.skipif(not ops.available(), reason=str(ops.LOAD_ERROR))


def inputs():
    features, bins, memory, anchors = make_inputs(6, 4, 10, 3)
    return features, bins, memory, anchors


BAD_INPUTS = [
    # (what to override, the words the message must hold)
    (lambda f, b, m, a: dict(features=f[0]), ["'features'", "2-D", "shape (3,)"]),
    (lambda f, b, m, a: dict(features=f.detach().to(torch.int64)), ["'features'", "float32", "torch.int64"]),
    (lambda f, b, m, a: dict(features=[[1.0]]), ["'features'", "tensor", "list"]),
    (lambda f, b, m, a: dict(features=f[:, :0]), ["'features'", "non-empty", "shape (6, 0)"]),
    (lambda f, b, m, a: dict(features=torch.full((6, 3), float("nan"))), ["'features'", "finite", "row 0"]),
    (lambda f, b, m, a: dict(features=torch.cat([f.detach()[:2], torch.tensor([[0.0, float("inf"), 0.0]])])),
     ["'features'", "finite", "row 2"]),
    (lambda f, b, m, a: dict(bins=b.to(torch.int32)), ["'bins'", "int64", "torch.int32"]),
    (lambda f, b, m, a: dict(bins=b[:5]), ["'bins'", "length B = 6", "length 5"]),
    (lambda f, b, m, a: dict(bins=b.clone().fill_(4)), ["'bins'", "[0, 4)", "got 4"]),
    (lambda f, b, m, a: dict(bins=b.clone().fill_(-1)), ["'bins'", "[0, 4)", "got -1"]),
    (lambda f, b, m, a: dict(memory=m[:1]), ["'memory'", "K = 2", "shape (1, 3)"]),
    (lambda f, b, m, a: dict(memory=m[:, :2]), ["'memory'", "3 columns", "shape (4, 2)"]),
    (lambda f, b, m, a: dict(anchors=a[:0]), ["'anchors'", "N = 1", "shape (0, 3)"]),
    (lambda f, b, m, a: dict(anchors=a[:, :2]), ["'anchors'", "3 columns", "shape (10, 2)"]),
    (lambda f, b, m, a: dict(temperature=0.0), ["'temperature'", "> 0", "0.0"]),
    (lambda f, b, m, a: dict(temperature=float("inf")), ["'temperature'", "finite", "inf"]),
    (lambda f, b, m, a: dict(envelope="smooth"), ["'envelope'", "'hard' or 'soft'", "'smooth'"]),
    (lambda f, b, m, a: dict(envelope="soft"), ["'envelope_temperature'", "> 0", "None"]),
    (lambda f, b, m, a: dict(envelope="soft", envelope_temperature=-1.0), ["'envelope_temperature'", "> 0", "-1.0"]),
    (lambda f, b, m, a: dict(envelope_temperature=0.1), ["'envelope_temperature'", "envelope='hard'", "0.1"]),
    (lambda f, b, m, a: dict(backend="gpu"), ["'backend'", "'cpu'", "'gpu'"]),
]


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ops)])
@pytest.mark.parametrize("make_override, words", BAD_INPUTS)
def test_bad_input_names_argument_expected_and_actual(backend, make_override, words):
    features, bins, memory, anchors = inputs()
    override = make_override(features, bins, memory, anchors)
    snapshot = [t.detach().clone() for t in (features, bins, memory, anchors)]
    arguments = dict(features=features, bins=bins, memory=memory, anchors=anchors, temperature=0.2, backend=backend)
    arguments.update(override)
    with pytest.raises(ValueError) as error:
        functional.srl_terms(
            arguments.pop("features"), arguments.pop("bins"), arguments.pop("memory"), arguments.pop("anchors"),
            **arguments,
        )
    message = str(error.value)
    assert message.startswith("srl_terms: argument ")
    for word in words:
        assert word in message, message
    for before, after in zip(snapshot, (features, bins, memory, anchors)):
        assert torch.equal(before, after.detach())  # nothing mutated by a failed call


def test_devices_must_match():
    features, bins, memory, anchors = inputs()
    with pytest.raises(ValueError, match="'anchors'.*device of 'features' \\(cpu\\).*meta"):
        functional.srl_terms(features, bins, memory, anchors.to("meta"), temperature=0.2, backend="reference")


@pytest.mark.parametrize(
    "function, arguments, words",
    [
        (functional.surrogate_table, lambda f, b, m, a: (f, b, m[:, :1]), ["surrogate_table", "'memory'"]),
        (functional.contrastive_loss, lambda f, b, m, a: (f, b.clone().fill_(9), m), ["contrastive_loss", "'bins'"]),
        (functional.enveloping_loss, lambda f, b, m, a: (m, a[:, :2]), ["enveloping_loss", "'anchors'"]),
        (functional.homogeneity_loss, lambda f, b, m, a: (m[:1],), ["homogeneity_loss", "'surrogates'", "K = 2"]),
        (functional.enveloping_loss, lambda f, b, m, a: (m[:, :0], a[:, :0]),
         ["enveloping_loss", "'surrogates'", "D >= 1", "shape (4, 0)"]),
        (functional.homogeneity_loss, lambda f, b, m, a: (m[:, :0],), ["homogeneity_loss", "'surrogates'", "D >= 1"]),
    ],
)
def test_term_functions_check_their_inputs(function, arguments, words):
    kwargs = {"temperature": 0.2} if function is functional.contrastive_loss else {}
    with pytest.raises(ValueError) as error:
        function(*arguments(*inputs()), backend="reference", **kwargs)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ops)])
def test_functional_matches_reference(backend):
    features, bins, memory, anchors = make_inputs(20, 9, 50, 8, present_bins=5, zero_memory_rows=2)
    got = functional.srl_terms(features, bins, memory, anchors, temperature=0.3, envelope="soft",
                               envelope_temperature=0.2, homogeneity_sign=1.0, label_weighting=True, backend=backend)
    expected = reference.srl_terms(features, bins, memory, anchors, temperature=0.3, envelope="soft",
                                   envelope_temperature=0.2, homogeneity_sign=1.0, label_weighting=True)
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=1e-5, atol=1e-6)
    table = functional.surrogate_table(features, bins, memory, backend=backend)
    torch.testing.assert_close(
        functional.contrastive_loss(features, bins, table, temperature=0.3, label_weighting=True, backend=backend),
        expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        functional.enveloping_loss(table, anchors, envelope="soft", envelope_temperature=0.2, backend=backend),
        expected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(functional.homogeneity_loss(table, sign=1.0, backend=backend), expected[2],
                               rtol=1e-5, atol=1e-6)


def test_backend_that_cannot_run_says_why():
    features, bins, memory, anchors = inputs()
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run: backend 'cuda' runs on CUDA tensors"):
        functional.srl_terms(features, bins, memory, anchors, temperature=0.2, backend="cuda")


def test_sample_anchors_are_seeded_unit_vectors():
    anchors = sample_anchors(500, 16, seed=3)
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(500))
    assert torch.equal(anchors, sample_anchors(500, 16, seed=3))
    assert not torch.equal(anchors, sample_anchors(500, 16, seed=4))


@pytest.mark.parametrize("name", ["agedb", "imdb_wiki", "sts_b"])
def test_presets_follow_the_released_settings(name):
    released = {  # docs/method.md, "Presets": w1, w2, w3, tau, N, sign, K
        "agedb": (10, 100, 0.01, 0.3, 2000, -1, 102),
        "imdb_wiki": (10, 100, 0.01, 0.3, 2000, +1, 187),
        "sts_b": (1e-4, 1e-2, 1e-4, 0.1, 1000, +1, 50),
    }[name]
    loss_fn = SRLLoss.preset(name)
    got = (loss_fn.w1, loss_fn.w2, loss_fn.w3, loss_fn.temperature, loss_fn.anchors.shape[0],
           loss_fn.homogeneity_sign, loss_fn.num_bins)
    assert got == released
    assert settings.preset(name).srl.homogeneity_beta == 0.1


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset must be one of 'agedb', 'imdb_wiki', 'sts_b', got 'utk'"):
        SRLLoss.preset("utk")


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ops)])
def test_srl_loss_weighs_the_terms_and_saves_its_anchors(backend):
    loss_fn = SRLLoss(9, 8, w1=2.0, w2=3.0, w3=0.5, temperature=0.3, num_anchors=64, anchor_seed=7, backend=backend)
    features, bins, memory, _ = make_inputs(20, 9, 1, 8, present_bins=6)
    out = loss_fn(features, bins, memory)
    expected = reference.srl_terms(features, bins, memory, loss_fn.anchors, temperature=0.3)
    torch.testing.assert_close(torch.stack(out[1:]), torch.stack(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.total, 2.0 * expected[0] + 3.0 * expected[1] + 0.5 * expected[2], rtol=1e-5, atol=1e-6)
    out.total.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()

    restored = SRLLoss(9, 8, num_anchors=64, anchor_seed=0)
    assert not torch.equal(restored.anchors, loss_fn.anchors)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.anchors, loss_fn.anchors)


@pytest.mark.parametrize(
    "arguments, words",
    [
        (dict(num_bins=1), ["'num_bins'", "at least 2", "1"]),
        (dict(num_bins=10, num_anchors=0), ["'num_anchors'", "positive int", "0"]),
        (dict(num_bins=10, temperature=-0.1), ["'temperature'", "> 0", "-0.1"]),
        (dict(num_bins=10, backend="tpu"), ["'backend'", "'triton'", "'tpu'"]),
        (dict(num_bins=10, envelope="soft"), ["'envelope_temperature'", "None"]),
    ],
)
def test_srl_loss_checks_its_settings(arguments, words):
    with pytest.raises(ValueError) as error:
        SRLLoss(**arguments)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_srl_loss_memory_must_have_num_bins_rows():
    loss_fn = SRLLoss(9, 8, num_anchors=4, backend="reference")
    features, bins, _, _ = make_inputs(5, 9, 1, 8)
    with pytest.raises(ValueError, match="'memory'.*9 rows.*shape \\(8, 8\\)"):
        loss_fn(features, bins, torch.zeros(8, 8))


def test_settings_travel_whole_and_keywords_override_them():
    features, bins, memory, anchors = make_inputs(12, 7, 30, 8, present_bins=4)
    s = SRLSettings(temperature=0.25, homogeneity_sign=1.0, envelope="soft", envelope_temperature=0.3,
                    label_weighting=True)
    expected = reference.srl_terms(features, bins, memory, anchors, temperature=0.25, homogeneity_sign=1.0,
                                   envelope="soft", envelope_temperature=0.3, label_weighting=True)
    for got in (functional.srl_terms(features, bins, memory, anchors, s, backend="reference"),
                reference.srl_terms(features, bins, memory, anchors, s),
                functional.srl_terms(features, bins, memory, anchors, s.replace(temperature=9.0), temperature=0.25,
                                     backend="reference")):
        torch.testing.assert_close(torch.stack(got), torch.stack(expected))
    loss_fn = SRLLoss(7, 8, settings=s, num_anchors=30, backend="reference")
    assert loss_fn.settings == s.replace(num_anchors=30) and loss_fn.temperature == 0.25
    with pytest.raises(TypeError, match="unexpected keyword argument 'temp'"):
        functional.srl_terms(features, bins, memory, anchors, temp=0.1)


def test_settings_are_checked_when_built():
    with pytest.raises(ValueError, match="SRLSettings: argument 'envelope_temperature'"):
        SRLSettings(envelope="soft")
    with pytest.raises(ValueError, match="SRLSettings: argument 'num_anchors'"):
        SRLSettings(num_anchors=0)
    assert SRLSettings(w1=1).w1 == 1.0 and isinstance(SRLSettings(w1=1).w1, float)


def test_presets_state_k_once():
    assert {name: p.num_bins for name, p in settings.PRESETS.items()} == settings.NUM_BINS
    sts_b = settings.preset("sts_b")
    assert (sts_b.num_bins, sts_b.srl.temperature, sts_b.memory_normalized) == (50, 0.1, True)
