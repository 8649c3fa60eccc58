"""LDS: per-sample weights from a kernel-smoothed label density, and the weighted regression
losses that use them (docs/methods.md, "LDS").

>>> weights = lds_weights(train_labels, **LDS_RELEASED["agedb"])   # N weights, mean 1
>>> loss = weighted_l1_loss(predictions, targets, weights[batch_indices])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import validation as check
from . import _checks
from .smoothing import BINNINGS, conv_same_zero, floor_bins, histogram_bins, kernel_window

REWEIGHTS = ("sqrt_inv", "inverse", "none")

# The released settings of each benchmark (the README commands, not the argparse defaults):
# lds_weights(labels, **LDS_RELEASED[name]). inverse_clip only acts with reweight="inverse".
LDS_RELEASED: dict[str, dict] = {
    "agedb": dict(num_bins=121, binning="floor", reweight="sqrt_inv", lds=True, kernel="gaussian", ks=5, sigma=2.0,
                  inverse_clip=(5.0, 1000.0)),
    "imdb_wiki": dict(num_bins=121, binning="floor", reweight="sqrt_inv", lds=True, kernel="gaussian", ks=5, sigma=2.0,
                      inverse_clip=(5.0, 1000.0)),
    "sts_b": dict(num_bins=50, binning="histogram", value_range=(0.0, 5.0), reweight="inverse", lds=True,
                  kernel="gaussian", ks=5, sigma=2.0, inverse_clip=None),
}


def label_bins(labels: torch.Tensor, num_bins: int, *, binning: str = "floor",
               value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """The LDS bin (int64) of each label: "floor" min(int(y), num_bins - 1) (age datasets);
    "histogram" numpy.histogram's num_bins equal bins on value_range, the top edge in the last
    bin (STS-B: 50 bins on [0, 5])."""
    name = "label_bins"
    labels = _checks.labels(name, labels)
    _checks.integer(name, "num_bins", num_bins, 1)
    _checks.choice(name, "binning", binning, BINNINGS)
    if binning == "histogram":
        if value_range is None:
            check.fail(name, "value_range", "a pair (low, high) with binning='histogram'", "None")
        return histogram_bins(labels, num_bins, _checks.value_range(name, value_range), name)
    if value_range is not None:
        check.fail(name, "value_range", "None with binning='floor'", repr(value_range))
    return floor_bins(labels, num_bins, name)


def lds_weights(
    labels: torch.Tensor,
    num_bins: int,
    *,
    binning: str = "floor",
    value_range: tuple[float, float] | None = None,
    reweight: str = "sqrt_inv",
    lds: bool = True,
    kernel: str = "gaussian",
    ks: int = 5,
    sigma: float = 2.0,
    inverse_clip: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-sample weights of the training set, rescaled to mean 1 (docs/methods.md, "LDS").

    Args:
        labels: the N training labels, (N,) or (N, 1).
        num_bins: M, the number of label bins (121 on the age datasets, 50 on STS-B).
        binning, value_range: how labels map to bins, see ``label_bins``.
        reweight: per-bin value v from the count n: "sqrt_inv" v = sqrt(n), "inverse" v = n,
            "none" all weights 1 (LDS then raises, as the released code asserts).
        lds: smooth v along the bins with the kernel (zero padding) before inverting.
        kernel, ks, sigma: the LDS window, divided by its max (``smoothing.kernel_window``).
        inverse_clip: (low, high) clip of the counts with reweight="inverse", before the
            smoothing, so empty bins count as `low` (the age datasets: (5, 1000); STS-B: None).
        dtype: of the returned weights (computed in float64).

    Returns: (N,) weights w_i = c / v~_{b(i)} with c such that mean(w) = 1.
    """
    name = "lds_weights"
    labels = _checks.labels(name, labels)
    _checks.integer(name, "num_bins", num_bins, 1)
    _checks.choice(name, "reweight", reweight, REWEIGHTS)
    if not isinstance(lds, bool):
        check.fail(name, "lds", "a bool", repr(lds))
    if lds and reweight == "none":
        check.fail(name, "reweight", "'sqrt_inv' or 'inverse' with lds=True", "'none'")
    if inverse_clip is not None:
        if (not isinstance(inverse_clip, (tuple, list)) or len(inverse_clip) != 2
                or not 0 < inverse_clip[0] <= inverse_clip[1]):
            check.fail(name, "inverse_clip", "None or a pair (low, high) with 0 < low <= high", repr(inverse_clip))
    window = kernel_window(kernel, ks, sigma, normalize="max", function=name) if lds else None
    bins = label_bins(labels, num_bins, binning=binning, value_range=value_range)
    if reweight == "none":
        return torch.ones(labels.shape[0], dtype=dtype, device=labels.device)
    counts = torch.bincount(bins.cpu(), minlength=num_bins).to(torch.float64)
    if reweight == "sqrt_inv":
        values = counts.sqrt()
    else:
        values = counts if inverse_clip is None else counts.clamp(float(inverse_clip[0]), float(inverse_clip[1]))
    if lds:
        values = conv_same_zero(values, window)
    weights = 1.0 / values[bins.cpu()]
    weights = weights * (weights.shape[0] / weights.sum())
    return weights.to(dtype=dtype, device=labels.device)


