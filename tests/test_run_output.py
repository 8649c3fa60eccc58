"""What a run shows and leaves: plain-text progress without a terminal, one epoch numbering,
no lock file after the run, the per-label plot (legend, empty bins, the data's axis range,
SYNTHETIC on demo data, SVG beside PNG), per-step TensorBoard losses."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_driver, write_sts_b_pairs

from srl_ext import metrics
from srl_ext.training import checkpoint, reporting
from srl_ext.training.config import Task


def test_plain_progress_prints_a_line_per_interval_with_the_postfix():
    ticks = iter([0.0, 10.0, 31.0, 40.0, 62.0])  # start, then the clock after each of four items
    stream = io.StringIO()
    bar = reporting.PlainProgress(range(4), "epoch 2", every_s=30, clock=lambda: next(ticks), stream=stream)
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_postfix(loss=f"{item / 10:.4f}", refresh=False)
    assert seen == [0, 1, 2, 3]
    # lines after item 2 (31 s) and item 4 (62 s, 31 s after the last line); items 1 and 3 too soon
    assert stream.getvalue().splitlines() == [
        "epoch 2: step 2/4 (50 %), 31 s, about 31 s left, loss 0.1000",
        "epoch 2: step 4/4 (100 %), 62 s, about 0 s left, loss 0.3000",
    ]


def test_progress_is_plain_text_when_stderr_is_no_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file, nohup, SLURM
    assert isinstance(reporting.progress([1, 2], True, "epoch 1"), reporting.PlainProgress)
    assert reporting.progress([1, 2], False, "epoch 1") == [1, 2]


def test_the_lock_file_goes_when_the_run_ends(tmp_path):
    lock = checkpoint.RunFolderLock(tmp_path).acquire()
    assert (tmp_path / checkpoint.LOCK).is_file()
    with pytest.raises(checkpoint.RunFolderInUse):
        checkpoint.RunFolderLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / checkpoint.LOCK).exists()
    checkpoint.RunFolderLock(tmp_path).acquire().release()  # free again


def image_like_task(train_labels: np.ndarray) -> Task:
    counts = np.bincount(train_labels.astype(int), minlength=187)
    return Task(name="imdb_wiki", num_bins=187, label_bins=lambda y: y.to(torch.int64).clamp(0, 186),
                bin_groups=metrics.shot_groups_from_counts(counts), train_labels=train_labels, label_name="age")


def test_the_plot_has_a_legend_empty_bins_the_data_range_and_an_svg(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    train = np.concatenate([np.clip(np.rint(rng.normal(35, 7, 2400)), 1, 90), [1, 90]]).astype(np.float32)
    test = np.array([5, 20, 35, 36, 60, 88], dtype=np.float32)  # most bins have no test sample
    task = image_like_task(train)
    path = tmp_path / "test_errors.png"
    reporting.plot_errors_per_label(task, test + 1.5, test, path, synthetic=True)
    assert path.stat().st_size > 0
    svg = path.with_suffix(".svg").read_text()
    ElementTree.fromstring(svg)  # well-formed
    texts = " ".join(svg.split())
    for words in ("many-shot", "medium-shot", "few-shot", "no test sample", "SYNTHETIC"):
        assert words in texts, words
    # the axis covers the bins with data (ages 1..90), not the benchmark's 0..186
    assert reporting.plotted_range(np.arange(187.0), np.bincount(test.astype(int), minlength=187),
                                   np.bincount(train.astype(int), minlength=187)) == (0.5, 90.5)


def test_a_real_run_plot_is_not_marked_synthetic(tmp_path):
    pytest.importorskip("matplotlib")
    train = np.full(50, 30, dtype=np.float32)
    reporting.plot_errors_per_label(image_like_task(train), np.array([31.0]), np.array([30.0], dtype=np.float32),
                                    tmp_path / "p.png")
    assert "SYNTHETIC" not in (tmp_path / "p.svg").read_text()


class FakeWriter:
    """Stands in for TensorBoard's SummaryWriter (not installed in CI): records the scalars."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, float(value), step))

    def flush(self) -> None:
        pass


