"""The benchmarks: for each case, term and implementation (bench/cases.py), first parity with the
reference (a fast wrong kernel fails here), then the peak memory of one step, then the timings.

Everything lands in the pytest-benchmark JSON (bench/conftest.py); ``python bench/report.py``
turns it into tables and plots.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from . import _measure, cases


class _CaseCache:
    """The inputs of the current case and the reference's step results on them, per term.

    The benchmarks come grouped by case, so one entry is enough, and a large case (N = 10^6
    anchors) is freed before the next one is made.
    """

    def __init__(self) -> None:
        self.key = None
        self.inputs: cases.Inputs | None = None
        self.expected: dict[str, tuple] = {}

    def inputs_for(self, case: cases.Case, device: torch.device) -> cases.Inputs:
        if self.key != (case, device):
            self.key, self.inputs, self.expected = None, None, {}  # free the previous case first
            self.inputs = cases.make_inputs(case, device)
            self.key = (case, device)
        return self.inputs

    def expected_for(self, term: str, case: cases.Case) -> tuple:
        if term not in self.expected:
            self.expected[term] = cases.make_step(term, "reference", self.inputs, case)()
        return self.expected[term]


_cache = _CaseCache()


def _synchronised(step, device: torch.device):
    if device.type != "cuda":
        return step

    def run():
        out = step()
        torch.cuda.synchronize(device)
        return out

    return run


def test_srl(benchmark, bench: cases.Benchmark, bench_device: torch.device, bench_options: dict, skipped_impls):
    reason = cases.skip_reason(bench.impl, bench_device)
    if reason is not None:
        skipped_impls[bench.impl] = reason
        pytest.skip(reason)
    case = bench.case
    benchmark.group = f"{case.id} {bench.term}"
    benchmark.extra_info.update(
        group=case.group, case=case.label, preset=case.preset, term=bench.term, impl=bench.impl,
        batch=case.batch, num_bins=case.num_bins, num_anchors=case.num_anchors, dim=case.dim,
        device=str(bench_device), threads=torch.get_num_threads(),
    )
    inputs = _cache.inputs_for(case, bench_device)

    step = _synchronised(cases.make_step(bench.term, bench.impl, inputs, case), bench_device)

    # 1. Parity: the reference's losses and gradient, or the benchmark fails. This first step
    # (the reference's own, for the reference; a plain step for the floor) also warms up.
    start = time.perf_counter()
    if bench.impl == "reference":
        _cache.expected_for(bench.term, case)
    elif bench.impl == cases.FLOOR:
        step()
    else:
        expected = _cache.expected_for(bench.term, case)
        benchmark.extra_info.update(cases.check_parity(bench.term, bench.impl, inputs, case, expected))
    first_step = time.perf_counter() - start

    # 2. Peak memory of one step.
    if bench_options["memory"]:
        if bench_device.type == "cuda":
            peak, method = _measure.cuda_peak_bytes(step), _measure.CUDA_METHOD
        else:
            peak, method = _measure.cpu_peak_bytes(bench), _measure.CPU_METHOD
        benchmark.extra_info.update(peak_memory_bytes=int(peak), memory_method=method)

    # 3. Time: the rounds sized from one more untimed step, unless the first step alone took the
    # time allowed (a large case: the minimum of rounds, without spending one more step).
    one_step = first_step
    if first_step < bench_options["time_s"]:
        start = time.perf_counter()
        step()
        one_step = time.perf_counter() - start
    rounds = math.ceil(bench_options["time_s"] / max(one_step, 1e-6))
    rounds = min(max(rounds, bench_options["min_rounds"]), bench_options["max_rounds"])
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)

    # 4. The floor ratio, paired: this step and the K x N product timed alternately, as many rounds
    # again. The two rows' minima above are taken minutes apart, and a shared host's speed drifts
    # by up to 2x over minutes; alternating puts the same drift on both (bench/README.md).
    if bench.term in cases.FLOOR_TERMS and bench.impl not in (*cases.BASELINES, cases.FLOOR):
        floor = _synchronised(cases.make_step(bench.term, cases.FLOOR, inputs, case), bench_device)
        best = _measure.interleaved_minimum({"step": step, "floor": floor}, rounds)
        benchmark.extra_info.update(paired_floor_ratio=best["step"] / best["floor"], paired_rounds=rounds)
