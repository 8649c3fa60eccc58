"""Pure-PyTorch reference of every SRL term (docs/method.md).

Each function is the plain math, vectorised, with autograd doing the backward. The fused
backends (``srl_ext.kernels``, ``csrc/``) are tested against these functions, so keep them
short and obviously right rather than fast.

Half-precision inputs (float16, bfloat16) are computed in float32, as the fused kernels do;
the losses come back in that accumulation dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .settings import SRLSettings

# The same floor as torch.nn.functional.normalize: a row whose norm is below it is divided by
# EPS instead, so an all-zero row stays zero (and its gradient stays finite).
EPS = 1e-12


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the dtype itself for float32/float64."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; rows with norm below EPS are divided by EPS."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def surrogate_table(features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The K x D table of unit surrogates c_b for one step (docs/method.md, "The surrogate table").

    Row b is the normalised mean of z_i = h_i/||h_i|| over the batch samples in bin b when the
    bin is present (keeps its gradient), else the normalised, detached memory row. Zero rows
    stay zero.
    """
    sums, counts = bin_sums(features, bins, memory.shape[0])
    return surrogates_from_sums(sums, counts, memory)


def bin_sums(features: torch.Tensor, bins: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin sums of z = normalize(h) (K x D, accumulation dtype, with gradient) and counts (K).

    Split from ``surrogates_from_sums`` so that data-parallel training can add up the sums and
    counts of every rank in between (``srl_ext.distributed``).
    """
    z = normalize(features.to(accumulation_dtype(features.dtype)))
    return sum_by_bin(z, bins, num_bins)


def sum_by_bin(x: torch.Tensor, bins: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin sums of the rows of x (K x D) and the counts (K).

    Bins are checked on CPU tensors only (``srl_ext.validation``: a check on the GPU needs a host
    sync). A bin outside [0, K) goes to an extra row that is dropped, so its sample belongs to
    no bin, as in the fused kernels, instead of indexing out of range (a device-side assert on
    CUDA, which leaves the process unusable).
    """
    routed = torch.where((bins >= 0) & (bins < num_bins), bins, num_bins)
    counts = torch.bincount(routed, minlength=num_bins + 1)[:num_bins]
    sums = x.new_zeros(num_bins + 1, x.shape[1]).index_add(0, routed, x)[:num_bins]
    return sums, counts


def surrogates_from_sums(sums: torch.Tensor, counts: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The normalised table from per-bin sums and counts: means of present bins, detached memory
    rows for absent ones (count 0)."""
    present = (counts > 0).unsqueeze(1)
    means = torch.where(
        present, sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype), memory.detach().to(sums.dtype)
    )
    return normalize(means)


def label_distance_log_weights(bins: torch.Tensor, num_bins: int, dtype: torch.dtype) -> torch.Tensor:
    """log w_ik for w_ik = (|y_i - k| + 1) / max_{i,k}(|y_i - k| + 1), distances in bins (B x K)."""
    distance = (bins.unsqueeze(1) - torch.arange(num_bins, device=bins.device).unsqueeze(0)).abs() + 1
    return torch.log(distance.to(dtype) / distance.max().to(dtype))


def contrastive_loss(features: Tensor, bins: Tensor, surrogates: Tensor, temperature: float,
                     label_weighting: bool = False) -> Tensor:
    """L_con = -(1/B) sum_i log(exp(<z_i,c_{y_i}>/tau) / sum_k w_ik exp(<z_i,c_k>/tau))
    (docs/method.md, "Contrastive").

    The surrogates are detached: the gradient reaches the features only. A sample whose bin is
    outside [0, K) (unchecked on the GPU) gets a NaN loss and gradient row, as in the fused kernels.
    """
    acc = accumulation_dtype(features.dtype)
    num_bins = surrogates.shape[0]
    in_range = (bins >= 0) & (bins < num_bins)
    # Added rather than selected, so that the NaN also reaches the sample's gradient.
    z = normalize(features.to(acc)) + torch.where(in_range, 0.0, float("nan")).to(acc).unsqueeze(1)
    logits = z @ surrogates.detach().to(acc).T / temperature
    positive = logits.gather(1, bins.clamp(0, num_bins - 1).unsqueeze(1)).squeeze(1)
    if label_weighting:
        logits = logits + label_distance_log_weights(bins, surrogates.shape[0], acc)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def enveloping_loss(surrogates: Tensor, anchors: Tensor, envelope_temperature: float | None = None) -> Tensor:
    """L_env = 1 - mean_j max_k <p_j, c_k> (hard, released code), or with the max replaced by
    the smooth maximum s * logsumexp_k(<p_j, c_k>/s) for a smoothness s = envelope_temperature
    (paper; docs/method.md, "Enveloping")."""
    cosines = anchors.to(surrogates.dtype) @ surrogates.T  # N x K
    s = envelope_temperature
    if s is None:
        coverage = cosines.max(dim=1).values  # ties: the lowest k, as torch.max
    else:
        coverage = s * torch.logsumexp(cosines / s, dim=1)
    return 1 - coverage.mean()


def homogeneity_loss(surrogates: torch.Tensor, sign: float = -1.0, beta: float = 0.1) -> torch.Tensor:
    """L_homo = sign * sum_k a_k + beta * Var(a), a_k = <c_{k+1}, c_k> (docs/method.md,
    "Homogeneity").

    Var is unbiased (divides by K-2); with K = 2 there is a single a_k and the variance term
    is taken as 0.
    """
    neighbour_cosines = (surrogates[1:] * surrogates[:-1]).sum(dim=1)
    loss = sign * neighbour_cosines.sum()
    if neighbour_cosines.numel() > 1:
        loss = loss + beta * neighbour_cosines.var()
    return loss


def srl_terms(features: Tensor, bins: Tensor, memory: Tensor, anchors: Tensor, settings: SRLSettings | None = None,
              **options) -> tuple[Tensor, Tensor, Tensor]:
    """(contrastive, enveloping, homogeneity) for one batch, all from the same surrogate table;
    the settings as in ``srl_ext.functional.srl_terms``."""
    s = SRLSettings.resolve("reference.srl_terms", settings, **options)
    surrogates = surrogate_table(features, bins, memory)
    return (
        contrastive_loss(features, bins, surrogates, s.temperature, s.label_weighting),
        enveloping_loss(surrogates, anchors, s.soft_envelope_temperature),
        homogeneity_loss(surrogates, s.homogeneity_sign, s.homogeneity_beta),
    )
