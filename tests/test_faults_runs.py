"""Faults of runs and checkpoints, and user errors read as one line (issue 11): each ends with
``error: ...`` and exit status 2 from ``cli.command``, and nothing is lost or overwritten."""

import json
import os
import re
import sys

import pytest
import torch
from helpers import load_driver
from test_drivers import image_args, image_data, read_log, text_args, text_data  # noqa: F401 (fixtures)

from srl_ext.training import checkpoint as ckpt
from srl_ext.training import cli, config as training_config

pytest.importorskip("torchvision")


def command(name, argv, capsys):
    """(exit status, stderr) of a driver run as from the command line."""
    capsys.readouterr()
    status = cli.command(load_driver(name).main, argv)
    return status, capsys.readouterr().err


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def agedb_run(image_data, tmp_path_factory):  # noqa: F811
    """An AgeDB-DIR run of 2 epochs (last.pt, last.prev.pt, best.pt, test_metrics.json)."""
    runs = tmp_path_factory.mktemp("runs")
    load_driver("agedb").main(image_args(image_data, runs, "--epoch", "2", "--vanilla", "--run_name", "run"))
    return runs / "run"


def copy_run(run, tmp_path):
    import shutil

    target = tmp_path / "run-copy"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("tensorboard"))
    return target


@pytest.mark.parametrize("driver, action", [("imdb_wiki", "--evaluate"), ("sts_b", "--evaluate"),
                                            ("imdb_wiki", "--resume"), ("sts_b", "--resume")])
