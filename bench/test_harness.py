"""Tests of the bench harness itself: a backend that disagrees with the reference fails the bench,
the released-code baseline gives the reference's numbers, the memory measure sees a K x N matrix."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from srl_ext import reference

from . import _measure, cases, report

SMALL = cases.Case(group="test", label="small", batch=32, num_bins=20, num_anchors=500, dim=16, preset="imdb_wiki")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_inputs() -> cases.Inputs:
    return cases.make_inputs(SMALL, CPU)


def _wrong(**overrides) -> cases.Impl:
    # srl_loss None: the whole loss comes from the (overridden) srl_terms, weighed by the step.
    return replace(cases.impl("reference"), name="wrong", srl_loss=None, **overrides)


def test_parity_fails_a_backend_with_a_wrong_loss(small_inputs):
    # Fast and 0.1% off: the kind of kernel the parity check is there to stop.
    def off_srl_terms(f, b, m, a, s):
        contrastive, enveloping, homogeneity = reference.srl_terms(f, b, m, a, s)
        return contrastive, 1.001 * enveloping, homogeneity

    wrong = _wrong(enveloping=lambda c, a, s: 1.001 * reference.enveloping_loss(c, a), srl_terms=off_srl_terms)
    with pytest.raises(cases.ParityError, match="'wrong' disagrees with the reference in the enveloping loss"):
        cases.check_parity("enveloping", wrong, small_inputs, SMALL)
    with pytest.raises(cases.ParityError, match="enveloping loss"):
        cases.check_parity("srl", wrong, small_inputs, SMALL)


def test_parity_fails_a_backend_with_the_right_loss_but_a_wrong_gradient(small_inputs):
    # A contrastive term that forgets to detach the surrogates: same value, but the gradient also
    # flows into the features through the surrogate table.
    def undetached_srl_terms(f, b, m, a, s):
        c = reference.surrogate_table(f, b, m)
        z = reference.normalize(f)
        logits = z @ c.T / s.temperature
        contrastive = (torch.logsumexp(logits, 1) - logits.gather(1, b[:, None]).squeeze(1)).mean()
        return contrastive, reference.enveloping_loss(c, a), reference.homogeneity_loss(c, s.homogeneity_sign, s.homogeneity_beta)

    with pytest.raises(cases.ParityError, match="in the gradient"):
        cases.check_parity("srl", _wrong(srl_terms=undetached_srl_terms), small_inputs, SMALL)


@pytest.mark.parametrize("term", cases.TERMS)
def test_released_baseline_gives_the_reference_numbers(small_inputs, term):
    errors = cases.check_parity(term, "released", small_inputs, SMALL)
    assert errors and all(e <= 1e-5 for e in errors.values())


def test_inputs_are_seeded_and_anchors_off_ties(small_inputs):
    again = cases.make_inputs(SMALL, CPU)
    assert torch.equal(again.anchors, small_inputs.anchors) and torch.equal(again.features, small_inputs.features)
    top2 = (small_inputs.anchors.double() @ small_inputs.surrogates.double().T).topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1] > cases.TIE_MARGIN / 2).all()
    assert small_inputs.anchors.shape == (SMALL.num_anchors, SMALL.dim)
    assert (small_inputs.memory[cases.ZERO_ROW_EVERY - 1 :: cases.ZERO_ROW_EVERY] == 0).all()


def test_cpu_memory_measure_sees_the_released_k_by_n_matrix():
    case = replace(SMALL, num_bins=500, num_anchors=40_000, dim=32)  # K x N float32 = 80 MB
    k_by_n = case.num_bins * case.num_anchors * 4
    peak = _measure.cpu_peak_bytes(cases.Benchmark(case, "enveloping", "released"))
    assert k_by_n <= peak <= 6 * k_by_n  # cosines, mask, masked product, their gradient


def test_triton_on_cpu_is_skipped_with_a_reason():
    assert "TRITON_INTERPRET" in cases.skip_reason("triton", CPU)
    assert cases.skip_reason("reference", CPU) is None and cases.skip_reason("matmul", CPU) is None


def test_whole_loss_and_per_term_impls_of_a_fused_backend():
    whole, per_term = cases.impl("cpu"), cases.impl("cpu-terms")
    assert whole.srl_loss is not None and per_term.srl_loss is None and per_term.name == "cpu-terms"
    assert cases.skip_reason("cpu-terms", CPU) == cases.skip_reason("cpu", CPU)
    assert "TRITON_INTERPRET" in cases.skip_reason("triton-terms", CPU)
    ids = {b.id for b in cases.benchmarks(full=False)}
    assert {"preset-imdb_wiki-srl-cpu-terms", "preset-imdb_wiki-srl-matmul", "preset-imdb_wiki-enveloping-matmul"} <= ids
    assert "preset-imdb_wiki-contrastive-cpu-terms" not in ids and "preset-imdb_wiki-homogeneity-matmul" not in ids


@pytest.mark.parametrize("implementation", ["cpu", "cpu-terms"])
def test_fused_whole_loss_passes_parity(small_inputs, implementation):
    if cases.skip_reason(implementation, CPU):
        pytest.skip(cases.skip_reason(implementation, CPU))
    errors = cases.check_parity("srl", implementation, small_inputs, SMALL)
    assert errors and all(e <= 1e-5 for e in errors.values())


def test_report_ends_with_a_verdict_and_the_targets(tmp_path):
    import json

    from . import report

    def bench(impl, time_s, memory, num_anchors=2000, num_bins=187, label="imdb_wiki", group="preset"):
        info = dict(group=group, case=label, term="srl", impl=impl, batch=256, num_bins=num_bins,
                    num_anchors=num_anchors, dim=128, peak_memory_bytes=memory)
        return {"extra_info": info, "stats": {"min": time_s, "median": time_s, "mean": time_s}}

    run = {"benchmarks": [bench("released", 8.6e-3, 6 << 20), bench("reference", 4e-3, 2 << 20),
                          bench("cpu", 0.8e-3, 1 << 20), bench("cpu-terms", 1.56e-3, 1 << 19),
                          bench("matmul", 0.55e-3, 3 << 20),
                          bench("srl_ext", 1e-3, None, group="methods")],  # another harness's row
           "machine_info": {"srl_bench": {"device": "cpu", "torch_threads": 2}}, "datetime": "now"}
    source = tmp_path / "run.json"
    source.write_text(json.dumps(run))
    meta, rows, _ = report.write(source, tmp_path / "latest.md", with_plots=False)
    lines = report.verdict(meta, rows, "min")
    # the machine (not recorded in this run) and the spread, the header, the case
    assert len(lines) == 4 and lines[0].startswith("Machine: ?") and "imdb_wiki (256, 187, 2000)" in lines[3]
    assert "cpu 5.00x / 10.75x, 1.45x floor, memory 0.17" in lines[3] and "cpu-terms 2.56x / 5.51x, 2.84x floor" in lines[3]
    targets = report.target_lines(rows)
    assert targets == ["  met: imdb_wiki cpu, time <= 1.5x the K x N product: 1.45x the product",
                       "  met: imdb_wiki cpu, >= 10x faster than the released code: 10.75x faster"]
    assert "## Verdict" in (tmp_path / "latest.md").read_text()



def _run_json(tmp_path, machine: dict, spread: float = 1.0, step_s: float | None = None):
    """A run of the imdb_wiki whole loss (cpu 0.8 ms, median ``spread`` times that) and, with
    ``step_s``, its model's training step."""
    import json

    def bench(group, impl, time_s, term="srl"):
        info = dict(group=group, case="imdb_wiki", term=term, impl=impl, batch=256, num_bins=187, num_anchors=2000,
                    dim=128, peak_memory_bytes=1 << 20, model="ResNet-50 at 224, batch 256")
        return {"extra_info": info, "stats": {"min": time_s, "median": time_s * spread, "mean": time_s * spread}}

    benchmarks = [bench("preset", "reference", 4e-3), bench("preset", "cpu", 0.8e-3), bench("preset", "matmul", 0.55e-3)]
    if step_s is not None:
        benchmarks.append(bench("step", "model", step_s, term="resnet50"))
    run = {"benchmarks": benchmarks, "datetime": "now",
           "machine_info": {"srl_bench": {"device": "cpu", "torch_threads": 2, "cpu_count": 2,
                                          "cpu_model": "AMD EPYC 9654", **machine}}}
    source = tmp_path / "run.json"
    source.write_text(json.dumps(run))
    return report.load(source, "min", None)


