"""The drivers in train/ end to end on tiny generated datasets in the real layouts.

Each run takes seconds: the tiny conv net at 16 x 16 pixels, a BiLSTM of 8 units over 4-d
word vectors from a fake GloVe file, few anchors.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_driver, write_agedb_images, write_sts_b_pairs
from test_layout import pickled_names

from srl_ext.training import checkpoint as ckpt
from srl_ext.training import ddp, engine, evaluation
from srl_ext.training.data import MissingDataError, sts_b

pytest.importorskip("torchvision")  # the image transforms and backbones of the drivers
ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """48 small JPEGs in the AgeDB-DIR layout (agedb.csv + AgeDB/...), ages 20..27, brightness ~ age."""
    return write_agedb_images(tmp_path_factory.mktemp("agedb"), 48, train=32, val=40)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """48 sentence pairs in the STS-B-DIR layout and a fake 4-d GloVe file."""
    words = ["a", "man", "woman", "is", "eating", "dancing", "playing", "guitar", "the", "dog", "runs", "."]
    return write_sts_b_pairs(tmp_path_factory.mktemp("stsb"), words, 48, train=32, val=40,
                             score=lambda i, rng: f"{round(float(rng.uniform(0, 5)), 3) if i % 12 else 5.0:.3f}")


def srl_size(extra):
    """The anchors of the small test runs: none with --vanilla, which refuses SRL flags."""
    return [] if "--vanilla" in extra else ["--num_anchors", "64"]


def image_args(data, runs, *extra):
    return ["--data_dir", str(data), "--runs_dir", str(runs), "--backbone", "tiny", "--img_size", "16",
            "--batch_size", "8", "--lr", "0.01", *srl_size(extra), "--no_progress", "--threads", "1", *extra]


def text_args(data, runs, *extra):
    root, glove = data
    return ["--data_dir", str(root), "--glove", str(glove), "--runs_dir", str(runs), "--hidden_size", "8",
            "--batch_size", "8", "--eval_every", "3", "--patience", "50", *srl_size(extra), "--no_progress",
            "--threads", "1", *extra]


def interrupt_after_validations(monkeypatch, count):
    """Make the run stop like a killed process right after its ``count``-th validation: the
    validation's log line and best.pt are written, the epoch's checkpoint is not."""
    original = engine.Engine.validate
    calls = []

    def validate(self):
        table = original(self)
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt("simulated interruption")
        return table

    monkeypatch.setattr(engine.Engine, "validate", validate)
    return monkeypatch


def read_log(run_dir, timings=True):
    """The metrics.jsonl records; without ``timings`` the wall-clock fields are dropped."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if not timings:
        records = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]
    return records


def assert_complete_run(run_dir):
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "test_metrics.json", "test_errors.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "test_errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("memory_update", ["epoch_pass", "online"])
def test_agedb_srl_runs_and_resumes_exactly(image_data, tmp_path, memory_update, monkeypatch):
    agedb = load_driver("agedb")
    args = ("--epoch", "3", "--memory_update", memory_update)
    straight = agedb.main(image_args(image_data, tmp_path, *args, "--run_name", "straight"))
    with monkeypatch.context() as patch:
        interrupt_after_validations(patch, 2)  # killed at the end of epoch 2, before its checkpoint
        with pytest.raises(KeyboardInterrupt):
            agedb.main(image_args(image_data, tmp_path, *args, "--run_name", "cut"))
    assert len(read_log(tmp_path / "cut")) == 4  # 2 epochs logged (a train and a val line each), 1 saved
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = agedb.main(["--resume", str(tmp_path / "cut"), "--no_progress"])
    assert resumed == straight
    assert read_log(tmp_path / "cut", timings=False) == read_log(tmp_path / "straight", timings=False)
    assert_complete_run(tmp_path / "straight")
    checkpoint = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 3 and checkpoint["config"]["memory_update"] == memory_update
    assert checkpoint["memory"]["num_updates"] == 3
    assert checkpoint["memory"]["table"].abs().sum() > 0  # filled from the training features
    assert checkpoint["srl_loss"]["anchors"].shape == (64, 128)
    for name in ("last.pt", "best.pt"):  # plain dicts: moving a class of this package never breaks loading
        assert not any(n.startswith("srl_ext") for n in pickled_names(tmp_path / "straight" / name))
    log = read_log(tmp_path / "straight")
    train_lines = [r for r in log if r["split"] == "train"]
    assert [r["epoch"] for r in train_lines] == [1, 2, 3] and all(r["contrastive"] > 0 for r in train_lines)
    assert sum(r["split"] == "val" for r in log) == 3


