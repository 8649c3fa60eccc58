"""``--demo`` of every driver: a small synthetic dataset in the benchmark's layout, a short run
ending with the DIR table and the plot, marked SYNTHETIC (small sizes here, for speed)."""

import json

import numpy as np
import pytest
from helpers import load_driver

from srl_ext.training import cli, demo
from srl_ext.training.data import images, sts_b

pytest.importorskip("torchvision")


@pytest.fixture
def small_demo(monkeypatch):
    monkeypatch.setattr(demo, "SPLIT_SIZES", {"train": 300, "val": 40, "test": 40})


@pytest.mark.parametrize("name", ["agedb", "imdb_wiki", "sts_b"])
def test_demo_writes_the_real_layout_and_ends_with_a_synthetic_table(name, tmp_path, capsys, small_demo):
    capsys.readouterr()
    status = cli.command(load_driver(name).main, ["--demo", "--runs_dir", str(tmp_path), "--epoch", "1",
                                                  "--no_progress", "--threads", "1"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "SYNTHETIC DEMO DATA" in out
    data = tmp_path / "demo-data" / name
    assert (data / demo.MARKER).is_file()
    if name == "sts_b":
        splits = sts_b.load_splits(data)
        labels = np.array([p.score for p in splits["train"]])
        edges = np.linspace(0, 5, 11)
    else:
        benchmark = images.AGEDB if name == "agedb" else images.IMDB_WIKI
        rows = images.read_age_csv(data / benchmark.csv_name, benchmark.num_bins)
        images.check_images(benchmark, data, rows)  # every image is there
        labels = np.array([age for _, age in rows["train"]])
        edges = np.linspace(labels.min(), labels.max() + 1, 11)
        from PIL import Image

        young, old = (min(rows["train"], key=lambda r: r[1]), max(rows["train"], key=lambda r: r[1]))
        brightness = [np.asarray(Image.open(data / path)).mean() for path, _ in (young, old)]
        assert brightness[0] < brightness[1]  # the look follows the label
    counts = np.histogram(labels, bins=edges)[0]
    assert counts.max() > 4 * max(counts[0], counts[-1], 1)  # long-tailed: a hump and thin tails
    runs = [p for p in tmp_path.iterdir() if p.name.startswith(f"{name}-demo-")]
    assert len(runs) == 1
    report = json.loads((runs[0] / "test_metrics.json").read_text())
    assert "SYNTHETIC DEMO DATA" in report["title"] and report["table"]["all"]["count"] == 40
    assert (runs[0] / "test_errors.png").is_file()
    assert json.loads((runs[0] / "config.json").read_text())["demo"] is True


def test_demo_refuses_a_data_dir(tmp_path, capsys):
    status = cli.command(load_driver("agedb").main, ["--demo", "--data_dir", str(tmp_path), "--runs_dir", str(tmp_path)])
    assert status == 2 and "error: --demo: expected no --data_dir" in capsys.readouterr().err