def test_a_quiet_run_is_reliable_and_names_the_cpu(tmp_path):
    meta, rows = _run_json(tmp_path, {"cpu_flags": ["avx2", "avx512f"], "load_before": 0.3, "load_after": 2.1})
    reliable, lines = report.reliability(meta, rows)
    assert reliable
    assert lines[0] == ("Machine: AMD EPYC 9654 (avx2, avx512f, no amx), 2 cores; load average 0.30 before the run, "
                        "2.10 at its end (the bench's own threads included).")
    assert lines[1].startswith("Spread of the rounds (median / fastest, whole loss): 1.00 to 1.00")
    verdict = report.verdict(meta, rows, "min")
    assert verdict[:2] == lines and not any("UNRELIABLE" in line for line in verdict)
    assert not any(line.endswith("(unreliable run)") for line in report.target_lines(rows, reliable))


@pytest.mark.parametrize("machine, spread, why", [
    ({"load_before": 7.43}, 1.0, "the machine was busy (load 7.43 on 2 cores before the run)"),
    ({"load_before": 0.2}, 2.4, "the rounds spread up to 2.40x"),
])
def test_a_busy_run_says_it_is_unreliable(tmp_path, machine, spread, why):
    meta, rows = _run_json(tmp_path, machine, spread=spread)
    reliable, lines = report.reliability(meta, rows)
    assert not reliable
    assert lines[-1].startswith(f"UNRELIABLE: {why}: other work shared the cores")
    assert "vector extensions not recorded" in lines[0]
    targets = report.target_lines(rows, reliable)
    assert targets and all(line.endswith("(unreliable run)") for line in targets)
    assert any(line.startswith("UNRELIABLE") for line in report.verdict(meta, rows, "min"))


