"""Surrogate memory, epoch pass vs online, on a small image run (issue 6).

Real face images cannot be had here, so this makes a synthetic AgeDB-DIR: the real split's ages
(``../shared/data/agedb-dir/agedb.csv``, subsampled, so the label imbalance is the real one) with
small generated images whose content depends on the age (brightness and a bar whose length grows
with age, plus noise). It trains the AgeDB driver (tiny backbone) once per memory mode with the same
seed and prints the validation MAE per epoch and the seconds per epoch, with the refill pass apart.

    python bench/memory_modes.py --epochs 10 --fraction 0.2
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
AGEDB_CSV = ROOT.parent / "shared" / "data" / "agedb-dir" / "agedb.csv"


def make_dataset(folder: Path, fraction: float, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(AGEDB_CSV.open()))
    rows = [r for r in rows if rng.random() < fraction]
    (folder / "AgeDB").mkdir(parents=True)
    with (folder / "agedb.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["age", "path", "split"])
        for i, row in enumerate(rows):
            age = int(row["age"])
            pixels = rng.normal(60 + 1.2 * age, 25, (size, size, 3))
            pixels[size // 2 - 2: size // 2 + 2, : max(1, age * size // 101)] += 60
            name = f"AgeDB/{i}_{age}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name)
            writer.writerow([age, name, row["split"]])


def run(data: Path, runs: Path, mode: str, epochs: int, size: int, lr: float) -> Path:
    name = f"agedb-{mode}"
    command = [sys.executable, str(ROOT / "train" / "agedb.py"), "--data_dir", str(data), "--runs_dir", str(runs),
               "--run_name", name, "--backbone", "tiny", "--img_size", str(size), "--epoch", str(epochs),
               "--lr", str(lr), "--lr_milestones", "--memory_update", mode, "--no_progress", "--seed", "0"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return runs / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the AgeDB-DIR split kept")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (the preset's 2.5e-4 is for 120 epochs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        make_dataset(data, args.fraction, args.size, seed=0)
        counts = {s: sum(1 for r in csv.DictReader((data / "agedb.csv").open()) if r["split"] == s)
                  for s in ("train", "val", "test")}
        print(f"synthetic AgeDB-DIR: {counts}, {args.size}x{args.size} images, tiny backbone, {args.epochs} epochs")
        logs = {}
        for mode in ("epoch_pass", "online"):
            records = [json.loads(line) for line in (run(data, runs, mode, args.epochs, args.size, args.lr) / "metrics.jsonl").open()]
            logs[mode] = records
        print("| epoch | epoch_pass: val MAE | online: val MAE | epoch_pass: steps + refill (s) | online: steps (s) |")
        print("|---|---|---|---|---|")
        for epoch in range(1, args.epochs + 1):
            cells = []
            for mode in ("epoch_pass", "online"):
                val = next(r for r in logs[mode] if r["split"] == "val" and r["epoch"] == epoch)
                cells.append(f"{val['all/mae']:.3f}")
            timing = []
            for mode in ("epoch_pass", "online"):
                train = next(r for r in logs[mode] if r["split"] == "train" and r["epoch"] == epoch)
                timing.append(f"{train['train_seconds']:.1f} + {train['memory_seconds']:.1f}")
            print(f"| {epoch} | {cells[0]} | {cells[1]} | {timing[0]} | {timing[1]} |")


if __name__ == "__main__":
    main()
