"""GPU benchmark of the SRL loss: one Markdown table, for bench/gpu_check.sh.

Rows:
- the whole SRL loss step (surrogate table, three terms, the preset's weighted sum, forward and
  backward to the features) at the three presets' sizes, for the implementations
  ``released`` (the released code's way: a Python loop over the labels present for the
  centroids, the full K x N cosine matrix with a mask; ``bench/released.py``),
  ``reference`` (vectorised PyTorch), and the fused backends ``cuda`` and ``triton``;
- the enveloping term alone at N = 10^6 anchors, K = 1000 surrogates, D = 128, forward and
  backward, hard and soft, against its floor: one cuBLAS matrix product of the same shape
  (``torch.mm`` of K x D by D x N, float32 FMA: TF32 off, as torch's default).

Each timed implementation is first checked against the reference (the loss value; column
"|loss - ref|"). Timing: ``triton.testing.do_bench`` (median of repeated runs, L2 flushed) when
Triton is installed, else CUDA events around repeated runs (median).

Run from the repository root: ``python -m bench.gpu_bench [--quick]``. The pieces that need no
GPU (cases, inputs, the released baseline, the table) are importable and tested on CPU in
tests/test_gpu_bench.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from srl_ext import SRLLoss, backends, functional, presets, reference, sample_anchors

try:  # the bench helper's baseline (bench/released.py), when present in this checkout
    from bench import released as _released_module

    RELEASED_SOURCE = "bench/released.py"
except ImportError:
    _released_module = None
    RELEASED_SOURCE = "bench/gpu_bench.py (local minimal baseline: bench/released.py not found)"

DIM = 128
SEED = 0
ENVELOPE_ANCHORS = 1_000_000
ENVELOPE_BINS = 1000
ENVELOPE_SOFT_TEMPERATURE = 0.1


@dataclass(frozen=True)
class Case:
    preset: str
    batch: int
    num_bins: int
    num_anchors: int
    dim: int = DIM

    @property
    def label(self) -> str:
        return f"{self.preset} (B={self.batch}, K={self.num_bins}, N={self.num_anchors}, D={self.dim})"


# The presets' sizes (SPEC section 8): batch, bins, anchors.
CASES = (
    Case("agedb", 64, 102, 2000),
    Case("imdb_wiki", 256, 187, 2000),
    Case("sts_b", 16, 50, 1000),
)


def make_inputs(case: Case, device: torch.device | str, seed: int = SEED):
    """Features (leaf, requires grad), bins of the batch, memory (every 20th row zero: bins never
    seen), all seeded."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(case.batch, case.dim, generator=generator)
    bins = torch.randint(0, case.num_bins, (case.batch,), generator=generator)
    memory = torch.randn(case.num_bins, case.dim, generator=generator)
    memory[::20] = 0
    return features.to(device).requires_grad_(), bins.to(device), memory.to(device)


# --- the released code's way, a minimal local copy used only when bench/released.py is absent ---


def _local_released_terms(features, bins, memory, anchors, *, temperature, homogeneity_sign, homogeneity_beta):
    z = torch.nn.functional.normalize(features.float(), dim=1)
    table = memory.detach().float().clone()
    for label in torch.unique(bins).tolist():  # a Python loop over the labels present (host sync)
        table[label] = z[bins == label].mean(dim=0)
    surrogates = torch.nn.functional.normalize(table, dim=1)
    contrastive = torch.nn.functional.cross_entropy(z @ surrogates.detach().T / temperature, bins)
    cosines = surrogates @ anchors.float().T  # K x N, materialised
    nearest = cosines.argmax(dim=0)
    mask = torch.arange(cosines.shape[0], device=cosines.device).unsqueeze(1) == nearest.unsqueeze(0)
    enveloping = 1 - (cosines * mask).sum(dim=0).mean()
    neighbours = (surrogates[1:] * surrogates[:-1]).sum(dim=1)
    homogeneity = homogeneity_sign * neighbours.sum()
    if neighbours.numel() > 1:
        homogeneity = homogeneity + homogeneity_beta * neighbours.var()
    return contrastive, enveloping, homogeneity


def released_terms(features, bins, memory, anchors, *, temperature, homogeneity_sign, homogeneity_beta):
    terms = _released_module.srl_terms if _released_module is not None else _local_released_terms
    return terms(
        features, bins, memory, anchors, temperature=temperature, homogeneity_sign=homogeneity_sign,
        homogeneity_beta=homogeneity_beta,
    )


def loss_step(impl: str, case: Case, device) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """(step, features): step() runs the forward and backward of the whole weighted loss once and
    returns the total (detached)."""
    features, bins, memory = make_inputs(case, device)
    if impl == "released":
        p = presets.get(case.preset)
        anchors = sample_anchors(case.num_anchors, case.dim, SEED).to(device)

        def step():
            features.grad = None
            c, e, h = released_terms(
                features, bins, memory, anchors, temperature=p.temperature,
                homogeneity_sign=p.homogeneity_sign, homogeneity_beta=p.homogeneity_beta,
            )
            total = p.w1 * c + p.w2 * e + p.w3 * h
            total.backward()
            return total.detach()

        return step, features
    loss_fn = SRLLoss.preset(case.preset, feature_dim=case.dim, num_anchors=case.num_anchors,
                             anchor_seed=SEED, backend=impl).to(device)

    def step():
        features.grad = None
        total = loss_fn(features, bins, memory).total
        total.backward()
        return total.detach()

    return step, features


