"""For every pytest run in this repository (tests/ and bench/).

pytest-benchmark (the bench's timer, installed with the [test] extra) makes its store at the
start of any run, as .benchmarks/ in the working directory, though it writes there only with
--benchmark-save or --benchmark-autosave: the store goes under the untracked bench/results/raw/
instead, so that no run leaves a folder in the clone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DEFAULT_BENCHMARK_STORAGE = "file://./.benchmarks"
BENCHMARK_STORAGE = Path(__file__).resolve().parent / "bench" / "results" / "raw" / "storage"


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own configure makes the store
def pytest_configure(config):
    if getattr(config.option, "benchmark_storage", None) == DEFAULT_BENCHMARK_STORAGE:
        config.option.benchmark_storage = f"file://{BENCHMARK_STORAGE}"
