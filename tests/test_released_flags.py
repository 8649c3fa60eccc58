"""The released DIR scripts' flag names (docs/training.md, "Released flag names") set the same
config as this project's, and the data folder error points into the split subfolders."""

from __future__ import annotations

import pytest
from helpers import load_driver

from srl_ext.training import cli
from srl_ext.training import run as runs
from srl_ext.training.data import MissingDataError, require_files

STS_B_FILES = ["train_new.tsv", "dev_new.tsv", "test_new.tsv"]

# (driver, released flags, our flags): the two command lines must give the same config.
SAME = [
    ("sts_b", ["--random_seed", "7"], ["--seed", "7"]),
    ("sts_b", ["--store_root", "out", "--store_name", "x"], ["--runs_dir", "out", "--run_name", "x"]),
    ("sts_b", ["--val_interval", "50", "--max_grad_norm", "2.5"], ["--eval_every", "50", "--grad_clip", "2.5"]),
    ("sts_b", ["--d_hid", "128", "--n_layers_enc", "1"], ["--hidden_size", "128", "--num_layers", "1"]),
    ("sts_b", ["--dropout_embs", "0.1", "--dropout", "0.3"], ["--embedding_dropout", "0.1", "--lstm_dropout", "0.3"]),
    ("sts_b", ["--max_seq_len", "20", "--word_embs_file", "g.txt"], ["--max_tokens", "20", "--glove", "g.txt"]),
    ("sts_b", ["--evaluate", "--eval_model", "m.th"], ["--evaluate", "m.th"]),
    ("sts_b", ["--eval_model", "m.th", "--evaluate"], ["--evaluate", "m.th"]),
    ("agedb", ["--model", "resnet18", "--schedule", "30", "40"], ["--backbone", "resnet18", "--lr_milestones", "30", "40"]),
    ("imdb_wiki", ["--random_seed", "3", "--store_root", "out"], ["--seed", "3", "--runs_dir", "out"]),
]


def parsed(monkeypatch, driver: str, argv: list[str]) -> tuple[dict, set[str]]:
    """(config, explicit flags) that the driver hands to run.run, without running anything."""
    seen = {}
    monkeypatch.setattr(runs, "run", lambda config, explicit, benchmark: seen.update(config=config, explicit=explicit))
    load_driver(driver).main(argv)
    return seen["config"], seen["explicit"]


@pytest.mark.parametrize("driver, released, ours", SAME, ids=[" ".join(case[1]) for case in SAME])
def test_a_released_flag_name_sets_what_ours_sets(monkeypatch, driver, released, ours):
    config_released, explicit_released = parsed(monkeypatch, driver, released)
    config_ours, explicit_ours = parsed(monkeypatch, driver, ours)
    assert config_released == config_ours
    assert explicit_released == explicit_ours  # --resume/--evaluate see the same flags as given
    assert "eval_model" not in config_released  # never saved in a run's config


@pytest.mark.parametrize("argv, message", [
    (["--evaluate"], "--evaluate: expected a checkpoint (--evaluate CHECKPOINT, or --evaluate --eval_model "
                     "CHECKPOINT), got none"),
    (["--eval_model", "m.th"], "--eval_model: expected --evaluate with it"),
    (["--evaluate", "a.pt", "--eval_model", "b.pt"], "--evaluate/--eval_model: expected one checkpoint, got a.pt and b.pt"),
])
def test_evaluate_without_one_checkpoint_is_refused(monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parsed(monkeypatch, "sts_b", argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_help_names_both_and_what_the_hidden_size_costs(capsys):
    with pytest.raises(SystemExit):
        load_driver("sts_b").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--hidden_size HIDDEN_SIZE, --d_hid HIDDEN_SIZE" in text
    assert "--seed SEED, --random_seed SEED" in text
    assert "the released 1500 takes about 15 minutes an epoch" in text and "128 about half a minute" in text


def test_a_folder_above_the_split_names_its_split_subfolders(tmp_path):
    for split in ("dir-split", "srl-split"):
        (tmp_path / split).mkdir()
        for name in STS_B_FILES:
            (tmp_path / split / name).write_text("")
    (tmp_path / "other").mkdir()  # a subfolder without the files is not suggested
    with pytest.raises(MissingDataError) as error:
        require_files(tmp_path, STS_B_FILES, "STS-B-DIR", "where to get it.")
    message = str(error.value)
    assert f"Its subfolders {tmp_path / 'dir-split'} and {tmp_path / 'srl-split'} hold them: pass one as --data_dir." \
           in message
    assert "other" not in message.split("Its subfolders")[1]
    with pytest.raises(MissingDataError) as error:  # no such subfolder: where to get the data, and --demo
        require_files(tmp_path / "other", STS_B_FILES, "STS-B-DIR", "where to get it.")
    assert "where to get it. Or try the driver with --demo" in str(error.value) and "subfolders" not in str(error.value)