def test_agedb_evaluate_prints_the_table_and_plots(image_data, tmp_path, capsys):
    agedb = load_driver("agedb")
    tested = agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--vanilla", "--run_name", "run"))
    (tmp_path / "run" / "test_errors.png").unlink()
    capsys.readouterr()
    evaluated = agedb.main(["--evaluate", str(tmp_path / "run"), "--no_progress"])
    assert evaluated == tested
    out = capsys.readouterr().out
    assert "agedb test" in out and out.count("\n") >= 5
    for row in ("all", "many", "medium", "few"):
        assert any(line.split()[:1] == [row] for line in out.splitlines())
    assert (tmp_path / "run" / "test_errors.png").is_file()
    # the test set has ages 20..27 with 4 training images each: all few-shot
    assert tested["few"]["count"] == 8 and tested["many"]["count"] == 0 and tested["many"]["mae"] is None


def test_vanilla_has_no_srl_state_and_warmup_delays_srl(image_data, tmp_path):
    agedb = load_driver("agedb")
    agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--vanilla", "--run_name", "vanilla"))
    checkpoint = torch.load(tmp_path / "vanilla" / "last.pt", weights_only=False)
    assert checkpoint["memory"] is None and checkpoint["srl_loss"] is None
    agedb.main(image_args(image_data, tmp_path, "--epoch", "2", "--warmup", "1", "--run_name", "warm"))
    train_lines = [r for r in read_log(tmp_path / "warm") if r["split"] == "train"]
    assert [r["srl_on"] for r in train_lines] == [False, True]
    assert train_lines[0]["contrastive"] == 0 and train_lines[1]["contrastive"] > 0


def test_run_folder_is_never_reused(image_data, tmp_path, capsys):
    agedb = load_driver("agedb")
    for _ in range(2):
        agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--vanilla", "--run_name", "same"))
    assert (tmp_path / "same").is_dir() and (tmp_path / "same-2").is_dir()
    assert "exists; this run writes to" in capsys.readouterr().out


def test_imdb_wiki_driver_runs(image_data, tmp_path):
    # IMDB-WIKI-DIR has the same layout with imdb_wiki.csv
    data = tmp_path / "imdb-data"
    data.mkdir()
    (data / "imdb_wiki.csv").write_text((image_data / "agedb.csv").read_text())
    (data / "AgeDB").symlink_to(image_data / "AgeDB")
    table = load_driver("imdb_wiki").main(image_args(data, tmp_path, "--epoch", "1", "--run_name", "imdb"))
    assert table["all"]["count"] == 8
    checkpoint = torch.load(tmp_path / "imdb" / "last.pt", weights_only=False)
    assert checkpoint["memory"]["table"].shape == (187, 128)
    assert checkpoint["config"]["homogeneity_sign"] == 1.0 and checkpoint["config"]["preset"] == "imdb_wiki"


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDataError, match="agedb.csv"):
        load_driver("agedb").main(["--data_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs"), "--no_progress"])
    with pytest.raises(MissingDataError, match="train_new.tsv"):
        load_driver("sts_b").main(["--data_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs"), "--no_progress"])


@pytest.mark.parametrize("memory_update", ["epoch_pass", "online"])
def test_sts_b_srl_runs_and_resumes_exactly(text_data, tmp_path, memory_update, monkeypatch):
    driver = load_driver("sts_b")
    options = ("--epoch", "3", "--memory_update", memory_update)
    straight = driver.main(text_args(text_data, tmp_path, "--run_name", "straight", *options))
    with monkeypatch.context() as patch:
        interrupt_after_validations(patch, 2)  # killed in epoch 2, after its validation at step 6
        with pytest.raises(KeyboardInterrupt):
            driver.main(text_args(text_data, tmp_path, "--run_name", "cut", *options))
    resumed = driver.main(["--resume", str(tmp_path / "cut" / "last.pt"), "--no_progress"])
    assert resumed == straight
    assert read_log(tmp_path / "cut", timings=False) == read_log(tmp_path / "straight", timings=False)
    assert_complete_run(tmp_path / "straight")
    assert set(straight["all"]) == {"count", "mse", "mae", "gm", "pearson", "spearman"}
    log = read_log(tmp_path / "straight")
    # 32 pairs, batch 8: 4 steps per epoch, validation every 3 steps, and after the last step
    assert [r["step"] for r in log if r["split"] == "val"] == [3, 6, 9, 12]
    checkpoint = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    assert checkpoint["memory"]["table"].shape == (50, 128)
    norms = checkpoint["memory"]["table"].norm(dim=1)
    assert torch.all((norms <= 1 + 1e-5))  # STS-B memory averages unit vectors


