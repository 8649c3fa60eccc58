"""What SRL did to a representation: the geometry of each run's selected model on the test set.

    python tools/feature_geometry.py runs/* --markdown geometry.md --figure docs/sts_b_geometry.png

Each argument is a finished run folder of a driver in train/ (its best.pt). The selected model
encodes the test split once (eval mode) and ``srl_ext.analysis.feature_geometry`` reads two
features: the projection head's output, where the SRL terms act ("head"), and the feature the
regressor reads ("encoder": the pair feature of STS-B, the backbone's of the image sets). For
an SRL run, the SRL gradient share on the encoder (``analysis.gradient_share``) is measured at
the selected model too: the memory is filled by one pass over the training set, then
``--share_batches`` training batches are drawn as in training. The test MSE (All and per shot
group) is computed from the same pass, so a run still training can be read at the model it has
selected so far (``finished`` says whether the run has ended). Nothing is written to the run folders.

Prints one row per run (and writes them with --markdown / --json; a .json file written so can
stand in for its runs, to redraw without measuring again), and draws one figure
(--figure): per arm, the head's per-bin centroid cosine-similarity matrix ordered by label (of
the arm's lowest seed), then the metrics by arm (mean ± std over seeds). Arms are those of
tools/sts_b_summary.py (vanilla, SRL, SRL ×k, ..., ", no epoch cap").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from srl_ext import analysis
from srl_ext.training.checkpoint import BEST, load_checkpoint
from srl_ext.training import run
from srl_ext.training.benchmarks import BENCHMARKS
from srl_ext.training.cli import command
from srl_ext.training.engine import Engine
from srl_ext.training.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("head", "encoder")
METRICS = ("coverage", "neighbour_cosine_mean", "neighbour_cosine_cv", "rank_correlation", "within_bin_spread")
SHORT = {"coverage": "cover", "neighbour_cosine_mean": "nbr cos", "neighbour_cosine_cv": "nbr cv",
         "rank_correlation": "rank corr", "within_bin_spread": "spread"}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def encode(engine: Engine, split: str) -> dict[str, torch.Tensor]:
    """The head and encoder features, predictions (label units), labels and bins of every sample of
    ``split``, eval mode."""
    engine.model.eval()
    head, encoder, labels, predictions = [], [], [], []
    for inputs, batch_labels in engine.loader(split, stream=2):
        inputs, _ = engine._to_device(inputs, batch_labels)
        batch_predictions, features, h = engine.model(*inputs, return_h=True)
        head.append(features.double().cpu())
        encoder.append(h.double().cpu())
        labels.append(batch_labels.double())
        predictions.append(batch_predictions.double().cpu() * engine.task.target_scale)
    labels = torch.cat(labels)
    return {"head": torch.cat(head), "encoder": torch.cat(encoder), "labels": labels,
            "predictions": torch.cat(predictions), "bins": engine.task.label_bins(labels.float()).long()}


def srl_share(engine: Engine, batches: int) -> dict[str, float]:
    """Mean SRL gradient share on the encoder over ``batches`` training batches of the selected
    model, its memory filled by one pass over the training set first."""
    engine.memory_pass(memory=True)
    engine.memory.update()
    engine.model.train()
    shares = []
    for inputs, labels in engine.loader("train", shuffle=True):
        inputs, labels = engine._to_device(engine._training_inputs(inputs)[0], labels)
        predictions, features = engine.model(*inputs)[:2]
        regression = engine.regression(predictions, labels)
        if engine.task.table_rule is None:
            terms = engine.srl_loss(features, engine.task.label_bins(labels), engine.memory.table)
        else:
            surrogates, positives = engine.task.table_rule(features, labels, engine.memory.table)
            terms = engine.srl_loss.terms_from_table(features, positives, surrogates)
        shares.append(analysis.gradient_share(regression, terms.total, engine.shared_parameters))
        if len(shares) == batches:
            break
    return {key: float(np.mean([s[key] for s in shares])) for key in ("ratio", "cosine")}


def measure(folder: Path, data_dir: str | None, share_batches: int, arm_of) -> dict:
    checkpoint, path = load_checkpoint(folder, BEST)
    config = dict(checkpoint["config"])
    if data_dir is not None:
        config["data_dir"] = data_dir
    config.update(resume=None, evaluate=None, progress=False, device="cpu")
    if config.get("preset") not in BENCHMARKS:
        raise UserError(f"run config: expected a preset of {', '.join(BENCHMARKS)}, got {config.get('preset')!r}")
    with tempfile.TemporaryDirectory() as scratch:  # the engine's log goes there, not into the run
        engine = run.open_engine(config, scratch)
        task = engine.task
        engine.model.load_state_dict(checkpoint["model"])
        encoded = encode(engine, "test")
        row = {"run": folder.name, "arm": arm_of(config), "seed": config["seed"],
               "selected_step": (checkpoint.get("best") or {}).get("step")}
        # The test MSE of the model measured here (the run's selected one so far: a run still
        # training may select another later, which "finished" tells)
        row["finished"] = (folder / "test_metrics.json").is_file()
        errors = encoded["predictions"] - encoded["labels"]
        row["test_mse"] = float((errors**2).mean())
        for group in analysis.SHOT_GROUPS:
            members = torch.tensor([task.bin_groups[b] == group for b in encoded["bins"].tolist()])
            row[f"test_mse_{group}"] = float((errors[members] ** 2).mean()) if bool(members.any()) else None
        for feature in FEATURES:
            geometry = analysis.feature_geometry(encoded[feature], encoded["labels"], encoded["bins"],
                                                 num_bins=task.num_bins, shot_groups=task.bin_groups)
            row.update({f"{feature}_{key}": value for key, value in geometry.items()})
        centroids, counts = analysis.bin_centroids(encoded["head"], encoded["bins"], task.num_bins)
        present = centroids[counts > 0]
        row["head_centroid_cosines"] = (present @ present.T).tolist()
        share = srl_share(engine, share_batches) if engine.srl_loss is not None and share_batches else {}
        row.update({f"srl_grad_{key}": value for key, value in share.items()})
    return row


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    columns = [("test MSE", "test_mse"), ("few MSE", "test_mse_few")] + [
        (f"{feature} {SHORT[key]}", f"{feature}_{key}") for feature in FEATURES for key in METRICS
    ] + [("SRL grad ratio", "srl_grad_ratio"), ("SRL grad cos", "srl_grad_cosine")]
    lines = ["| run | arm | seed | " + " | ".join(name for name, _ in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for row in sorted(rows, key=lambda r: (r["arm"], r["seed"])):
        lines.append(f"| {row['run']} | {row['arm']} | {row['seed']} | "
                     + " | ".join(_cell(row.get(key)) for _, key in columns) + " |")
    lines += ["", "By arm, mean ± std over seeds:", "",
              "| arm | seeds | " + " | ".join(name for name, _ in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for arm, runs in by_arm(rows).items():
        cells = []
        for _, key in columns:
            values = [r[key] for r in runs if r.get(key) is not None and not math.isnan(r[key])]
            std = np.std(values, ddof=1) if len(values) > 1 else math.nan
            cells.append("-" if not values else f"{np.mean(values):.3f} ± {std:.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def by_arm(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by arm: vanilla first, then SRL by strength (x 1, x 10, ...), others by name."""
    arms = defaultdict(list)
    for row in rows:
        arms[row["arm"]].append(row)
    return dict(sorted(arms.items(), key=lambda item: _arm_order(item[0])))