def envelope_step(impl: str, soft: bool, device, num_anchors=ENVELOPE_ANCHORS, num_bins=ENVELOPE_BINS, dim=DIM):
    """Forward and backward of the enveloping term alone (to the surrogates)."""
    generator = torch.Generator().manual_seed(SEED)
    surrogates = torch.nn.functional.normalize(torch.randn(num_bins, dim, generator=generator), dim=1)
    surrogates = surrogates.to(device).requires_grad_()
    anchors = sample_anchors(num_anchors, dim, SEED + 1).to(device)
    temperature = ENVELOPE_SOFT_TEMPERATURE if soft else None

    def step():
        surrogates.grad = None
        loss = functional.enveloping_loss(
            surrogates, anchors, envelope="soft" if soft else "hard", envelope_temperature=temperature, backend=impl
        )
        loss.backward()
        return loss.detach()

    return step


def matmul_step(device, num_anchors=ENVELOPE_ANCHORS, num_bins=ENVELOPE_BINS, dim=DIM):
    """The floor of the enveloping term: one K x D by D x N product (forward only, no loss)."""
    generator = torch.Generator().manual_seed(SEED)
    surrogates = torch.randn(num_bins, dim, generator=generator).to(device)
    anchors_t = torch.randn(dim, num_anchors, generator=generator).to(device)
    return lambda: torch.mm(surrogates, anchors_t)


def time_ms(step: Callable[[], object], repeats: int = 50, device: torch.device | None = None) -> float:
    """Median milliseconds of one call of `step` on the current CUDA device (wall clock on CPU,
    for the smoke test of this script)."""
    if device is not None and device.type == "cpu":
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    try:
        import triton.testing

        return float(triton.testing.do_bench(step, warmup=25, rep=max(repeats, 25), return_mode="median"))
    except ImportError:
        pass
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@dataclass
class Row:
    case: str
    impl: str
    ms: float | None  # None: not run (reason in `note`)
    loss_error: float | None = None  # |loss - reference loss|
    note: str = ""


def format_table(rows: list[Row]) -> str:
    """One Markdown table; "speed-up" is the time of the first timed row of the case (the
    baseline: `released` for the loss, `matmul` for the envelope) over the row's time."""
    lines = ["| case | implementation | time (ms) | speed-up | abs(loss - reference) | note |",
             "|---|---|---:|---:|---:|---|"]
    baseline: dict[str, float] = {}
    for row in rows:
        if row.ms is not None and row.case not in baseline:
            baseline[row.case] = row.ms
        ms = f"{row.ms:.3f}" if row.ms is not None else "-"
        ratio = f"{baseline[row.case] / row.ms:.2f}x" if row.ms is not None and row.case in baseline else "-"
        error = f"{row.loss_error:.1e}" if row.loss_error is not None else "-"
        lines.append(f"| {row.case} | {row.impl} | {ms} | {ratio} | {error} | {row.note} |")
    return "\n".join(lines)


def unavailable(impl: str, device: torch.device) -> str | None:
    if impl in ("released", "reference", "matmul"):
        return None
    return backends.unavailable_reason(impl, device)


def run(
    quick: bool = False,
    device: torch.device | str = "cuda",
    fused: tuple[str, ...] = ("cuda", "triton"),
    envelope_anchors: int | None = None,
) -> list[Row]:
    """The table's rows. `device`, `fused` and `envelope_anchors` exist for the CPU smoke test."""
    device = torch.device(device)
    repeats = 10 if quick else 50
    rows: list[Row] = []
    for case in CASES:
        expected = loss_step("reference", case, device)[0]()
        for impl in ("released", "reference", *fused):
            reason = unavailable(impl, device)
            if reason is not None:
                rows.append(Row(case.label, impl, None, note=f"skipped: {reason}"))
                continue
            step, _ = loss_step(impl, case, device)
            error = abs(float(step()) - float(expected))
            rows.append(Row(case.label, impl, time_ms(step, repeats, device), error, "whole loss, fwd + bwd"))

    num_anchors = envelope_anchors or (100_000 if quick else ENVELOPE_ANCHORS)
    label = f"envelope (N={num_anchors}, K={ENVELOPE_BINS}, D={DIM})"
    rows.append(Row(label, "matmul", time_ms(matmul_step(device, num_anchors), repeats, device), None,
                    "torch.mm K x D by D x N, fp32 (floor; forward only)"))
    for soft in (False, True):
        expected = float(envelope_step("reference", soft, device, num_anchors)())
        for impl in ("reference", *fused):
            reason = unavailable(impl, device)
            name = f"{impl} {'soft' if soft else 'hard'}"
            if reason is not None:
                rows.append(Row(label, name, None, note=f"skipped: {reason}"))
                continue
            step = envelope_step(impl, soft, device, num_anchors)
            error = abs(float(step()) - expected)
            rows.append(Row(label, name, time_ms(step, repeats, device), error, "fwd + bwd"))
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and N = 10^5 for the envelope")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device, nothing to time", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"released baseline: {RELEASED_SOURCE}")
    print(f"matmul TF32: {torch.backends.cuda.matmul.allow_tf32}\n")
    print(format_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
