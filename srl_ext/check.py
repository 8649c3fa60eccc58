"""``python -m srl_ext.check``: every backend this machine can run, against the reference.

The command to run on a new machine or GPU before training: for each backend that can run here
(the C++ kernels on the CPU; on a GPU the CUDA C++ and the Triton kernels; the Triton kernels on
the CPU under TRITON_INTERPRET=1), a few small random cases (hard and soft envelope, label
weighting, absent bins, float32 and, where the backend takes them, float64 and float16), forward
and backward (the gradient of the three terms' sum with respect to the features), compared with
``srl_ext.reference`` in float64 on the same inputs. One line per backend and device: the worst
difference relative to its tolerance, pass or fail, and the time of one forward + backward of the
largest case. Exit status 0 when every backend passes, 1 when one does not (2 for bad flags).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import backends, reference

# (batch, bins, anchors, dim, present bins, soft envelope temperature or None, label weighting)
CASES = (
    (16, 6, 64, 8, None, None, False),
    (32, 12, 128, 16, 8, 0.1, True),
    (64, 40, 300, 32, 30, None, True),
    (128, 102, 1000, 128, 90, 0.05, False),
)
# Tolerance of a backend's result against the float64 reference: |a - b| <= atol + rtol * |b|.
TOLERANCES = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 2e-2),
              torch.bfloat16: (5e-2, 5e-2)}


@dataclass
class Result:
    backend: str
    device: str
    dtypes: str
    worst: float  # worst |a - b| / (atol + rtol |b|) over every case, value and gradient: <= 1 passes
    worst_absolute: float
    milliseconds: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.worst <= 1.0


def candidates() -> list[tuple[str, torch.device]]:
    """(backend, device) pairs this machine can run, the reference excepted."""
    pairs = [("cpu", torch.device("cpu")), ("triton", torch.device("cpu"))]
    if torch.cuda.is_available():
        pairs += [("cuda", torch.device("cuda")), ("triton", torch.device("cuda"))]
    return [(name, device) for name, device in pairs if backends.unavailable_reason(name, device) is None]


def dtypes_of(name: str, device: torch.device) -> tuple[torch.dtype, ...]:
    if device.type == "cpu":
        return (torch.float32, torch.float64)
    return (torch.float32, torch.float16)


def _inputs(case, dtype, device, seed):
    batch, num_bins, num_anchors, dim, present, _, _ = case
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    bins = torch.randint(0, present or num_bins, (batch,), generator=generator)
    memory = torch.randn(num_bins, dim, generator=generator, dtype=torch.float64)
    anchors = reference.normalize(torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64))
    acc = reference.accumulation_dtype(dtype)
    return features.to(dtype), bins, memory.to(acc), anchors.to(acc)


def _terms_and_grad(module, features, bins, memory, anchors, case):
    soft, weighting = case[5], case[6]
    features = features.detach().requires_grad_(True)
    surrogates = module.surrogate_table(features, bins, memory)
    terms = (
        module.contrastive_loss(features, bins, surrogates, 0.2, weighting),
        module.enveloping_loss(surrogates, anchors, soft),
        module.homogeneity_loss(surrogates, -1.0, 0.1),
    )
    (grad,) = torch.autograd.grad(sum(terms), features)
    return torch.stack([t.detach().double() for t in terms]).cpu(), grad.double().cpu()


def _time(module, inputs, case, device, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        _terms_and_grad(module, *inputs, case)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000 * sorted(times)[len(times) // 2]


def check_backend(name: str, device: torch.device, seeds: Sequence[int] = (0, 1)) -> Result:
    dtypes = dtypes_of(name, device)
    worst = worst_absolute = 0.0
    try:
        module = backends.resolve(name, device, "srl_ext.check")
        for dtype in dtypes:
            atol, rtol = TOLERANCES[dtype]
            for case in CASES:
                for seed in seeds:
                    features, bins, memory, anchors = _inputs(case, dtype, torch.device("cpu"), seed)
                    expected = _terms_and_grad(reference, features.double(), bins, memory.double(), anchors.double(), case)
                    on_device = [x.to(device) for x in (features, bins, memory, anchors)]
                    got = _terms_and_grad(module, *on_device, case)
                    for a, b in zip(got, expected):
                        difference = (a - b).abs()
                        if not bool(torch.isfinite(a).all()):
                            worst = float("inf")
                        worst = max(worst, float((difference / (atol + rtol * b.abs())).max()))
                        worst_absolute = max(worst_absolute, float(difference.max()))
        largest = CASES[-1]
        inputs = [x.to(device) for x in _inputs(largest, torch.float32, torch.device("cpu"), 0)]
        milliseconds = _time(module, inputs, largest, device)
    except Exception as error:  # a backend that crashes fails, with its error, and the others still run
        return Result(name, str(device), _names(dtypes), float("inf"), float("inf"), float("nan"),
                      f"{type(error).__name__}: {error}")
    return Result(name, str(device), _names(dtypes), worst, worst_absolute, milliseconds)


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| backend | device | dtypes | worst difference (abs) | worst / tolerance | result | fwd+bwd ms (B=128, K=102, N=1000, D=128, float32) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in results:
        verdict = "pass" if r.passed else "FAIL" + (f": {r.error}" if r.error else "")
        lines.append(f"| {r.backend} | {r.device} | {r.dtypes} | {r.worst_absolute:.2e} | {r.worst:.3g} | {verdict} | "
                     f"{r.milliseconds:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srl_ext.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=[n for n in backends.NAMES if n not in ("auto", "reference")],
                        help="check only this backend (repeatable; default: every one that can run here)")
    args = parser.parse_args(argv)
    pairs = [(n, d) for n, d in candidates() if not args.backend or n in args.backend]
    print(f"torch {torch.__version__}; " + (f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"))
    if not pairs:
        print("no backend besides the reference can run here"
              + ("" if not args.backend else f" among {', '.join(args.backend)}"), file=sys.stderr)
        return 1
    results = [check_backend(name, device) for name, device in pairs]
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"error: {len(failed)} backend(s) disagree with the reference: "
              + ", ".join(f"{r.backend} on {r.device}" for r in failed), file=sys.stderr)
        return 1
    print(f"all {len(results)} backend(s) agree with the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
