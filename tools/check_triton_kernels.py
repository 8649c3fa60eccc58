"""Compile every Triton kernel of srl_ext.kernels.triton for Hopper (sm_90) and Ampere (sm_80),
without a GPU, and report per autotune config what ptxas allocates: registers, spilled bytes,
stack per thread and shared memory.

Triton ships ptxas, so the whole pipeline (Triton IR -> PTX -> cubin) runs on a CPU-only
machine: this catches type errors, tile-shape limits of tl.dot, configs that cannot fit in shared
memory and configs that spill registers to local memory, none of which the interpreter (the
tests without a GPU) sees. It does not run the kernels.

    python tools/check_triton_kernels.py [--dim 128] [--only NAME] [--gpu hopper] [--dtype fp32]
                                         [--all-dtypes | --fallback-only] [--fail-on-spills] [--jobs 2]

(with srl_ext installed, or PYTHONPATH=. from the repository root; TRITON_INTERPRET unset).

float32 is compiled with every config tried at that D (an ``UpTo`` config only up to its row
block); bfloat16 features (float32 accumulation) and float64 with the first and the fallback
config unless --all-dtypes; --fallback-only compiles only the last,
small config of each list, the one the deterministic mode pins. Pointers, and D when it is a
multiple of 16, are compiled as 16-byte aligned, as torch's allocations and the presets' D = 128
are at run time (the other sizes are not). Exit status 1 when a kernel fails to compile, when no
config of a list fits in shared memory, or (--fail-on-spills) when a float32 config spills.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass

TARGETS = {"hopper": 90, "ampere": 80}
# Largest dynamic shared memory per block: H100/H200 227 KiB, A100 163 KiB.
SHARED_MEMORY = {"hopper": 232448, "ampere": 166912}
# The kernels whose tiles go through tl.dot: with input_precision="ieee" a float32 dot is FMAs
# whose operands are held in registers, and these are the kernels that spilled at D = 128 with
# large tiles (the others stay under 200 registers with every listed config).
DOT_KERNELS = ("surrogate_table", "contrastive", "envelope_coverage_hard", "envelope_coverage_soft",
               "envelope_gradient_hard", "envelope_gradient_soft")
DTYPES = {"fp32": ("fp32", "fp32"), "bf16": ("fp32", "bf16"), "fp64": ("fp64", "fp64")}  # (accumulation, features)


def kernels():
    """name -> (autotuned kernel, its TuningSpace, arg types for (acc, feat), fixed constexprs)."""
    table = importlib.import_module("srl_ext.kernels.triton.table")
    con = importlib.import_module("srl_ext.kernels.triton.contrastive")
    env = importlib.import_module("srl_ext.kernels.triton.envelope")
    homo = importlib.import_module("srl_ext.kernels.triton.homogeneity")
    whole = importlib.import_module("srl_ext.kernels.triton.whole_loss")

    def table_args(acc, feat):
        return dict(h_ptr=f"*{feat}", bins_ptr="*i64", memory_ptr=f"*{acc}", c_ptr=f"*{acc}",
                    mean_norm_ptr=f"*{acc}", count_ptr="*i64", B="i32", K="i32", D="i32", eps="fp32",
                    B_BUCKET="i32")

    def table_backward_args(acc, feat):
        return dict(grad_c_ptr=f"*{acc}", h_ptr=f"*{feat}", bins_ptr="*i64", c_ptr=f"*{acc}",
                    mean_norm_ptr=f"*{acc}", count_ptr="*i64", grad_h_ptr=f"*{feat}",
                    B="i32", K="i32", D="i32", eps="fp32", B_BUCKET="i32")

    def contrastive_args(acc, feat):
        return dict(h_ptr=f"*{feat}", bins_ptr="*i64", c_ptr=f"*{acc}", max_distance_ptr="*i64",
                    row_loss_ptr=f"*{acc}", grad_h_ptr=f"*{feat}", B="i32", K="i32", D="i32",
                    inv_tau_hi="fp32", inv_tau_lo="fp32", eps="fp32", B_BUCKET="i32")

    def coverage_args(acc, feat):
        return dict(c_ptr=f"*{acc}", p_ptr=f"*{acc}", coverage_ptr=f"*{acc}", arg_max_ptr="*i32",
                    N="i32", K="i32", D="i32", inv_tau_hi="fp32", inv_tau_lo="fp32", N_BUCKET="i32")

    def gradient_args(acc, feat):
        return dict(coverage_args(acc, feat), partial_ptr=f"*{acc}", num_splits="i32")

    def reduce_args(acc, feat):
        return dict(partial_ptr=f"*{acc}", out_ptr=f"*{feat}", size="i32", num_splits="i32", N="i32")

    def homogeneity_args(acc, feat):
        return dict(c_ptr=f"*{acc}", loss_ptr=f"*{acc}", grad_ptr=f"*{acc}", K="i32", D="i32",
                    sign_hi="fp32", sign_lo="fp32", beta_hi="fp32", beta_lo="fp32")

    def table_gradient_args(acc, feat):
        return dict(c_ptr=f"*{acc}", mean_norm_ptr=f"*{acc}", count_ptr="*i64", partial_ptr=f"*{acc}",
                    grad_mean_ptr=f"*{acc}", homogeneity_ptr=f"*{acc}", K="i32", D="i32", N="i32",
                    num_splits="i32", sign_hi="fp32", sign_lo="fp32", beta_hi="fp32", beta_lo="fp32", eps="fp32")

    def features_gradient_args(acc, feat):
        return dict(h_ptr=f"*{feat}", bins_ptr="*i64", grad_mean_ptr=f"*{acc}", grad_con_ptr=f"*{acc}",
                    grads_ptr=f"*{acc}", row_loss_ptr=f"*{acc}", coverage_sum_ptr=f"*{acc}",
                    homogeneity_ptr=f"*{acc}", total_ptr=f"*{acc}", contrastive_ptr=f"*{acc}",
                    enveloping_ptr=f"*{acc}", B="i32", K="i32", D="i32", N="i32",
                    **{f"{w}_{part}": "fp32" for w in ("w1", "w2", "w3", "coverage_scale") for part in ("hi", "lo")},
                    eps="fp32", B_BUCKET="i32")

    return {
        "surrogate_table": (table._surrogate_table_kernel, table._TABLE_CONFIGS, table_args, {}),
        "surrogate_table_backward": (table._surrogate_table_backward_kernel, table._BACKWARD_CONFIGS,
                                     table_backward_args, {}),
        "contrastive": (con._contrastive_kernel, con._CONFIGS, contrastive_args, {"LABEL_WEIGHTING": True}),
        "envelope_coverage_hard": (env._coverage_kernel, env._COVERAGE_CONFIGS, coverage_args, {"SOFT": False}),
        "envelope_coverage_soft": (env._coverage_kernel, env._COVERAGE_CONFIGS, coverage_args, {"SOFT": True}),
        "envelope_gradient_hard": (env._gradient_partials_kernel, env._GRADIENT_CONFIGS, gradient_args, {"SOFT": False}),
        "envelope_gradient_soft": (env._gradient_partials_kernel, env._GRADIENT_CONFIGS, gradient_args, {"SOFT": True}),
        "envelope_reduce": (env._reduce_partials_kernel, env._REDUCE_CONFIGS, reduce_args, {}),
        "homogeneity": (homo._homogeneity_kernel, homo._CONFIGS, homogeneity_args, {}),
        "whole_loss_table_gradient": (whole._table_gradient_kernel, whole._TABLE_GRADIENT_CONFIGS,
                                      table_gradient_args, {}),
        "whole_loss_features_gradient": (whole._features_gradient_kernel, whole._FEATURES_GRADIENT_CONFIGS,
                                         features_gradient_args, {"ROW_CHUNK": whole._ROW_CHUNK}),
    }


@dataclass(frozen=True)
class Job:
    name: str
    gpu: str
    dtype: str
    index: int  # the config's place in its GPU's list (the last is the fallback)
    dim: int


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one compiled config (bytes per thread, except shared: per block)."""

    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    seconds: float

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) from `ptxas -v`'s log of
    one kernel."""
    frame, registers = _PTXAS_FRAME.search(log), _PTXAS_REGISTERS.search(log)
    if frame is None or registers is None:
        raise ValueError(f"no resource usage in the ptxas log: {log.strip()[:400]!r}")
    stack, stores, loads = (int(x) for x in frame.groups())
    return int(registers.group(1)), stores, loads, stack


def compile_config(job: Job) -> Resources:
    """Compile one config of one kernel for one GPU and dtype; ptxas's figures for it."""
    return compile_with(job.name, kernels()[job.name][1].by_gpu[job.gpu][job.index], job.gpu, job.dtype, job.dim)