def test_sts_b_same_seed_same_metrics_and_released_model(text_data, tmp_path):
    driver = load_driver("sts_b")
    first = driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--run_name", "one"))
    second = driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--run_name", "two"))
    assert first == second  # the whole test table, to the last bit
    assert read_log(tmp_path / "one", timings=False) == read_log(tmp_path / "two", timings=False)
    other = driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--run_name", "three", "--seed", "1"))
    assert other != first
    # the released model: one Linear head, dropout on the LSTM outputs, frozen OOV vectors saved
    state = torch.load(tmp_path / "one" / "last.pt", weights_only=False)["model"]
    assert state["regressor.weight"].shape == (1, 8 * 8)
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert (config["regressor"], config["lstm_dropout"], config["oov"]) == ("linear", 0.2, "random")
    root, glove = text_data
    pairs = [pair for name in sts_b.SPLIT_FILES.values() for pair in sts_b.read_pairs(root / name)]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(pairs, glove, oov="random", seed=0)
    assert unknown == 2  # '"' and 'quoted' of '"quoted': each its own random vector
    # frozen: the trained run's embeddings are the seeded draw, unchanged by training
    assert torch.equal(state["encoder.embedding.weight"], embeddings)
    assert torch.equal(torch.load(tmp_path / "one" / "best.pt", weights_only=False)["model"]["encoder.embedding.weight"],
                       embeddings)


def test_sentence_encoder_drops_lstm_outputs_in_training_only():
    from srl_ext.training.models import SentencePairRegressor

    torch.manual_seed(0)
    model = SentencePairRegressor(torch.randn(10, 4), hidden_size=6, embedding_dropout=0.0, lstm_dropout=0.5)
    assert isinstance(model.regressor, torch.nn.Linear) and model.regressor.in_features == 48
    ids, lengths = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([3, 2])
    model.train()
    assert not torch.equal(model(ids, lengths, ids, lengths)[0], model(ids, lengths, ids, lengths)[0])
    model.eval()
    assert torch.equal(model(ids, lengths, ids, lengths)[0], model(ids, lengths, ids, lengths)[0])
    without = SentencePairRegressor(torch.randn(10, 4), hidden_size=6, embedding_dropout=0.0, lstm_dropout=0.0).train()
    assert torch.equal(without(ids, lengths, ids, lengths)[0], without(ids, lengths, ids, lengths)[0])
    assert isinstance(SentencePairRegressor(torch.randn(10, 4), hidden_size=6, regressor="mlp").regressor,
                      torch.nn.Sequential)


def test_sts_b_released_table_trains(text_data, tmp_path, monkeypatch):
    from srl_ext import released

    calls = []
    table_of = released.sts_b_table_and_positives
    monkeypatch.setattr(released, "sts_b_table_and_positives", lambda *a: calls.append(a[1]) or table_of(*a))
    driver = load_driver("sts_b")
    table = driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--released_table", "--run_name", "rt"))
    assert len(calls) == 8  # every SRL step: 2 epochs of 4
    assert all(scores.dtype == torch.float32 and (scores <= 5).all() for scores in calls)  # raw scores, not bins
    plain = driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--run_name", "plain"))
    assert table != plain  # the table rule changes training
    assert json.loads((tmp_path / "rt" / "config.json").read_text())["released_table"] is True


