"""``--demo``: a small synthetic dataset in a benchmark's real layout and the settings of a run
that trains a small model on it in about a minute on a CPU, ending with the DIR table and the
per-label plot, both marked SYNTHETIC.

The data are long-tailed like the benchmark's: a many-shot middle and few-shot tails. Images
(AgeDB-DIR, IMDB-WIKI-DIR): small JPEGs whose brightness and the size of a bright disc grow with
the age, so the label can be read from the picture. Sentence pairs (STS-B-DIR): pairs sharing a
fraction of their words that grows with the score, and a GloVe text file for their words. The
data go to ``<runs_dir>/demo-data/<benchmark>`` (made once, reused afterwards) and the run to a
run folder named ``<benchmark>-demo-<date-time>``; nothing here is the benchmark's data.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import UserError

MARKER = "SYNTHETIC_DEMO_DATA.txt"
GLOVE = "glove.demo.50d.txt"
BANNER = "SYNTHETIC DEMO DATA"
SPLIT_SIZES = {"train": 2400, "val": 200, "test": 200}

IMAGE_SETTINGS = dict(backbone="tiny", img_size=32, epoch=5, batch_size=64, lr=2e-2, num_anchors=256, workers=0,
                      lr_milestones=[])
TEXT_SETTINGS = dict(hidden_size=32, epoch=6, batch_size=32, lr=2e-3, num_anchors=256, eval_every=None, patience=None,
                     max_validations=None, workers=0, oov="zero")


def long_tailed_labels(rng: np.random.Generator, count: int, low: float, high: float, centre: float,
                       spread: float) -> np.ndarray:
    """Training labels: a normal hump around ``centre`` (the many-shot region) clipped to
    [low, high], so the ends of the range are few-shot."""
    return np.clip(rng.normal(centre, spread, count), low, high)


def balanced_labels(rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
    """Validation and test labels spread over the whole range, as the DIR benchmarks' balanced sets."""
    return rng.uniform(low, high, count)


def write_images(benchmark, root: Path, seed: int = 0) -> None:
    """``<root>/<csv>`` (age, path, split) and 32 x 32 JPEGs at the CSV's paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = "AgeDB" if benchmark.preset == "agedb" else "imdb_crop/00"
    (root / folder).mkdir(parents=True, exist_ok=True)
    high = min(benchmark.num_bins - 1, 90)
    labels = {
        "train": long_tailed_labels(rng, SPLIT_SIZES["train"], 1, high, 35, 7),
        "val": balanced_labels(rng, SPLIT_SIZES["val"], 1, high),
        "test": balanced_labels(rng, SPLIT_SIZES["test"], 1, high),
    }
    lines = ["age,path,split"]
    y, x = np.mgrid[0:32, 0:32]
    for split, ages in labels.items():
        for i, age in enumerate(np.rint(ages).astype(int)):
            level = age / high
            radius = 4 + 10 * level
            disc = ((x - 16) ** 2 + (y - 16) ** 2 <= radius**2).astype(float)
            pixels = 40 + 120 * level + 80 * disc + rng.normal(0, 12, (32, 32))
            image = np.repeat(np.clip(pixels, 0, 255)[:, :, None], 3, axis=2).astype(np.uint8)
            name = f"{folder}/{split}_{i:04d}_{age}.jpg"
            Image.fromarray(image).save(root / name, quality=90)
            lines.append(f"{age},{name},{split}")
    (root / benchmark.csv_name).write_text("\n".join(lines) + "\n")


WORDS = ("a man woman child dog cat is are was playing eating riding running cooking reading the guitar horse bike "
         "ball food book piano car street park kitchen river small big young old red blue slowly quickly on in with "
         "near under at some two three people group bird tree house boat water field road table").split()


def write_sentence_pairs(root: Path, seed: int = 0) -> Path:
    """``train_new.tsv``, ``dev_new.tsv``, ``test_new.tsv`` and ``glove.demo.50d.txt``; returns the GloVe file."""
    from .data import sts_b

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    scores = {
        "train": long_tailed_labels(rng, SPLIT_SIZES["train"], 0, 5, 2.8, 0.8),
        "val": balanced_labels(rng, SPLIT_SIZES["val"], 0, 5),
        "test": balanced_labels(rng, SPLIT_SIZES["test"], 0, 5),
    }
    header = "\t".join(sts_b.COLUMNS) + "\n"
    for split, values in scores.items():
        rows = []
        for i, score in enumerate(values):
            first = list(rng.choice(WORDS, 8, replace=False))
            shared = int(round(8 * score / 5))
            others = [w for w in WORDS if w not in first]
            second = first[:shared] + list(rng.choice(others, 8 - shared, replace=False))
            rng.shuffle(second)
            rows.append(f"{i}\tdemo\tsynthetic\t2026\t{i:04d}\tnone\tnone\t{' '.join(first)}\t{' '.join(second)}\t"
                        f"{score:.3f}\n")
        (root / sts_b.SPLIT_FILES[split]).write_text(header + "".join(rows))
    glove = root / GLOVE
    glove.write_text("".join(f"{w} " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.5, 50)) + "\n" for w in WORDS))
    return glove


def prepare(config: dict, explicit: set[str], settings: dict, write) -> None:
    """Turn a ``--demo`` config into the demo run: data generated (once) under ``--runs_dir``,
    the small model's settings for the flags not given, a run name marking it as a demo.
    ``write(root)`` writes the data."""
    if config["resume"] is not None or config["evaluate"] is not None:
        raise UserError("--demo: expected a new run, got --resume or --evaluate (a demo run resumes or evaluates "
                        "without --demo)")
    if "data_dir" in explicit:
        raise UserError("--demo: expected no --data_dir (the demo writes its own synthetic data), got --data_dir "
                        f"{config['data_dir']}")
    root = Path(config["runs_dir"]).expanduser() / "demo-data" / config["preset"]
    marker = root / MARKER
    if not marker.is_file():
        print(f"--demo: writing a small synthetic {config['preset']} dataset to {root}", flush=True)
        write(root)
        marker.write_text(f"{BANNER}: generated by srl_ext.training.demo for --demo; not the benchmark's data.\n")
    extra = {"glove": str(root / GLOVE)} if config["preset"] == "sts_b" else {}
    config["data_dir"] = str(root)
    for key, value in {**settings, **extra}.items():
        if key not in explicit:
            config[key] = value
    if "run_name" not in explicit:
        config["run_name"] = f"{config['preset']}-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"--demo: {BANNER} (not {config['preset']}): a small model trained for a minute or so on the CPU",
          flush=True)
