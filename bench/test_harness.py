"""Tests of the bench harness itself: a backend that disagrees with the reference fails the bench,
the released-code baseline gives the reference's numbers, the memory measure sees a K x N matrix."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from srl_ext import reference

from . import _measure, cases

SMALL = cases.Case(group="test", label="small", batch=32, num_bins=20, num_anchors=500, dim=16, preset="imdb_wiki")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_inputs() -> cases.Inputs:
    return cases.make_inputs(SMALL, CPU)


def _wrong(**overrides) -> cases.Impl:
    return replace(cases.impl("reference"), name="wrong", **overrides)


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
