"""The released settings the drivers expose beyond the SRL recipe, on the small generated
datasets of test_drivers.py: FDS's per-benchmark variance clip and its two released quirks as
flags, DIR's own STS-B trainer as one --recipe, the released second stage (--init_from a run,
--retrain_regressor) and the summary tool's validation calibration line.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, load_driver, write_sts_b_pairs
from test_drivers import text_args, text_data  # noqa: F401 (the fixture)
from test_drivers_methods import straight_and_resumed

from srl_ext import methods
from srl_ext.training import cli, engine
from srl_ext.training import run as runs
from srl_ext.training.config import method_settings

# Deterministic forwards (no dropout), so that a pass can be recomputed outside the engine.
NO_DROPOUT = ("--embedding_dropout", "0", "--lstm_dropout", "0")

_SUMMARY = Path(__file__).resolve().parents[1] / "tools" / "sts_b_summary.py"
_spec = importlib.util.spec_from_file_location("sts_b_summary", _SUMMARY)
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)


def parse_sts_b(*argv):
    return cli.parse(load_driver("sts_b").parser(), "sts_b", list(argv))[0]


# ----- FDS: the released clip per benchmark, the quirks as flags -----

@pytest.mark.parametrize("name, clip", [("sts_b", "(default: [0.5, 2.0])"), ("agedb", "(default: [0.1, 10.0])")])
def test_help_shows_the_released_fds_clip_and_quirks(name, clip, capsys):
    with pytest.raises(SystemExit):
        load_driver(name).main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--fds_clip LOW HIGH bounds of the variance ratio in the calibration (the released code's on this " \
           f"benchmark) {clip}" in text
    assert "--fds_alias_last_epoch released quirk (a), on in the released code" in text
    assert "--fds_inplace released quirk (b), on in the released code" in text


def test_fds_flags_reach_the_module(text_data, tmp_path, monkeypatch):  # noqa: F811
    built = []
    original = methods.FDS.__init__
    monkeypatch.setattr(methods.FDS, "__init__", lambda self, *a, **k: built.append(k) or original(self, *a, **k))
    driver = load_driver("sts_b")
    driver.main(text_args(text_data, tmp_path, "--epoch", "1", "--vanilla", "--fds", "--run_name", "released"))
    driver.main(text_args(text_data, tmp_path, "--epoch", "1", "--vanilla", "--fds", "--fds_clip", "0.2", "5",
                          "--fds_alias_last_epoch", "--fds_inplace", "--run_name", "flags"))
    assert [(k["clip"], k["alias_last_epoch"], k["inplace"]) for k in built] == [
        ((0.5, 2.0), False, False), ((0.2, 5.0), True, True)]  # STS-B's released clip by default, quirks off
    config = torch.load(tmp_path / "flags" / "last.pt", weights_only=False)["config"]
    assert (config["fds_clip"], config["fds_alias_last_epoch"], config["fds_inplace"]) == ([0.2, 5.0], True, True)


def test_runs_saved_before_the_clip_flag_keep_their_clip(text_data, tmp_path, monkeypatch):  # noqa: F811
    assert method_settings({"preset": "sts_b", "fds": True}).fds_clip == (0.1, 10.0)  # what such runs trained with
    assert method_settings({"preset": "sts_b", "fds": True, "fds_clip": [0.5, 2.0]}).fds_clip == (0.5, 2.0)
    driver = load_driver("sts_b")
    driver.main(text_args(text_data, tmp_path, "--epoch", "1", "--vanilla", "--fds", "--run_name", "old"))
    last = tmp_path / "old" / "last.pt"
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["config"]["fds_clip"]  # as saved before the flag existed
    torch.save(checkpoint, last)
    clips = []
    original = methods.FDS.__init__
    monkeypatch.setattr(methods.FDS, "__init__", lambda self, *a, **k: clips.append(k["clip"]) or original(self, *a, **k))
    driver.main(["--resume", str(tmp_path / "old"), "--epoch", "2", "--no_progress"])
    assert clips == [(0.1, 10.0)]


@pytest.mark.parametrize("inplace", [False, True])
def test_the_statistics_pass_records_calibrated_h_with_the_inplace_quirk(text_data, tmp_path, monkeypatch, inplace):  # noqa: F811
    recorded, raw, calibrated = [], [], []
    original_accumulate = methods.FDS.accumulate
    monkeypatch.setattr(methods.FDS, "accumulate",
                        lambda self, h, labels: recorded.append(h.clone()) or original_accumulate(self, h, labels))
    original_pass = engine.Engine.memory_pass

    def memory_pass(self, memory=True, fds=False):
        if self.epoch == 2:  # the first pass with a calibration that is not the identity: its h, raw and calibrated
            self.model.train()
            with torch.no_grad():
                for inputs, labels in self.loader("train", stream=1):
                    _, _, h = self.model(*inputs, return_h=True)
                    raw.append(h.clone())
                    calibrated.append(self.model.fds.smooth(h, labels, self.epoch).clone())
            recorded.clear()
        return original_pass(self, memory=memory, fds=fds)

    monkeypatch.setattr(engine.Engine, "memory_pass", memory_pass)
    flags = ("--fds_inplace",) if inplace else ()
    load_driver("sts_b").main(text_args(text_data, tmp_path, "--vanilla", "--fds", *NO_DROPOUT, *flags,
                                               "--epoch", "3"))
    assert len(recorded) == len(raw) == 4  # the 32 training pairs in batches of 8
    assert not all(torch.allclose(r, c) for r, c in zip(raw, calibrated))  # the calibration moves h
    expected = calibrated if inplace else raw
    for got, want in zip(recorded, expected):
        torch.testing.assert_close(got, want)


# ----- DIR's own STS-B trainer as one switch -----

def test_dir_recipe_sets_dir_trainer_defaults_and_explicit_flags_win():
    srl = parse_sts_b()
    dir_ = parse_sts_b("--recipe", "dir")
    keys = ("batch_size", "lr", "weight_decay", "grad_clip", "eval_every", "patience", "max_validations", "epoch")
    assert [srl[k] for k in keys] == [16, 2.5e-4, 1e-5, 5.0, 400, 30, 300, None]
    assert [dir_[k] for k in keys] == [128, 1e-4, 1e-5, 5.0, 400, 10, 100, None]
    assert dir_["recipe"] == "dir" and dir_["early_stop"] == "released"
    mixed = parse_sts_b("--recipe", "dir", "--lr", "3e-4", "--patience", "0")
    assert (mixed["lr"], mixed["patience"], mixed["batch_size"]) == (3e-4, None, 128)


@pytest.mark.parametrize("name, argv, message", [
    ("sts_b", ["--recipe", "deep"], "argument --recipe: invalid choice: 'deep'"),
    ("agedb", ["--recipe", "dir"], "unrecognized arguments: --recipe dir"),  # no DIR trainer recipe for ages here
    ("sts_b", ["--fds_clip", "2", "0.5"], "--fds_clip: expected LOW <= HIGH, got 2 0.5"),
    ("sts_b", ["--fds_clip", "0", "2"], "argument --fds_clip: expected a number > 0, got '0'"),
    ("sts_b", ["--vanilla", "--retrain_regressor"], "--retrain_regressor: expected --init_from RUN with it"),
    ("sts_b", ["--init_from", "x", "--retrain_regressor"], "--retrain_regressor: expected --vanilla and no RankSim "
     "or ConR with it (those terms act on the frozen encoder's features only), got SRL"),
    ("sts_b", ["--init_from", "x", "--retrain_regressor", "--vanilla", "--regularization_weight", "1"],
     "got RankSim"),
])
def test_bad_flags_end_in_one_line(name, argv, message, capsys):
    assert_one_line_error(load_driver(name).main, argv, message, capsys)  # one line, no usage


# ----- the released second stage: --init_from RUN --retrain_regressor -----

@pytest.fixture(scope="module")
def vanilla_run(text_data, tmp_path_factory):  # noqa: F811
    runs = tmp_path_factory.mktemp("first_stage")
    load_driver("sts_b").main(text_args(text_data, runs, "--epoch", "2", "--vanilla", "--run_name", "vanilla"))
    return runs / "vanilla"


def test_retraining_the_regressor_of_a_run_resumes_exactly_and_leaves_the_rest(text_data, vanilla_run, tmp_path,
                                                                              monkeypatch):  # noqa: F811
    loaded = []
    original = runs.init_from_run

    def init_from_run(model, *args):
        source_config = original(model, *args)
        loaded.append({key: value.clone() for key, value in model.state_dict().items()})
        return source_config

    monkeypatch.setattr(runs, "init_from_run", init_from_run)
    driver = load_driver("sts_b")
    options = ("--epoch", "3", "--vanilla", "--bmse", "--init_from", str(vanilla_run), "--retrain_regressor",
               "--seed", "1")
    _, run = straight_and_resumed(driver, lambda runs, *a: text_args(text_data, runs, *options, *a), tmp_path,
                                  monkeypatch)
    source = torch.load(vanilla_run / "best.pt", weights_only=False)["model"]
    start = loaded[0]  # the straight run's model right after --init_from
    last = torch.load(run / "last.pt", weights_only=False)
    encoder = [key for key in source if not key.startswith("regressor.")]
    assert encoder and all(torch.equal(start[key], source[key]) for key in encoder)  # RUN's weights, the seed's aside
    assert all(torch.equal(last["model"][key], source[key]) for key in encoder)  # frozen through 3 epochs
    assert not torch.equal(start["regressor.weight"], source["regressor.weight"])  # the regressor starts afresh
    assert not torch.equal(last["model"]["regressor.weight"], start["regressor.weight"])  # and learns
    group, = last["optimizer"]["param_groups"]
    assert len(group["params"]) == 2  # the regressor's weight and bias only
    assert last["config"]["retrain_regressor"] and last["config"]["init_from"] == str(vanilla_run)
    assert last["config"]["init_from_srl"] is False  # the encoder of a --vanilla run
    assert float(last["balanced_mse"]["noise_sigma"]) != 0.2  # sigma learns beside the regressor


def test_init_from_refuses_another_network_or_other_data(text_data, vanilla_run, tmp_path, capsys):  # noqa: F811
    driver = load_driver("sts_b")
    base = ("--epoch", "1", "--vanilla", "--init_from", str(vanilla_run))
    assert cli.command(driver.main, text_args(text_data, tmp_path, *base, "--hidden_size", "4")) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: --init_from {vanilla_run / 'best.pt'}: expected encoder.lstm.bias_hh_l0 of "
                           "shape (16,), got (32,); give the model flags of") and "\n" not in line
    other = tmp_path / "other"
    other.mkdir()
    data = write_sts_b_pairs(other, ["a", "man", "woman", "is", "eating", "dancing", "playing", "guitar", "the", "dog",
                                     "runs", "."], 48, train=30, val=40)
    assert cli.command(driver.main, text_args(data, tmp_path, *base)) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: --init_from {vanilla_run / 'best.pt'}: expected a run on this data, got a run on "
                           "other data (") and "\n" not in line
    assert cli.command(driver.main, text_args(text_data, tmp_path, "--vanilla", "--init_from", str(tmp_path))) == 2
    assert capsys.readouterr().err.strip() == f"error: no checkpoint at '{tmp_path / 'best.pt'}'"
    assert not any(p.name.startswith("sts_b-") for p in tmp_path.iterdir())  # no run folder left behind


# ----- the summary tool: arms of the new settings, the validation calibration line -----

@pytest.mark.parametrize("config, arm, baselines", [
    ({"srl": False, "reweight": "inverse", "lds": True, "fds": True}, "LDS+FDS", ("vanilla",)),
    ({"srl": False, "reweight": "inverse", "lds": True, "fds": True, "fds_clip": [0.5, 2.0],
      "fds_alias_last_epoch": True, "fds_inplace": True, "recipe": "dir"},
     "LDS+FDS (clip 0.5-2, aliased, in place) [dir recipe]", ("vanilla [dir recipe]",)),
    ({"srl": True, "reweight": "inverse", "lds": True, "fds": True, "fds_clip": [0.5, 2.0]},
     "SRL + LDS+FDS (clip 0.5-2)", ("LDS+FDS (clip 0.5-2)", "SRL")),
    ({"srl": False, "recipe": "dir"}, "vanilla [dir recipe]", ()),
    ({"srl": False, "recipe": "dir", "epoch": None}, "vanilla [dir recipe], no epoch cap", ("vanilla [dir recipe]",)),
    ({"srl": False, "reweight": "inverse", "lds": True, "fds": True, "recipe": "dir", "epoch": None},
     "LDS+FDS [dir recipe], no epoch cap", ("vanilla [dir recipe], no epoch cap", "LDS+FDS [dir recipe]")),
    ({"srl": False, "recipe": "srl"}, "vanilla", ()),
    ({"srl": False, "bmse": True, "fix_noise_sigma": True, "init_noise_sigma": 0.05},
     "Balanced MSE (sigma fixed at 0.05)", ("vanilla",)),
    ({"srl": False, "bmse": True, "retrain_regressor": True, "init_from": "runs/v0", "init_from_srl": False},
     "Balanced MSE (regressor retrained)", ("vanilla", "vanilla (regressor retrained)")),
    ({"srl": False, "bmse": True, "retrain_regressor": True, "init_from": "runs/v0", "epoch": 40, "lr": 1e-3},
     "Balanced MSE (regressor retrained: 40 epochs, lr 0.001)", ("vanilla", "vanilla (regressor retrained: 40 epochs, lr 0.001)")),
    ({"srl": False, "bmse": True, "fix_noise_sigma": True, "init_noise_sigma": 0.1, "retrain_regressor": True, "lr": 1e-4},
     "Balanced MSE (sigma fixed at 0.1, regressor retrained: lr 0.0001)", ("vanilla", "vanilla (regressor retrained: lr 0.0001)")),
    ({"srl": False, "retrain_regressor": True, "init_from": "runs/v0", "epoch": 10, "lr": 1e-4},
     "vanilla (regressor retrained: 10 epochs, lr 0.0001)", ("vanilla",)),
    ({"srl": False, "retrain_regressor": True, "init_from": "runs/s0", "init_from_srl": True, "epoch": 10, "lr": 1e-4},
     "SRL (regressor retrained: 10 epochs, lr 0.0001)", ()),
    ({"srl": False, "bmse": True, "retrain_regressor": True, "init_from": "runs/s0", "init_from_srl": True},
     "SRL + Balanced MSE (regressor retrained)", ("Balanced MSE (regressor retrained)", "SRL")),
    ({"srl": True}, "SRL", ("vanilla",)),
])
def test_summary_arms_of_the_new_settings(config, arm, baselines):
    assert summary.arm_of(config) == arm
    assert summary.baselines_of(arm) == baselines


def test_summary_reports_the_validation_calibration_of_each_selected_model(text_data, vanilla_run, capsys):  # noqa: F811
    run = summary.load_run(vanilla_run)
    slope, intercept = summary.validation_calibration(run)
    # recomputed here: the selected model's validation predictions, and the least-squares line
    task, model, datasets = load_driver("sts_b").build(run["config"])
    model.load_state_dict(torch.load(vanilla_run / "best.pt", weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        inputs, labels = task.collate([datasets["val"][i] for i in range(len(datasets["val"]))])
        p = (model(*inputs)[0].double() * 5).numpy()
    y = labels.double().numpy()
    dp = p - p.mean()
    expected = (dp * (y - y.mean())).sum() / (dp * dp).sum()
    # the tool predicts as the run's validations did, in float32: equal to float32 rounding
    assert slope == pytest.approx(expected, rel=1e-5)
    assert intercept == pytest.approx(y.mean() - expected * p.mean(), rel=1e-5, abs=1e-7)
    capsys.readouterr()
    summary.main([str(vanilla_run), "--calibration"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if f"| 0: {slope:.3f} |" in line)
    assert f"| {run['split']} | vanilla | 1 seeds | {slope:.3f} ± nan | {intercept:.3f} ± nan | 0: {slope:.3f} |" == row
