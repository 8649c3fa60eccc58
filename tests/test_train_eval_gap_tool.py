"""tools/train_eval_gap.py on tiny STS-B runs: its eval way repeats the runs' own validation, the
FDS way exists for FDS runs only, a missing checkpoint is one line."""

import json
from pathlib import Path

import pytest

from helpers import load_driver, load_tool, write_tiny_sts_b

tool = load_tool("train_eval_gap")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root, glove = write_tiny_sts_b(tmp_path_factory.mktemp("stsb"))
    runs_dir = tmp_path_factory.mktemp("runs")
    common = ["--data_dir", str(root), "--glove", str(glove), "--runs_dir", str(runs_dir), "--hidden_size", "8",
              "--batch_size", "8", "--eval_every", "0", "--no_progress", "--threads", "1", "--epoch", "3", "--vanilla"]
    driver = load_driver("sts_b")
    driver.main(common + ["--run_name", "vanilla"])
    driver.main(common + ["--run_name", "fds", "--reweight", "inverse", "--lds", "--fds", "--fds_alias_last_epoch",
                          "--fds_inplace"])
    return runs_dir


def selected_val_mse(folder: Path) -> float:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("split") == "val" and r.get("selected")][-1]["all/mse"]


def test_the_eval_way_is_the_runs_own_validation_and_fds_only_where_the_run_has_it(runs, capsys):
    rows = tool.main([str(runs / "vanilla"), str(runs / "fds"), "--splits", "train,val"])
    by_key = {(r["run"], r["split"], r["way"]): r for r in rows}
    assert {key for key in by_key if key[0] == "vanilla"} == {("vanilla", s, w) for s in ("train", "val")
                                                              for w in ("eval", "dropout")}
    assert ("fds", "val", "fds") in by_key and ("fds", "train", "fds") in by_key
    for name in ("vanilla", "fds"):
        assert by_key[(name, "val", "eval")]["mse"] == pytest.approx(selected_val_mse(runs / name), rel=1e-5)
        assert by_key[(name, "val", "dropout")]["mse"] != by_key[(name, "val", "eval")]["mse"]  # dropout acts
        assert by_key[(name, "val", "eval")]["mean_label"] == by_key[(name, "val", "dropout")]["mean_label"]
    table = capsys.readouterr().out
    assert table.startswith("| run | split | way | MSE |") and "| fds | val | fds |" in table


def test_a_folder_without_the_checkpoint_is_one_line(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "best.pt: no such checkpoint" in err and "\n" not in err