@pytest.mark.parametrize("rule, selected, last_epoch", [
    ("no_improvement", [True, False], 2),  # 1 validation without a better model
    ("released", [True, False, False], 3),  # the third is the worst (tied) of the last 2; needs 3
])
def test_sts_b_vanilla_and_early_stopping(text_data, tmp_path, rule, selected, last_epoch):
    driver = load_driver("sts_b")
    driver.main(text_args(text_data, tmp_path, "--vanilla", "--epoch", "20", "--patience", "1", "--lr", "1e-30",
                          "--early_stop", rule, "--run_name", "stop"))
    log = read_log(tmp_path / "stop")
    validations = [r for r in log if r["split"] == "val"]
    # lr 1e-30 leaves the float32 weights as they are: every validation scores the same (ties do
    # not count as better), and each rule stops in one of the first epochs of the 20
    assert [r["selected"] for r in validations] == selected
    assert [r["step"] for r in validations] == [3, 6, 9][: len(selected)]
    assert log[-1]["split"] == "train" and log[-1]["epoch"] == last_epoch
    checkpoint = torch.load(tmp_path / "stop" / "last.pt", weights_only=False)
    assert checkpoint["stopped"] is True and len(checkpoint["val_scores"]) == len(selected)


def test_sts_b_stops_after_max_vals(text_data, tmp_path):
    load_driver("sts_b").main(text_args(text_data, tmp_path, "--vanilla", "--epoch", "20", "--max_vals", "4",
                                        "--run_name", "capped"))
    log = read_log(tmp_path / "capped")
    assert [r["step"] for r in log if r["split"] == "val"] == [3, 6, 9, 12]
    assert log[-1]["epoch"] == 3  # the fourth validation (step 12) ends epoch 3


@pytest.mark.parametrize("scores, patience, rule, stops", [
    ([3.0, 2.0, 2.5], 2, "released", False),  # the worst of the last 3, but more than 3 are needed
    ([3.0, 2.0, 1.0, 2.0], 2, "released", True),  # 2.0 ties the worst of [2.0, 1.0, 2.0]
    ([3.0, 2.0, 1.0, 2.0, 2.5], 2, "released", True),  # 2.5 is the worst of the last 3
    ([3.0, 2.0, 1.0, 2.0, 1.5], 2, "released", False),  # 1.5 beats 2.0 in the window
    ([1.0, 2.0, 3.0, 3.0], 2, "released", True),  # a tie with the worst counts
    ([5.0, 1.0, 4.0, 3.0, 2.0], 2, "released", False),  # never the worst: runs on without a new best
    ([5.0, 1.0, 4.0, 3.0, 2.0], 2, "no_improvement", True),  # 3 validations without a new best
    ([2.0, 1.0, 1.0], 2, "no_improvement", False),  # a tie is not a new best: 1 without
    ([2.0, 1.0, 1.0, 1.0], 2, "no_improvement", True),
    ([9.0] * 50, None, "released", False),  # no patience: no early stop
])
def test_early_stopping_rules(scores, patience, rule, stops):
    assert evaluation.out_of_patience(scores, patience, rule) is stops


def test_resume_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "last.pt"
    torch.save({"model": {}}, bogus)
    with pytest.raises(ValueError, match="not an srl-ext training checkpoint"):
        load_driver("sts_b").main(["--resume", str(bogus)])


