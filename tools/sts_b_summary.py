"""Summarise a series of STS-B-DIR runs: mean +- std over seeds per arm and split, the per-seed
paired differences against each arm's baselines, the epoch wall time, and one figure.

    python tools/sts_b_summary.py runs/* --markdown summary.md --figure docs/sts_b_shot_mse.png
    python tools/sts_b_summary.py runs/* --calibration     # adds each selected model's calibration line

Each argument is a run folder of ``train/sts_b.py`` that finished (``test_metrics.json``). Its
arm is read from its saved config: the split (the last folder of ``--data_dir``), vanilla or SRL
(also SRL with ``--released_table`` or ``--memory_update online``), the methods composed with it
(LDS+FDS, RankSim, Balanced MSE: ``SRL + RankSim``, or ``RankSim`` alone; FDS with what departs
from its first settings here, ``FDS (clip 0.5-2, aliased, in place)``; Balanced MSE with a fixed
sigma or a retrained regressor, the latter counted with SRL when the run it started from trained
with SRL) and the trainer when it is not the SRL code's (``[dir recipe]``),
whose runs are compared with the same trainer's. Runs of one arm must differ only in their seed;
a difference in any other setting is refused, so that a table never mixes recipes.

``--calibration`` predicts the validation split again with each run's selected model (best.pt;
it needs the run's data and word vectors, ``--data_dir`` if they moved) and reports the
least-squares line of the targets on the predictions (``srl_ext.metrics.calibration_line``):
slope 1, intercept 0 when calibrated; a slope below 1 when the predictions are stretched, as
Balanced MSE stretches them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from srl_ext.settings import preset
from srl_ext.training.config import EARLIER_FDS_CLIP

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
PER_RUN = {"seed", "run_name", "resume", "evaluate", "workers", "threads", "device", "progress", "runs_dir", "data_dir",
           "init_from"}  # a second stage starts from the run of its own seed


def fds_of(config: dict) -> str:
    """'FDS', with what departs from the FDS of every run before --fds_clip and its quirk flags
    (EARLIER_FDS_CLIP, quirks off): 'FDS (clip 0.5-2, aliased, in place)'."""
    clip = tuple(config.get("fds_clip", EARLIER_FDS_CLIP))
    notes = [f"clip {clip[0]:g}-{clip[1]:g}"] if clip != EARLIER_FDS_CLIP else []
    notes += [note for key, note in (("fds_alias_last_epoch", "aliased"), ("fds_inplace", "in place")) if config.get(key)]
    return "FDS" + (f" ({', '.join(notes)})" if notes else "")


def balanced_mse_of(config: dict) -> str:
    """'Balanced MSE', with a fixed sigma or a retrained regressor (the released second stage)."""
    notes = [f"sigma fixed at {config['init_noise_sigma']:g}"] if config.get("fix_noise_sigma") else []
    notes += [retrain_of(config)] if config.get("retrain_regressor") else []
    return "Balanced MSE" + (f" ({', '.join(notes)})" if notes else "")


def retrain_of(config: dict) -> str:
    """'regressor retrained: 40 epochs, lr 0.001' for a second stage (--retrain_regressor): its
    budget is part of the arm, since a stage of too few steps leaves the fresh regressor unfit."""
    budget = [f"{config['epoch']} epochs" if config.get("epoch") else "", f"lr {config['lr']:g}" if "lr" in config else ""]
    budget = ", ".join(b for b in budget if b)
    return "regressor retrained" + (f": {budget}" if budget else "")


def method_of(config: dict) -> str:
    """The method composed with (or without) SRL: LDS (--reweight), FDS, RankSim, Balanced MSE,
    joined by ' + ' when several are on; '' for none."""
    lds = config.get("reweight", "none") != "none"
    fds = fds_of(config) if config.get("fds") else ""
    parts = [("LDS+" + fds if fds else "LDS") if lds else fds]
    parts.append("RankSim" if config.get("regularization_weight", 0.0) > 0 else "")
    parts.append(balanced_mse_of(config) if config.get("bmse") else "")
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


def recipe_of(config: dict) -> str:
    """' [dir recipe]' for a run of another trainer than the SRL code's (--recipe), else ''."""
    recipe = config.get("recipe", "srl")
    return "" if recipe == "srl" else f" [{recipe} recipe]"


def budget_of(config: dict) -> str:
    """', no epoch cap' for a run trained until the early stop (no --epoch), else ''."""
    return NO_CAP if "epoch" in config and config["epoch"] is None else ""


def arm_of(config: dict) -> str:
    method = method_of(config)
    if not config["srl"]:
        # a second stage on an encoder trained with SRL (--init_from an SRL run) counts as SRL + the method
        # the first stage's own arm where load_run could read it (e.g. "SRL ×10"), else what the run recorded
        first_stage = config.get("first_stage_arm") or ("SRL" if config.get("init_from_srl") else "vanilla")
        if method:
            arm = method if first_stage == "vanilla" else f"{first_stage} + {method}"
        else:  # a second stage of the plain regression loss: the control of a method's second stage
            arm = f"{first_stage} ({retrain_of(config)})" if config.get("retrain_regressor") else first_stage
    else:
        if config.get("released_table"):
            arm = "SRL, released table"
        elif config.get("memory_update") == "online":
            arm = "SRL, online memory"
        else:
            arm = "SRL"
        arm += strength_of(config)
        arm = f"{arm} + {method}" if method else arm
    return arm + recipe_of(config) + budget_of(config)


