"""Options of the bench, the device, and where the results go.

Every run writes its pytest-benchmark JSON (timings, the peak memory and parity errors in each
benchmark's extra_info, the machine, its CPU flags and its load) to bench/results/raw/<UTC time>.json
unless --benchmark-json says otherwise, then its report (bench/report.py: bench/results/run/latest.md
and the PNG plots, or --bench-report PATH; both folders are untracked, as is pytest-benchmark's own
store (the root conftest.py), so a run leaves the clone clean and the tracked quiet-run figures,
bench/results/quiet.md, as they are), and ends with the
verdict: the machine and whether it was quiet enough, then one line per case of the whole loss.
pytest-benchmark's own tables are shown with --bench-raw-tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from srl_ext import ops

from . import _measure, cases, machine, report

RESULTS = Path(__file__).parent / "results"
RAW_RESULTS = RESULTS / "raw"

# Seconds of timed rounds per benchmark (at least MIN_ROUNDS, at most MAX_ROUNDS rounds).
DEFAULT_TIME_S = 0.25
FULL_TIME_S = 1.0
MIN_ROUNDS = 3
MAX_ROUNDS = 200


def pytest_addoption(parser):
    group = parser.getgroup("srl-bench", "srl-ext benchmark harness")
    group.addoption(
        "--bench-device",
        default="auto",
        help="device of the benchmarks: cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)",
    )
    group.addoption(
        "--full",
        action="store_true",
        help="the full sweep (N to 10^6, K to 2000, B to 4096), and the large cases on the CPU too "
        "(about 10 GB per step at K = 1000, N = 10^6 for the baselines)",
    )
    group.addoption(
        "--bench-time",
        type=float,
        default=None,
        help=f"seconds of timed rounds per benchmark (default {DEFAULT_TIME_S}, {FULL_TIME_S} with --full)",
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch CPU threads for the run (default: torch's, one per core); "
        "1 gives steadier numbers on a busy machine",
    )
    group.addoption(
        "--bench-no-memory", action="store_true", help="skip the peak memory measurement (timings and parity only)"
    )
    group.addoption(
        "--bench-raw-tables", action="store_true",
        help="also print pytest-benchmark's tables of every benchmark (hidden by default: the run ends with its "
        "verdict, and the full tables are in the report)",
    )
    group.addoption(
        "--bench-report", type=Path, default=report.RUN_REPORT,
        help="where the run's report goes, the PNG plots next to it (default bench/results/run/latest.md, "
        "untracked; the tracked quiet-run figures: --bench-report bench/results/quiet.md)",
    )
    group.addoption("--bench-no-report", action="store_true", help="write no report (the JSON only)")


SKIPPED = pytest.StashKey[dict]()  # implementation -> why it was not benchmarked, for the report
LOAD_BEFORE = pytest.StashKey[float]()  # the 1-minute load average when the run started


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own configure reads the option
def pytest_configure(config):
    config.stash[SKIPPED] = {}
    config.stash[LOAD_BEFORE] = machine.load_average()
    if config.getoption("bench_threads"):
        torch.set_num_threads(config.getoption("bench_threads"))
    if config.getoption("collectonly"):
        return
    if not config.getoption("bench_raw_tables"):
        config.option.benchmark_quiet = True  # the verdict below instead; the full tables go to the report
    if config.getoption("benchmark_json", None) is None:
        config.option.benchmark_json = RAW_RESULTS / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    # pytest-benchmark writes the JSON only at the very end: a missing folder would lose the run.
    Path(config.option.benchmark_json).parent.mkdir(parents=True, exist_ok=True)


def pytest_generate_tests(metafunc):
    if "bench" in metafunc.fixturenames:
        params = cases.benchmarks(metafunc.config.getoption("full"), bench_device_of(metafunc.config))
        metafunc.parametrize("bench", params, ids=[b.id for b in params])


def bench_device_of(config) -> torch.device:
    name = config.getoption("bench_device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> torch.device:
    device = bench_device_of(pytestconfig)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"--bench-device {device}: CUDA is not available here", returncode=4)
    return device


@pytest.fixture(scope="session")
def bench_options(pytestconfig) -> dict:
    full = pytestconfig.getoption("full")
    seconds = pytestconfig.getoption("bench_time") or (FULL_TIME_S if full else DEFAULT_TIME_S)
    return {
        "full": full,
        "time_s": seconds,
        "min_rounds": MIN_ROUNDS,
        "max_rounds": MAX_ROUNDS,
        "memory": not pytestconfig.getoption("bench_no_memory"),
    }


@pytest.fixture(scope="session")
def skipped_impls(pytestconfig) -> dict:
    return pytestconfig.stash[SKIPPED]


def pytest_benchmark_update_machine_info(config, machine_info):
    device = bench_device_of(config)
    machine_info["srl_bench"] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else machine.cpu_model(),
        "cpu_model": machine.cpu_model(),
        "cpu_flags": machine.vector_flags(),
        "cpu_kernels": ops.cpu_isa() if ops.available() else None,
        "load_before": config.stash.get(LOAD_BEFORE, None),
        "load_after": machine.load_average(),
        "cpu_count": os.cpu_count(),
        "memory_gib": machine.memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "full": config.getoption("full"),
        "memory_method": _measure.CUDA_METHOD if device.type == "cuda" else _measure.CPU_METHOD,
        "command": " ".join(["pytest", *config.invocation_params.args]),
        "parity": f"float32; |error| <= {cases.RTOL} |reference| + {cases.ATOL} max|reference|",
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["srl_bench_skipped"] = config.stash.get(SKIPPED, {})


@pytest.hookimpl(trylast=True)  # after pytest-benchmark has saved the JSON (in its sessionfinish)
def pytest_terminal_summary(terminalreporter, config):
    """The report of this run, then its verdict and where the report went."""
    source = config.getoption("benchmark_json", None)
    if config.getoption("collectonly") or source is None or not Path(source).exists():
        return
    source = Path(source)
    try:
        rows = report.load(source, "min", None)[1]
    except (OSError, ValueError, KeyError):
        return
    if not rows:
        return
    tr = terminalreporter
    tr.ensure_newline()
    tr.section("srl-ext bench verdict", sep="=", bold=True)
    if config.getoption("bench_no_report"):
        meta, rows = report.load(source, "min", None)
        written = []
    else:
        meta, rows, pngs = report.write(source, config.getoption("bench_report"))
        written = [config.getoption("bench_report"), *pngs]
    for line in report.verdict(meta, rows, "min") + report.target_lines(rows, report.reliability(meta, rows)[0]):
        tr.write_line(line)
    if written:
        tr.write_line(f"Full tables and plots: {', '.join(_shown(p) for p in written)}")
    tr.write_line(f"This run's data: {_shown(source)}" + ("" if config.getoption("bench_raw_tables") else
                  "; pytest-benchmark's tables: rerun with --bench-raw-tables"))


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
