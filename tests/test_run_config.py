"""RunConfig: the run's settings built once from the parsed flags, typed, frozen, in sections,
saved as the same flat dict the runs have always saved, and read back from older ones."""

import dataclasses
import json

import pytest
import torch

from srl_ext.training import run
from srl_ext.training.benchmarks import BENCHMARKS
from srl_ext.training.config import EARLIER_FDS_CLIP, SRL_FLAG_NAMES, TrainConfig, released_methods
from srl_ext.training.errors import CheckpointError
from srl_ext.training.run_config import KEYS, RunConfig


def parsed(name, *flags):
    config, _ = run.cli.parse(run.parser(BENCHMARKS[name]), name, ["--data_dir", "data", *flags])
    return config


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_round_trip_gives_the_same_flat_dict_in_the_same_order(name):
    flat = parsed(name, "--lr", "0.003", "--temp", "0.25", "--fds", "--fds_mmt", "0.8", "--fds_clip", "0.2", "5")
    config = RunConfig.from_dict(flat)
    assert config.to_dict() == flat and list(config.to_dict()) == list(flat)
    assert {key: type(value) for key, value in config.to_dict().items()} == {k: type(v) for k, v in flat.items()}
    assert RunConfig.from_dict(config.to_dict()) == config
    # through JSON (config.json) and a checkpoint's pickle too
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_sections_are_typed_and_each_setting_has_one_name_inside(tmp_path):
    config = RunConfig.from_dict(parsed("agedb", "--lr", "0.003", "--temp", "0.25", "--fds", "--fds_mmt", "0.8",
                                        "--backbone", "tiny", "--seed", "7", "--batch_size", "4"))
    assert config.optimisation.lr == 0.003 and config.optimisation.batch_size == 4
    assert config.srl.loss.temperature == 0.25 and config["temp"] == 0.25  # the flag's spelling stays outside
    assert config.methods.fds and config.methods.fds_mmt == 0.8 and config.methods.fds_clip == (0.1, 10.0)
    assert config.model["backbone"] == "tiny" and config.run.seed == 7 and config.data.preset == "agedb"
    assert config.data.data_dir == "data" and config.srl.srl is True
    assert config.methods == released_methods("agedb").__class__(**{
        **dataclasses.asdict(released_methods("agedb")), "fds": True, "fds_mmt": 0.8})


def test_one_section_per_setting():
    """Every flat key of every driver is in exactly one section (the benchmark's own flags in ``model``)."""
    for name in BENCHMARKS:
        config = RunConfig.from_dict(parsed(name))
        model_keys = {key for key, _ in config.model.flags}
        assert not model_keys & set(KEYS)
        assert set(config) == model_keys | (set(config) & set(KEYS))
    sections = [section for section, _ in KEYS.values()]
    assert set(sections) == {"data", "optimisation", "srl", "srl.loss", "methods", "run"}
    assert len(set(KEYS.values())) == len(KEYS)  # no two flat keys for one field
    assert KEYS["temp"] == ("srl.loss", "temperature") and SRL_FLAG_NAMES == {"temperature": "temp"}


def test_frozen_assignment_raises():
    config = RunConfig.from_dict(parsed("sts_b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimisation = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimisation.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.methods.fds_mmt = 0.5
    with pytest.raises(TypeError):
        config["lr"] = 1.0  # the flat view is read-only
    changed = config.replace(lr=0.5, init_from_srl=True)
    assert changed.optimisation.lr == 0.5 and changed.run.init_from_srl is True and config.optimisation.lr != 0.5
    assert list(changed)[-1] == "init_from_srl" and "init_from_srl" not in config


def test_an_older_flat_dict_loads_with_the_defaults_it_ran_with():
    """A config saved before --fds_clip, the methods, --early_stop, ...: the missing keys read as
    the defaults those runs used (EARLIER_FDS_CLIP, methods off, the fields' defaults) and stay absent
    from the flat dict, so the code that reads an absence as the earlier behaviour still sees it."""
    new = parsed("sts_b", "--fds")
    old = {key: value for key, value in new.items()
           if key not in ("fds_clip", "early_stop", "regularization_weight", "conr", "released_table", "oov")}
    config = RunConfig.from_dict(old)
    assert config.to_dict() == old
    assert config.methods.fds_clip == EARLIER_FDS_CLIP != tuple(new["fds_clip"])
    assert config.methods.regularization_weight == 0.0 and not config.methods.ranksim
    assert config.optimisation.early_stop == "released" and "early_stop" not in config
    assert config.get("fds_clip") is None and "oov" not in config
    with pytest.raises(KeyError):
        config["fds_clip"]
    # what the engine reads from it is what it read from the flat dict
    assert TrainConfig.from_dict(config.to_dict()) == TrainConfig.from_dict(old)
    # a config saved before the methods existed: every method off, the preset's released windows,
    # the variance clip those runs had
    bare = {key: value for key, value in new.items() if key not in KEYS or KEYS[key][0] != "methods"}
    assert RunConfig.from_dict(bare).methods == dataclasses.replace(released_methods("sts_b"), fds_clip=EARLIER_FDS_CLIP)


def test_a_config_of_a_newer_format_is_refused_naming_both():
    with pytest.raises(CheckpointError, match="format 1 or older .* got format 2"):
        RunConfig.from_dict(parsed("agedb"), format=2)


def test_the_engine_and_the_checkpoint_hold_the_flat_dict(tmp_path):
    """Engine takes the RunConfig whole; its checkpoint's config is the same flat dict as before."""
    from helpers import write_agedb_images
    (tmp_path / "data").mkdir()
    data = write_agedb_images(tmp_path / "data", 24, train=16, val=20)
    flat = parsed("agedb", "--backbone", "tiny", "--img_size", "16", "--batch_size", "8", "--num_anchors", "8",
                  "--epoch", "1", "--threads", "1", "--no_progress", "--runs_dir", str(tmp_path / "runs"),
                  "--run_name", "r")
    flat["data_dir"] = str(data)
    run.run(RunConfig.from_dict(flat), set(), BENCHMARKS["agedb"])
    saved = torch.load(tmp_path / "runs" / "r" / "last.pt", weights_only=False)
    assert saved["config"] == {**flat, "fds_clip": list(flat["fds_clip"])} and type(saved["config"]) is dict
    assert list(saved["config"]) == list(flat)
    assert json.loads((tmp_path / "runs" / "r" / "config.json").read_text()) == json.loads(json.dumps(flat))
