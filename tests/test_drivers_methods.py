"""The methods that compose with SRL (LDS, FDS, RankSim, Balanced MSE, ConR) in the drivers, end
to end on the small generated datasets of test_drivers.py: each method trains, alone or
combined, with SRL or --vanilla; a run interrupted and resumed logs and tests exactly as an
unbroken one; the checkpoint carries every method's state; bad flag values end in one line.
"""

import json

import pytest
import torch
from helpers import assert_one_line_error, load_driver
from test_drivers import (  # noqa: F401 (the fixtures)
    image_args,
    image_data,
    interrupt_after_validations,
    read_log,
    text_args,
    text_data,
)

from srl_ext.training import engine

pytest.importorskip("torchvision")


def straight_and_resumed(driver, args, tmp_path, monkeypatch, validations=2):
    """Run ``args`` unbroken, then interrupted after ``validations`` validations and resumed; the
    two test tables and logs (without timings) must be equal. Returns (table, run folder)."""
    straight = driver.main(args(tmp_path, "--run_name", "straight"))
    with monkeypatch.context() as patch:
        interrupt_after_validations(patch, validations)
        with pytest.raises(KeyboardInterrupt):
            driver.main(args(tmp_path, "--run_name", "cut"))
    resumed = driver.main(["--resume", str(tmp_path / "cut"), "--no_progress"])
    assert resumed == straight
    assert read_log(tmp_path / "cut", timings=False) == read_log(tmp_path / "straight", timings=False)
    return straight, tmp_path / "straight"


def count_passes(monkeypatch):
    """Record the (memory, fds) arguments of every end-of-epoch pass."""
    calls = []
    original = engine.Engine.memory_pass

    def memory_pass(self, memory=True, fds=False):
        calls.append((memory, fds))
        return original(self, memory=memory, fds=fds)

    monkeypatch.setattr(engine.Engine, "memory_pass", memory_pass)
    return calls


def test_agedb_srl_lds_fds_ranksim_conr_resume_exactly(image_data, tmp_path, monkeypatch):
    agedb = load_driver("agedb")
    options = ("--epoch", "3", "--reweight", "sqrt_inv", "--lds", "--fds", "--regularization_weight", "100", "--conr")
    table, run = straight_and_resumed(agedb, lambda runs, *a: image_args(image_data, runs, *options, *a), tmp_path,
                                      monkeypatch)
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert all(r["ranksim"] > 0 and r["conr"] > 0 and r["contrastive"] > 0 for r in train)
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    state = checkpoint["model"]
    # FDS is part of the model: its 8 buffers, AgeDB's 100 - 3 buckets of the 32-d tiny feature
    assert state["fds.running_mean"].shape == (97, 32) and int(state["fds.epoch"]) == 2
    assert state["fds.num_samples_tracked"].sum() == 3 * 32  # one statistics pass per epoch, all 32 samples
    assert "fds.running_mean" in torch.load(run / "best.pt", weights_only=False)["model"]
    config = checkpoint["config"]
    assert (config["reweight"], config["lds"], config["fds"], config["conr"]) == ("sqrt_inv", True, True, True)
    assert config["regularization_weight"] == 100 and config["bucket_start"] == 3 and config["conr_beta"] == 4.0
    assert checkpoint["balanced_mse"] is None and checkpoint["sigma_optimizer"] is None
    evaluated = agedb.main(["--evaluate", str(run), "--no_progress"])  # best.pt loads into a model with FDS
    assert evaluated == table


def test_agedb_vanilla_bmse_fds_ranksim_projector_resume_exactly(image_data, tmp_path, monkeypatch):
    agedb = load_driver("agedb")
    options = ("--epoch", "3", "--vanilla", "--bmse", "--imp", "bni", "--fds", "--regularization_weight", "100",
               "--ranksim_features", "projector", "--lr_milestones", "1", "--sigma_lr", "0.05")
    _, run = straight_and_resumed(agedb, lambda runs, *a: image_args(image_data, runs, *options, *a), tmp_path,
                                  monkeypatch)
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert [r["lr"] for r in train] == pytest.approx([0.01, 0.001, 0.001])  # the model's group follows the schedule
    sigmas = [r["noise_sigma"] for r in train]
    assert sigmas[0] != 1.0 and len(set(sigmas)) == 3  # sigma learns every epoch
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert checkpoint["memory"] is None and checkpoint["srl_loss"] is None
    assert float(checkpoint["balanced_mse"]["noise_sigma"]) == pytest.approx(sigmas[-1])
    assert checkpoint["balanced_mse"]["bucket_centers"].tolist() == list(range(20, 28))  # BNI: the training ages
    group, = checkpoint["sigma_optimizer"]["param_groups"]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0 and group["name"] == "noise_sigma"  # no schedule
    assert checkpoint["sigma_optimizer"]["state"][0]["step"] == 12  # Adam's state of sigma: 4 steps x 3 epochs
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)


