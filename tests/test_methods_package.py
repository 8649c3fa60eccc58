"""srl_ext.methods as a package: no dependency on the training application, and the same
results on a GPU as on the CPU (skipped without CUDA)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

import srl_ext.methods as methods


def test_the_library_does_not_import_the_training_application():
    code = (
        "import sys, srl_ext.methods; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['srl_ext', 'engine'], ['srl_ext', 'cli'], "
        "['srl_ext', 'training'], ['srl_ext', 'data']) or m in ('scipy', 'sklearn')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_exported_name_exists():
    assert methods.__all__ and all(hasattr(methods, name) for name in methods.__all__)


def _case(device, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 30, (16,), generator=generator).to(dtype)
    h = torch.randn(16, 8, generator=generator, dtype=dtype) + y.unsqueeze(1) / 10
    p = y + torch.randn(16, generator=generator, dtype=dtype)
    return h.to(device), y.to(device), p.to(device)


def _all_methods(device):
    h, y, p = _case(device)
    out = {}
    out["lds"] = methods.lds_weights(y, 31)
    fds = methods.FDS(8, 30, empty_buckets="keep").to(device)
    for epoch in range(3):
        fds.accumulate(h + epoch, y)
        fds.update(epoch)
    fds.train()
    leaf = h.clone().requires_grad_()
    calibrated = fds.smooth(leaf, y, 2)
    (calibrated ** 2).sum().backward()
    out["fds"], out["fds_grad"], out["fds_var"] = calibrated.detach(), leaf.grad, fds.running_var
    leaf = h.clone().requires_grad_()
    loss = methods.ranksim_loss(leaf, y.round(), rng=random.Random(0))
    loss.backward()
    out["ranksim"], out["ranksim_grad"] = loss.detach(), leaf.grad
    centers, weights = methods.bni_buckets(y.cpu())
    for mode, tables in (("bmc", {}), ("bni", dict(bucket_centers=centers, bucket_weights=weights)),
                         ("gai", dict(gmm=dict(means=[5.0, 20.0], variances=[4.0, 9.0], weights=[0.5, 0.5])))):
        criterion = methods.BalancedMSE(mode, 2.0, **tables).to(device)
        leaf = p.clone().requires_grad_()
        loss = criterion(leaf, y)
        loss.backward()
        out[mode], out[mode + "_grad"], out[mode + "_sigma"] = loss.detach(), leaf.grad, criterion.noise_sigma.grad
    leaf = h.clone().requires_grad_()
    views = torch.cat([leaf, leaf * 0.9 + 0.1])
    loss = methods.conr_loss(views, torch.cat([y, y]), torch.cat([p, p + 0.5]), weights=torch.cat([out["lds"]] * 2))
    loss.backward()
    out["conr"], out["conr_grad"] = loss.detach(), leaf.grad
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_match_the_cpu():
    cpu = _all_methods(torch.device("cpu"))
    gpu = _all_methods(torch.device("cuda"))
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda", key
        assert torch.allclose(gpu[key].cpu(), value, rtol=1e-4, atol=1e-5), key
