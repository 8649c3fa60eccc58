"""``python -m srl_ext.check``: every backend this machine can run against the reference."""

import subprocess
import sys
from pathlib import Path

import pytest

from srl_ext import backends, ops, reference
from srl_ext import check

needs_cpu_ops = pytest.mark.skipif(not ops.available(), reason=str(ops.LOAD_ERROR))
ROOT = Path(__file__).resolve().parents[1]


@needs_cpu_ops
def test_check_passes_the_cpu_kernels_and_prints_the_table(capsys):
    assert check.main(["--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| cpu | cpu | float32, float64 |" in out and "| pass |" in out


def test_check_fails_a_wrong_backend(monkeypatch, capsys):
    class Wrong:
        surrogate_table = staticmethod(reference.surrogate_table)
        homogeneity_loss = staticmethod(reference.homogeneity_loss)
        enveloping_loss = staticmethod(reference.enveloping_loss)

        @staticmethod
        def contrastive_loss(*args):
            return reference.contrastive_loss(*args) * 1.001  # a 0.1 % error

    monkeypatch.setattr(check, "candidates", lambda: [("cpu", check.torch.device("cpu"))])
    monkeypatch.setattr(backends, "resolve", lambda name, device, function="": Wrong)
    assert check.main([]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "error: 1 backend(s) disagree with the reference: cpu on cpu" in captured.err


def test_check_reports_a_backend_that_crashes(monkeypatch, capsys):
    def crash(name, device, function=""):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(check, "candidates", lambda: [("cuda", check.torch.device("cpu"))])
    monkeypatch.setattr(backends, "resolve", crash)
    assert check.main([]) == 1
    assert "FAIL: RuntimeError: no kernel image is available" in capsys.readouterr().out


@needs_cpu_ops
def test_python_dash_m_srl_ext_check_exits_zero():
    done = subprocess.run([sys.executable, "-m", "srl_ext.check", "--backend", "cpu"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "agree with the reference" in done.stdout
