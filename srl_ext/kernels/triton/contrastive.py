"""Contrastive term (docs/method.md, "Contrastive")
as one fused Triton kernel.

One program per tile of samples. It normalises its feature rows, then sweeps the K surrogates in
tiles twice, flash-attention style: the first sweep keeps an online maximum and sum of exp
(log-sum-exp of the, optionally label-weighted, logits) and picks out the positive logit; the
second recomputes each logit tile, turns it into d loss / d logits (softmax minus the one-hot
label) and accumulates d loss / d z with a GEMM, which is then taken back through the row
normalisation. The forward thus returns the loss and the gradient the backward needs; the B x K
logits never exist in memory. The per-sample losses are summed by torch (deterministic).
The surrogates are detached: no gradient is formed for them.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...ops.fused import register_loss_autograd
from .table import prepared
from .utils import (EPS, UpTo, autotune, autotune_configs, block_dim, check_offsets, joined, launch,
                    normalize_backward, on_inputs_device, row_tile, size_bucket, split_float, unit_rows)

_CONFIGS = autotune_configs(
    ("BLOCK_B", "BLOCK_K", "num_warps", "num_stages"),
    hopper=[(32, 32, 8, 2), UpTo(128, (64, 32, 8, 2)), UpTo(128, (16, 64, 8, 2)), (16, 32, 4, 2)],
    ampere=[UpTo(128, (32, 32, 8, 2)), UpTo(128, (16, 32, 4, 2))],
    fallback=(16, 16, 8, 2), interpreter=(4, 4),
)


@triton.jit
def _logit_tile(z, c_ptr, k, k_mask, d, d_mask, y, max_distance, inv_tau, D,
                LABEL_WEIGHTING: tl.constexpr):
    """(weighted logits with -inf outside K, plain logits) of a sample tile against bins k."""
    acc_dtype = z.dtype
    c = tl.load(c_ptr + k[:, None] * D + d[None, :], mask=k_mask[:, None] & d_mask[None, :], other=0.0)
    plain = tl.dot(z, tl.trans(c), input_precision="ieee") * inv_tau
    logits = plain
    if LABEL_WEIGHTING:
        # log w_ik = log((|y_i - k| + 1) / max over the batch-by-K table), in bins
        distance = (tl.abs(y[:, None] - k[None, :]) + 1).to(acc_dtype)
        logits = logits + tl.log(distance / max_distance)
    logits = tl.where(k_mask[None, :], logits, float("-inf"))
    return logits, plain, c


@autotune(_CONFIGS, key=["K", "D", "LABEL_WEIGHTING", "B_BUCKET"])
@triton.jit
def _contrastive_kernel(
    h_ptr, bins_ptr, c_ptr, max_distance_ptr, row_loss_ptr, grad_h_ptr,
    B, K, D, inv_tau_hi, inv_tau_lo, eps, B_BUCKET,
    LABEL_WEIGHTING: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    inv_tau = joined(inv_tau_hi, inv_tau_lo, acc_dtype)
    grad_scale = inv_tau / tl.cast(B, acc_dtype)  # the mean over the batch and the 1/tau
    b, d, b_mask, d_mask, own, mask = row_tile(B, D, BLOCK_B, BLOCK_D)
    z, norm = unit_rows(h_ptr, own, mask, eps, acc_dtype)
    y = tl.load(bins_ptr + b, mask=b_mask, other=-1)
    # A bin outside [0, K) (not checked on the GPU: that needs a host sync) matches no k; its
    # sample gets a NaN loss and gradient row, as in the CUDA kernel, so the bad input shows.
    in_range = (y >= 0) & (y < K)
    max_distance = tl.load(max_distance_ptr).to(acc_dtype)

    # Sweep 1: online log-sum-exp over the K tiles, and the positive (unweighted) logit.
    running_max = tl.full((BLOCK_B,), float("-inf"), dtype=acc_dtype)
    running_sum = tl.zeros((BLOCK_B,), dtype=acc_dtype)
    positive = tl.zeros((BLOCK_B,), dtype=acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        logits, plain, _c = _logit_tile(z, c_ptr, k, k_mask, d, d_mask, y, max_distance, inv_tau, D, LABEL_WEIGHTING)
        positive += tl.sum(tl.where(k[None, :] == y[:, None], plain, 0.0), axis=1)
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))  # finite: every tile has a k < K
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    tl.store(row_loss_ptr + b, tl.where(in_range, lse - positive, float("nan")), mask=b_mask)

    # Sweep 2: d loss / d z = (1/(tau B)) sum_k (softmax_ik - [k == y_i]) c_k.
    grad_z = tl.zeros((BLOCK_B, BLOCK_D), dtype=acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        logits, _plain, c = _logit_tile(z, c_ptr, k, k_mask, d, d_mask, y, max_distance, inv_tau, D, LABEL_WEIGHTING)
        grad_logits = tl.exp(logits - lse[:, None]) - (k[None, :] == y[:, None]).to(acc_dtype)
        grad_logits = tl.where(b_mask[:, None], grad_logits, 0.0)  # rows past B: no gradient at all
        grad_z += tl.dot(grad_logits, c, input_precision="ieee")
    grad_h = normalize_backward(z, norm, grad_z * grad_scale, eps)
    grad_h = tl.where(in_range[:, None], grad_h, float("nan"))
    tl.store(grad_h_ptr + own, grad_h.to(grad_h_ptr.dtype.element_ty), mask=mask)


def launch_contrastive(features: torch.Tensor, bins: torch.Tensor, surrogates: torch.Tensor, temperature: float,
                       label_weighting: bool, grad_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive kernel on prepared inputs (``table.prepared``): (per-sample losses B, in
    the surrogates' dtype, d loss / d features B x D in `grad_dtype`)."""
    batch, dim = features.shape
    num_bins = surrogates.shape[0]
    # The largest |y_i - k| + 1 over the batch-by-K table is max_i max(y_i + 1, K - y_i): kept on
    # the device (no host sync).
    if label_weighting:
        max_distance = torch.maximum(bins + 1, num_bins - bins).max().reshape(1)
    else:
        max_distance = bins.new_ones((1,))
    # One loss per sample, not per tile: what is written does not depend on the config, so the
    # autotuner's trial runs leave nothing stale behind.
    row_losses = features.new_empty((batch,), dtype=surrogates.dtype)
    grad_features = features.new_empty((batch, dim), dtype=grad_dtype)
    launch(_contrastive_kernel)[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)](
        features, bins, surrogates, max_distance, row_losses, grad_features,
        batch, num_bins, dim, *split_float(1.0 / temperature), EPS, size_bucket(batch),
        LABEL_WEIGHTING=label_weighting, BLOCK_D=block_dim(dim),
    )
    return row_losses, grad_features


@triton_op("srl_ext_triton::contrastive", mutates_args=())
@on_inputs_device
def contrastive_op(
    features: torch.Tensor, bins: torch.Tensor, surrogates: torch.Tensor, temperature: float, label_weighting: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d features), as ``srl_ext::contrastive``."""
    features, bins, surrogates, _acc = prepared("contrastive_loss", features, bins, surrogates, "surrogates")
    row_losses, grad_features = launch_contrastive(features, bins, surrogates, temperature, label_weighting,
                                                   features.dtype)
    return row_losses.sum() / features.shape[0], grad_features


register_loss_autograd(contrastive_op, num_inputs=5)
