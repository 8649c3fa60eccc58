"""LDS weights and the weighted regression losses (docs/methods.md, "LDS"), against a float64
transcription of the released computation and the worked cases of the docs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srl_ext.methods import (LDS_RELEASED, WEIGHTED_LOSSES, kernel_window, label_bins, lds_weights,
                             weighted_focal_l1_loss, weighted_focal_mse_loss, weighted_huber_loss, weighted_l1_loss,
                             weighted_mse_loss)

# ----- a transcription of the released computation, in numpy float64 -----


def _released_gaussian(ks: int, sigma: float) -> np.ndarray:
    """gaussian_filter1d of a centred delta: the sampled Gaussian of radius int(4 sigma + 0.5),
    correlated with the delta extended by half-sample symmetric reflection (np.pad 'symmetric')."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    delta = np.zeros(ks)
    delta[(ks - 1) // 2] = 1.0
    padded = np.pad(delta, radius, mode="symmetric")
    return np.array([np.dot(taps, padded[k:k + 2 * radius + 1]) for k in range(ks)])


def released_lds_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
    half = (ks - 1) // 2
    if kernel == "gaussian":
        window = _released_gaussian(ks, sigma)
    elif kernel == "triang":
        window = np.array([1.0 - abs(x) / (half + 1) for x in range(-half, half + 1)])
    else:
        window = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma) / (2.0 * sigma)
    return window / window.max()


def released_age_weights(labels, reweight, lds, kernel, ks, sigma, max_target=121):
    """The age datasets' _prepare_weights: a dict of counts per int(label), clipped at the top bin."""
    counts = {b: 0 for b in range(max_target)}
    for label in labels:
        counts[min(max_target - 1, int(label))] += 1
    if reweight == "sqrt_inv":
        counts = {b: np.sqrt(v) for b, v in counts.items()}
    elif reweight == "inverse":
        counts = {b: np.clip(v, 5, 1000) for b, v in counts.items()}
    per_sample = [counts[min(max_target - 1, int(label))] for label in labels]
    if lds:
        values = np.array([counts[b] for b in range(max_target)], dtype=np.float64)
        window = released_lds_window(kernel, ks, sigma)
        half = (ks - 1) // 2
        padded = np.concatenate([np.zeros(half), values, np.zeros(half)])
        smoothed = np.array([np.dot(window, padded[b:b + ks]) for b in range(max_target)])
        per_sample = [smoothed[min(max_target - 1, int(label))] for label in labels]
    weights = np.array([1.0 / v for v in per_sample])
    return weights * len(weights) / weights.sum()


def released_sts_weights(labels, reweight, lds, kernel, ks, sigma, bins=50):
    """The STS-B load_tsv weights: np.histogram counts on [0, 5], no clip with 'inverse'."""
    labels = np.asarray(labels, dtype=np.float32)
    counts, edges = np.histogram(labels, bins=bins, range=(0.0, 5.0))
    counts = counts.astype(np.float64)

    def bin_of(label):
        return bins - 1 if label == 5.0 else np.where(edges > label)[0][0] - 1

    if reweight == "sqrt_inv":
        counts = np.sqrt(counts)
    per_sample = [counts[bin_of(y)] for y in labels]
    if lds:
        window = released_lds_window(kernel, ks, sigma)
        half = (ks - 1) // 2
        padded = np.concatenate([np.zeros(half), counts, np.zeros(half)])
        smoothed = np.array([np.dot(window, padded[b:b + ks]) for b in range(bins)])
        per_sample = [smoothed[bin_of(y)] for y in labels]
    weights = np.array([1.0 / v for v in per_sample])
    return weights * len(weights) / weights.sum()


# ----- kernels -----

