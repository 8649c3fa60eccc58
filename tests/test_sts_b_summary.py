"""tools/sts_b_summary.py: which arm a run's saved config belongs to, and what it is compared with."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "sts_b_summary.py"
_spec = importlib.util.spec_from_file_location("sts_b_summary", _PATH)
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)

VANILLA = {"srl": False}
SRL = {"srl": True, "released_table": False, "memory_update": "epoch"}


@pytest.mark.parametrize("config, arm", [
    (VANILLA, "vanilla"),
    (SRL, "SRL"),
    ({"srl": True}, "SRL"),  # a run saved before the method flags existed
    ({**SRL, "released_table": True}, "SRL, released table"),
    ({**SRL, "memory_update": "online"}, "SRL, online memory"),
    ({**VANILLA, "reweight": "inverse", "lds": True, "fds": True}, "LDS+FDS"),
    ({**SRL, "reweight": "inverse", "lds": True, "fds": True}, "SRL + LDS+FDS"),
    ({**VANILLA, "reweight": "sqrt_inv"}, "LDS"),
    ({**VANILLA, "fds": True}, "FDS"),
    ({**VANILLA, "regularization_weight": 3e-4}, "RankSim"),
    ({**SRL, "regularization_weight": 3e-4}, "SRL + RankSim"),
    ({**SRL, "regularization_weight": 0.0, "reweight": "none"}, "SRL"),
    ({**VANILLA, "bmse": True}, "Balanced MSE"),
    ({**SRL, "preset": "sts_b", "w1": 1e-2, "w2": 1.0, "w3": 1e-2, "epoch": 20}, "SRL ×100"),
    ({**SRL, "preset": "sts_b", "w1": 1e-4, "w2": 1e-2, "w3": 1e-4, "epoch": 20}, "SRL"),
    ({**SRL, "preset": "sts_b", "w1": 1e-3, "w2": 1e-2, "w3": 1e-4}, "SRL (w1 0.001, w2 0.01, w3 0.0001)"),
    ({**SRL, "preset": "sts_b", "w1": 1e-4, "w2": 1e-2, "w3": 1e-4, "epoch": None}, "SRL, no epoch cap"),
    ({**VANILLA, "w1": 1e-1, "epoch": None}, "vanilla, no epoch cap"),  # vanilla: the SRL weights are unused
    ({**SRL, "preset": "sts_b", "w1": 1e-1, "w2": 10.0, "w3": 1e-1, "epoch": None}, "SRL ×1000, no epoch cap"),
    ({**SRL, "bmse": True}, "SRL + Balanced MSE"),
    ({**SRL, "memory_update": "online", "bmse": True, "regularization_weight": 1.0},
     "SRL, online memory + RankSim + Balanced MSE"),
])
def test_arm_of_a_saved_config(config, arm):
    assert summary.arm_of(config) == arm


@pytest.mark.parametrize("method", ["LDS+FDS", "RankSim", "Balanced MSE"])
def test_a_method_is_compared_with_vanilla_alone_and_with_itself_and_srl_when_composed(method):
    assert summary.BASELINES[method] == ("vanilla",)
    assert summary.BASELINES[f"SRL + {method}"] == (method, "SRL")


@pytest.mark.parametrize("arm, baselines", [
    ("SRL ×100", ("vanilla", "SRL")),
    ("SRL ×1000, no epoch cap", ("vanilla, no epoch cap", "SRL, no epoch cap", "SRL ×1000")),
    ("SRL, no epoch cap", ("vanilla, no epoch cap", "SRL")),
    ("vanilla, no epoch cap", ("vanilla",)),
    ("SRL + RankSim", ("RankSim", "SRL")),
])
def test_strength_and_budget_arms_are_compared_with_their_baselines(arm, baselines):
    assert summary.baselines_of(arm) == baselines


def fake_run(folder, config, all_mse, ratios=()):
    """A finished run folder as the summary reads it: last.pt's config, the test table, the log."""
    import json

    import torch

    folder.mkdir()
    torch.save({"config": config}, folder / "last.pt")
    table = {g: {"mse": all_mse + i, "pearson": 0.5} for i, g in enumerate(summary.GROUPS)}
    (folder / "test_metrics.json").write_text(json.dumps({"table": table}))
    epochs = [{"split": "train", "train_seconds": 10.0, "memory_seconds": 1.0, "val_seconds": 0.5,
               **({"srl_grad_ratio": r, "srl_grad_cosine": -0.1} if r else {})} for r in (ratios or [None, None])]
    log = epochs + [{"split": "val", "selected": True, "step": 800}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return folder


def test_markdown_pairs_the_strength_sweep_with_vanilla_and_shows_the_gradient_share(tmp_path):
    base = {"preset": "sts_b", "data_dir": "x/dir-split", "epoch": 20, "released_table": False, "memory_update": "epoch_pass"}
    folders = []
    for seed, vanilla_mse, srl_mse in ((0, 1.25, 1.20), (1, 1.15, 1.18)):
        folders.append(fake_run(tmp_path / f"v{seed}", {**base, "srl": False, "seed": seed}, vanilla_mse))
        folders.append(fake_run(tmp_path / f"s{seed}", {**base, "srl": True, "seed": seed, "w1": 1e-2, "w2": 1.0, "w3": 1e-2},
                                srl_mse, ratios=[0.01, 0.03]))
    out = tmp_path / "t.md"
    summary.main([*map(str, folders), "--markdown", str(out)])
    text = out.read_text()
    assert "| dir-split | SRL ×100 | vanilla | 0 | -0.050 |" in text
    assert "| dir-split | SRL ×100 | vanilla | 1 | +0.030 |" in text
    assert "| dir-split | SRL ×100 | vanilla | mean ± std | -0.010 ± 0.057 |" in text
    assert "| dir-split | SRL ×100 | 0 | 800 | 2 | 10.0 | 1.0 | 0.0100 | 0.0200 | -0.100 |" in text
    assert "| dir-split | vanilla | 0 | 800 | 2 | 10.0 | 1.0 | - | - | - |" in text


def test_runs_of_one_arm_from_two_commits_pair_and_a_real_difference_is_refused(tmp_path):
    # a run saved before --fds_clip, --recipe and the share log existed pairs with one saved after
    old = {"preset": "sts_b", "data_dir": "x/dir-split", "epoch": 20, "srl": False, "lr": 2.5e-4}
    new = {**old, "fds_clip": [0.5, 2.0], "fds_inplace": False, "recipe": "srl", "grad_share_every": 50}
    folders = [fake_run(tmp_path / "old0", {**old, "seed": 0}, 1.25), fake_run(tmp_path / "new1", {**new, "seed": 1}, 1.15)]
    out = tmp_path / "t.md"
    summary.main([*map(str, folders), "--markdown", str(out)])
    assert "| dir-split | vanilla | 2 seeds | 1.200 ± 0.071 |" in out.read_text()
    other = fake_run(tmp_path / "new2", {**new, "seed": 2, "lr": 1e-4}, 1.0)
    with pytest.raises(SystemExit, match=r"both 'vanilla' on dir-split but differ in lr \(0.00025 vs 0.0001\)"):
        summary.main([str(folders[0]), str(other), "--markdown", str(out)])


def test_a_second_stage_is_named_after_its_first_stage_and_paired_with_both(tmp_path):
    base = {"preset": "sts_b", "data_dir": "x/dir-split", "released_table": False, "memory_update": "epoch_pass"}
    srl10 = {**base, "srl": True, "epoch": 20, "w1": 1e-3, "w2": 1e-1, "w3": 1e-3}
    stage = {**base, "srl": False, "bmse": True, "retrain_regressor": True, "epoch": 40, "lr": 1e-3, "init_from_srl": True}
    folders = []
    for seed, first_mse, second_mse in ((0, 1.20, 1.10), (1, 1.30, 1.25)):
        first = fake_run(tmp_path / f"srl{seed}", {**srl10, "seed": seed}, first_mse)
        folders += [first, fake_run(tmp_path / f"bmc{seed}", {**stage, "seed": seed, "init_from": str(first)}, second_mse)]
    run = summary.load_run(folders[1])
    assert run["arm"] == "SRL ×10 + Balanced MSE (regressor retrained: 40 epochs, lr 0.001)"
    assert summary.baselines_of(run["arm"]) == ("Balanced MSE (regressor retrained: 40 epochs, lr 0.001)", "SRL ×10")
    out = tmp_path / "t.md"
    summary.main([*map(str, folders), "--markdown", str(out)])
    assert "| dir-split | SRL ×10 + Balanced MSE (regressor retrained: 40 epochs, lr 0.001) | SRL ×10 | mean ± std | -0.075 ± 0.035 |" in out.read_text()