def baselines_of(arm: str) -> tuple[str, ...]:
    """The arms ``arm`` is compared with, seed by seed: its baselines under the same trainer and
    budget (BASELINES; any other method with SRL against the method and SRL, alone against
    vanilla) and, for a run without an epoch cap, the same arm with the cap (what the longer
    budget gave)."""
    budget = NO_CAP if arm.endswith(NO_CAP) else ""
    base = arm[: len(arm) - len(budget)]
    name, bracket, recipe = base.partition(" [")
    if name.startswith("SRL ×") and " + " not in name:
        same_budget = ("vanilla", "SRL")
    elif name in BASELINES:
        same_budget = BASELINES[name]
    elif name.startswith("SRL") and " + " in name:  # SRL (at any strength) with a method
        first, _, method = name.partition(" + ")
        same_budget = (method, first)
    elif not name.startswith("SRL") and name != "vanilla":
        stage = re.search(r"regressor retrained[^)]*", name)  # retrain_of's note, last in the brackets
        # a method's second stage is also paired with the plain loss's second stage of the same budget
        same_budget = ("vanilla",) + ((f"vanilla ({stage.group(0)})",) if stage and not name.startswith("vanilla") else ())
    else:
        same_budget = ()
    return tuple(b + bracket + recipe + budget for b in same_budget) + ((base,) if budget else ())


def load_run(folder: Path) -> dict:
    """Config (as trained: the last checkpoint's, so an extended run shows its final --epoch),
    test table, and the per-epoch wall times of the run in ``folder``."""
    config = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)["config"]
    if config.get("init_from_srl") and (Path(config["init_from"]) / "last.pt").is_file():
        # a second stage on an SRL encoder is named after its first stage's arm (SRL ×10 + ...)
        first = torch.load(Path(config["init_from"]) / "last.pt", map_location="cpu", weights_only=False)["config"]
        config = {**config, "first_stage_arm": arm_of(first)}
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
    """Refuses an arm whose runs differ in a setting other than PER_RUN. A setting that one run's
    config lacks was added to the drivers after that run was saved; it is not compared: what such a
    setting changes in training (FDS clip and quirks, recipe, retrained regressor, budget, strength)
    is read with its earlier value by arm_of, so the two runs are already in different arms if it matters."""
    first = runs[0]
    for run in runs[1:]:
        keys = (set(first["config"]) & set(run["config"])) - PER_RUN
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
    if any("calibration" in r for runs in arms.values() for r in runs):
        lines += ["", "Validation calibration of the selected model: the least-squares line targets = intercept + "
                  "slope x predictions, in score units (slope 1, intercept 0 when calibrated; below 1: stretched "
                  "predictions), mean ± std over seeds, and per seed:", "",
                  "| split | arm | seeds | slope | intercept | slope per seed |", "|---|---|---|---|---|---|"]
        for (split, arm), runs in sorted(arms.items()):
            ordered = sorted(runs, key=lambda r: r["seed"])
            slopes = [r["calibration"][0] for r in ordered]
            lines.append(f"| {split} | {arm} | {len(runs)} seeds | {mean_std(slopes)} | "
                         f"{mean_std([r['calibration'][1] for r in ordered])} | "
                         + ", ".join(f"{r['seed']}: {s:.3f}" for r, s in zip(ordered, slopes)) + " |")
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


def validation_calibration(run: dict, data_dir: Path | None = None) -> tuple[float, float]:
    """(slope, intercept) of the validation targets on the predictions of the run's selected
    model (best.pt), in score units, predicted as the run's own validations did (Engine.predict)."""
    from srl_ext.metrics import calibration_line
    from srl_ext.training import run as runs
    from srl_ext.training.checkpoint import BEST, read_checkpoint

    config = dict(run["config"], resume=None, evaluate=None, progress=False, device="cpu")
    if data_dir is not None:
        config["data_dir"] = str(data_dir)
    with tempfile.TemporaryDirectory() as scratch:  # the engine's log goes there, not into the run
        with contextlib.redirect_stdout(sys.stderr):  # the data's notes, away from the tables
            engine = runs.open_engine(config, scratch)
        engine.model.load_state_dict(read_checkpoint(run["folder"] / BEST)["model"])
        predictions, targets = engine.predict("val")
    slope, intercept = calibration_line(predictions, targets)
    if slope is None:
        raise SystemExit(f"error: {run['folder']}: the selected model predicts one value for the whole validation "
                         "split; its calibration line is undefined")
    return slope, intercept


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of train/sts_b.py")
    parser.add_argument("--markdown", type=Path, help="write the tables here (default: print them)")
    parser.add_argument("--figure", type=Path, help="write the per-shot-group MSE figure (PNG) here")
    parser.add_argument("--calibration", action="store_true",
                        help="add the validation calibration line (slope, intercept) of each run's selected model")
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="with --calibration: the STS-B-DIR folder, if not where the runs' configs say")
    args = parser.parse_args(argv)
    finished = [f for f in args.runs if (f / "test_metrics.json").is_file()]
    for folder in sorted(set(args.runs) - set(finished)):
        print(f"skipped {folder}: no test_metrics.json (not finished)", file=sys.stderr)
    if not finished:
        raise SystemExit("error: none of the given run folders has finished (no test_metrics.json)")
    arms: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for folder in finished:
        run = load_run(folder)
        if args.calibration:
            run["calibration"] = validation_calibration(run, args.data_dir)
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