def test_the_verdict_sets_the_fixed_per_call_cost_beside_the_floor_ratio(tmp_path):
    import json

    def bench(group, label, impl, time_s, batch=256, num_bins=187, num_anchors=2000):
        info = dict(group=group, case=label, term="srl", impl=impl, batch=batch, num_bins=num_bins,
                    num_anchors=num_anchors, dim=128, peak_memory_bytes=1 << 20)
        return {"extra_info": info, "stats": {"min": time_s, "median": time_s, "mean": time_s}}

    fixed = dict(batch=1, num_bins=2, num_anchors=1)
    run = {"benchmarks": [bench("preset", "imdb_wiki", "cpu", 0.8e-3), bench("preset", "imdb_wiki", "matmul", 0.5e-3),
                          bench("fixed", "B=1,K=2,N=1", "cpu", 40e-6, **fixed),
                          bench("fixed", "B=1,K=2,N=1", "matmul", 2e-6, **fixed)],
           "machine_info": {"srl_bench": {"device": "cpu", "cpu_kernels": "avx512"}}, "datetime": "now"}
    source = tmp_path / "run.json"
    source.write_text(json.dumps(run))
    meta, rows = report.load(source, "min", None)
    lines = report.verdict(meta, rows, "min")
    assert "CPU whole-loss kernels: avx512" in lines[0]
    case_lines = [line for line in lines if line.startswith("  ")]
    assert len(case_lines) == 1 and "cpu -x / -x, 1.60x floor (fixed 0.08x), memory -" in case_lines[0]
    assert lines[-1] == ("Fixed per-call cost (the whole loss at (B, K, N) = (1, 2, 1), next to nothing to compute; "
                         "\"fixed\" above: it over the case's floor): cpu 40 us, matmul (floor) 2 us")
    assert report.target_lines(rows) == ["  NOT MET: imdb_wiki cpu, time <= 1.5x the K x N product: 1.60x the product"]


def test_the_verdict_gives_the_loss_share_of_a_training_step(tmp_path):
    meta, rows = _run_json(tmp_path, {"load_before": 0.1}, step_s=0.0792)  # 79.2 ms step + 0.8 ms loss
    assert report.step_share_lines(rows) == [
        "  imdb_wiki: the SRL loss (cpu, 0.8 ms) is 1 % of a training step of its model (ResNet-50 at 224, "
        "batch 256: 79.2 ms without it)"]
    assert report.step_share_lines(_run_json(tmp_path, {})[1]) == []  # no step timed: no line


def test_the_floor_ratio_is_the_paired_one_where_the_run_measured_it(tmp_path):
    import json

    def bench(impl, time_s, paired=None):
        info = dict(group="preset", case="sts_b", term="srl", impl=impl, batch=16, num_bins=50, num_anchors=1000,
                    dim=128, peak_memory_bytes=1 << 20)
        if paired is not None:
            info["paired_floor_ratio"] = paired
        return {"extra_info": info, "stats": {"min": time_s, "median": time_s, "mean": time_s}}

    def rows_of(benchmarks):
        source = tmp_path / "run.json"
        source.write_text(json.dumps({"benchmarks": benchmarks, "datetime": "now",
                                      "machine_info": {"srl_bench": {"device": "cpu"}}}))
        return report.load(source, "min", None)

    # The rows' own minima (0.33 ms over 0.105 ms, taken apart: 3.14x) against the paired 1.72x.
    meta, rows = rows_of([bench("cpu", 0.33e-3, paired=1.72), bench("matmul", 0.105e-3)])
    assert report.target_lines(rows) == ["  met: sts_b cpu, time <= 2.0x the K x N product: 1.72x the product"]
    lines = report.verdict(meta, rows, "min")
    assert "the two timed alternately: the floor" in lines[-2] and "cpu -x / -x, 1.72x floor" in lines[-1]
    row = [line for line in report.table(rows, "preset") if "| cpu |" in line][0]
    assert row.endswith("| 3.14 | 1.72 |")
    # A run without paired times (older JSON) keeps the plain ratio, and says so.
    meta, rows = rows_of([bench("cpu", 0.33e-3), bench("matmul", 0.105e-3)])
    assert report.target_lines(rows) == ["  NOT MET: sts_b cpu, time <= 2.0x the K x N product: 3.14x the product"]
    assert "(the floor)" in report.verdict(meta, rows, "min")[-2]
