"""The DIR evaluation protocol (docs/method.md, "DIR protocol"): errors for All / Many / Medium / Few shots.

Each test sample belongs to the shot group of its label's bin. The image tasks derive the groups
from the training counts per bin (``shot_groups_from_counts``); STS-B-DIR uses fixed bin lists
(``STSB_SHOT_GROUPS``). ``dir_metrics`` returns, for "all" and each group, a dict of numbers; a
group with no test sample is reported with ``count = 0`` and ``None`` for every metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GROUPS = ("many", "medium", "few")
ROWS = ("all",) + GROUPS

# Image tasks: a bin with more than MANY_SHOT_MIN training samples is many-shot, fewer than
# FEW_SHOT_MAX is few-shot (no sample at all is few-shot), the rest (20..100) medium-shot.
MANY_SHOT_MIN = 100
FEW_SHOT_MAX = 20

# STS-B-DIR: fixed bin lists of the benchmark (bins of width 0.1 on [0, 5]); they cannot be
# recomputed from counts. Every bin not listed is few-shot.
STSB_NUM_BINS = 50
STSB_MANY_BINS = (0, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 49)
STSB_MEDIUM_BINS = (2, 4, 6, 8, 27, 35, 37)
# Exact-zero errors enter the STS-B geometric mean as this value (the benchmark code's choice).
STSB_GM_FLOOR = 1e-10


def shot_groups_from_counts(train_counts: Sequence[int] | np.ndarray) -> list[str]:
    """The shot group of every bin from its number of training samples (image tasks)."""
    groups = []
    for count in np.asarray(train_counts).tolist():
        if count > MANY_SHOT_MIN:
            groups.append("many")
        elif count < FEW_SHOT_MAX:
            groups.append("few")
        else:
            groups.append("medium")
    return groups


def stsb_shot_groups() -> list[str]:
    """The shot group of each of the 50 STS-B-DIR bins (fixed lists)."""
    many, medium = set(STSB_MANY_BINS), set(STSB_MEDIUM_BINS)
    return ["many" if b in many else "medium" if b in medium else "few" for b in range(STSB_NUM_BINS)]


def geometric_mean(errors: np.ndarray, floor: float | None = None) -> float:
    """exp(mean(log |e|)). With ``floor``, errors below it count as ``floor``; without, any
    exact-zero error makes the mean 0."""
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    if floor is not None:
        errors = np.maximum(errors, floor)
    if np.any(errors == 0):
        return 0.0
    return float(np.exp(np.mean(np.log(errors))))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when undefined (fewer than 2 samples or a constant input)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if denominator == 0.0:
        return None
    return float(np.sum(dx * dy) / denominator)


def calibration_line(predictions: np.ndarray, targets: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """(slope, intercept) of the least-squares line of the targets on the predictions,
    targets ~ intercept + slope * predictions: (1, 0) for calibrated predictions; a slope below 1
    says the predictions spread wider than the targets they predict (stretched), above 1 narrower.
    (None, None) when undefined (fewer than 2 samples or constant predictions)."""
    p = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"calibration_line: expected targets of the predictions' shape {p.shape}, got {y.shape}")
    if p.size < 2:
        return None, None
    dp = p - p.mean()
    spread = float(np.sum(dp * dp))
    if spread == 0.0:
        return None, None
    slope = float(np.sum(dp * (y - y.mean())) / spread)
    return slope, float(y.mean() - slope * p.mean())


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    start = 0
    while start < x.size:
        end = start
        while end + 1 < x.size and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson of the average ranks); None when undefined."""
    if np.asarray(x).size < 2:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def regression_metrics(
    predictions: np.ndarray, labels: np.ndarray, *, gm_floor: float | None = None, correlations: bool = False
) -> dict[str, float | int | None]:
    """MSE, MAE, GM (and Pearson, Spearman) of one group; ``count`` 0 and None values if empty."""
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    keys = ("mse", "mae", "gm") + (("pearson", "spearman") if correlations else ())
    result: dict[str, float | int | None] = {"count": int(labels.size)}
    if labels.size == 0:
        result.update({key: None for key in keys})
        return result
    errors = predictions - labels
    result["mse"] = float(np.mean(errors**2))
    result["mae"] = float(np.mean(np.abs(errors)))
    result["gm"] = geometric_mean(errors, gm_floor)
    if correlations:
        result["pearson"] = pearson(predictions, labels)
        result["spearman"] = spearman(predictions, labels)
    return result


def dir_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    bins: np.ndarray,
    bin_groups: Sequence[str],
    *,
    gm_floor: float | None = None,
    correlations: bool = False,
) -> dict[str, dict[str, float | int | None]]:
    """{"all", "many", "medium", "few"} -> metrics of the test samples whose bin is in that group.

    Args:
        predictions, labels: per test sample, in label units.
        bins: per test sample, the bin index of its label.
        bin_groups: per bin, "many", "medium" or "few".
    """
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    bins = np.asarray(bins, dtype=np.int64).reshape(-1)
    if not predictions.size == labels.size == bins.size:
        raise ValueError(
            f"dir_metrics: predictions, labels and bins must have one entry per sample, "
            f"got sizes {predictions.size}, {labels.size}, {bins.size}"
        )
    if bins.size and (bins.min() < 0 or bins.max() >= len(bin_groups)):
        raise ValueError(f"dir_metrics: bins must lie in [0, {len(bin_groups)}), got [{bins.min()}, {bins.max()}]")
    sample_groups = np.asarray(bin_groups, dtype=object)[bins] if bins.size else np.asarray([], dtype=object)
    options = dict(gm_floor=gm_floor, correlations=correlations)
    table = {"all": regression_metrics(predictions, labels, **options)}
    for group in GROUPS:
        mask = sample_groups == group
        table[group] = regression_metrics(predictions[mask], labels[mask], **options)
    return table


def format_table(table: dict[str, dict[str, float | int | None]], title: str = "") -> str:
    """The DIR table as aligned text: one row per group, one column per metric."""
    keys = [key for key in table["all"] if key != "count"]
    header = f"{'shot':<8}{'count':>7}" + "".join(f"{key.upper():>10}" for key in keys)
    lines = ([title] if title else []) + [header]
    for row in ROWS:
        values = table[row]
        cells = "".join(f"{'-':>10}" if values[key] is None else f"{values[key]:>10.4f}" for key in keys)
        lines.append(f"{row:<8}{values['count']:>7}{cells}")
    return "\n".join(lines)


def flatten(table: dict[str, dict[str, float | int | None]], prefix: str = "") -> dict[str, float | int | None]:
    """{"all": {"mae": 1}} -> {"prefix/all/mae": 1}, for logs."""
    return {f"{prefix}{row}/{key}": value for row, values in table.items() for key, value in values.items()}