@pytest.mark.parametrize("ks, sigma, expected", [
    (5, 2.0, [0.858285, 0.945828, 1.0, 0.945828, 0.858285]),
    (5, 1.0, [0.146444, 0.606866, 1.0, 0.606866, 0.146444]),
    (9, 1.0, [0.000335, 0.011109, 0.135335, 0.606531, 1.0, 0.606531, 0.135335, 0.011109, 0.000335]),
])
def test_gaussian_window_is_scipys_filtered_delta_not_a_sampled_gaussian(ks, sigma, expected):
    window = kernel_window("gaussian", ks, sigma)
    assert torch.allclose(window, torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    sampled = torch.exp(-0.5 * (torch.arange(-(ks // 2), ks // 2 + 1, dtype=torch.float64) / sigma) ** 2)
    if ks == 5 and sigma == 2.0:  # the reflections make it flatter than the sampled curve
        assert not torch.allclose(window, sampled / sampled.max(), atol=1e-3)


def test_triang_and_laplace_windows():
    assert torch.allclose(kernel_window("triang", 5, 1.0), torch.tensor([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], dtype=torch.float64))
    assert torch.allclose(kernel_window("laplace", 5, 2.0),
                          torch.tensor([0.367879, 0.606531, 1.0, 0.606531, 0.367879], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(kernel_window("gaussian", 5, 2.0, normalize="sum"),
                          torch.tensor([0.186251, 0.205248, 0.217003, 0.205248, 0.186251], dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
@pytest.mark.parametrize("ks", [1, 3, 5, 7, 9, 15])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.0, 3.5])
def test_windows_match_the_transcription(kernel, ks, sigma):
    assert np.allclose(kernel_window(kernel, ks, sigma).numpy(), released_lds_window(kernel, ks, sigma), atol=1e-14)


def test_windows_match_scipy_when_installed():
    ndimage = pytest.importorskip("scipy.ndimage")
    windows = pytest.importorskip("scipy.signal.windows")
    for ks in (1, 3, 5, 9, 21):
        for sigma in (0.5, 1.0, 2.0, 5.0):
            delta = np.zeros(ks)
            delta[ks // 2] = 1.0
            filtered = ndimage.gaussian_filter1d(delta, sigma=sigma)
            assert np.allclose(kernel_window("gaussian", ks, sigma).numpy(), filtered / filtered.max(), atol=1e-12)
        assert np.allclose(kernel_window("triang", ks, 1.0).numpy(), windows.triang(ks), atol=1e-12)


# ----- the worked cases: labels {1 x1, 2 x4, 3 x16, 4 x9}, 6 bins -----

CASE_LABELS = torch.tensor([1.0] * 1 + [2.0] * 4 + [3.0] * 16 + [4.0] * 9)


def _per_label(weights):
    return [float(weights[CASE_LABELS == k][0]) for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("kwargs, expected", [
    (dict(reweight="sqrt_inv", lds=False), [3.0, 1.5, 0.75, 1.0]),
    (dict(reweight="sqrt_inv", lds=True, kernel="gaussian", ks=5, sigma=2.0), [1.4305, 0.9725, 0.9437, 1.0645]),
    (dict(reweight="inverse", inverse_clip=(5, 1000), lds=True, kernel="triang", ks=5), [1.5334, 1.1015, 0.9093, 1.0568]),
    (dict(reweight="inverse", lds=True, kernel="gaussian", ks=5, sigma=2.0), [1.5098, 1.0054, 0.9589, 1.0141]),
])
def test_worked_cases(kwargs, expected):
    weights = lds_weights(CASE_LABELS, 6, dtype=torch.float64, **kwargs)
    assert _per_label(weights) == pytest.approx(expected, abs=1e-4)
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-12)


def test_worked_case_smoothed_values():
    """The smoothed per-bin values behind the second and third cases."""
    from srl_ext.methods.smoothing import conv_same_zero

    counts = torch.tensor([0, 1, 4, 16, 9, 0], dtype=torch.float64)
    smoothed = conv_same_zero(counts.sqrt(), kernel_window("gaussian", 5, 2.0))
    assert smoothed.tolist() == pytest.approx([2.6624, 6.3248, 9.3040, 9.5874, 8.4999, 6.2706], abs=1e-4)
    smoothed = conv_same_zero(counts.clamp(5, 1000), kernel_window("triang", 5, 1.0))
    assert smoothed.tolist() == pytest.approx([10, 17, 23.6667, 28.6667, 24.6667, 16.3333], abs=1e-4)


# ----- random cases against the transcription -----

@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
@pytest.mark.parametrize("reweight, lds", [("sqrt_inv", True), ("inverse", True), ("sqrt_inv", False), ("inverse", False)])
@pytest.mark.parametrize("seed", [0, 1])
def test_age_weights_match_the_transcription(kernel, reweight, lds, seed):
    generator = np.random.default_rng(seed)
    # skewed ages, a few beyond 120 (IMDB-WIKI's 120-186 share the last bin)
    ages = np.concatenate([generator.gamma(4.0, 8.0, 300).astype(int), generator.integers(121, 187, 5)])
    ks, sigma = (9, 1.0) if seed else (5, 2.0)
    expected = released_age_weights(ages, reweight, lds, kernel, ks, sigma)
    got = lds_weights(torch.tensor(ages, dtype=torch.float32), **{**LDS_RELEASED["imdb_wiki"], "reweight": reweight,
                      "lds": lds, "kernel": kernel, "ks": ks, "sigma": sigma}, dtype=torch.float64)
    assert np.allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    assert float(got.mean()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("reweight, lds, kernel", [("inverse", True, "gaussian"), ("sqrt_inv", True, "laplace"),
                                                   ("inverse", False, "gaussian"), ("sqrt_inv", True, "triang")])
def test_sts_b_weights_match_the_transcription(reweight, lds, kernel):
    generator = np.random.default_rng(3)
    # scores on the 0.2 grid of STS-B plus the values on bin edges and 5.0 itself
    scores = np.concatenate([np.round(generator.beta(2.0, 1.5, 250) * 25) / 5, [0.0, 0.1, 2.3, 4.9, 5.0, 5.0]])
    scores = scores.astype(np.float32)
    expected = released_sts_weights(scores, reweight, lds, kernel, 5, 2.0)
    got = lds_weights(torch.from_numpy(scores), **{**LDS_RELEASED["sts_b"], "reweight": reweight, "lds": lds,
                                                  "kernel": kernel}, dtype=torch.float64)
    assert np.allclose(got.numpy(), expected, rtol=1e-12, atol=0)


def test_released_settings():
    assert LDS_RELEASED["agedb"]["reweight"] == "sqrt_inv" and LDS_RELEASED["sts_b"]["reweight"] == "inverse"
    for name in LDS_RELEASED:
        assert (LDS_RELEASED[name]["kernel"], LDS_RELEASED[name]["ks"], LDS_RELEASED[name]["sigma"]) == ("gaussian", 5, 2.0)
    assert LDS_RELEASED["sts_b"]["inverse_clip"] is None and LDS_RELEASED["agedb"]["inverse_clip"] == (5.0, 1000.0)


def test_inverse_clip_acts_before_smoothing():
    """Empty bins count as the clip's low end, so they raise their neighbours' smoothed values."""
    labels = torch.tensor([10.0] * 50 + [12.0] * 2)
    clipped = lds_weights(labels, 20, reweight="inverse", inverse_clip=(5, 1000), kernel="triang", ks=3, dtype=torch.float64)
    plain = lds_weights(labels, 20, reweight="inverse", kernel="triang", ks=3, dtype=torch.float64)
    # window [1/2, 1, 1/2]; clipped: bin 10 -> 50 + (5 + 5) / 2, bin 12 -> 5 + (5 + 5) / 2 (the
    # 2 samples and the empty neighbours all count 5); plain: bin 10 -> 50, bin 12 -> 2
    ratio_clipped = float(clipped[-1] / clipped[0])
    ratio_plain = float(plain[-1] / plain[0])
    assert ratio_clipped == pytest.approx((50 + 5) / (5 + 5), rel=1e-12)
    assert ratio_plain == pytest.approx((50 + 0) / 2, rel=1e-12)


# ----- binning -----

def test_floor_binning_shares_the_top_bin():
    bins = label_bins(torch.tensor([0.0, 0.9, 119.5, 120.0, 150.0, 186.0]), 121)
    assert bins.tolist() == [0, 0, 119, 120, 120, 120]


def test_histogram_binning_is_numpys():
    values = np.concatenate([np.arange(0, 51) / 10, np.linspace(0, 5, 997)]).astype(np.float32)
    counts, _ = np.histogram(values, bins=50, range=(0.0, 5.0))
    bins = label_bins(torch.from_numpy(values), 50, binning="histogram", value_range=(0.0, 5.0))
    assert torch.bincount(bins, minlength=50).tolist() == counts.tolist()
    assert int(bins[values.tolist().index(5.0)]) == 49


# ----- the weighted losses -----

def _released_losses(p, y, w):
    e = p - y
    a = np.abs(e)
    focal_sig = 2 / (1 + np.exp(-0.2 * a)) - 1
    return {
        "mse": np.mean(w * e ** 2), "l1": np.mean(w * a),
        "focal_mse": np.mean(w * e ** 2 * focal_sig), "focal_l1": np.mean(w * a * focal_sig),
        "huber": np.mean(w * np.where(a < 1.0, 0.5 * a ** 2, a - 0.5)),
    }


@pytest.mark.parametrize("shape", [(17,), (17, 1)])
def test_weighted_losses_values_and_gradients(shape):
    generator = torch.Generator().manual_seed(0)
    p = (torch.randn(shape, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    w = torch.rand(17, generator=generator, dtype=torch.float64) + 0.5
    expected = _released_losses(p.detach().numpy().reshape(-1), y.numpy().reshape(-1), w.numpy())
    for key, function in WEIGHTED_LOSSES.items():
        loss = function(p, y, w)
        assert float(loss.detach()) == pytest.approx(expected[key], rel=1e-12)
        (grad,) = torch.autograd.grad(loss, p)
        # central differences of the transcription, one coordinate at a time
        base = p.detach().numpy().reshape(-1).copy()
        for i in (0, 5, 16):
            step = np.zeros_like(base)
            step[i] = 1e-6
            numeric = (_released_losses(base + step, y.numpy().reshape(-1), w.numpy())[key]
                       - _released_losses(base - step, y.numpy().reshape(-1), w.numpy())[key]) / 2e-6
            assert float(grad.reshape(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    assert float(weighted_l1_loss(p, y).detach()) == pytest.approx(float((p - y).abs().mean().detach()), rel=1e-14)


def test_focal_tanh_and_huber_beta():
    p = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    y = torch.tensor([0.5, -1.0, 1.0], dtype=torch.float64)
    a = (p - y).abs()
    assert float(weighted_focal_l1_loss(p, y, activate="tanh", beta=0.5, gamma=2.0)) == pytest.approx(
        float((a * torch.tanh(0.5 * a) ** 2).mean()), rel=1e-14)
    assert float(weighted_focal_mse_loss(p, y, activate="tanh")) == pytest.approx(
        float((a ** 2 * torch.tanh(0.2 * a)).mean()), rel=1e-14)
    assert float(weighted_huber_loss(p, y, beta=2.5)) == pytest.approx((0.5 * 0.25 / 2.5 + 0.5 * 4 / 2.5 + 3 - 1.25) / 3, rel=1e-14)
    assert float(weighted_mse_loss(p, y, torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64))) == pytest.approx(
        (0.25 + 18) / 3, rel=1e-14)


# ----- bad inputs -----

@pytest.mark.parametrize("call, words", [
    (lambda: lds_weights(CASE_LABELS, 6, reweight="none", lds=True), ["lds_weights", "'reweight'", "lds=True", "'none'"]),
    (lambda: lds_weights(CASE_LABELS, 6, reweight="sqrt", lds=False), ["'reweight'", "'sqrt_inv', 'inverse', 'none'", "'sqrt'"]),
    (lambda: lds_weights(CASE_LABELS.reshape(2, 15), 6), ["lds_weights", "'labels'", "(B,) or (B, 1)", "shape (2, 15)"]),
    (lambda: lds_weights(CASE_LABELS.tolist(), 6), ["'labels'", "a tensor", "list"]),
    (lambda: lds_weights(torch.tensor([1.0, float("nan")]), 6), ["'labels'", "finite", "index 1"]),
    (lambda: lds_weights(torch.tensor([1.0, -2.0]), 6), ["'labels'", ">= 0", "-2.0 at index 1"]),
    (lambda: lds_weights(torch.tensor([1.0, 5.5]), 50, binning="histogram", value_range=(0.0, 5.0)),
     ["'labels'", "inside value_range [0.0, 5.0]", "5.5 at index 1"]),
    (lambda: lds_weights(CASE_LABELS, 6, binning="histogram"), ["'value_range'", "binning='histogram'", "None"]),
    (lambda: lds_weights(CASE_LABELS, 6, ks=4), ["'ks'", "odd", "4"]),
    (lambda: lds_weights(CASE_LABELS, 6, kernel="box"), ["'kernel'", "'gaussian', 'triang', 'laplace'", "'box'"]),
    (lambda: lds_weights(CASE_LABELS, 6, sigma=0.0), ["'sigma'", "> 0", "0.0"]),
    (lambda: lds_weights(CASE_LABELS, 0), ["'num_bins'", ">= 1", "0"]),
    (lambda: lds_weights(CASE_LABELS, 6, reweight="inverse", inverse_clip=(0, 10)), ["'inverse_clip'", "0 < low"]),
    (lambda: weighted_l1_loss(torch.zeros(3), torch.zeros(4)), ["weighted_l1_loss", "'targets'", "shape of 'predictions' (3,)"]),
    (lambda: weighted_mse_loss(torch.zeros(3), torch.zeros(3), torch.ones(2)), ["weighted_mse_loss", "'weights'", "3 elements"]),
    (lambda: weighted_mse_loss(torch.zeros(3, dtype=torch.int64), torch.zeros(3)), ["'predictions'", "float", "torch.int64"]),
    (lambda: weighted_focal_l1_loss(torch.zeros(3), torch.zeros(3), activate="relu"), ["'activate'", "'sigmoid', 'tanh'"]),
])
def test_bad_inputs_raise_value_errors(call, words):
    with pytest.raises(ValueError) as error:
        call()
    for word in words:
        assert word in str(error.value)


def test_weights_follow_the_labels_dtype_argument_and_device():
    weights = lds_weights(CASE_LABELS.to(torch.int64), 6)
    assert weights.dtype == torch.float32 and weights.shape == (30,)
    assert math.isclose(float(weights.double().mean()), 1.0, rel_tol=1e-6)
    assert lds_weights(CASE_LABELS, 6, reweight="none", lds=False).tolist() == [1.0] * 30
