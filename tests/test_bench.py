"""The bench's cases and its released-code baseline, checked on CPU (the one harness is
``pytest bench/``; on a GPU ``pytest bench/ --bench-device cuda``, run by bench/gpu_check.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import cases, released
from srl_ext import reference, settings

ROOT = Path(__file__).resolve().parents[1]
PRESET_CASES = [cases.preset_case(name) for name in settings.PRESETS]


@pytest.mark.parametrize("case", PRESET_CASES, ids=lambda c: c.label)
def test_released_baseline_matches_the_reference_at_preset_sizes(case):
    inputs = cases.make_inputs(case, torch.device("cpu"))
    features = inputs.features.clone().requires_grad_()
    got = released.srl_terms(features, inputs.bins, inputs.memory, inputs.anchors, case.settings)
    expected = reference.srl_terms(features, inputs.bins, inputs.memory, inputs.anchors, case.settings)
    for actual, wanted in zip(got, expected, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_groups_are_named_by_case_and_size():
    ids = [b.id for b in cases.benchmarks(full=True)]
    groups = {i.split("-", 1)[0] for i in ids}
    assert groups == {"preset", "fixed", "sweep_n", "sweep_k", "sweep_b", "large"}
    assert "fixed-B=4,K=4,N=4-srl-cpu" in ids and "fixed-B=4,K=4,N=4-srl-matmul" in ids
    assert "large-K=1000,N=1000000-srl-released" in ids
    assert "large-K=1000,N=1000000,soft-enveloping-cuda" in ids
    assert not any(i.startswith("large-K=1000,N=1000000,soft") and i.endswith("-released") for i in ids)


def test_the_large_cases_run_on_a_gpu_by_default_and_on_the_cpu_with_full():
    def large(full, device):
        return [b for b in cases.benchmarks(full, device) if b.case.group == "large"]

    assert not large(False, "cpu")
    assert large(False, "cuda") == large(True, "cpu")


def test_soft_cases_use_the_soft_envelope():
    soft = cases.preset_case("imdb_wiki", "large", "soft", **cases.LARGE_SIZES)
    assert soft.settings.soft_envelope_temperature == cases.SOFT_ENVELOPE_TEMPERATURE
    assert cases.preset_case("imdb_wiki").settings.soft_envelope_temperature is None


def test_gpu_check_runs_the_one_harness():
    script = " ".join((ROOT / "bench" / "gpu_check.sh").read_text().split())
    assert 'pytest bench/ --bench-device "$device"' in script and "device=cuda;" in script
    assert not (ROOT / "bench" / "gpu_bench.py").exists()


def test_gpu_check_tests_in_the_deterministic_mode_and_checks_every_config():
    script = " ".join((ROOT / "bench" / "gpu_check.sh").read_text().split())
    tests = script.index("export SRL_EXT_TRITON_DETERMINISTIC=1")
    assert tests < script.index("TEST_FILE[$name]") < script.index("unset SRL_EXT_TRITON_DETERMINISTIC")
    for path in ("tests/test_gpu.py", "tests/test_triton.py", "tests/test_triton_whole_loss.py",
                 "bench/check_triton_configs.py"):
        assert path in script and (ROOT / path).exists(), path
    assert "torch.cuda.get_device_capability()" in script  # the arch list of the visible GPU


def test_a_pytest_run_leaves_no_benchmarks_folder_in_the_working_directory(tmp_path):
    """pytest-benchmark makes its store at start-up; the root conftest.py moves it under the
    untracked bench/results/raw/ (a run from a user's clone left .benchmarks/ behind)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_examples.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / ".benchmarks").exists()