@pytest.mark.parametrize("action", ["--resume", "--evaluate"])
def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line(tmp_path, action, capsys):
    from srl_ext.training.cli import command

    newer = ckpt.CHECKPOINT_FORMAT + 1
    path = tmp_path / ("last.pt" if action == "--resume" else "best.pt")
    torch.save({"format": newer, "model": {}, "config": {"preset": "sts_b"}, "optimizer": {}}, path)
    assert command(load_driver("sts_b").main, [action, str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert f"expected a checkpoint of format {ckpt.CHECKPOINT_FORMAT} or older" in err[0]
    assert f"got format {newer}: it was written by a newer srl-ext" in err[0]


@pytest.mark.parametrize("name, words", [("agedb", "AgeDB-DIR"), ("imdb_wiki", "IMDB-WIKI-DIR"), ("sts_b", "STS-B-DIR")])
def test_help_describes_the_driver_and_its_defaults(name, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_driver(name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert words in text and "Examples:" in text
    assert "--memory_update {epoch_pass,online}" in text and "(default: epoch_pass)" in text
    batch = {"agedb": "64", "imdb_wiki": "256", "sts_b": "16"}[name]
    assert f"batch size (per process under torchrun: the global batch is this times the number of processes) " \
           f"(default: {batch})" in " ".join(text.split())


def test_bad_flag_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        # neither epochs nor early stopping nor a validation limit: would never end
        load_driver("sts_b").main(["--patience", "0", "--max_vals", "0"])
    assert "--epoch: expected a number of epochs when --patience and --max_vals are 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_driver("sts_b").main(["--max_vals", "-1"])
    assert "argument --max_vals: expected an integer >= 0, got '-1'" in capsys.readouterr().err


def torchrun_driver(name, args, processes=2):
    """Run train/<name>.py under ``torchrun --standalone`` with gloo on the CPU; the finished process."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         str(ROOT / "train" / f"{name}.py"), *args, "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def test_sts_b_data_parallel_under_torchrun(text_data, tmp_path):
    """Two gloo processes on the CPU (``torchrun --standalone --nproc_per_node 2``), one epoch:
    one run folder, written by rank 0 alone; the log of one run; the global loss is that of one
    process; the test table, computed on the predictions gathered from both ranks, is that of
    the checkpoint evaluated by one process."""
    runs = tmp_path / "runs"
    # 32 training pairs, 8 per rank and step: 2 steps; validation at the end of the epoch
    completed = torchrun_driver("sts_b", text_args(text_data, runs, "--epoch", "1", "--eval_every", "0", "--run_name", "ddp"))
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    run_dir = runs / "ddp"
    assert_complete_run(run_dir)
    assert completed.stdout.count("run folder") == 1  # printed by rank 0 only
    log = read_log(run_dir)
    assert [(r["split"], r["epoch"], r["step"]) for r in log] == [("train", 1, 2), ("val", 1, 2)]
    assert log[0]["srl_on"] and log[0]["contrastive"] > 0 and log[1]["selected"]
    assert log[1]["all/count"] == 8  # the 8 validation pairs, each counted once (4 per rank, gathered)
    checkpoint, _ = ckpt.load_checkpoint(run_dir, ckpt.LAST)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # the plain model, not DDP's
    ddp_table = json.loads((run_dir / "test_metrics.json").read_text())["table"]
    evaluated = load_driver("sts_b").main(["--evaluate", str(run_dir), "--no_progress"])
    assert evaluated["all"]["count"] == ddp_table["all"]["count"] == 8
    for row in ("all", "many", "medium", "few"):
        for metric, value in ddp_table[row].items():
            if value is not None:
                assert evaluated[row][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (row, metric)


@pytest.mark.slow
def test_sts_b_data_parallel_resumes_exactly(text_data, tmp_path):
    """Under torchrun, 1 epoch then --resume to 2 gives the log and test table of 2 epochs straight
    (every rank resumes its own random stream and the samplers are seeded per epoch)."""
    options = ("--epoch", "2", "--eval_every", "0")
    torchrun_driver("sts_b", text_args(text_data, tmp_path, *options, "--run_name", "straight"))
    torchrun_driver("sts_b", text_args(text_data, tmp_path, "--epoch", "1", "--eval_every", "0", "--run_name", "cut"))
    torchrun_driver("sts_b", ["--resume", str(tmp_path / "cut"), "--epoch", "2", "--no_progress"])
    assert read_log(tmp_path / "cut", timings=False) == read_log(tmp_path / "straight", timings=False)
    assert [r["epoch"] for r in read_log(tmp_path / "cut")] == [1, 1, 2, 2]
    tables = [json.loads((tmp_path / run / "test_metrics.json").read_text())["table"] for run in ("cut", "straight")]
    assert tables[0] == tables[1]
    assert len(torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["rng_per_rank"]) == 2


@pytest.mark.parametrize(
    "name, data_parallel, expected",
    [("cpu", False, None), ("cuda:1", False, 1), ("cuda", False, 2), ("cuda:1", True, 2)],
)
def test_a_gpu_device_is_made_current(monkeypatch, name, data_parallel, expected):
    # --device cuda:1 must also be the current device: the Triton kernels and torch.cuda calls
    # without a device go there. Under torchrun (data parallel) LOCAL_RANK's GPU, already current.
    current = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    device = ddp.training_device(name, data_parallel)
    if expected is None:
        assert device == torch.device("cpu") and current == []
    else:
        assert device == torch.device("cuda", expected) and current == [device]
