"""tools/check_triton_kernels.py's own logic: reading ptxas -v, what it compiles, its table. (The
compiles themselves run in CI, .ci/run: they need Triton outside its interpreter.)"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
_spec = importlib.util.spec_from_file_location(
    "check_triton_kernels", Path(__file__).resolve().parents[1] / "tools" / "check_triton_kernels.py")
tool = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(tool)

# What Triton 3.8's bundled ptxas prints with -v for one kernel (a spilling config, sm_90).
PTXAS_LOG = """ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_surrogate_table_kernel' for 'sm_90a'
ptxas info    : Function properties for _surrogate_table_kernel
    10080 bytes stack frame, 21044 bytes spill stores, 21208 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 10080 bytes cumulative stack size
ptxas info    : Compile time = 6716.901 ms
"""


def test_reads_registers_spills_and_stack_from_ptxas():
    assert tool.parse_ptxas_log(PTXAS_LOG) == (32, 21044, 21208, 10080)
    clean = PTXAS_LOG.replace("10080 bytes stack frame, 21044 bytes spill stores, 21208",
                              "0 bytes stack frame, 0 bytes spill stores, 0")
    registers, stores, loads, stack = tool.parse_ptxas_log(clean)
    assert not tool.Resources(registers, stores, loads, stack, 0, 0.0).spills
    assert tool.Resources(*tool.parse_ptxas_log(PTXAS_LOG), 0, 0.0).spills
    with pytest.raises(ValueError, match="no resource usage"):
        tool.parse_ptxas_log("ptxas info    : 0 bytes gmem")


def test_every_kernel_is_covered_with_its_arguments():
    # Every Triton kernel of the package (the whole-loss ones included) and every argument typed.
    kernels = tool.kernels()
    assert {"whole_loss_table_gradient", "whole_loss_features_gradient", "contrastive"} <= set(kernels)
    for name, (kernel, _space, arg_types, fixed) in kernels.items():
        types = arg_types("fp32", "bf16")
        plain = [a for a in kernel.fn.arg_names if a not in fixed and not a.isupper()]
        assert all(a in types for a in plain), (name, [a for a in plain if a not in types])
    assert set(tool.DOT_KERNELS) <= set(kernels)


def test_plan_compiles_every_float32_config_and_the_ends_of_the_others(monkeypatch):
    class Config:
        def __init__(self, max_block_d=256):
            self.max_block_d = max_block_d

    class Space:
        by_gpu = {"hopper": [Config(), Config(), Config()], "ampere": [Config(128), Config()]}

    monkeypatch.setattr(tool, "kernels", lambda: {"k": (None, Space, None, {})})
    jobs = tool.plan(["k"], ["hopper"], ["fp32", "fp64"], [128], all_dtypes=False, fallback_only=False)
    assert [(j.dtype, j.index) for j in jobs] == [("fp32", 0), ("fp32", 1), ("fp32", 2), ("fp64", 0), ("fp64", 2)]
    jobs = tool.plan(["k"], ["ampere"], ["fp32"], [128, 256], all_dtypes=False, fallback_only=True)
    assert [(j.dim, j.index) for j in jobs] == [(128, 1), (256, 1)]
    # A config for rows up to 128 (utils.UpTo) is never tried, so never compiled, at D = 200.
    jobs = tool.plan(["k"], ["ampere"], ["fp32"], [100, 200], all_dtypes=False, fallback_only=False)
    assert [(j.dim, j.index) for j in jobs] == [(100, 0), (100, 1), (200, 1)]


def test_table_gives_ranges_per_kernel_and_gpu():
    jobs = [tool.Job("contrastive", "hopper", "fp32", 0, 128), tool.Job("contrastive", "hopper", "fp32", 1, 128),
            tool.Job("contrastive", "ampere", "fp32", 0, 128)]
    results = [tool.Resources(100, 0, 0, 0, 1000, 1.0), tool.Resources(120, 8, 8, 16, 2000, 1.0), "FAILED"]
    table = tool.markdown_table(jobs, results).splitlines()
    assert table[2] == "| `contrastive` | fp32 | 128 | 2, 100-120, 0-8, 0-16, 1000-2000 | - |"
