"""The whole-loss Triton op (srl_ext.kernels.triton.whole_loss) against the reference.

Without a GPU it runs in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), with small shapes and tiles of 4 to 8 so that every loop crosses several
tiles; on a GPU the same tests run on CUDA tensors with the compiled kernels.
"""

import importlib

import pytest
import torch

from helpers import make_inputs
from srl_ext import SRLSettings, functional

pytest.importorskip("triton")
tri = importlib.import_module("srl_ext.kernels.triton")
whole_loss = importlib.import_module("srl_ext.kernels.triton.whole_loss")


def _device(name: str):
    reason = "no CUDA device" if name == "cuda" and not torch.cuda.is_available() else tri.unavailable_reason(
        torch.device(name))
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


DEVICES = [_device("cpu"), _device("cuda")]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
# Bin 3 crowded, bin 7 a single sample, bins 0, 4, 6 absent (memory rows), 2 and 8 absent with
# zero memory rows (they stay zero).
BINS = [3, 3, 3, 3, 3, 3, 7, 1, 1, 5, 5, 9, 10, 10]


def make_case(device, dtype, num_anchors=37):
    features, _, memory, anchors = make_inputs(len(BINS), 11, num_anchors, 12, dtype=dtype)
    memory = memory.clone()
    memory[[2, 8]] = 0
    features = features.detach().to(device).requires_grad_()
    return features, torch.tensor(BINS, device=device), memory.to(device), anchors.to(device)


def losses_and_grads(backend, features, bins, memory, anchors, settings):
    """The four losses and the gradient of each w.r.t. the features."""
    out = functional.srl_loss(features, bins, memory, anchors, settings, backend=backend)
    grads = [torch.autograd.grad(loss, features, retain_graph=True)[0] for loss in out]
    return torch.stack([loss.detach() for loss in out]), torch.stack(grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("envelope_temperature", [None, 0.2], ids=["hard", "soft"])
@pytest.mark.parametrize("label_weighting", [False, True], ids=["unweighted", "label-weighted"])
def test_whole_loss_matches_reference(device, dtype, envelope_temperature, label_weighting):
    case = make_case(device, dtype)
    settings = SRLSettings(w1=1.0, w2=2.0, w3=3.0, temperature=0.3, homogeneity_sign=-1.0, label_weighting=label_weighting,
                           envelope="hard" if envelope_temperature is None else "soft",
                           envelope_temperature=envelope_temperature)
    got = losses_and_grads("triton", *case, settings)
    want = losses_and_grads("reference", *case, settings)
    torch.testing.assert_close(got[0], want[0], **TOLERANCE[dtype])
    torch.testing.assert_close(got[1], want[1], **TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_one_autograd_node_and_fewer_launches(device, monkeypatch):
    """Six kernels (and one torch sum) for the loss and all its gradients; the term ops launch
    seven kernels and about twenty torch ops for the same step."""
    launched = []
    for name in ("whole_loss", "table", "contrastive", "envelope"):  # each launches its own kernels
        module = importlib.import_module(f"srl_ext.kernels.triton.{name}")
        counted = lambda kernel, launch=module.launch: launched.append(kernel) or launch(kernel)  # noqa: E731
        monkeypatch.setattr(module, "launch", counted)
    features, bins, memory, anchors = make_case(device, torch.float32)
    out = functional.srl_loss(features, bins, memory, anchors, backend="triton")
    assert all(loss.grad_fn is out.total.grad_fn for loss in out)
    assert len(launched) == 6


@pytest.mark.parametrize("device", DEVICES)
def test_bins_out_of_range_give_nan_not_an_out_of_bounds_read(device):
    """The GPU semantics (no host sync to check the bins): such a sample belongs to no bin, its
    contrastive loss and its gradient rows are NaN."""
    features, bins, memory, anchors = make_case(device, torch.float32)
    bins = bins.clone()
    bins[4] = 11
    total, contrastive, enveloping, homogeneity, grads = torch.ops.srl_ext_triton.srl_loss(
        features.detach(), bins, memory, anchors, 1.0, 1.0, 1.0, 0.3, -1.0, 0.1, None, False)
    assert torch.isnan(contrastive) and torch.isnan(total)
    assert torch.isfinite(enveloping) and torch.isfinite(homogeneity)
    assert torch.isnan(grads[:, 4]).all() and torch.isfinite(grads[0, :4]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_half_features(device):
    features, bins, memory, anchors = make_case(device, torch.bfloat16)
    out = functional.srl_loss(features, bins, memory, anchors, backend="triton")
    out.total.backward()
    assert out.total.dtype == torch.float32 and features.grad.dtype == torch.bfloat16
    upcast = features.detach().float().requires_grad_()
    want = functional.srl_loss(upcast, bins, memory, anchors, backend="reference")
    torch.testing.assert_close(torch.stack(out).detach(), torch.stack(want).detach(), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("device", DEVICES)
def test_the_contrastive_sum_runs_over_several_row_chunks(device, monkeypatch):
    # Program 0 of the last kernel sums the per-sample losses ROW_CHUNK at a time (1024 on a
    # GPU): with chunks of 8, the batch of 14 takes one full chunk and one partial one.
    monkeypatch.setattr(whole_loss, "_ROW_CHUNK", 8)
    case = make_case(device, torch.float32)
    settings = SRLSettings(w1=1.0, w2=2.0, w3=3.0, temperature=0.3)
    got = losses_and_grads("triton", *case, settings)
    want = losses_and_grads("reference", *case, settings)
    torch.testing.assert_close(got[0], want[0], **TOLERANCE[torch.float32])
    torch.testing.assert_close(got[1], want[1], **TOLERANCE[torch.float32])
