"""Homogeneity term (docs/method.md, "Homogeneity")
as one fused Triton kernel.

a_k = <c_{k+1}, c_k>;  L = sign * sum_k a_k + beta * Var(a)  (unbiased; 0 when K = 2).
dL/da_k = sign + 2 beta (a_k - mean(a)) / (K - 2);  dL/dc_k = dL/da_k c_{k+1} + dL/da_{k-1} c_{k-1}.

One launch, one program per tile of rows. Each program sweeps the K - 1 neighbour cosines twice
(their sum, then the squared deviations from the mean: the two-pass variance, stable), which is
O(K*D) and cheap next to the other terms, then writes the gradient of its own rows; program 0
writes the loss. Recomputing the a_k instead of storing them needs no buffer and no barrier.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...reference import accumulation_dtype
from ...ops.fused import check_homogeneity, register_loss_autograd
from .utils import (autotune, autotune_configs, block_dim, check_feature_dim, check_offsets, joined, launch,
                    on_inputs_device, split_float)

_CONFIGS = autotune_configs(
    ("BLOCK_K", "num_warps", "num_stages"),
    hopper=[(16, 4, 2), (32, 4, 2), (64, 8, 2)],
    ampere=[(16, 4, 2), (32, 4, 2)],
    fallback=(8, 2, 1), interpreter=(4,),
)


@triton.jit
def _neighbour_cosines(c_ptr, k, d, d_mask, K, D):
    """a_k = <c_{k+1}, c_k> for the rows k of a tile (0 where k + 1 >= K or k < 0), and the mask."""
    pair_mask = (k >= 0) & (k < K - 1)
    mask = pair_mask[:, None] & d_mask[None, :]
    here = tl.load(c_ptr + k[:, None] * D + d[None, :], mask=mask, other=0.0)
    after = tl.load(c_ptr + (k[:, None] + 1) * D + d[None, :], mask=mask, other=0.0)
    return tl.sum(here * after, axis=1), pair_mask


@triton.jit
def _cosine_statistics(c_ptr, d, d_mask, K, D, BLOCK_K: tl.constexpr, acc_dtype: tl.constexpr):
    """(sum, mean, 2/dof, unbiased variance) of the K - 1 neighbour cosines, swept BLOCK_K at a
    time; with a single pair (K = 2) the variance and its gradient scale are 0."""
    num_pairs = K - 1
    total = tl.zeros((BLOCK_K,), dtype=acc_dtype)
    for k0 in range(0, num_pairs, BLOCK_K):
        a, _ = _neighbour_cosines(c_ptr, k0 + tl.arange(0, BLOCK_K), d, d_mask, K, D)
        total += a
    total_sum = tl.sum(total, axis=0)
    mean = total_sum / tl.cast(num_pairs, acc_dtype)
    squares = tl.zeros((BLOCK_K,), dtype=acc_dtype)
    for k0 in range(0, num_pairs, BLOCK_K):
        a, pair_mask = _neighbour_cosines(c_ptr, k0 + tl.arange(0, BLOCK_K), d, d_mask, K, D)
        squares += tl.where(pair_mask, (a - mean) * (a - mean), 0.0)
    has_variance = num_pairs > 1
    dof = tl.cast(tl.maximum(num_pairs - 1, 1), acc_dtype)
    var_scale = tl.where(has_variance, 2.0 / dof, 0.0)
    variance = tl.where(has_variance, tl.sum(squares, axis=0) / dof, 0.0)
    return total_sum, mean, var_scale, variance


@autotune(_CONFIGS, key=["K", "D"])
@triton.jit
def _homogeneity_kernel(
    c_ptr, loss_ptr, grad_ptr, K, D, sign_hi, sign_lo, beta_hi, beta_lo,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    sign = joined(sign_hi, sign_lo, acc_dtype)
    beta = joined(beta_hi, beta_lo, acc_dtype)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    total_sum, mean, var_scale, variance = _cosine_statistics(c_ptr, d, d_mask, K, D, BLOCK_K, acc_dtype)
    if tl.program_id(0) == 0:
        tl.store(loss_ptr, (sign * total_sum + beta * variance).to(acc_dtype))

    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    a_up, up_mask = _neighbour_cosines(c_ptr, k, d, d_mask, K, D)  # pair (k, k+1)
    a_down, down_mask = _neighbour_cosines(c_ptr, k - 1, d, d_mask, K, D)  # pair (k-1, k)
    up = tl.where(up_mask, sign + beta * var_scale * (a_up - mean), 0.0)
    down = tl.where(down_mask, sign + beta * var_scale * (a_down - mean), 0.0)
    row_mask = (k < K)[:, None] & d_mask[None, :]
    after = tl.load(c_ptr + (k[:, None] + 1) * D + d[None, :], mask=up_mask[:, None] & d_mask[None, :], other=0.0)
    before = tl.load(c_ptr + (k[:, None] - 1) * D + d[None, :], mask=down_mask[:, None] & d_mask[None, :], other=0.0)
    grad = up[:, None] * after + down[:, None] * before
    tl.store(grad_ptr + k[:, None] * D + d[None, :], grad.to(acc_dtype), mask=row_mask)


@triton_op("srl_ext_triton::homogeneity", mutates_args=())
@on_inputs_device
def homogeneity_op(surrogates: torch.Tensor, sign: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d surrogates), as ``srl_ext::homogeneity``."""
    num_bins, dim = surrogates.shape
    check_feature_dim("homogeneity_loss", "surrogates", dim)
    if num_bins < 2:
        raise ValueError(f"homogeneity_loss: argument 'surrogates' must have K >= 2 rows, got {num_bins}")
    check_homogeneity(surrogates)
    check_offsets("homogeneity_loss", "surrogates", num_bins * dim)
    acc = accumulation_dtype(surrogates.dtype)
    c = surrogates.to(acc).contiguous()
    loss = c.new_empty(())
    grad = torch.empty_like(c)
    launch(_homogeneity_kernel)[lambda meta: (triton.cdiv(num_bins, meta["BLOCK_K"]),)](
        c, loss, grad, num_bins, dim, *split_float(sign), *split_float(beta), BLOCK_D=block_dim(dim),
    )
    return loss, grad


register_loss_autograd(homogeneity_op, num_inputs=3)
