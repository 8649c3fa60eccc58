"""The README's API snippet and examples/own_regressor.py run as a new user would run them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import srl_ext

ROOT = Path(__file__).resolve().parents[1]


def readme_api_snippet() -> str:
    """The first ```python block under the README's "The API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_snippet_runs_as_written():
    namespace: dict = {}
    exec(compile(readme_api_snippet(), "README.md", "exec"), namespace)
    out, settings = namespace["out"], namespace["settings"]
    # the fused whole loss equals the weighted terms of the same inputs and settings
    h, bins, memory, anchors = (namespace[name] for name in ("h", "bins", "memory", "anchors"))
    con, env, homo = srl_ext.functional.srl_terms(h, bins, memory.table, anchors, settings, backend="reference")
    expected = settings.w1 * con + settings.w2 * env + settings.w3 * homo
    torch.testing.assert_close(out.total, expected, rtol=1e-5, atol=1e-6)
    # the backward reached the user's trunk, and the memory holds the batch's bins after update()
    grad = namespace["backbone"][0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    filled = memory.table.abs().sum(dim=1) > 0
    assert filled[bins].all() and int(filled.sum()) == len(set(bins.tolist()))
    assert namespace["anchors"].shape == (2000, 128)


def test_label_bins_is_the_library_helper_the_docs_name():
    ages = torch.tensor([0.0, 3.7, 101.0, 150.0])
    assert srl_ext.label_bins(ages, 102).tolist() == [0, 3, 101, 101]  # floor, the top bin takes the rest
    scores = torch.tensor([0.0, 0.1, 2.55, 4.99, 5.0])
    assert srl_ext.label_bins(scores, 50, binning="histogram", value_range=(0, 5)).tolist() == [0, 1, 25, 49, 49]
    assert srl_ext.label_bins is srl_ext.methods.label_bins


def test_the_example_trains_both_models_and_compares_them(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_regressor.py"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "L1 only" in done.stdout and "L1 + SRL" in done.stdout
    results = json.loads(out.read_text())
    constant = results["constant"]["all"]["mae"]
    for name in ("vanilla", "srl"):
        table = results[name]
        assert table["all"]["count"] == 600
        assert {row: table[row]["count"] > 0 for row in ("many", "medium", "few")} == dict.fromkeys(
            ("many", "medium", "few"), True)
        # both models learned the label from the inputs: far below predicting the training mean
        assert table["all"]["mae"] < 0.3 * constant, (name, table["all"]["mae"], constant)
    # the SRL run trained with the terms on, the plain one without
    assert results["srl_last_epoch_losses"]["srl"] > 0 and math.isfinite(results["srl_last_epoch_losses"]["srl"])
    assert results["vanilla_last_epoch_losses"]["srl"] == 0
