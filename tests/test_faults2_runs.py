"""Faults of the drivers, round two (issue 23): exact resume in a new process, errors found before
a run folder is made (devices, backends, sizes, ranges, contradictions, a split with no training
step, unreadable images), checkpoints that do not fit, paths, and one-line parse errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_driver
from test_drivers import image_args, image_data, read_log, text_args, text_data  # noqa: F401 (fixtures)
from test_faults_runs import agedb_run, copy_run, one_error_line  # noqa: F401 (fixtures)

from srl_ext.training import checkpoint as ckpt
from srl_ext.training import cli

pytest.importorskip("torchvision")
ROOT = Path(__file__).resolve().parents[1]


def command(name, argv, capsys):
    """(exit status, stderr) of a driver run as from the command line, parse errors included."""
    capsys.readouterr()
    try:
        status = cli.command(load_driver(name).main, argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def nothing_written(runs):
    return not runs.exists() or list(runs.iterdir()) == []


def test_resume_in_a_new_process_keeps_the_runs_thread_count_and_numbers(image_data, tmp_path):  # noqa: F811
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to tell one thread from all of them")
    runs = tmp_path / "runs"
    load_driver("agedb").main(image_args(image_data, runs, "--epoch", "2", "--run_name", "whole"))
    load_driver("agedb").main(image_args(image_data, runs, "--epoch", "1", "--run_name", "part"))
    script = (
        "import sys, torch; sys.path.insert(0, 'tests'); from helpers import load_driver; "
        "from srl_ext.training import cli, engine; fit = engine.Engine.fit; "
        "engine.Engine.fit = lambda self: (print('threads', torch.get_num_threads(), flush=True), fit(self)); "
        f"sys.exit(cli.command(load_driver('agedb').main, ['--resume', {str(runs / 'part')!r}, '--epoch', '2', "
        "'--no_progress']))"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "", "SRL_EXT_DEBUG": "1"}
    environment.pop("OMP_NUM_THREADS")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "threads 1" in done.stdout  # the saved --threads 1, not the new process's default (all cores)
    assert read_log(runs / "part", timings=False) == read_log(runs / "whole", timings=False)


@pytest.mark.parametrize("extra, words", [
    (["--device", "cuda"], "--device: expected a device of this machine, got 'cuda', but torch finds no cuda device"),
    (["--device", "cuda:7"], "--device: expected a device of this machine, got 'cuda:7'"),
    (["--device", "gpu"], "--device: expected a torch device such as cpu, cuda or cuda:1, got 'gpu'"),
    (["--backend", "cuda"], "--backend: expected kernels that run on --device cpu, got 'cuda'"),
    (["--num_anchors", "1000000000"], "--num_anchors: expected a size whose tables fit in the"),
    (["--fds", "--bucket_num", "1000000000", "--fds_ks", "5"], "--bucket_num: expected a size whose tables fit in the"),
    (["--reweight", "sqrt_inv", "--lds", "--lds_ks", "100000000001"], "--lds_ks: expected at most 2 x"),
])
def test_what_a_run_cannot_do_is_refused_before_its_folder_is_made(image_data, tmp_path, capsys, extra, words):  # noqa: F811
    if torch.cuda.is_available() and "cuda" in " ".join(extra):
        pytest.skip("a machine with a GPU")
    runs = tmp_path / "runs"
    status, err = command("agedb", image_args(image_data, runs, "--epoch", "1", *extra), capsys)
    assert status == 2 and words in one_error_line(err), err
    assert nothing_written(runs)


def test_evaluate_on_a_device_that_is_not_there_is_one_line(agedb_run, tmp_path, capsys):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("a machine with a GPU")
    run = copy_run(agedb_run, tmp_path)
    before = (run / "test_metrics.json").read_bytes()
    status, err = command("agedb", ["--evaluate", str(run), "--device", "cuda", "--no_progress"], capsys)
    assert status == 2 and "--device: expected a device of this machine" in one_error_line(err)
    assert (run / "test_metrics.json").read_bytes() == before


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(image_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    from srl_ext.training import engine

    def out_of_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.Engine, "train_epoch", out_of_memory)
    runs = tmp_path / "runs"
    status, err = command("agedb", image_args(image_data, runs, "--epoch", "1"), capsys)
    assert status == 2 and "error: CUDA out of memory" in one_error_line(err)
    assert nothing_written(runs)


@pytest.mark.parametrize("driver, extra, words", [
    ("agedb", ["--seed", "4294967296"], "argument --seed/--random_seed: expected an integer >= 0 and <= 4294967295"),
    ("agedb", ["--regularization_weight", "inf"], "--regularization_weight: expected a finite number, got inf"),
    ("agedb", ["--conr", "--beta", "inf"], "--beta: expected a finite number, got inf"),
    ("agedb", ["--vanilla", "--w1", "3"], "--vanilla: expected no SRL flag with it"),
    ("agedb", ["--vanilla", "--temp", "0.2", "--label_weighting"], "got --label_weighting, --temp"),
    ("agedb", ["--vanilla", "--backend", "cpu", "--memory_update", "online", "--num_anchors", "8"],
     "got --backend, --memory_update, --num_anchors"),
    ("agedb", ["--warmup", "5", "--epoch", "1"], "--warmup: expected fewer epochs than --epoch 1"),
    ("sts_b", ["--vanilla", "--released_table"], "--vanilla: expected no SRL flag with it"),
])
def test_ranges_and_contradictions_are_one_line_at_parse_time(driver, extra, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_driver(driver).main([*extra, "--runs_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("error: ") and words in err, err  # no usage block
    assert nothing_written(tmp_path / "runs")


def test_a_train_split_without_a_training_step_is_refused(image_data, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "AgeDB").symlink_to(image_data / "AgeDB")
    rows = (image_data / "agedb.csv").read_text().splitlines()
    train = [row for row in rows[1:] if row.endswith(",train")]
    others = [row for row in rows[1:] if not row.endswith(",train")]
    (data / "agedb.csv").write_text("\n".join([rows[0], train[0], *others]) + "\n")  # one training sample
    status, err = command("agedb", image_args(data, tmp_path / "runs", "--epoch", "1"), capsys)
    assert status == 2
    assert "--batch_size: expected a train split with at least one training step, got 1 training sample(s)" in (
        one_error_line(err))
    assert nothing_written(tmp_path / "runs")


def test_an_empty_test_image_is_found_before_training(image_data, tmp_path, capsys):  # noqa: F811
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_data, data)
    test_rows = [row.split(",")[1] for row in (data / "agedb.csv").read_text().splitlines() if row.endswith(",test")]
    (data / test_rows[-1]).write_bytes(b"")
    status, err = command("agedb", image_args(data, tmp_path / "runs", "--epoch", "1"), capsys)
    assert status == 2 and "cannot be read" in one_error_line(err) and test_rows[-1] in err
    assert nothing_written(tmp_path / "runs")


def test_a_checkpoint_of_an_older_version_resumes_with_the_defaults(agedb_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, weights_only=False)
        del state["config"]["bmse"], state["config"]["conr"]  # flags added after that version
        torch.save(state, run / name)
    status, err = command("agedb", ["--resume", str(run), "--epoch", "3", "--no_progress"], capsys)
    assert status == 0, err
    assert "predates --bmse, --conr" in err
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 3


def test_a_best_checkpoint_whose_config_does_not_fit_its_weights_is_one_line(agedb_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    state = torch.load(run / "best.pt", weights_only=False)
    state["config"]["backbone"] = "resnet18"
    torch.save(state, run / "best.pt")
    before = (run / "test_metrics.json").read_bytes()
    status, err = command("agedb", ["--evaluate", str(run), "--no_progress"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert f"--evaluate {run / 'best.pt'}: expected weights that fit the model of its config" in line
    assert (run / "test_metrics.json").read_bytes() == before


def test_resume_without_best_pt_is_refused_before_training(agedb_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    (run / "best.pt").unlink()
    last = (run / "last.pt").read_bytes()
    status, err = command("agedb", ["--resume", str(run), "--epoch", "3", "--no_progress"], capsys)
    assert status == 2 and f"expected {run / 'best.pt'}" in one_error_line(err)
    assert (run / "last.pt").read_bytes() == last


def test_resume_from_the_previous_checkpoint_keeps_a_sound_last(agedb_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    last = (run / "last.pt").read_bytes()
    status, err = command("agedb", ["--resume", str(run / "last.prev.pt"), "--epoch", "3", "--no_progress"], capsys)
    assert status == 2
    assert "expected a damaged last.pt beside it, got a sound one (epoch 2, newer)" in one_error_line(err)
    assert (run / "last.pt").read_bytes() == last and not list(run.glob("last.pt.damaged-*"))


def test_evaluate_of_a_live_run_is_refused(agedb_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(agedb_run, tmp_path)
    before = (run / "test_metrics.json").read_bytes()
    lock = ckpt.RunFolderLock(run).acquire()
    try:
        status, err = command("agedb", ["--evaluate", str(run), "--no_progress"], capsys)
    finally:
        lock.release()
    assert status == 2 and f"run folder {run} is in use" in one_error_line(err)
    assert (run / "test_metrics.json").read_bytes() == before


def test_runs_dir_that_is_a_file_and_runs_dir_with_a_tilde(image_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    afile = tmp_path / "afile"
    afile.write_text("x")
    status, err = command("agedb", image_args(image_data, afile, "--epoch", "1"), capsys)
    assert status == 2 and f"--runs_dir: expected a folder, got the file {afile}" in one_error_line(err)
    status, err = command("agedb", image_args(image_data, afile / "sub", "--epoch", "1"), capsys)
    assert status == 2 and "Not a directory" in one_error_line(err)  # an OSError: one line too
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    status, err = command("agedb", image_args(image_data, "~/runs", "--epoch", "1", "--vanilla", "--run_name", "r"), capsys)
    assert status == 0, err
    assert (tmp_path / "home/runs/r/test_metrics.json").is_file() and not (tmp_path / "~").exists()
