"""tools/feature_geometry.py on tiny STS-B runs: one row per run, the figure, nothing written to the runs."""

import json
import math
from pathlib import Path

import pytest

from helpers import load_driver, load_tool, write_tiny_sts_b

tool = load_tool("feature_geometry")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root, glove = write_tiny_sts_b(tmp_path_factory.mktemp("stsb"))
    runs_dir = tmp_path_factory.mktemp("runs")
    common = ["--data_dir", str(root), "--glove", str(glove), "--runs_dir", str(runs_dir), "--hidden_size", "8",
              "--batch_size", "8", "--eval_every", "0", "--no_progress", "--threads", "1",
              "--epoch", "2"]
    driver = load_driver("sts_b")
    driver.main(common + ["--run_name", "vanilla", "--vanilla"])  # --vanilla refuses SRL flags: no --num_anchors
    driver.main(common + ["--run_name", "srl", "--num_anchors", "64"])
    driver.main(common + ["--run_name", "srl-x100", "--num_anchors", "64", "--w1", "1e-2", "--w2", "1", "--w3", "1e-2"])
    return runs_dir


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_one_row_per_run_and_the_figure(runs, tmp_path):
    folders = [runs / name for name in ("vanilla", "srl", "srl-x100")]
    before = {f: snapshot(f) for f in folders}
    out = tool.main([*map(str, folders), "--share_batches", "2", "--markdown", str(tmp_path / "g.md"),
                     "--json", str(tmp_path / "g.json"), "--figure", str(tmp_path / "g.png")])
    rows = {row["run"]: row for row in out["rows"]}
    assert {name: row["arm"] for name, row in rows.items()} == {"vanilla": "vanilla", "srl": "SRL", "srl-x100": "SRL ×100"}
    for row in rows.values():
        for feature in tool.FEATURES:
            assert -1 <= row[f"{feature}_coverage"] <= 1
            assert -1 <= row[f"{feature}_rank_correlation"] <= 1
            assert 0 <= row[f"{feature}_within_bin_spread"] <= 1
        size = row["head_present_bins"]
        assert len(row["head_centroid_cosines"]) == size and all(
            math.isclose(row["head_centroid_cosines"][i][i], 1.0, abs_tol=1e-9) for i in range(size))
        test_table = json.loads((runs / row["run"] / "test_metrics.json").read_text())["table"]
        assert row["finished"]
        for key, group in (("test_mse", "all"), ("test_mse_many", "many"), ("test_mse_few", "few")):
            if test_table[group]["mse"] is not None:  # the driver's own test table, recomputed from the features' pass
                assert row[key] == pytest.approx(test_table[group]["mse"], rel=1e-5)
    assert "srl_grad_ratio" not in rows["vanilla"]
    assert rows["srl"]["srl_grad_ratio"] > 0 and -1 <= rows["srl"]["srl_grad_cosine"] <= 1
    assert json.loads((tmp_path / "g.json").read_text())[0]["run"] == "vanilla"
    text = (tmp_path / "g.md").read_text()
    assert "| srl-x100 | SRL ×100 |" in text and "By arm" in text
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f: snapshot(f) for f in folders} == before  # the runs are only read
    # the saved measurements stand in for the runs: the same tables, nothing measured again
    again = tool.main([str(tmp_path / "g.json"), "--markdown", str(tmp_path / "again.md")])
    assert again["rows"] == json.loads((tmp_path / "g.json").read_text())
    assert (tmp_path / "again.md").read_text() == text


def test_a_folder_without_a_selected_model_is_one_line_error(tmp_path, capsys):
    from srl_ext.training.cli import command

    assert command(tool.main, [str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]
