"""Summarise a series of STS-B-DIR runs: mean +- std over seeds per arm and split, the per-seed
paired differences against each arm's baselines, the epoch wall time, and one figure.

    python tools/sts_b_summary.py runs/* --markdown summary.md --figure docs/sts_b_shot_mse.png

Each argument is a run folder of ``train/sts_b.py`` that finished (``test_metrics.json``). Its
arm is read from its saved config: the split (the last folder of ``--data_dir``), vanilla or SRL
(also SRL with ``--released_table`` or ``--memory_update online``), and the methods composed with it
(LDS+FDS, RankSim, Balanced MSE: ``SRL + RankSim``, or ``RankSim`` alone). Runs of one arm must
differ only in their seed; a difference in any other setting is refused, so that a table
never mixes recipes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from srl_ext.settings import preset

GROUPS = ("all", "many", "medium", "few")
# What each arm is compared with, seed by seed on the same split: a method with SRL against the
# method alone and against SRL; a method alone against vanilla.
BASELINES = {"SRL": ("vanilla",), "SRL, online memory": ("vanilla", "SRL"), "SRL, released table": ("vanilla", "SRL")}
METHODS = ("LDS+FDS", "LDS", "FDS", "RankSim", "Balanced MSE")
for _method in METHODS:
    BASELINES[_method] = ("vanilla",)
    BASELINES[f"SRL + {_method}"] = (_method, "SRL")
NO_CAP = ", no epoch cap"
# Settings that may differ between the runs of one arm.
PER_RUN = {"seed", "run_name", "resume", "evaluate", "workers", "threads", "device", "progress", "runs_dir", "data_dir"}


def method_of(config: dict) -> str:
    """The method composed with (or without) SRL: LDS (--reweight), FDS, RankSim, Balanced MSE,
    joined by ' + ' when several are on; '' for none."""
    lds = config.get("reweight", "none") != "none"
    parts = ["LDS+FDS" if lds and config.get("fds") else "LDS" if lds else "FDS" if config.get("fds") else ""]
    parts.append("RankSim" if config.get("regularization_weight", 0.0) > 0 else "")
    parts.append("Balanced MSE" if config.get("bmse") else "")
    return " + ".join(p for p in parts if p)


def strength_of(config: dict) -> str:
    """'' at the preset's SRL weights; ' ×k' when w1, w2 and w3 are all the preset's times one k
    (the strength sweep); else the weights themselves."""
    weights = [config.get(key) for key in ("w1", "w2", "w3")]
    if None in weights:  # a run saved without them: the preset's
        return ""
    released = preset(config.get("preset", "sts_b")).srl
    ratios = [w / r for w, r in zip(weights, (released.w1, released.w2, released.w3))]
    if all(math.isclose(x, ratios[0], rel_tol=1e-6) for x in ratios):
        return "" if math.isclose(ratios[0], 1.0, rel_tol=1e-6) else f" ×{ratios[0]:g}"
    return " (w1 {:g}, w2 {:g}, w3 {:g})".format(*weights)


def budget_of(config: dict) -> str:
    """', no epoch cap' for a run trained until the early stop (no --epoch), else ''."""
    return NO_CAP if "epoch" in config and config["epoch"] is None else ""


def arm_of(config: dict) -> str:
    method = method_of(config)
    if not config["srl"]:
        arm = method or "vanilla"
    else:
        if config.get("released_table"):
            arm = "SRL, released table"
        elif config.get("memory_update") == "online":
            arm = "SRL, online memory"
        else:
            arm = "SRL"
        arm += strength_of(config)
        arm = f"{arm} + {method}" if method else arm
    return arm + budget_of(config)


def baselines_of(arm: str) -> tuple[str, ...]:
    """The arms ``arm`` is compared with, seed by seed: its baselines under the same budget and,
    for a run without an epoch cap, the same arm with the cap (what the longer budget gave)."""
    budget = NO_CAP if arm.endswith(NO_CAP) else ""
    base = arm[: len(arm) - len(budget)]
    if base.startswith("SRL ×") and " + " not in base:
        same_budget = ("vanilla", "SRL")
    else:
        same_budget = BASELINES.get(base, ())
    return tuple(b + budget for b in same_budget) + ((base,) if budget else ())


def load_run(folder: Path) -> dict:
    """Config (as trained: the last checkpoint's, so an extended run shows its final --epoch),
    test table, and the per-epoch wall times of the run in ``folder``."""
    config = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)["config"]
    table = json.loads((folder / "test_metrics.json").read_text())["table"]
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["split"] == "train"]
    selected = [r for r in log if r["split"] == "val" and r["selected"]][-1]
    return {
        "folder": folder, "config": config, "table": table, "split": Path(config["data_dir"]).name,
        "arm": arm_of(config), "seed": config["seed"], "epochs": len(epochs), "selected_step": selected["step"],
        "steps_seconds": np.mean([r["train_seconds"] for r in epochs]),
        "memory_seconds": np.mean([r["memory_seconds"] for r in epochs]),
        "total_seconds": sum(r["train_seconds"] + r["memory_seconds"] + r["val_seconds"] for r in epochs),
        # the SRL terms' gradient on the encoder over the regression loss's, per epoch (runs that logged it)
        "grad_ratios": [r["srl_grad_ratio"] for r in epochs if "srl_grad_ratio" in r],
        "grad_cosines": [r["srl_grad_cosine"] for r in epochs if "srl_grad_cosine" in r],
    }


def check_same_recipe(runs: list[dict]) -> None:
    first = runs[0]
    for run in runs[1:]:
        keys = (set(first["config"]) | set(run["config"])) - PER_RUN
        differ = sorted(k for k in keys if first["config"].get(k) != run["config"].get(k))
        if differ:
            raise SystemExit(
                f"error: {run['folder']} and {first['folder']} are both '{run['arm']}' on {run['split']} but differ in "
                + ", ".join(f"{k} ({first['config'].get(k)!r} vs {run['config'].get(k)!r})" for k in differ)
            )


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {std:.3f}"


def markdown(arms: dict[tuple[str, str], list[dict]]) -> str:
    lines = []
    for metric in ("mse", "pearson"):
        lines += [f"Test {metric.upper() if metric == 'mse' else 'Pearson'}, mean ± std over seeds (sample std):", "",
                  "| split | arm | seeds | " + " | ".join(g.capitalize() for g in GROUPS) + " |",
                  "|---|---|---|" + "---|" * len(GROUPS)]
        for (split, arm), runs in sorted(arms.items()):
            cells = [mean_std([r["table"][g][metric] for r in runs]) for g in GROUPS]
            lines.append(f"| {split} | {arm} | {len(runs)} seeds | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Paired differences, arm minus its baseline on the same split and seed (test MSE; negative: the arm "
              "is better):", "", "| split | arm | baseline | seed | " + " | ".join(g.capitalize() for g in GROUPS)
              + " |", "|---|---|---|---|" + "---|" * len(GROUPS)]
    for (split, arm), runs in sorted(arms.items()):
        for baseline_arm in baselines_of(arm):
            baseline = {r["seed"]: r for r in arms.get((split, baseline_arm), [])}
            diffs = []
            for run in sorted(runs, key=lambda r: r["seed"]):
                if run["seed"] not in baseline:
                    continue
                d = [run["table"][g]["mse"] - baseline[run["seed"]]["table"][g]["mse"] for g in GROUPS]
                diffs.append(d)
                lines.append(f"| {split} | {arm} | {baseline_arm} | {run['seed']} | "
                             + " | ".join(f"{x:+.3f}" for x in d) + " |")
            if diffs:
                lines.append(f"| {split} | {arm} | {baseline_arm} | mean ± std | "
                             + " | ".join(mean_std(col) for col in np.asarray(diffs).T) + " |")
    lines += ["", "Runs (selected step, epochs, mean seconds per epoch: training steps + memory refill; SRL gradient "
              "share: the SRL terms' gradient norm on the encoder over the regression loss's, and their cosine, in the "
              "first epoch and the mean over all epochs, where the run logged it):", "",
              "| split | arm | seed | selected at step | epochs | steps s/epoch | refill s/epoch | SRL grad ratio, epoch 1 "
              "| SRL grad ratio, mean | SRL grad cosine, mean |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (split, arm), runs in sorted(arms.items()):
        for r in sorted(runs, key=lambda r: r["seed"]):
            share = ((f"{r['grad_ratios'][0]:.4f} | {np.mean(r['grad_ratios']):.4f} | {np.mean(r['grad_cosines']):+.3f}")
                     if r["grad_ratios"] else "- | - | -")
            lines.append(f"| {split} | {arm} | {r['seed']} | {r['selected_step']} | {r['epochs']} | "
                         f"{r['steps_seconds']:.1f} | {r['memory_seconds']:.1f} | {share} |")
    total = sum(r["total_seconds"] for runs in arms.values() for r in runs)
    count = sum(len(runs) for runs in arms.values())
    lines += ["", f"{count} runs, {total / 3600:.2f} hours of training wall time in all (steps, refills and "
              "validations, one thread each)."]
    return "\n".join(lines) + "\n"


def figure(arms: dict[tuple[str, str], list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({split for split, _ in arms})
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        names = sorted(arm for s, arm in arms if s == split)
        width = 0.8 / len(names)
        for i, arm in enumerate(names):
            values = np.array([[r["table"][g]["mse"] for g in GROUPS] for r in arms[(split, arm)]])
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(GROUPS))
            ax.bar(np.arange(len(GROUPS)) + i * width, values.mean(axis=0), width, yerr=std, capsize=3,
                   label=f"{arm} ({len(values)} seeds)")
        ax.set_xticks(np.arange(len(GROUPS)) + 0.4 - width / 2, [g.capitalize() for g in GROUPS])
        ax.set_title(f"STS-B-DIR, {split}")
        ax.set_ylabel("test MSE (mean ± std over seeds)")
        # Room above the bars for the legend, in two columns, so that it hides no bar.
        ax.set_ylim(0, ax.get_ylim()[1] * (1 + 0.09 * ((len(names) + 1) // 2)))
        ax.legend(fontsize=7, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of train/sts_b.py")
    parser.add_argument("--markdown", type=Path, help="write the tables here (default: print them)")
    parser.add_argument("--figure", type=Path, help="write the per-shot-group MSE figure (PNG) here")
    args = parser.parse_args(argv)
    finished = [f for f in args.runs if (f / "test_metrics.json").is_file()]
    for folder in sorted(set(args.runs) - set(finished)):
        print(f"skipped {folder}: no test_metrics.json (not finished)", file=sys.stderr)
    if not finished:
        raise SystemExit("error: none of the given run folders has finished (no test_metrics.json)")
    arms: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for folder in finished:
        run = load_run(folder)
        arms[(run["split"], run["arm"])].append(run)
    for runs in arms.values():
        check_same_recipe(runs)
    write_or_print(markdown(arms), args.markdown)
    if args.figure:
        figure(arms, args.figure)


def write_or_print(text: str, path: Path | None) -> None:
    """The tables into ``path``, or on the standard output without one."""
    if path:
        path.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
