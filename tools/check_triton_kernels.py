"""Compile every Triton kernel of srl_ext.kernels.triton for Hopper (sm_90) and Ampere (sm_80),
without a GPU, and report which autotune configs fit in shared memory.

Triton ships ptxas, so the whole pipeline (Triton IR -> PTX -> cubin) runs on a CPU-only
machine: this catches type errors, tile-shape limits of tl.dot and configs that cannot fit,
which the interpreter (the tests without a GPU) does not see. It does not run the kernels.

    python tools/check_triton_kernels.py [--dim 128] [--only NAME] [--all-dtypes | --fallback-only]

(with srl_ext installed, or PYTHONPATH=. from the repository root).

float32 is compiled with every config; bfloat16 features (float32 accumulation) and float64 with
the first and the fallback config unless --all-dtypes; --fallback-only compiles only the small
configs that must fit for every D up to MAX_FEATURE_DIM (large D takes minutes per config). Exit status 1 when a kernel fails to
compile or no config of a list fits. Do not set TRITON_INTERPRET for this.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {"hopper": GPUTarget("cuda", 90, 32), "ampere": GPUTarget("cuda", 80, 32)}
# Largest dynamic shared memory per block: H100/H200 227 KiB, A100 163 KiB.
SHARED_MEMORY = {"hopper": 232448, "ampere": 166912}
DTYPES = [("fp32", "fp32"), ("fp32", "bf16"), ("fp64", "fp64")]  # (accumulation, features)


def kernels():
    """name -> (autotuned kernel, its TuningSpace, arg types for (acc, feat), fixed constexprs)."""
    table = importlib.import_module("srl_ext.kernels.triton.table")
    con = importlib.import_module("srl_ext.kernels.triton.contrastive")
    env = importlib.import_module("srl_ext.kernels.triton.envelope")
    homo = importlib.import_module("srl_ext.kernels.triton.homogeneity")

    def table_args(acc, feat):
        return dict(h_ptr=f"*{feat}", bins_ptr="*i64", memory_ptr=f"*{acc}", c_ptr=f"*{acc}",
                    mean_norm_ptr=f"*{acc}", count_ptr="*i64", B="i32", K="i32", D="i32", eps="fp32")

    def table_backward_args(acc, feat):
        return dict(grad_c_ptr=f"*{acc}", h_ptr=f"*{feat}", bins_ptr="*i64", c_ptr=f"*{acc}",
                    mean_norm_ptr=f"*{acc}", count_ptr="*i64", grad_h_ptr=f"*{feat}",
                    B="i32", K="i32", D="i32", eps="fp32")

    def contrastive_args(acc, feat):
        return dict(h_ptr=f"*{feat}", bins_ptr="*i64", c_ptr=f"*{acc}", max_distance_ptr="*i64",
                    row_loss_ptr=f"*{acc}", grad_h_ptr=f"*{feat}", B="i32", K="i32", D="i32",
                    inv_tau_hi="fp32", inv_tau_lo="fp32", eps="fp32")

    def coverage_args(acc, feat):
        return dict(c_ptr=f"*{acc}", p_ptr=f"*{acc}", coverage_ptr=f"*{acc}", arg_max_ptr="*i32",
                    N="i32", K="i32", D="i32", inv_tau_hi="fp32", inv_tau_lo="fp32")

    def gradient_args(acc, feat):
        return dict(coverage_args(acc, feat), partial_ptr=f"*{acc}", num_splits="i32")

    def reduce_args(acc, feat):
        return dict(partial_ptr=f"*{acc}", out_ptr=f"*{feat}", size="i32", num_splits="i32", N="i32")

    def homogeneity_args(acc, feat):
        return dict(c_ptr=f"*{acc}", loss_ptr=f"*{acc}", grad_ptr=f"*{acc}", K="i32", D="i32",
                    sign_hi="fp32", sign_lo="fp32", beta_hi="fp32", beta_lo="fp32")

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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=128, help="feature dimension D (default 128)")
    parser.add_argument("--only", default=None, help="only the kernels whose name contains this")
    parser.add_argument("--all-dtypes", action="store_true", help="every config for every dtype")
    parser.add_argument("--fallback-only", action="store_true", help="only the last, smallest config of each list")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter has nothing to compile")
    from srl_ext.kernels.triton.utils import block_dim

    problems = 0
    for name, (kernel, space, arg_types, fixed) in kernels().items():
        if args.only and args.only not in name:
            continue
        jit_fn = kernel.fn
        for gpu, configs in space.by_gpu.items():
            for acc, feat in DTYPES:
                fits = []
                for i, config in enumerate(configs):
                    last = i == len(configs) - 1
                    if args.fallback_only and not last:
                        continue
                    if (acc, feat) != ("fp32", "fp32") and not args.all_dtypes and not (i == 0 or last):
                        continue
                    constexprs = {**fixed, **config.kwargs}
                    if "BLOCK_D" in jit_fn.arg_names:
                        constexprs["BLOCK_D"] = block_dim(args.dim)
                    types = arg_types(acc, feat)
                    signature = {a: "constexpr" if a in constexprs else types[a] for a in jit_fn.arg_names}
                    label = f"{name:25s} {gpu:6s} {acc}/{feat} {config.kwargs} w{config.num_warps} s{config.num_stages}"
                    start = time.time()
                    try:
                        compiled = triton.compile(
                            ASTSource(jit_fn, signature, constexprs), target=TARGETS[gpu],
                            options={"num_warps": config.num_warps, "num_stages": config.num_stages},
                        )
                    except Exception as error:  # report every failure, then go on
                        problems += 1
                        fits.append(False)
                        print(f"{label}: FAILED {type(error).__name__}: {error}", flush=True)
                        continue
                    shared = compiled.metadata.shared
                    fits.append(shared <= SHARED_MEMORY[gpu])
                    verdict = "ok" if fits[-1] else "too much shared memory (the autotuner skips it)"
                    print(f"{label}: {verdict}, shared {shared} B, {time.time() - start:.1f} s", flush=True)
                if fits and not any(fits):
                    problems += 1
                    print(f"{name} {gpu} {acc}/{feat}: NO CONFIG FITS", flush=True)
    print(f"problems: {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