def test_a_sts_b_run_numbers_epochs_from_one_logs_each_step_and_leaves_no_lock(tmp_path, capsys, monkeypatch):
    writer = FakeWriter()
    monkeypatch.setattr(reporting, "_tensorboard", lambda run_dir: writer)
    words = ["a", "man", "woman", "is", "eating", "dancing", "playing", "guitar", "the", "dog", "runs", "."]
    (tmp_path / "data").mkdir()
    root, glove = write_sts_b_pairs(tmp_path / "data", words, 48, train=32, val=40,
                                    score=lambda i, rng: f"{float(rng.uniform(0, 5)):.3f}")
    load_driver("sts_b").main(["--data_dir", str(root), "--glove", str(glove), "--runs_dir", str(tmp_path / "runs"),
                               "--hidden_size", "8", "--batch_size", "8", "--eval_every", "3", "--epoch", "2",
                               "--num_anchors", "16", "--no_progress", "--threads", "1", "--run_name", "r"])
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "r"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 4 steps an epoch: validations at steps 3 (inside epoch 1), 6 (inside epoch 2) and 8 (the end)
    assert [(r["split"], r["epoch"], r["step"]) for r in log] == [
        ("val", 1, 3), ("train", 1, 4), ("val", 2, 6), ("train", 2, 8), ("val", 2, 8)]
    assert "val epoch 1 step 3:" in out and "val epoch 2 step 6:" in out
    assert out.count("vocabulary:") == 1
    assert not (run / checkpoint.LOCK).exists()
    assert (run / "test_errors.svg").is_file() or reporting.matplotlib_missing()
    # one training loss per step, besides the per-epoch means
    steps = [(step, value) for tag, value, step in writer.scalars if tag == "train_step/loss"]
    assert [step for step, _ in steps] == list(range(1, 9))
    srl = {step: value for tag, value, step in writer.scalars if tag == "train_step/srl_total"}
    regression = {step: value for tag, value, step in writer.scalars if tag == "train_step/regression"}
    for step, loss in steps:  # loss = regression + SRL, per step
        assert loss == pytest.approx(regression[step] + srl[step], rel=1e-5, abs=1e-6)
    epoch_means = [value for tag, value, _ in writer.scalars if tag == "train/loss"]
    assert epoch_means == pytest.approx([np.mean([v for _, v in steps[:4]]), np.mean([v for _, v in steps[4:]])],
                                        rel=1e-5)


def test_the_sts_b_demo_takes_its_shot_groups_from_its_own_counts(tmp_path, monkeypatch):
    """The benchmark's fixed bin lists would call the demo's emptiest bins many-shot."""
    from srl_ext.training import demo

    root = tmp_path / "demo"
    demo.write_sentence_pairs(root)
    driver = load_driver("sts_b")
    config = {"data_dir": str(root), "glove": str(root / demo.GLOVE), "oov": "zero", "seed": 0, "max_tokens": 40,
              "released_table": False, "hidden_size": 4, "num_layers": 1, "embedding_dropout": 0.0,
              "lstm_dropout": 0.0, "regressor": "linear", "demo": True}
    task, _, datasets = driver.build(config)
    counts = np.bincount(task.label_bins(torch.as_tensor(datasets["train"].labels)).numpy(), minlength=50)
    assert list(task.bin_groups) == metrics.shot_groups_from_counts(counts)
    assert list(driver.build({**config, "demo": False})[0].bin_groups) == metrics.stsb_shot_groups()


def test_per_step_losses_go_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    log = reporting.RunLog(tmp_path)
    log.step(1, loss=torch.tensor(0.5), regression=torch.tensor(0.25), srl_total=None)
    log.write({"split": "train", "epoch": 1, "step": 1, "loss": 0.5})
    events = list((tmp_path / "tensorboard").glob("events.*"))
    assert events and events[0].stat().st_size > 0


def test_a_run_without_tensorboard_says_how_to_get_it(capsys):
    import importlib.util

    missing = importlib.util.find_spec("tensorboard") is None
    assert (reporting.tensorboard_missing() is not None) == missing
    reporting.note_missing_tensorboard()
    out = capsys.readouterr().out  # a note on stdout: stderr keeps a user mistake to its one error line
    assert ("no TensorBoard logs, metrics.jsonl only (pip install 'srl-ext[tensorboard]')" in out) == missing
