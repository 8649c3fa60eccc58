"""The whole SRL loss as one Triton op (docs/method.md, "The loss"), with its autograd: the
surrogate table, the three terms, their weighted total and the gradient of each with respect to
the features, as ``srl_ext::srl_loss`` (csrc/cpu/srl_loss.cpp) computes them on the CPU.

The term ops run a loss step as about twenty launches: their six kernels, torch's reductions and
scalings of the losses (row sums, the envelope's mean), the weighted sum of the terms, and in the
backward the scaling of each term's gradient, the table's backward kernel and the additions of
the gradients. This op runs six kernels and one torch sum, and its backward one multiplication:

1. the table (``table.launch_table``);
2. the contrastive term: its per-sample losses and gradient rows (``contrastive.launch_contrastive``);
3. the envelope's coverage per anchor, then ``coverage.sum()`` (torch: one parallel reduction);
4. the envelope's partial table gradients (3 and 4 by ``envelope.launch_envelope``);
5. per tile of bins (``_table_gradient_kernel``): the envelope's partials summed in split order,
   the homogeneity term and its table gradient (program 0 writes its loss), both taken back
   through the row normalisation and the bin mean;
6. per tile of samples (``_features_gradient_kernel``): both through each sample's
   normalisation, the four gradient rows (the total's weighed from the terms'), and (program 0)
   the losses.

No float atomics: deterministic run to run, as the term ops (across processes in the
deterministic mode only, ``utils.set_deterministic``).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...ops.fused import register_srl_loss_autograd
from ...reference import accumulation_dtype
from .contrastive import launch_contrastive
from .envelope import launch_envelope
from .homogeneity import _cosine_statistics, _neighbour_cosines
from .table import launch_table
from .utils import (EPS, UpTo, autotune, autotune_configs, block_dim, check_feature_dim, check_offsets, joined, launch,
                    normalize_backward, on_inputs_device, row_tile, size_bucket, split_float, unit_rows)

_TABLE_GRADIENT_CONFIGS = autotune_configs(
    ("BLOCK_K", "num_warps", "num_stages"),
    hopper=[(16, 4, 2), UpTo(128, (32, 4, 2))],
    ampere=[(16, 4, 2), UpTo(128, (32, 4, 2))],
    fallback=(8, 2, 1), interpreter=(4,),
)

_FEATURES_GRADIENT_CONFIGS = autotune_configs(
    ("BLOCK_B", "num_warps", "num_stages"),
    hopper=[UpTo(128, (32, 4, 2)), UpTo(128, (64, 8, 2))],
    ampere=[(16, 4, 2), (32, 4, 2)],
    fallback=(8, 2, 1), interpreter=(4,),
)

# Program 0 of the last kernel sums the per-sample losses in chunks of this many.
_ROW_CHUNK = 1024


@autotune(_TABLE_GRADIENT_CONFIGS, key=["K", "D"])
@triton.jit
def _table_gradient_kernel(
    c_ptr, mean_norm_ptr, count_ptr, partial_ptr, grad_mean_ptr, homogeneity_ptr,
    K, D, N, num_splits, sign_hi, sign_lo, beta_hi, beta_lo, eps,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    sign = joined(sign_hi, sign_lo, acc_dtype)
    beta = joined(beta_hi, beta_lo, acc_dtype)
    k, d, k_mask, d_mask, rows, row_mask = row_tile(K, D, BLOCK_K, BLOCK_D)

    # Enveloping: dL/dc_k = -(1/N) sum_j w_jk p_j, the partials summed in split order.
    grad_env = tl.zeros((BLOCK_K, BLOCK_D), dtype=acc_dtype)
    for split in range(0, num_splits):
        grad_env += tl.load(partial_ptr + split * K * D + rows, mask=row_mask, other=0.0)
    grad_env = grad_env * (-1.0 / tl.cast(tl.maximum(N, 1), acc_dtype))

    # Homogeneity (as homogeneity._homogeneity_kernel): the sum and the squared deviations of
    # all K - 1 neighbour cosines, then the gradient of this tile's rows.
    total_sum, mean, var_scale, variance = _cosine_statistics(c_ptr, d, d_mask, K, D, BLOCK_K, acc_dtype)
    if tl.program_id(0) == 0:
        tl.store(homogeneity_ptr, (sign * total_sum + beta * variance).to(acc_dtype))
    a_up, up_mask = _neighbour_cosines(c_ptr, k, d, d_mask, K, D)  # pair (k, k+1)
    a_down, down_mask = _neighbour_cosines(c_ptr, k - 1, d, d_mask, K, D)  # pair (k-1, k)
    up = tl.where(up_mask, sign + beta * var_scale * (a_up - mean), 0.0)
    down = tl.where(down_mask, sign + beta * var_scale * (a_down - mean), 0.0)
    after = tl.load(c_ptr + (k[:, None] + 1) * D + d[None, :], mask=up_mask[:, None] & d_mask[None, :], other=0.0)
    before = tl.load(c_ptr + (k[:, None] - 1) * D + d[None, :], mask=down_mask[:, None] & d_mask[None, :], other=0.0)
    grad_homo = up[:, None] * after + down[:, None] * before

    # Through the row normalisation and the mean: d / d mean_k = (normalisation backward) / count
    # (absent bins have no samples to reach).
    c = tl.load(c_ptr + rows, mask=row_mask, other=0.0)
    mean_norm = tl.load(mean_norm_ptr + k, mask=k_mask, other=1.0)
    inv_count = 1.0 / tl.maximum(tl.load(count_ptr + k, mask=k_mask, other=1), 1).to(acc_dtype)
    tl.store(grad_mean_ptr + rows, normalize_backward(c, mean_norm, grad_env, eps) * inv_count[:, None], mask=row_mask)
    tl.store(grad_mean_ptr + K * D + rows, normalize_backward(c, mean_norm, grad_homo, eps) * inv_count[:, None],
             mask=row_mask)


@autotune(_FEATURES_GRADIENT_CONFIGS, key=["K", "D", "B_BUCKET"])
@triton.jit
def _features_gradient_kernel(
    h_ptr, bins_ptr, grad_mean_ptr, grad_con_ptr, grads_ptr, row_loss_ptr, coverage_sum_ptr, homogeneity_ptr,
    total_ptr, contrastive_ptr, enveloping_ptr,
    B, K, D, N, w1_hi, w1_lo, w2_hi, w2_lo, w3_hi, w3_lo, coverage_scale_hi, coverage_scale_lo, eps, B_BUCKET,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ROW_CHUNK: tl.constexpr,
):
    acc_dtype = grads_ptr.dtype.element_ty
    w1 = joined(w1_hi, w1_lo, acc_dtype)
    w2 = joined(w2_hi, w2_lo, acc_dtype)
    w3 = joined(w3_hi, w3_lo, acc_dtype)
    b, d, b_mask, d_mask, own, mask = row_tile(B, D, BLOCK_B, BLOCK_D)
    z, norm = unit_rows(h_ptr, own, mask, eps, acc_dtype)
    y = tl.load(bins_ptr + b, mask=b_mask, other=0)
    # Bins are not checked on the GPU (a host sync): an out-of-range one reads nothing, and its
    # sample's gradient rows are NaN, as in the table's backward kernel.
    gather_rows = b_mask & (y >= 0) & (y < K)
    gather = gather_rows[:, None] & d_mask[None, :]
    bin_rows = y[:, None] * D + d[None, :]
    grad_env = normalize_backward(z, norm, tl.load(grad_mean_ptr + bin_rows, mask=gather, other=0.0), eps)
    grad_homo = normalize_backward(z, norm, tl.load(grad_mean_ptr + K * D + bin_rows, mask=gather, other=0.0), eps)
    grad_env = tl.where(gather_rows[:, None], grad_env, float("nan"))
    grad_homo = tl.where(gather_rows[:, None], grad_homo, float("nan"))
    grad_con = tl.load(grad_con_ptr + own, mask=mask, other=0.0)
    tl.store(grads_ptr + own, w1 * grad_con + w2 * grad_env + w3 * grad_homo, mask=mask)
    tl.store(grads_ptr + B * D + own, grad_con, mask=mask)
    tl.store(grads_ptr + 2 * B * D + own, grad_env, mask=mask)
    tl.store(grads_ptr + 3 * B * D + own, grad_homo, mask=mask)

    if tl.program_id(0) == 0:  # the four losses
        rows = tl.zeros((ROW_CHUNK,), dtype=acc_dtype)
        for r0 in range(0, B, ROW_CHUNK):
            r = r0 + tl.arange(0, ROW_CHUNK)
            rows += tl.load(row_loss_ptr + r, mask=r < B, other=0.0)
        contrastive = tl.sum(rows, axis=0) / tl.cast(B, acc_dtype)
        coverage_scale = joined(coverage_scale_hi, coverage_scale_lo, acc_dtype)
        enveloping = 1.0 - tl.load(coverage_sum_ptr) * coverage_scale / tl.cast(N, acc_dtype)
        homogeneity = tl.load(homogeneity_ptr)
        tl.store(contrastive_ptr, contrastive)
        tl.store(enveloping_ptr, enveloping)
        tl.store(total_ptr, w1 * contrastive + w2 * enveloping + w3 * homogeneity)


@triton_op("srl_ext_triton::srl_loss", mutates_args=())
@on_inputs_device
def srl_loss_op(
    features: torch.Tensor,
    bins: torch.Tensor,
    memory: torch.Tensor,
    anchors: torch.Tensor,
    w1: float,
    w2: float,
    w3: float,
    temperature: float,
    homogeneity_sign: float,
    homogeneity_beta: float,
    envelope_temperature: Optional[float],
    label_weighting: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, contrastive, enveloping, homogeneity, grads 4 x B x D), as ``srl_ext::srl_loss``."""
    batch, dim = features.shape
    num_bins = memory.shape[0]
    num_anchors = anchors.shape[0]
    check_feature_dim("srl_loss", "features", dim)
    if num_bins < 2:
        raise ValueError(f"srl_loss: argument 'memory' must have K >= 2 rows, got {num_bins}")
    if envelope_temperature is not None and not envelope_temperature > 0:
        raise ValueError(f"srl_loss: argument 'envelope_temperature' must be > 0 or None, got {envelope_temperature}")
    # 32-bit offsets: the four gradients (4 x B x D) and both table gradients (2 x K x D).
    check_offsets("srl_loss", "features", 4 * batch * dim, " (the four gradients, 4 x B x D)")
    check_offsets("srl_loss", "memory", 2 * num_bins * dim, " (two table gradients, 2 x K x D)")
    soft = envelope_temperature is not None
    acc = accumulation_dtype(features.dtype)
    features = features.contiguous()
    bins = bins.contiguous()
    memory = memory.to(acc).contiguous()
    anchors = anchors.to(acc).contiguous()  # no copy for contiguous anchors of the accumulation dtype
    block_d = block_dim(dim)

    # 1. The table.
    surrogates, mean_norms, counts = launch_table(features, bins, memory, acc)

    # 2. The contrastive term: per-sample losses and gradient rows (copied into grads[1] by 6).
    row_losses, grad_contrastive = launch_contrastive(features, bins, surrogates, temperature, label_weighting, acc)

    # 3-4. The envelope: coverage per anchor and its sum, then the partial table gradients.
    coverage, partials = launch_envelope(surrogates, anchors, envelope_temperature, "srl_loss")
    coverage_sum = coverage.sum()
    num_splits = partials.shape[0]

    # 5. Both table gradients to d / d bin mean, and the homogeneity term.
    grad_means = surrogates.new_empty((2, num_bins, dim))
    homogeneity = surrogates.new_empty(())
    launch(_table_gradient_kernel)[lambda meta: (triton.cdiv(num_bins, meta["BLOCK_K"]),)](
        surrogates, mean_norms, counts, partials, grad_means, homogeneity,
        num_bins, dim, num_anchors, num_splits, *split_float(homogeneity_sign), *split_float(homogeneity_beta), EPS,
        BLOCK_D=block_d,
    )

    # 6. To the features, the total's gradient, and the losses.
    grads = features.new_empty((4, batch, dim), dtype=acc)
    total = surrogates.new_empty(())
    contrastive = surrogates.new_empty(())
    enveloping = surrogates.new_empty(())
    launch(_features_gradient_kernel)[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)](
        features, bins, grad_means, grad_contrastive, grads, row_losses, coverage_sum, homogeneity, total, contrastive,
        enveloping,
        batch, num_bins, dim, num_anchors, *split_float(w1), *split_float(w2), *split_float(w3),
        *split_float(envelope_temperature if soft else 1.0), EPS, size_bucket(batch),
        BLOCK_D=block_d, ROW_CHUNK=_ROW_CHUNK,
    )
    return total, contrastive, enveloping, homogeneity, grads


register_srl_loss_autograd(srl_loss_op)
