"""The CPU-checkable parts of bench/gpu_bench.py: inputs, the released-code baseline, the table."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_bench
from srl_ext import presets, reference, sample_anchors


@pytest.mark.parametrize("case", gpu_bench.CASES, ids=lambda c: c.preset)
def test_released_baseline_matches_the_reference(case):
    features, bins, memory = gpu_bench.make_inputs(case, "cpu")
    p = presets.get(case.preset)
    anchors = sample_anchors(case.num_anchors, case.dim, gpu_bench.SEED)
    kwargs = dict(temperature=p.temperature, homogeneity_sign=p.homogeneity_sign, homogeneity_beta=p.homogeneity_beta)
    released = gpu_bench.released_terms(features, bins, memory, anchors, **kwargs)
    expected = reference.srl_terms(features, bins, memory, anchors, **kwargs)
    for actual, wanted in zip(released, expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_local_released_baseline_matches_the_reference():
    case = gpu_bench.Case("agedb", 32, 20, 500)
    features, bins, memory = gpu_bench.make_inputs(case, "cpu")
    anchors = sample_anchors(case.num_anchors, case.dim, 0)
    kwargs = dict(temperature=0.3, homogeneity_sign=-1.0, homogeneity_beta=0.1)
    local = gpu_bench._local_released_terms(features, bins, memory, anchors, **kwargs)
    expected = reference.srl_terms(features, bins, memory, anchors, **kwargs)
    for actual, wanted in zip(local, expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_make_inputs_is_seeded_and_has_zero_memory_rows():
    case = gpu_bench.CASES[0]
    first, second = gpu_bench.make_inputs(case, "cpu"), gpu_bench.make_inputs(case, "cpu")
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    features, bins, memory = first
    assert features.shape == (case.batch, case.dim) and features.requires_grad
    assert int(bins.min()) >= 0 and int(bins.max()) < case.num_bins
    assert bool((memory[::20] == 0).all())


def test_format_table_ratios_against_the_first_timed_row():
    rows = [
        gpu_bench.Row("c", "released", 4.0, 0.0),
        gpu_bench.Row("c", "cuda", 1.0, 1e-7),
        gpu_bench.Row("c", "triton", None, note="skipped: no triton"),
        gpu_bench.Row("e", "matmul", 2.0),
        gpu_bench.Row("e", "cuda hard", 2.5, 0.0),
    ]
    lines = gpu_bench.format_table(rows).splitlines()
    assert lines[0].startswith("| case | implementation |")
    assert "| c | cuda | 1.000 | 4.00x | 1.0e-07 |" in lines[3]
    assert "| c | triton | - | - | - | skipped: no triton |" == lines[4]
    assert "| e | cuda hard | 2.500 | 0.80x |" in lines[6]


def test_run_on_cpu_gives_a_row_per_implementation_with_parity():
    """The whole script on CPU with the C++ kernels standing in for the GPU ones (small N)."""
    rows = gpu_bench.run(quick=True, device="cpu", fused=("cpu",), envelope_anchors=2000)
    assert [row.impl for row in rows[:3]] == ["released", "reference", "cpu"]
    assert len(rows) == 3 * len(gpu_bench.CASES) + 1 + 2 * 2
    for row in rows:
        assert row.ms is not None and row.ms > 0, row
        if row.loss_error is not None:
            assert row.loss_error < 1e-4, row
    table = gpu_bench.format_table(rows)
    assert table.count("\n") == len(rows) + 1
