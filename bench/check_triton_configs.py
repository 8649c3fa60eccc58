"""Every autotune config of every Triton kernel, run once against the reference.

The autotuner runs only the config it picks by timing, and another process (or GPU) may pick
another: each config must therefore be right on its own. For each GPU list ("hopper", "ampere":
both run on any GPU) and each place i in the lists, every kernel runs its config i (its last one
where its list is shorter; ``srl_ext.kernels.triton.utils.only_config``) in a whole loss step
(``functional.srl_loss``: the whole-loss op) and in the term ops (``functional.srl_terms``), hard
and soft envelope, at one shape, and the four losses and the gradient of each with respect to the
features are compared with ``srl_ext.reference`` in float64:
|error| <= 1e-5 |reference| + 1e-5 max|reference| (float32).

    python bench/check_triton_configs.py [--jobs J] [--only hopper:0,ampere:2] [--dim 128]

On a GPU each (list, place) runs in a process of its own, J at a time (default: the CPU cores,
at most 8: Triton compiles serially in a process, so this is what bounds the time). Without a GPU,
under TRITON_INTERPRET=1, it runs the interpreter's single config at a small shape: a dry run of
the script itself. Prints one line per (list, place) and exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import subprocess
import sys
import time

import torch

# One shape: the AgeDB preset's (B, K, N) and D on a GPU; small under the interpreter.
GPU_SHAPE, GPU_DIM = (64, 102, 2000), 128
INTERPRETER_SHAPE, INTERPRETER_DIM = (14, 11, 37), 12
RTOL = ATOL = 1e-5
# Hard-envelope anchors whose two best cosines are this close are left out: rounding, not the
# kernel, decides their arg-max (as in tests/test_gpu.py and bench/cases.py).
TIE_MARGIN = 1e-5
CASES = {
    "hard": dict(envelope="hard"),
    "soft": dict(envelope="soft", envelope_temperature=0.1, label_weighting=True),
}


def inputs(shape: tuple[int, int, int], dim: int, device: torch.device):
    batch, num_bins, num_anchors = shape
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    bins = torch.randint(0, max(1, 2 * num_bins // 3), (batch,), generator=generator)
    memory = torch.randn(num_bins, dim, generator=generator, dtype=torch.float64)
    memory[::3] = 0
    anchors = torch.nn.functional.normalize(torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64))
    from srl_ext import reference

    surrogates = reference.surrogate_table(features, bins, memory)
    top2 = (anchors @ surrogates.T).topk(2, dim=1).values
    anchors = anchors[(top2[:, 0] - top2[:, 1]) > TIE_MARGIN]
    return features.to(device), bins.to(device), memory.to(device), anchors.to(device)


def worst_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |error| / the allowed error (above 1 fails)."""
    actual, expected = actual.double(), expected.double()
    bound = RTOL * expected.abs() + ATOL * expected.abs().max()
    return float(((actual - expected).abs() / bound.clamp_min(1e-300)).max())


def losses_and_grads(function, features, *args, **settings):
    """Each of the four losses (whole loss) or three terms, and its gradient w.r.t. the features."""
    leaf = features.detach().clone().requires_grad_()
    losses = function(leaf, *args, **settings)
    return [(loss.detach(), torch.autograd.grad(loss, leaf, retain_graph=True)[0]) for loss in losses]


def check(gpu: str | None, index: int | None, dim: int | None) -> tuple[float, str]:
    """(worst error over every case, what ran) for config `index` of the `gpu` lists (None: as set up)."""
    from srl_ext import functional
    from srl_ext.kernels.triton import utils

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = GPU_SHAPE if device.type == "cuda" else INTERPRETER_SHAPE
    dim = dim or (GPU_DIM if device.type == "cuda" else INTERPRETER_DIM)
    features, bins, memory, anchors = inputs(shape, dim, device)
    worst = 0.0
    with utils.only_config(gpu, index) if gpu is not None else contextlib.nullcontext():
        for settings in CASES.values():
            for function in (functional.srl_loss, functional.srl_terms):
                got = losses_and_grads(function, features.float(), bins, memory.float(), anchors.float(),
                                       backend="triton", temperature=0.3, **settings)
                want = losses_and_grads(function, features, bins, memory, anchors, backend="reference",
                                        temperature=0.3, **settings)
                for (loss, grad), (loss_ref, grad_ref) in zip(got, want):
                    worst = max(worst, worst_error(loss, loss_ref), worst_error(grad, grad_ref))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return worst, f"B, K, N = {shape}, D = {dim}, {device.type}"


def describe(gpu: str, index: int) -> str:
    """The config each kernel runs at (gpu, index), short."""
    from srl_ext.kernels.triton import utils

    parts = []
    for space in utils.TUNING_SPACES:
        listed = space.by_gpu[gpu]
        config = listed[min(index, len(listed) - 1)]
        parts.append("/".join(str(v) for v in config.kwargs.values()) + f"w{config.num_warps}s{config.num_stages}")
    return " ".join(parts)


def run_one(spec: str, dim: int | None) -> int:
    """In this process: check `spec` ("hopper:2", or "interpreter") and print its line."""
    start = time.time()
    gpu, index = (None, None) if spec == "interpreter" else (spec.split(":")[0], int(spec.split(":")[1]))
    try:
        worst, what = check(gpu, index, dim)
    except Exception as error:  # a config that fails to compile or launch is a finding, reported
        print(f"{spec:10s} FAILED {type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''} "
              f"({time.time() - start:.0f} s)", flush=True)
        return 1
    verdict = "ok" if worst <= 1.0 else "WRONG"
    configs = f"; configs {describe(gpu, index)}" if gpu is not None else ""
    print(f"{spec:10s} {verdict}: worst error {worst:.3f} of the allowed ({what}; {time.time() - start:.0f} s){configs}",
          flush=True)
    return 0 if worst <= 1.0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="processes at a time")
    parser.add_argument("--only", default=None, help="comma-separated LIST:PLACE, e.g. hopper:0,ampere:2")
    parser.add_argument("--dim", type=int, default=None, help="feature dimension D (default 128; 12 in a dry run)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a worker process: this spec only
    args = parser.parse_args(argv)
    if args.one is not None:
        return run_one(args.one, args.dim)
    if not torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("no CUDA device: set TRITON_INTERPRET=1 for a dry run in Triton's interpreter")
        return run_one("interpreter", args.dim)

    from srl_ext.kernels.triton import utils

    specs = args.only.split(",") if args.only else [
        f"{gpu}:{i}" for gpu in ("hopper", "ampere") for i in range(utils.num_configs(gpu))]
    start = time.time()

    def worker(spec: str) -> tuple[int, str]:
        dim = ["--dim", str(args.dim)] if args.dim else []
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", spec, *dim],
                              capture_output=True, text=True)
        output = done.stdout.strip() or f"{spec:10s} FAILED (exit status {done.returncode}): {done.stderr.strip()[-600:]}"
        return done.returncode, output

    failures = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for status, output in pool.map(worker, specs):
            print(output, flush=True)
            failures += status != 0
    print(f"{len(specs)} config places checked in {time.time() - start:.0f} s: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
