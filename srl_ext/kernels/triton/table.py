"""Batch surrogate table (docs/method.md, "The surrogate table")
as fused Triton kernels.

Forward, one launch, one program per tile of bins: it sweeps the batch in tiles, normalises the
feature rows, and adds them to its bins' sums with a one-hot GEMM (bins x batch tile) x (batch
tile x D): a deterministic scatter without atomics, and no K x B matrix in memory. At the end of
the sweep each bin becomes its mean (present) or its memory row (absent), normalised.

Backward, one launch, one program per tile of samples: each sample gathers its bin's surrogate,
incoming gradient, mean norm and count, takes the gradient back through the row normalisation
and the mean, then through its own normalisation. O(B*D); no K x D intermediate.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...reference import accumulation_dtype
from ...ops.fused import check_table, check_table_backward, register_table_autograd
from .utils import (EPS, UpTo, autotune, autotune_configs, block_dim, check_feature_dim, check_offsets, launch,
                    normalize_backward, on_inputs_device, row_tile, size_bucket, unit_rows)

_TABLE_CONFIGS = autotune_configs(
    ("BLOCK_K", "BLOCK_B", "num_warps", "num_stages"),
    hopper=[UpTo(128, (64, 32, 8, 2)), UpTo(128, (32, 32, 4, 2)), UpTo(128, (32, 64, 8, 2))],
    ampere=[UpTo(128, (64, 32, 8, 2)), UpTo(128, (32, 32, 4, 2))],
    fallback=(16, 16, 4, 1), interpreter=(4, 4),
)

_BACKWARD_CONFIGS = autotune_configs(
    ("BLOCK_B", "num_warps", "num_stages"),
    hopper=[UpTo(128, (32, 4, 2)), UpTo(128, (64, 8, 2))],
    ampere=[(16, 4, 2), UpTo(128, (32, 4, 2))],
    fallback=(8, 2, 1), interpreter=(4,),
)


@autotune(_TABLE_CONFIGS, key=["K", "D", "B_BUCKET"])
@triton.jit
def _surrogate_table_kernel(
    h_ptr, bins_ptr, memory_ptr, c_ptr, mean_norm_ptr, count_ptr,
    B, K, D, eps, B_BUCKET,
    BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    k, d, k_mask, d_mask, rows, row_mask = row_tile(K, D, BLOCK_K, BLOCK_D)
    sums = tl.zeros((BLOCK_K, BLOCK_D), dtype=acc_dtype)
    counts = tl.zeros((BLOCK_K,), dtype=tl.int64)
    spoiled = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        b_mask = b < B
        h = tl.load(h_ptr + b[:, None] * D + d[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
        h = h.to(acc_dtype)
        norm = tl.sqrt(tl.sum(h * h, axis=1))
        z = h / tl.maximum(norm, eps)[:, None]
        # A row with a NaN (a non-finite feature) would spoil every bin of the tile through the
        # one-hot GEMM (0 * NaN = NaN): it enters as zeros and spoils only its own bin, below.
        finite = tl.sum((z != z).to(tl.int32), axis=1) == 0
        y = tl.load(bins_ptr + b, mask=b_mask, other=-1)
        member = k[:, None] == y[None, :]  # BLOCK_K x BLOCK_B one-hot, only in registers
        sums += tl.dot(member.to(acc_dtype), tl.where(finite[:, None], z, 0.0), input_precision="ieee")
        counts += tl.sum(member.to(tl.int64), axis=1)
        spoiled += tl.sum((member & ~finite[None, :]).to(tl.int32), axis=1)
    present = counts > 0
    means = sums / tl.maximum(counts, 1).to(acc_dtype)[:, None]
    memory = tl.load(memory_ptr + rows, mask=row_mask & (~present)[:, None], other=0.0).to(acc_dtype)
    means = tl.where(present[:, None], means, memory)
    means = tl.where(spoiled[:, None] > 0, float("nan"), means)  # as the reference's NaN mean
    norm = tl.sqrt(tl.sum(means * means, axis=1))
    tl.store(c_ptr + rows, means / tl.maximum(norm, eps)[:, None], mask=row_mask)
    tl.store(mean_norm_ptr + k, norm, mask=k_mask)
    tl.store(count_ptr + k, counts, mask=k_mask)


@autotune(_BACKWARD_CONFIGS, key=["K", "D", "B_BUCKET"])
@triton.jit
def _surrogate_table_backward_kernel(
    grad_c_ptr, h_ptr, bins_ptr, c_ptr, mean_norm_ptr, count_ptr, grad_h_ptr,
    B, K, D, eps, B_BUCKET,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    b, d, b_mask, d_mask, own, mask = row_tile(B, D, BLOCK_B, BLOCK_D)
    z, norm = unit_rows(h_ptr, own, mask, eps, acc_dtype)
    y = tl.load(bins_ptr + b, mask=b_mask, other=0)
    # Bins are not checked on the GPU (a host sync): an out-of-range one reads nothing, and its
    # sample's gradient row is NaN, as in the CUDA kernel.
    gather_rows = b_mask & (y >= 0) & (y < K)
    gather = gather_rows[:, None] & d_mask[None, :]
    rows = y[:, None] * D + d[None, :]
    c = tl.load(c_ptr + rows, mask=gather, other=0.0)
    grad_c = tl.load(grad_c_ptr + rows, mask=gather, other=0.0).to(acc_dtype)
    mean_norm = tl.load(mean_norm_ptr + y, mask=gather_rows, other=1.0)
    count = tl.load(count_ptr + y, mask=gather_rows, other=1)
    # A sample's own bin is present (count >= 1): its mean keeps the gradient, split evenly.
    grad_mean = normalize_backward(c, mean_norm, grad_c, eps) / tl.maximum(count, 1).to(acc_dtype)[:, None]
    grad_h = tl.where(gather_rows[:, None], normalize_backward(z, norm, grad_mean, eps), float("nan"))
    tl.store(grad_h_ptr + own, grad_h.to(grad_h_ptr.dtype.element_ty), mask=mask)


def prepared(function: str, features: torch.Tensor, bins: torch.Tensor, rows: torch.Tensor, rows_argument: str):
    """(features, bins, K x D rows in the accumulation dtype, that dtype), contiguous, once the
    contract (``srl_ext.ops.fused``) and the Triton limits on D and on the sizes are checked."""
    check_table(features, bins, rows)
    check_feature_dim(function, "features", features.shape[1])
    check_offsets(function, "features", features.shape[0] * features.shape[1])
    check_offsets(function, rows_argument, rows.shape[0] * rows.shape[1])
    acc = accumulation_dtype(features.dtype)
    return features.contiguous(), bins.contiguous(), rows.to(acc).contiguous(), acc


def launch_table(features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor, acc: torch.dtype):
    """The table kernel on prepared inputs (``prepared``): (surrogates K x D, mean norms K,
    counts K), the first two in the accumulation dtype `acc`."""
    batch, dim = features.shape
    num_bins = memory.shape[0]
    surrogates = features.new_empty((num_bins, dim), dtype=acc)
    mean_norms = features.new_empty((num_bins,), dtype=acc)
    counts = bins.new_empty((num_bins,))
    launch(_surrogate_table_kernel)[lambda meta: (triton.cdiv(num_bins, meta["BLOCK_K"]),)](
        features, bins, memory, surrogates, mean_norms, counts, batch, num_bins, dim, EPS, size_bucket(batch),
        BLOCK_D=block_dim(dim),
    )
    return surrogates, mean_norms, counts


@triton_op("srl_ext_triton::surrogate_table", mutates_args=())
@on_inputs_device
def surrogate_table_op(
    features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(surrogates K x D, mean norms K, counts K), as ``srl_ext::surrogate_table``."""
    return launch_table(*prepared("surrogate_table", features, bins, memory, "memory"))


@triton_op("srl_ext_triton::surrogate_table_backward", mutates_args=())
@on_inputs_device
def surrogate_table_backward_op(
    grad_surrogates: torch.Tensor,
    features: torch.Tensor,
    bins: torch.Tensor,
    surrogates: torch.Tensor,
    mean_norms: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """d loss / d features given d loss / d surrogates (memory rows are detached)."""
    check_table_backward(grad_surrogates, features, bins, surrogates, mean_norms, counts)
    batch, dim = features.shape
    num_bins = surrogates.shape[0]
    check_offsets("surrogate_table_backward", "features", batch * dim)
    features = features.contiguous()
    grad_features = torch.empty_like(features)
    launch(_surrogate_table_backward_kernel)[lambda meta: (triton.cdiv(batch, meta["BLOCK_B"]),)](
        grad_surrogates.contiguous(), features, bins.contiguous(), surrogates.contiguous(),
        mean_norms.contiguous(), counts.contiguous(), grad_features,
        batch, num_bins, dim, EPS, size_bucket(batch),
        BLOCK_D=block_dim(dim),
    )
    return grad_features


register_table_autograd(surrogate_table_op, surrogate_table_backward_op)