def test_sts_b_srl_lds_fds_ranksim_online_resume_exactly(text_data, tmp_path, monkeypatch):
    driver = load_driver("sts_b")
    options = ("--epoch", "3", "--memory_update", "online", "--reweight", "inverse", "--lds", "--fds",
               "--regularization_weight", "3e-4")
    passes = count_passes(monkeypatch)
    _, run = straight_and_resumed(driver, lambda runs, *a: text_args(text_data, runs, *options, *a), tmp_path,
                                  monkeypatch)
    # online memory: no memory pass, but one pass per epoch for FDS's statistics
    assert passes and set(passes) == {(False, True)}
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert checkpoint["model"]["fds.running_mean"].shape == (50, 64)  # STS-B's 50 score bins x the 8 x 8 pair feature
    assert checkpoint["memory"]["num_updates"] == 3
    train = [r for r in read_log(run) if r["split"] == "train"]
    assert all(r["ranksim"] > 0 for r in train)


def test_sts_b_vanilla_bmse_resume_exactly(text_data, tmp_path, monkeypatch):
    driver = load_driver("sts_b")
    options = ("--epoch", "3", "--vanilla", "--bmse")
    _, run = straight_and_resumed(driver, lambda runs, *a: text_args(text_data, runs, *options, *a), tmp_path,
                                  monkeypatch)
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    config = checkpoint["config"]
    assert (config["imp"], config["init_noise_sigma"], config["sigma_lr"]) == ("bmc", 0.2, 0.01)  # STS-B: sigma 1/5
    assert float(checkpoint["balanced_mse"]["noise_sigma"]) != 0.2


def test_one_pass_serves_the_memory_and_fds(text_data, tmp_path, monkeypatch):
    driver = load_driver("sts_b")
    passes = count_passes(monkeypatch)
    driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--fds", "--run_name", "both"))
    assert passes == [(True, True), (True, True)]  # one pass per epoch feeds both
    passes.clear()
    driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--fds", "--start_update", "1", "--run_name", "late"))
    assert passes == [(True, False), (True, True)]  # FDS folds passes in from --start_update on
    passes.clear()
    driver.main(text_args(text_data, tmp_path, "--epoch", "1", "--fds", "--vanilla", "--run_name", "vanilla"))
    assert passes == [(False, True)]


def test_fds_calibrates_the_regressor_input_only(text_data, tmp_path, monkeypatch):
    from srl_ext.methods import FDS

    calls = []
    original = FDS.smooth
    monkeypatch.setattr(FDS, "smooth", lambda self, h, labels, epoch: calls.append(epoch) or original(self, h, labels, epoch))
    driver = load_driver("sts_b")
    driver.main(text_args(text_data, tmp_path, "--epoch", "2", "--fds", "--run_name", "fds"))
    assert calls == [0] * 4 + [1] * 4  # every training step, with its epoch; never in the pass or the evaluations


def test_methods_change_training_and_plain_runs_keep_their_log(image_data, tmp_path):
    agedb = load_driver("agedb")
    plain = agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--run_name", "plain"))
    lds = agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--reweight", "inverse", "--run_name", "lds"))
    assert plain["all"]["count"] == lds["all"]["count"] == 8
    keys = set(read_log(tmp_path / "plain")[0])
    assert not keys & {"ranksim", "conr", "noise_sigma"}  # a run without the methods logs what it logged before
    checkpoint = torch.load(tmp_path / "plain" / "last.pt", weights_only=False)
    assert not any(key.startswith("fds.") for key in checkpoint["model"])


def test_default_run_name_lists_the_methods(image_data, tmp_path):
    agedb = load_driver("agedb")
    agedb.main(image_args(image_data, tmp_path, "--epoch", "1", "--vanilla", "--regularization_weight", "1"))
    assert [p.name.rsplit("-", 2)[0] for p in tmp_path.iterdir()] == ["agedb-vanilla+ranksim"]


@pytest.mark.parametrize("name, released", [
    ("agedb", ["(released command on this benchmark: sqrt_inv --lds)", "(released command on this benchmark: 100)",
               "--bucket_start BUCKET_START first FDS bucket (lower labels pool into it) (default: 3)", "--conr",
               "--beta CONR_BETA, --conr_beta CONR_BETA weight of the ConR term (default: 4.0)", "{bmc,gai,bni}"]),
    ("imdb_wiki", ["(default: 0)", "(released command on this benchmark: 100)", "--conr"]),
    ("sts_b", ["(released command on this benchmark: inverse --lds)", "(released command on this benchmark: 0.0003)",
               "--bucket_num BUCKET_NUM FDS buckets (equal bins of the scores on [0, 5]) (default: 50)",
               "--init_noise_sigma INIT_NOISE_SIGMA", "(default: 0.2)", "{bmc,gai}"]),
])
def test_help_shows_the_released_defaults(name, released, capsys):
    with pytest.raises(SystemExit):
        load_driver(name).main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in released:
        assert words in text, words
    for flag in ("--reweight", "--lds_kernel", "--lds_ks", "--lds_sigma", "--fds_kernel", "--fds_ks", "--fds_sigma",
                 "--start_update", "--start_smooth", "--bucket_num", "--fds_mmt", "--interpolation_lambda",
                 "--imp", "--sigma_lr", "--fix_noise_sigma"):
        assert flag in text
    assert ("--conr" in text) is (name != "sts_b")  # ConR needs augmented views: image drivers only


