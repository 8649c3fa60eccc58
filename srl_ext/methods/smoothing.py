"""Symmetric kernel windows and label binning shared by LDS, FDS and BNI (docs/methods.md,
"Kernels" and "Label bins").

No scipy at run time: the Gaussian window is scipy's ``gaussian_filter1d`` of a centred delta,
recomputed here (truncate 4, mode 'reflect'), and the triangular window is scipy's ``triang``.
"""

from __future__ import annotations

import math

import torch

from .. import validation as check
from . import _checks

KERNELS = ("gaussian", "triang", "laplace")
BINNINGS = ("floor", "histogram")


def _reflect(index: int, size: int) -> int:
    """scipy.ndimage's 'reflect' extension (d c b a | a b c d | d c b a), any distance out."""
    index %= 2 * size
    return 2 * size - 1 - index if index >= size else index


def _gaussian_of_delta(ks: int, sigma: float, truncate: float = 4.0) -> list[float]:
    """scipy.ndimage.gaussian_filter1d applied to a length-ks delta at the centre.

    The filter's own window has radius int(truncate * sigma + 0.5), often wider than ks: the
    delta's reflections beyond the ends add up, so this is not a sampled Gaussian.
    """
    radius = int(truncate * sigma + 0.5)
    taps = [math.exp(-0.5 * (m / sigma) ** 2) for m in range(-radius, radius + 1)]
    total = sum(taps)
    taps = [t / total for t in taps]
    centre = (ks - 1) // 2
    out = [0.0] * ks
    for k in range(ks):
        for offset, tap in zip(range(-radius, radius + 1), taps):
            if _reflect(k + offset, ks) == centre:
                out[k] += tap
    return out


def kernel_window(kernel: str, ks: int, sigma: float, *, normalize: str = "max",
                  function: str = "kernel_window") -> torch.Tensor:
    """The ks-tap window (float64) of `kernel`, divided by its max (LDS) or its sum (FDS).

    gaussian: scipy's gaussian_filter1d (truncate 4, 'reflect') of a centred delta;
    triang: scipy's triang(ks), 2n/(ks+1) rising to 1; laplace: exp(-|x|/sigma), x = -h..h.
    """
    _checks.choice(function, "kernel", kernel, KERNELS)
    _checks.integer(function, "ks", ks, 1)
    if ks % 2 == 0:
        check.fail(function, "ks", "an odd int (a window centred on its bin)", repr(ks))
    if kernel != "triang":
        sigma = _checks.number(function, "sigma", sigma, minimum=0.0, strict=True)
    _checks.choice(function, "normalize", normalize, ("max", "sum"))
    half = (ks - 1) // 2
    if kernel == "gaussian":
        values = _gaussian_of_delta(ks, sigma)
    elif kernel == "triang":
        rising = [2.0 * n / (ks + 1) for n in range(1, half + 2)]
        values = rising + rising[-2::-1]
    else:
        values = [math.exp(-abs(x) / sigma) / (2.0 * sigma) for x in range(-half, half + 1)]
    window = torch.tensor(values, dtype=torch.float64)
    return window / (window.max() if normalize == "max" else window.sum())


def histogram_edges(num_bins: int, value_range: tuple[float, float], dtype: torch.dtype) -> torch.Tensor:
    """numpy.histogram's equal-width edges: computed in float64, then cast to the labels' dtype
    (float32 labels get float32 edges, as in numpy)."""
    low, high = value_range
    edges = torch.arange(num_bins + 1, dtype=torch.float64) * ((high - low) / num_bins) + low
    edges[-1] = high
    return edges.to(dtype)


def binning_dtype(labels: torch.Tensor) -> torch.Tensor:
    """Labels as numpy.histogram would compare them: float32/float64 kept, half precision in
    float32, integers in float64."""
    if labels.dtype in (torch.float32, torch.float64):
        return labels
    return labels.to(torch.float32 if labels.is_floating_point() else torch.float64)


def histogram_bins(labels: torch.Tensor, num_bins: int, value_range: tuple[float, float],
                   function: str = "histogram_bins") -> torch.Tensor:
    """numpy.histogram's bin of each label: edges[b] <= y < edges[b + 1], the top edge in the
    last bin. Labels outside value_range raise ValueError (CPU tensors)."""
    y = binning_dtype(labels)
    edges = histogram_edges(num_bins, value_range, y.dtype).to(y.device)
    if check.reads_data(y):
        low, high = float(edges[0]), float(edges[-1])
        outside = (y < edges[0]) | (y > edges[-1])
        if bool(outside.any()):
            index = int(outside.nonzero()[0, 0])
            check.fail(function, "labels", f"inside value_range [{low}, {high}]", f"{float(y[index])} at index {index}")
    bins = torch.searchsorted(edges, y.contiguous(), right=True) - 1
    return bins.clamp_(0, num_bins - 1)


def floor_bins(labels: torch.Tensor, num_bins: int, function: str = "floor_bins") -> torch.Tensor:
    """min(int(y), num_bins - 1): the released age binning (IMDB-WIKI ages 120-186 share the
    last of 121 bins). Negative labels raise ValueError (CPU tensors)."""
    if check.reads_data(labels) and bool((labels < 0).any()):
        index = int((labels < 0).nonzero()[0, 0])
        check.fail(function, "labels", "labels >= 0 (floor binning)", f"{float(labels[index])} at index {index}")
    if labels.is_floating_point():
        labels = torch.floor(labels)
    return labels.to(torch.int64).clamp_(0, num_bins - 1)


def conv_same_zero(values: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage.convolve1d(values, window, mode='constant'): zero padding, same length
    (the windows here are symmetric, so convolution and correlation agree)."""
    half = (window.shape[0] - 1) // 2
    padded = torch.nn.functional.pad(values.reshape(1, 1, -1), (half, half))
    return torch.nn.functional.conv1d(padded, window.flip(0).reshape(1, 1, -1)).reshape(-1)