# ----- the weighted regression losses: mean_i(w_i * loss_i), w = 1 without weights -----

def _loss_inputs(function: str, predictions, targets, weights):
    """Predictions and targets of one shape ((B,) or (B, 1)); weights of B elements, reshaped to it."""
    if not isinstance(predictions, torch.Tensor):
        check.fail(function, "predictions", "a tensor", check._describe(predictions))
    check.floating(function, "predictions", predictions)
    if not isinstance(targets, torch.Tensor) or targets.shape != predictions.shape:
        check.fail(function, "targets", f"a tensor of the shape of 'predictions' {tuple(predictions.shape)}",
                   check._describe(targets))
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.numel() != predictions.numel() or weights.dim() > 2:
            check.fail(function, "weights", f"None or a tensor of {predictions.numel()} elements (one per sample)",
                       check._describe(weights))
        weights = weights.reshape(predictions.shape)
    return weights


def _weighted_mean(loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is not None:
        loss = loss * weights
    return loss.mean()


def weighted_mse_loss(predictions, targets, weights=None) -> torch.Tensor:
    """mean_i(w_i * (p_i - y_i)^2)."""
    weights = _loss_inputs("weighted_mse_loss", predictions, targets, weights)
    return _weighted_mean((predictions - targets) ** 2, weights)


def weighted_l1_loss(predictions, targets, weights=None) -> torch.Tensor:
    """mean_i(w_i * |p_i - y_i|)."""
    weights = _loss_inputs("weighted_l1_loss", predictions, targets, weights)
    return _weighted_mean(F.l1_loss(predictions, targets, reduction="none"), weights)


def _focal_factor(function: str, error: torch.Tensor, activate: str, beta: float, gamma: float) -> torch.Tensor:
    _checks.choice(function, "activate", activate, ("sigmoid", "tanh"))
    if activate == "tanh":
        return torch.tanh(beta * error.abs()) ** gamma
    return (2 * torch.sigmoid(beta * error.abs()) - 1) ** gamma


def weighted_focal_mse_loss(predictions, targets, weights=None, *, activate: str = "sigmoid", beta: float = 0.2,
                            gamma: float = 1.0) -> torch.Tensor:
    """mean_i(w_i * e_i^2 * f(|e_i|)), f = (2 sigmoid(beta |e|) - 1)^gamma or tanh(beta |e|)^gamma."""
    name = "weighted_focal_mse_loss"
    weights = _loss_inputs(name, predictions, targets, weights)
    error = predictions - targets
    return _weighted_mean(error ** 2 * _focal_factor(name, error, activate, beta, gamma), weights)


def weighted_focal_l1_loss(predictions, targets, weights=None, *, activate: str = "sigmoid", beta: float = 0.2,
                           gamma: float = 1.0) -> torch.Tensor:
    """mean_i(w_i * |e_i| * f(|e_i|)), f as in ``weighted_focal_mse_loss``."""
    name = "weighted_focal_l1_loss"
    weights = _loss_inputs(name, predictions, targets, weights)
    error = predictions - targets
    return _weighted_mean(error.abs() * _focal_factor(name, error, activate, beta, gamma), weights)


def weighted_huber_loss(predictions, targets, weights=None, *, beta: float = 1.0) -> torch.Tensor:
    """mean_i(w_i * h(|e_i|)), h(a) = a^2 / (2 beta) below beta, a - beta / 2 from beta on."""
    name = "weighted_huber_loss"
    weights = _loss_inputs(name, predictions, targets, weights)
    beta = _checks.number(name, "beta", beta, minimum=0.0, strict=True)
    error = (predictions - targets).abs()
    return _weighted_mean(torch.where(error < beta, 0.5 * error ** 2 / beta, error - 0.5 * beta), weights)


WEIGHTED_LOSSES = {
    "mse": weighted_mse_loss,
    "l1": weighted_l1_loss,
    "focal_mse": weighted_focal_mse_loss,
    "focal_l1": weighted_focal_l1_loss,
    "huber": weighted_huber_loss,
}