def test_a_checkpoint_of_another_benchmark_is_refused(agedb_run, tmp_path, capsys, driver, action):
    run = copy_run(agedb_run, tmp_path)
    before = (run / "test_metrics.json").read_bytes(), (run / "test_errors.png").read_bytes()
    status, err = command(driver, [action, str(run), "--no_progress"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "AgeDB-DIR" in line and "train/agedb.py" in line
    assert ((run / "test_metrics.json").read_bytes(), (run / "test_errors.png").read_bytes()) == before


def test_evaluate_on_other_data_writes_beside_the_runs_table(agedb_run, image_data, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    before = (run / "test_metrics.json").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "AgeDB").symlink_to(image_data / "AgeDB")
    rows = (image_data / "agedb.csv").read_text().splitlines()
    (other / "agedb.csv").write_text("\n".join(rows[:-3]) + "\n")  # 3 test images fewer
    capsys.readouterr()
    table = load_driver("agedb").main(["--evaluate", str(run), "--data_dir", str(other), "--no_progress"])
    out = capsys.readouterr().out
    assert (run / "test_metrics.json").read_bytes() == before
    beside = sorted(run.glob("test_metrics.data-*.json"))
    assert len(beside) == 1 and json.loads(beside[0].read_text())["table"] == json.loads(json.dumps(table))
    assert f"wrote {beside[0].name} to {run}" in out
    # the run's own data again: its own table
    load_driver("agedb").main(["--evaluate", str(run), "--no_progress"])
    assert json.loads((run / "test_metrics.json").read_text())["table"] == json.loads(before)["table"]


def test_resume_on_changed_data_is_refused_unless_intended(agedb_run, image_data, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "AgeDB").symlink_to(image_data / "AgeDB")
    text = (image_data / "agedb.csv").read_text()
    (data / "agedb.csv").write_text(text)
    last = (run / "last.pt").read_bytes()
    # same content in another folder: the same data
    status, err = command("agedb", ["--resume", str(run), "--data_dir", str(data), "--epoch", "3", "--no_progress"], capsys)
    assert status == 0, err
    run = copy_run(agedb_run, tmp_path / "second")
    lines = text.splitlines()
    lines[1] = lines[1].replace("20,", "21,", 1)  # one training label changed
    (data / "agedb.csv").write_text("\n".join(lines) + "\n")
    status, err = command("agedb", ["--resume", str(run), "--data_dir", str(data), "--epoch", "3", "--no_progress"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "data changed" in line and "agedb.csv changed" in line and "--data_changed" in line
    assert (run / "last.pt").read_bytes() == last
    status, err = command("agedb", ["--resume", str(run), "--data_dir", str(data), "--epoch", "3", "--data_changed",
                                    "--no_progress"], capsys)
    assert status == 0, err
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 3


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_damaged_last_checkpoint_is_named_and_the_previous_one_resumes(agedb_run, tmp_path, capsys, damage):
    run = copy_run(agedb_run, tmp_path)
    assert torch.load(run / "last.prev.pt", weights_only=False)["epoch"] == 1
    data = (run / "last.pt").read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(2000)}[damage]
    (run / "last.pt").write_bytes(damaged)
    status, err = command("agedb", ["--resume", str(run), "--epoch", "3", "--no_progress"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert f"checkpoint {run / 'last.pt'} is unreadable (truncated or corrupt)" in line
    assert f"--resume {run / 'last.prev.pt'}" in line
    assert (run / "last.pt").read_bytes() == damaged  # nothing lost
    status, err = command("agedb", ["--resume", str(run / "last.prev.pt"), "--epoch", "3", "--no_progress"], capsys)
    assert status == 0, err
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 3
    assert [p.read_bytes() for p in run.glob("last.pt.damaged-*")] == [damaged]


def test_best_checkpoint_given_to_resume_says_why_not(agedb_run, tmp_path, capsys):
    run = copy_run(agedb_run, tmp_path)
    status, err = command("agedb", ["--resume", str(run / "best.pt"), "--no_progress"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "best.pt" in line and "no optimiser" in line and f"--resume {run}" in line and "--evaluate" in line


def test_a_failed_save_leaves_no_temporary_file_and_the_old_file_whole(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"format": 1, "epoch": 1}, path)
    with pytest.raises((AttributeError, TypeError, __import__("pickle").PicklingError), match="lambda|local"):
        ckpt.atomic_save({"format": 1, "epoch": 2, "bad": lambda: None}, path)  # cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    with pytest.raises((AttributeError, TypeError, __import__("pickle").PicklingError), match="lambda|local"):
        ckpt.atomic_save({"format": 1, "epoch": 2, "bad": lambda: None}, path, keep_previous=tmp_path / "last.prev.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=False)["epoch"] == 1


def test_a_live_run_folder_cannot_be_resumed(agedb_run, tmp_path, capsys):
    run = copy_run(agedb_run, tmp_path)
    lock = ckpt.RunFolderLock(run).acquire()  # a run still training in it
    try:
        last = (run / "last.pt").read_bytes()
        status, err = command("agedb", ["--resume", str(run), "--epoch", "3", "--no_progress"], capsys)
        assert status == 2
        line = one_error_line(err)
        assert f"run folder {run} is in use by process {os.getpid()}" in line
        assert (run / "last.pt").read_bytes() == last
    finally:
        lock.release()
    status, err = command("agedb", ["--resume", str(run), "--epoch", "3", "--no_progress"], capsys)  # now free
    assert status == 0, err


def test_a_diverging_loss_stops_with_epoch_and_step(image_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    calls = []

    def l1_that_diverges(predictions, targets):
        calls.append(1)
        loss = torch.nn.functional.l1_loss(predictions, targets)
        return loss * float("nan") if len(calls) == 6 else loss  # 4 steps per epoch: epoch 2, step 6

    monkeypatch.setitem(training_config.REGRESSION_LOSSES, "l1", l1_that_diverges)
    status, err = command("agedb", image_args(image_data, tmp_path, "--epoch", "3", "--run_name", "nan"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert "training diverged at epoch 2, step 6" in line and str(tmp_path / "nan" / "last.pt") in line
    assert torch.load(tmp_path / "nan" / "last.pt", weights_only=False)["epoch"] == 1


def test_features_that_blow_up_are_a_divergence_not_an_input_error(image_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    from srl_ext.training import models

    original = models.ImageRegressor.forward
    calls = []

    def forward(self, images):
        predictions, features = original(self, images)
        calls.append(1)
        return predictions, features * (1e30 if len(calls) == 3 else 1.0)

    monkeypatch.setattr(models.ImageRegressor, "forward", forward)
    status, err = command("agedb", image_args(image_data, tmp_path, "--epoch", "2", "--run_name", "big"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert "training diverged at epoch 1, step 3" in line and "no checkpoint was saved yet" in line
    assert "argument 'features' must be finite" not in line


def test_no_data_says_what_is_missing_points_to_demo_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, missing in (("imdb_wiki", "imdb_wiki.csv"), ("agedb", "agedb.csv"), ("sts_b", "train_new.tsv")):
        status, err = command(name, [], capsys)
        assert status == 2
        line = one_error_line(err)
        assert missing in line and "--demo" in line and "imbalanced-regression" in line
    assert list(tmp_path.iterdir()) == []  # no run folder, no runs/


def test_a_run_that_cannot_read_its_data_leaves_no_run_folder(image_data, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "AgeDB").symlink_to(image_data / "AgeDB")
    (data / "agedb.csv").write_text((image_data / "agedb.csv").read_text() + "nan,AgeDB/0_Person_20_f.jpg,train\n")
    status, err = command("agedb", image_args(data, tmp_path / "runs", "--epoch", "1"), capsys)
    assert status == 2
    assert "agedb.csv:50: age 'nan' is not a finite number" in one_error_line(err)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("driver, flag, value, words", [
    ("agedb", "--temp", "0", "expected a number > 0, got '0'"),
    ("agedb", "--temp", "nan", "expected a number > 0"),
    ("agedb", "--memory_momentum", "1.5", "expected a number >= 0 and < 1"),
    ("agedb", "--workers", "-1", "expected an integer >= 0"),
    ("agedb", "--img_size", "4", "expected an integer >= 16 and <= 1024"),
    ("agedb", "--num_anchors", "0", "expected an integer >= 1"),
    ("agedb", "--lr", "-1", "expected a number > 0"),
    ("agedb", "--w2", "inf", "expected a number >= 0"),
    ("agedb", "--envelope_temperature", "0", "expected a number > 0"),
    ("sts_b", "--hidden_size", "0", "expected an integer >= 1"),
    ("sts_b", "--lstm_dropout", "1", "expected a number >= 0 and < 1"),
    ("sts_b", "--batch_size", "1", "expected an integer >= 2"),
])
def test_every_flag_range_is_checked_at_parse_time(driver, flag, value, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load_driver(driver).main([flag, value, "--runs_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # a flag with a released second name is named with it: "argument --hidden_size/--d_hid: ..."
    assert re.search(rf"error: argument {flag}(/--\w+)*: {re.escape(words)}", err), err
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = command("agedb", ["--debug"], capsys)
    assert status == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("SRL_EXT_DEBUG", "1")
    status, err = command("agedb", [], capsys)
    assert status == 2 and "Traceback" in err


def test_without_matplotlib_a_run_finishes_with_its_table(image_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    status, err = command("agedb", image_args(image_data, tmp_path, "--epoch", "1", "--vanilla", "--run_name", "r"), capsys)
    assert status == 0, err
    assert err.splitlines()[0].startswith("warning: matplotlib cannot be imported")  # said at the start
    assert (tmp_path / "r" / "test_metrics.json").is_file() and not (tmp_path / "r" / "test_errors.png").exists()
    status, err = command("agedb", ["--evaluate", str(tmp_path / "r"), "--no_progress"], capsys)
    assert status == 0 and "test_errors.png not drawn" in err