@pytest.mark.parametrize("name, argv, message", [
    ("agedb", ["--lds"], "--lds: expected --reweight sqrt_inv or inverse with it, got --reweight none"),
    ("agedb", ["--lds_ks", "4"], "--lds_ks: expected an odd number >= 1, got 4"),
    ("sts_b", ["--lds_sigma", "0"], "--lds_sigma: expected a positive number, got 0.0"),
    ("sts_b", ["--fds_ks", "0"], "--fds_ks: expected an odd number >= 1, got 0"),
    ("sts_b", ["--fds_sigma", "-1"], "--fds_sigma: expected a positive number, got -1.0"),
    ("sts_b", ["--start_update", "-1"], "--start_update: expected 0 or more, got -1"),
    ("sts_b", ["--start_smooth", "-2"], "--start_smooth: expected 0 or more, got -2"),
    ("agedb", ["--bucket_num", "4"], "--bucket_num: expected at least --bucket_start + max(2, --fds_ks // 2 + 1) = 6, got 4"),
    ("sts_b", ["--fds_mmt", "1"], "--fds_mmt: expected a number in [0, 1), got 1.0"),
    ("sts_b", ["--regularization_weight", "-1"], "--regularization_weight: expected 0 or more, got -1.0"),
    ("sts_b", ["--interpolation_lambda", "0"], "--interpolation_lambda: expected a positive number, got 0.0"),
    ("agedb", ["--bmse", "--reweight", "sqrt_inv"], "--reweight: expected none with --bmse"),
    ("sts_b", ["--init_noise_sigma", "0"], "--init_noise_sigma: expected a number other than 0, got 0.0"),
    ("sts_b", ["--sigma_lr", "0"], "--sigma_lr: expected a positive number, got 0.0"),
    ("agedb", ["-w", "0"], "-w: expected a positive number, got 0.0"),
    ("agedb", ["--beta", "-1"], "--beta: expected 0 or more, got -1.0"),
    ("imdb_wiki", ["-e", "-0.5"], "-e: expected 0 or more, got -0.5"),
    ("sts_b", ["--conr"], "unrecognized arguments: --conr"),
    ("sts_b", ["--imp", "bni"], "argument --imp: invalid choice: 'bni'"),
    ("agedb", ["--reweight", "sqrt"], "argument --reweight: invalid choice: 'sqrt'"),
])
def test_bad_method_flags_end_in_one_line(name, argv, message, capsys):
    assert_one_line_error(load_driver(name).main, argv, message, capsys)  # one line, no usage


def test_gai_without_scikit_learn_is_refused_at_parse_time(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        load_driver("agedb").main(["--bmse", "--imp", "gai"])
    assert exit_info.value.code == 2
    assert "--imp: expected bmc or bni: gai fits its Gaussian mixture with scikit-learn" in capsys.readouterr().err


def test_configs_saved_before_the_methods_resume_with_every_method_off():
    from srl_ext.training.config import TrainConfig

    methods = TrainConfig.from_dict({"preset": "agedb", "seed": 0}).methods
    assert not methods.any and methods.bucket_start == 3  # the preset's released defaults, all off
    assert json.dumps(TrainConfig.from_dict({}).methods.names()) == "[]"


def test_agedb_srl_bmse_gai_trains_with_its_table(image_data, tmp_path, monkeypatch):
    # scikit-learn is optional: a fixed mixture stands in for fit_gmm's (which the library tests)
    import importlib.util

    from srl_ext import methods

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "sklearn" else find_spec(name, *a))
    fitted = []
    table = {"means": [21.0, 25.0], "variances": [2.0, 3.0], "weights": [0.5, 0.5]}
    monkeypatch.setattr(methods, "fit_gmm", lambda targets: fitted.append(targets) or table)
    agedb = load_driver("agedb")
    agedb.main(image_args(image_data, tmp_path, "--epoch", "2", "--bmse", "--imp", "gai", "--run_name", "gai"))
    assert len(fitted) == 1 and sorted(set(fitted[0].tolist())) == list(range(20, 28))  # the training targets
    checkpoint = torch.load(tmp_path / "gai" / "last.pt", weights_only=False)
    assert checkpoint["balanced_mse"]["gmm_means"].tolist() == [21.0, 25.0]
    assert [r["srl_on"] for r in read_log(tmp_path / "gai") if r["split"] == "train"] == [True, True]


def test_logged_loss_adds_every_term(image_data, tmp_path):
    """The step's loss is the regression loss plus every term that is on: the epoch means add up."""
    load_driver("agedb").main(image_args(image_data, tmp_path, "--epoch", "2", "--regularization_weight", "100",
                                         "--conr", "--beta", "4", "--run_name", "sum"))
    for r in (r for r in read_log(tmp_path / "sum") if r["split"] == "train"):
        parts = r["regression"] + r["srl_total"] + 100 * r["ranksim"] + 4 * r["conr"]
        assert r["srl_total"] > 0 and r["ranksim"] > 0 and r["conr"] > 0
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
