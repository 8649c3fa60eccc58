"""The machine a bench figure comes from: the CPU's model and vector extensions, its cores and
memory, the load. Shared by ``pytest bench/`` (bench/conftest.py) and ``python -m bench.floor``,
so that figures from two hosts are never confused."""

from __future__ import annotations

import os
import platform
import subprocess

# The CPU flags that decide which kernels and BLAS paths run (/proc/cpuinfo names).
VECTOR_FLAGS = ("avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8")
# A 1-minute load average above this many jobs per core before a run: other work shares the cores.
BUSY_LOAD_PER_CORE = 0.5


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str] | None:
    """The CPU's feature flags (/proc/cpuinfo), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def vector_flags() -> list[str] | None:
    """The CPU's flags among VECTOR_FLAGS, or None where they cannot be read."""
    flags = cpu_flags()
    return None if flags is None else [flag for flag in flags if flag in VECTOR_FLAGS]


def vector_extensions(flags: list[str] | None) -> str:
    """``avx2, avx512f, no amx`` from a CPU's flags (a note when they were not recorded)."""
    if flags is None:
        return "vector extensions not recorded"
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    absent = [name for name, prefix in (("avx2", "avx2"), ("avx512f", "avx512f"), ("amx", "amx"))
              if not any(flag.startswith(prefix) for flag in present)]
    return ", ".join(present + [f"no {name}" for name in absent])


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def description() -> str:
    """``CPU: <model> (<vector extensions>), <n> cores, <m> GiB`` of this machine."""
    return (f"CPU: {cpu_model()} ({vector_extensions(vector_flags())}), {os.cpu_count()} cores, "
            f"{memory_gib()} GiB")