def compile_with(name: str, config, gpu: str, dtype: str, dim: int, log_to=None) -> Resources:
    """Compile kernel `name` with `config` (a triton.Config, listed or not) for `gpu`, `dtype` and D."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from srl_ext.kernels.triton.utils import block_dim

    kernel, _space, arg_types, fixed = kernels()[name]
    jit_fn = kernel.fn
    constexprs = {**fixed, **config.kwargs}
    if "BLOCK_D" in jit_fn.arg_names:
        constexprs["BLOCK_D"] = block_dim(dim)
    types = arg_types(*DTYPES[dtype])
    signature = {a: "constexpr" if a in constexprs else types[a] for a in jit_fn.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(jit_fn.arg_names)
               if signature[a].startswith("*") or (a == "D" and dim % 16 == 0)}
    # ptxas -v's report goes to stdout only when the cubin is built, so never take it from the cache.
    knobs.compilation.always_compile = True
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            ASTSource(jit_fn, signature, constexprs, aligned), target=GPUTarget("cuda", TARGETS[gpu], 32),
            options={"num_warps": config.num_warps, "num_stages": config.num_stages},
        )
    seconds = time.time() - start
    if log_to is not None:
        log_to.write(log.getvalue())
    registers, stores, loads, stack = parse_ptxas_log(log.getvalue())
    return Resources(registers, stores, loads, stack, compiled.metadata.shared, seconds)


def plan(names: list[str], gpus: list[str], dtypes: list[str], dims: list[int], all_dtypes: bool,
         fallback_only: bool) -> list[Job]:
    jobs = []
    for name in names:
        space = kernels()[name][1]
        for gpu in gpus:
            configs = space.by_gpu[gpu]
            for dtype in dtypes:
                for dim in dims:
                    for i in range(len(configs)):
                        last = i == len(configs) - 1
                        if fallback_only and not last:
                            continue
                        if getattr(configs[i], "max_block_d", dim) < _block_dim(dim):  # UpTo: never tried at this D
                            continue
                        if dtype != "fp32" and not all_dtypes and not (i == 0 or last):
                            continue
                        jobs.append(Job(name, gpu, dtype, i, dim))
    return jobs


def _block_dim(dim: int) -> int:
    from srl_ext.kernels.triton.utils import block_dim

    return block_dim(dim)


def _label(job: Job) -> str:
    config = kernels()[job.name][1].by_gpu[job.gpu][job.index]
    tiles = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{job.name:28s} {job.gpu:6s} {job.dtype} D={job.dim:<4d} #{job.index} {tiles} w{config.num_warps} s{config.num_stages}"


def _run(job: Job):
    try:
        return compile_config(job)
    except Exception as error:  # reported, then the others go on
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, action="append", help="feature dimension D (repeatable; default 128)")
    parser.add_argument("--only", default=None, help="only the kernels whose name contains this")
    parser.add_argument("--gpu", choices=sorted(TARGETS), action="append", help="only this GPU (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="only this dtype (repeatable)")
    parser.add_argument("--all-dtypes", action="store_true", help="every config for every dtype")
    parser.add_argument("--fallback-only", action="store_true", help="only the last, smallest config of each list")
    parser.add_argument("--dots-only", action="store_true",
                        help=f"only the kernels with a tl.dot ({', '.join(DOT_KERNELS)}): the ones near the register limit")
    parser.add_argument("--fail-on-spills", action="store_true", help="exit status 1 when a float32 config spills")
    parser.add_argument("--table", action="store_true",
                        help="end with a Markdown table per kernel and GPU (ranges over its configs), as in docs/gpu.md")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes (default 1)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter has nothing to compile")
    names = [n for n in kernels() if (not args.only or args.only in n) and (not args.dots_only or n in DOT_KERNELS)]
    jobs = plan(names, args.gpu or list(TARGETS), args.dtype or list(DTYPES), args.dim or [128],
                args.all_dtypes, args.fallback_only)
    start = time.time()
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            results = pool.map(_run, jobs)
            results = list(_report(jobs, results))
    else:
        results = list(_report(jobs, map(_run, jobs)))

    problems = 0
    fits: dict[tuple, list[bool]] = {}
    for job, result in zip(jobs, results):
        group = (job.name, job.gpu, job.dtype, job.dim)
        if isinstance(result, str):
            problems += 1
            fits.setdefault(group, []).append(False)
            continue
        fits.setdefault(group, []).append(result.shared <= SHARED_MEMORY[job.gpu])
        if args.fail_on_spills and job.dtype == "fp32" and result.spills:
            problems += 1
    for (name, gpu, dtype, dim), verdicts in fits.items():
        if not any(verdicts):
            problems += 1
            print(f"{name} {gpu} {dtype} D={dim}: NO CONFIG FITS", flush=True)
    compiled = [r for r in results if not isinstance(r, str)]
    if args.table:
        print(markdown_table(jobs, results))
    print(f"{len(jobs)} configs compiled in {time.time() - start:.0f} s wall, "
          f"{sum(r.seconds for r in compiled):.0f} s of compile time; "
          f"{sum(r.spills for r in compiled)} spill; problems: {problems}")
    return 1 if problems else 0


def markdown_table(jobs: list[Job], results: list) -> str:
    """One row per kernel, dtype and D: per GPU the range over its configs of registers, spilled
    bytes (stores), stack and shared memory per block."""
    groups: dict[tuple, dict[str, list[Resources]]] = {}
    for job, result in zip(jobs, results):
        compiled = groups.setdefault((job.name, job.dtype, job.dim), {}).setdefault(job.gpu, [])
        if not isinstance(result, str):  # a failure is reported where it happens
            compiled.append(result)

    def span(values):
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}-{high}"

    gpus = [g for g in TARGETS if any(job.gpu == g for job in jobs)]
    header = ["kernel", "dtype", "D"] + [f"{g} sm_{TARGETS[g]}: configs, registers, spill stores, stack, shared (B)"
                                         for g in gpus]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, dtype, dim), by_gpu in groups.items():
        cells = [f"`{name}`", dtype, str(dim)]
        for gpu in gpus:
            rs = by_gpu.get(gpu, [])
            cells.append("-" if not rs else ", ".join([
                str(len(rs)), span([r.registers for r in rs]), span([r.spill_stores for r in rs]),
                span([r.stack for r in rs]), span([r.shared for r in rs])]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(jobs, results):
    """Print each result as it comes (in job order), passing it on."""
    for job, result in zip(jobs, results):
        if isinstance(result, str):
            print(f"{_label(job)}: FAILED {result}", flush=True)
        else:
            verdict = "ok" if result.shared <= SHARED_MEMORY[job.gpu] else "too much shared memory (the autotuner skips it)"
            if result.spills:
                verdict += f", SPILLS {result.spill_stores} B stored / {result.spill_loads} B loaded"
            print(f"{_label(job)}: {verdict}; {result.registers} registers, stack {result.stack} B, "
                  f"shared {result.shared} B, {result.seconds:.1f} s", flush=True)
        yield result


if __name__ == "__main__":
    sys.exit(main())
