"""The released settings the drivers expose beyond the SRL recipe, on the small generated
datasets of test_drivers.py: FDS's per-benchmark variance clip and its two released quirks as
flags, DIR's own STS-B trainer as one --recipe, the released second stage (--init_from a run,
--retrain_regressor) and the summary tool's validation calibration line.
"""

import pytest
import torch
from helpers import load_driver
from test_drivers import text_args, text_data  # noqa: F401 (the fixture)

from srl_ext import methods
from srl_ext.training import cli, engine
from srl_ext.training.config import method_settings

# Deterministic forwards (no dropout), so that a pass can be recomputed outside the engine.
NO_DROPOUT = ("--embedding_dropout", "0", "--lstm_dropout", "0")


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
])
def test_bad_flags_end_in_one_line(name, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_driver(name).main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last and message in last, last
