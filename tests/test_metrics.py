"""The DIR evaluation protocol (docs/method.md, "DIR protocol") on predictions whose metrics are known by hand."""

import math

import numpy as np
import pytest

from srl_ext import metrics


def test_regression_metrics_known_values():
    result = metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 5.0])
    # errors 0, 1, 2
    assert result["count"] == 3
    assert result["mse"] == pytest.approx(5.0 / 3.0)
    assert result["mae"] == pytest.approx(1.0)
    assert result["gm"] == 0.0  # an exact-zero error without a floor: the geometric mean is 0


def test_geometric_mean_floor_replaces_exact_zero_errors():
    result = metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 5.0], gm_floor=1e-10)
    assert result["gm"] == pytest.approx((1e-10 * 1.0 * 2.0) ** (1.0 / 3.0), rel=1e-9)
    assert metrics.geometric_mean(np.array([-2.0, 8.0])) == pytest.approx(4.0)


def test_pearson_and_spearman_known_values():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert metrics.spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))  # rank differences 0, 1, -1, 0
    # Pearson: dx = (-1.5, -.5, .5, 1.5), dy = (-1.5, .5, -.5, 1.5): sum dx*dy = 4 over sum dx^2 = sum dy^2 = 5
    assert metrics.pearson(x, y) == pytest.approx(0.8)
    assert metrics.pearson([2.0, 4.0], [1.0, 0.0]) == pytest.approx(-1.0)
    assert metrics.pearson([1.0], [1.0]) is None
    assert metrics.pearson([1.0, 1.0], [0.0, 1.0]) is None  # constant input: undefined


def test_calibration_line_of_targets_on_predictions():
    # the Pearson case above: slope = sum dx*dy / sum dx^2 = 4 / 5, intercept = 2.5 - 0.8 * 2.5
    assert metrics.calibration_line([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx((0.8, 0.5))
    # predictions stretched 1.5x about the mean 2 of the targets 1, 2, 3: slope 1 / 1.5, intercept 2 - 2 / 1.5
    assert metrics.calibration_line([0.5, 2.0, 3.5], [1.0, 2.0, 3.0]) == pytest.approx((2 / 3, 2 / 3))
    assert metrics.calibration_line([1.0, 2.0], [1.0, 2.0]) == pytest.approx((1.0, 0.0))  # calibrated
    assert metrics.calibration_line([1.0], [1.0]) == (None, None)
    assert metrics.calibration_line([2.0, 2.0], [0.0, 1.0]) == (None, None)  # constant predictions
    with pytest.raises(ValueError, match=r"calibration_line: expected targets of the predictions' shape \(2,\)"):
        metrics.calibration_line([1.0, 2.0], [1.0, 2.0, 3.0])


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(metrics.average_ranks([10, 20, 20, 30, 5]), [2, 3.5, 3.5, 5, 1])
    # Spearman of a monotone transform with ties on both sides is 1.
    assert metrics.spearman([1, 2, 2, 3], [10, 40, 40, 90]) == pytest.approx(1.0)


def test_shot_groups_from_counts_boundaries():
    # many: > 100, few: < 20 (0 included), medium: 20..100 inclusive
    counts = [0, 19, 20, 100, 101, 5000]
    assert metrics.shot_groups_from_counts(counts) == ["few", "few", "medium", "medium", "many", "many"]


def test_stsb_shot_groups_are_the_fixed_lists():
    groups = metrics.stsb_shot_groups()
    assert len(groups) == 50
    assert [b for b, g in enumerate(groups) if g == "many"] == list(metrics.STSB_MANY_BINS)
    assert [b for b, g in enumerate(groups) if g == "medium"] == list(metrics.STSB_MEDIUM_BINS)
    assert groups.count("few") == 50 - 22 - 7
    assert groups[1] == groups[3] == groups[29] == "few"


def test_dir_metrics_groups_are_sample_weighted():
    bin_groups = ["many", "medium", "few"]
    predictions = np.array([0.0, 0.0, 1.0, 5.0, 2.0])
    labels = np.array([0.0, 1.0, 1.0, 1.0, 2.0])
    bins = np.array([0, 0, 1, 1, 2])
    table = metrics.dir_metrics(predictions, labels, bins, bin_groups)
    assert table["all"]["count"] == 5
    assert table["all"]["mae"] == pytest.approx((0 + 1 + 0 + 4 + 0) / 5)
    assert table["many"]["mae"] == pytest.approx(0.5)
    assert table["many"]["mse"] == pytest.approx(0.5)
    assert table["medium"]["mae"] == pytest.approx(2.0)  # (0 + 4) / 2, not a mean of per-bin means
    assert table["medium"]["mse"] == pytest.approx(8.0)
    assert table["few"] == {"count": 1, "mse": 0.0, "mae": 0.0, "gm": 0.0}


def test_empty_group_is_reported_empty_not_a_crash():
    table = metrics.dir_metrics([1.0, 2.0], [1.5, 2.5], [0, 0], ["many", "medium", "few"], correlations=True)
    assert table["many"]["count"] == 2
    for group in ("medium", "few"):
        assert table[group] == {"count": 0, "mse": None, "mae": None, "gm": None, "pearson": None, "spearman": None}
    text = metrics.format_table(table)
    assert text.splitlines()[0].split() == ["shot", "count", "MSE", "MAE", "GM", "PEARSON", "SPEARMAN"]
    few_row = text.splitlines()[-1].split()
    assert few_row == ["few", "0", "-", "-", "-", "-", "-"]


def test_dir_metrics_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one entry per sample"):
        metrics.dir_metrics([1.0, 2.0], [1.0], [0, 0], ["many"])
    with pytest.raises(ValueError, match=r"bins must lie in \[0, 2\)"):
        metrics.dir_metrics([1.0], [1.0], [2], ["many", "few"])


def test_flatten_keys():
    table = metrics.dir_metrics([1.0], [2.0], [0], ["many"])
    flat = metrics.flatten(table)
    assert flat["all/mae"] == 1.0 and flat["few/count"] == 0 and flat["few/mae"] is None
    assert math.isclose(flat["many/mse"], 1.0)