def _arm_order(arm: str) -> tuple:
    strength = re.search(r"×([0-9.e+-]+)", arm)
    return (not arm.startswith("vanilla"), float(strength.group(1)) if strength else 1.0, arm)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = by_arm(rows)
    columns = max(len(arms), len(METRICS))
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.6), squeeze=False)
    for ax, (arm, runs) in zip(axes[0], arms.items()):
        first = min(runs, key=lambda r: r["seed"])
        image = ax.imshow(np.asarray(first["head_centroid_cosines"]), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{arm}\nseed {first['seed']}", fontsize=8)
        ax.set_xlabel("present bin, in label order", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[0][len(arms):]:
        ax.axis("off")
    fig.colorbar(image, ax=list(axes[0][: len(arms)]), shrink=0.8, label="cosine of bin centroids (head)")
    names = list(arms)
    for ax, key in zip(axes[1], METRICS):
        for offset, feature, marker in ((-0.15, "head", "o"), (0.15, "encoder", "s")):
            means = [np.nanmean([r[f"{feature}_{key}"] for r in arms[a]]) for a in names]
            stds = [np.nanstd([r[f"{feature}_{key}"] for r in arms[a]], ddof=1) if len(arms[a]) > 1 else 0.0 for a in names]
            ax.errorbar(np.arange(len(names)) + offset, means, yerr=stds, fmt=marker, capsize=3, label=feature)
        ax.set_title(key.replace("_", " "), fontsize=8)
        ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
    axes[1][0].legend(fontsize=7, title="feature", title_fontsize=7)
    for ax in axes[1][len(METRICS):]:
        ax.axis("off")
    fig.suptitle("Test-set geometry of each arm's selected model (top: head centroid cosines; bottom: mean ± std over seeds)",
                 fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders (each with best.pt), or .json files of an earlier --json (not measured again)")
    parser.add_argument("--data_dir", default=None, help="the data, if it moved since the runs trained")
    parser.add_argument("--share_batches", type=int, default=50,
                        help="training batches over which the SRL gradient share is averaged (0: not measured)")
    parser.add_argument("--markdown", type=Path, help="write the tables here (default: print them)")
    parser.add_argument("--json", type=Path, help="write every run's measurements here")
    parser.add_argument("--figure", type=Path, help="write the figure (PNG) here")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: torch's default)")
    args = parser.parse_args(argv)
    if args.share_batches < 0:
        raise UserError(f"--share_batches: expected a count >= 0, got {args.share_batches}")
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = _load_tool("sts_b_summary")
    rows = []
    for source in args.runs:
        if source.suffix == ".json" and source.is_file():  # measurements saved by an earlier --json
            rows.extend(json.loads(source.read_text()))
            continue
        rows.append(measure(source, args.data_dir, args.share_batches, summary.arm_of))
        print(f"measured {source}", file=sys.stderr, flush=True)
    summary.write_or_print(markdown(rows), args.markdown)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.figure:
        figure(rows, args.figure)
    return {"rows": rows}


if __name__ == "__main__":
    sys.exit(command(main))
