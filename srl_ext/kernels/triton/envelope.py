"""Enveloping term (docs/method.md, "Enveloping")
as fused Triton kernels.

Three launches in the forward, which returns the loss and the gradient the backward needs:

1. Coverage: one program per tile of anchors sweeps the K surrogates in tiles (one GEMM per
   tile) with an online max and arg-max (hard; strict '>' across tiles and the left tie-break
   within one keep the lowest k, as torch.max) or an online log-sum-exp of cosine / s (soft). It
   writes one number per anchor (the max, or the log-sum-exp) and, when hard, its arg-max: O(N),
   the K x N cosines never exist in memory.
2. Gradient: dL/dc_k = -(1/N) sum_j w_jk p_j, with w_j the one-hot arg-max (hard) or the softmax
   exp(<p_j, c_k>/s - lse_j) (soft), is a GEMM (w^T x anchors). It cannot be formed in launch 1:
   a K tile's weights need every anchor's max over all of K first. A grid of a FIXED number of
   anchor splits times the K tiles: each program keeps a BLOCK_K x D accumulator in registers,
   loops over the anchor tiles of its split (split, split + S, ...), recomputing its cosines
   (soft) or reading the arg-maxes (hard), and writes one partial K x D slice. Memory is
   S x K x D with S about two programs per SM, independent of N (N = 10^6 or 10^7 anchors cost
   nothing more), where one partial per anchor tile would grow with N.
3. Reduction: a small kernel sums the S partials in split order and scales by -1/N.

No float atomics anywhere: the result is deterministic, run to run (across processes in the
deterministic mode only, utils.set_deterministic: the tiles are timed). Anchor rows are addressed
with 64-bit offsets (N x D passes 2^31 from N = 1.7 x 10^7 at D = 128).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...reference import accumulation_dtype
from ...ops.fused import check_envelope, register_loss_autograd
from .utils import (
    INTERPRETING,
    UpTo,
    autotune,
    autotune_configs,
    block_dim,
    check_feature_dim,
    check_offsets,
    joined,
    launch,
    on_inputs_device,
    size_bucket,
    split_float,
)

_COVERAGE_CONFIGS = autotune_configs(
    ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages"),
    hopper=[(32, 32, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2)],
    ampere=[(32, 32, 8, 2), (16, 32, 4, 2)],
    fallback=(16, 16, 4, 1), interpreter=(8, 4),
)

_GRADIENT_CONFIGS = autotune_configs(
    ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages"),
    hopper=[UpTo(128, (64, 32, 8, 2)), UpTo(128, (32, 64, 8, 2)), UpTo(128, (32, 32, 4, 2))],
    ampere=[UpTo(128, (32, 32, 8, 2)), UpTo(128, (64, 16, 8, 2))],
    fallback=(16, 16, 4, 1), interpreter=(8, 4),
)

_REDUCE_CONFIGS = autotune_configs(
    ("BLOCK", "num_warps"),
    hopper=[(1024, 4)],
    ampere=[(1024, 4)],
    fallback=(256, 2), interpreter=(64,),
)

# The tiles the number of anchor splits is planned with (any config's tiles work with any count).
_PLANNED_ANCHOR_TILE = 64
_PLANNED_BIN_TILE = 64
# Under the interpreter: a few splits, so that the small test shapes run the split loop (several
# anchor tiles per split) and the reduction.
_INTERPRETER_SPLITS = 3
_INTERPRETER_ANCHOR_TILE = _COVERAGE_CONFIGS.configs[0].kwargs["BLOCK_N"]


def _num_splits(device: torch.device, num_anchors: int, num_bins: int) -> int:
    """How many anchor splits (programs per K tile) the gradient uses: with the K tiles about two
    programs per SM, never more than there are anchor tiles."""
    if INTERPRETING:
        anchor_tiles, wanted = triton.cdiv(num_anchors, _INTERPRETER_ANCHOR_TILE), _INTERPRETER_SPLITS
    else:
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
        anchor_tiles = triton.cdiv(num_anchors, _PLANNED_ANCHOR_TILE)
        wanted = triton.cdiv(programs, triton.cdiv(num_bins, _PLANNED_BIN_TILE))
    # sym_min/sym_max: no guard on the sizes when torch.compile traces with dynamic shapes.
    return torch.sym_max(1, torch.sym_min(anchor_tiles, wanted))


@autotune(_COVERAGE_CONFIGS, key=["K", "D", "SOFT", "N_BUCKET"])
@triton.jit
def _coverage_kernel(
    c_ptr, p_ptr, coverage_ptr, arg_max_ptr,
    N, K, D, inv_tau_hi, inv_tau_lo, N_BUCKET,
    SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    inv_tau = joined(inv_tau_hi, inv_tau_lo, acc_dtype)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    n_mask = n < N
    d_mask = d < D
    p = tl.load(p_ptr + n[:, None].to(tl.int64) * D + d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    running_max = tl.full((BLOCK_N,), float("-inf"), dtype=acc_dtype)
    running_arg = tl.zeros((BLOCK_N,), dtype=tl.int32)
    running_sum = tl.zeros((BLOCK_N,), dtype=acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        c = tl.load(c_ptr + k[:, None] * D + d[None, :], mask=k_mask[:, None] & d_mask[None, :], other=0.0)
        cosines = tl.dot(p, tl.trans(c), input_precision="ieee")
        if SOFT:
            scaled = tl.where(k_mask[None, :], cosines * inv_tau, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scaled, axis=1))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
                tl.exp(scaled - new_max[:, None]), axis=1
            )
            running_max = new_max
        else:
            cosines = tl.where(k_mask[None, :], cosines, float("-inf"))
            tile_max, tile_arg = tl.max(cosines, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_max > running_max  # strict: an earlier (lower) k keeps a tie
            running_arg = tl.where(better, k0 + tile_arg.to(tl.int32), running_arg)
            running_max = tl.where(better, tile_max, running_max)
    if SOFT:
        tl.store(coverage_ptr + n, running_max + tl.log(running_sum), mask=n_mask)  # lse of cosine / s
    else:
        tl.store(coverage_ptr + n, running_max, mask=n_mask)
        tl.store(arg_max_ptr + n, running_arg, mask=n_mask)


@autotune(_GRADIENT_CONFIGS, key=["K", "D", "SOFT", "N_BUCKET"])
@triton.jit
def _gradient_partials_kernel(
    c_ptr, p_ptr, coverage_ptr, arg_max_ptr, partial_ptr,
    N, K, D, inv_tau_hi, inv_tau_lo, N_BUCKET, num_splits,
    SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_dtype = c_ptr.dtype.element_ty
    inv_tau = joined(inv_tau_hi, inv_tau_lo, acc_dtype)
    split = tl.program_id(0)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, BLOCK_D)
    k_mask = k < K
    d_mask = d < D
    row_mask = k_mask[:, None] & d_mask[None, :]
    if SOFT:  # this program's K tile, for the cosines it recomputes
        c = tl.load(c_ptr + k[:, None] * D + d[None, :], mask=row_mask, other=0.0)
    acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=acc_dtype)
    for n0 in range(split * BLOCK_N, N, num_splits * BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        p = tl.load(p_ptr + n[:, None].to(tl.int64) * D + d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        if SOFT:
            lse = tl.load(coverage_ptr + n, mask=n_mask, other=0.0)
            cosines = tl.dot(p, tl.trans(c), input_precision="ieee")
            weights = tl.exp(cosines * inv_tau - lse[:, None])
        else:
            arg_max = tl.load(arg_max_ptr + n, mask=n_mask, other=-1)
            weights = (arg_max[:, None] == k[None, :]).to(acc_dtype)
        weights = tl.where(n_mask[:, None] & k_mask[None, :], weights, 0.0)
        acc += tl.dot(tl.trans(weights), p, input_precision="ieee")
    tl.store(partial_ptr + split * K * D + k[:, None] * D + d[None, :], acc, mask=row_mask)


@autotune(_REDUCE_CONFIGS, key=["size"])
@triton.jit
def _reduce_partials_kernel(partial_ptr, out_ptr, size, num_splits, N, BLOCK: tl.constexpr):
    # dL/dc = -(1/N) sum_j w_jk p_j; with no anchors the partials are zero and so is the gradient
    # (as in the CUDA kernel), not 0 * -inf.
    scale = -1.0 / tl.cast(tl.maximum(N, 1), partial_ptr.dtype.element_ty)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < size
    total = tl.zeros((BLOCK,), dtype=partial_ptr.dtype.element_ty)
    for split in range(0, num_splits):  # fixed order: deterministic
        total += tl.load(partial_ptr + split * size + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, (total * scale).to(out_ptr.dtype.element_ty), mask=mask)


def launch_envelope(
    c: torch.Tensor, p: torch.Tensor, envelope_temperature: Optional[float], function: str = "enveloping_loss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches 1 and 2 on contiguous surrogates `c` (K x D) and anchors `p` (N x D) of the
    accumulation dtype: (the coverage per anchor: max cosine, or log-sum-exp of cosine / s when
    soft; the partial gradients S x K x D, summed and scaled by -1/N by the caller). `function`
    names the caller in errors."""
    num_bins, dim = c.shape
    num_anchors = p.shape[0]
    soft = envelope_temperature is not None
    inv_tau = split_float(1.0 / envelope_temperature if soft else 1.0)
    block_d = block_dim(dim)
    coverage = c.new_empty((num_anchors,))
    arg_max = c.new_empty((num_anchors if not soft else 1,), dtype=torch.int32)
    launch(_coverage_kernel)[lambda meta: (triton.cdiv(num_anchors, meta["BLOCK_N"]),)](
        c, p, coverage, arg_max, num_anchors, num_bins, dim, *inv_tau, size_bucket(num_anchors), SOFT=soft,
        BLOCK_D=block_d,
    )
    num_splits = _num_splits(c.device, num_anchors, num_bins)
    # The partials are addressed with 32-bit offsets (anchor rows with 64-bit ones).
    check_offsets(function, "surrogates", num_splits * num_bins * dim, f" ({num_splits} partial gradients of K x D)")
    partials = c.new_empty((num_splits, num_bins, dim))
    launch(_gradient_partials_kernel)[lambda meta: (num_splits, triton.cdiv(num_bins, meta["BLOCK_K"]))](
        c, p, coverage, arg_max, partials, num_anchors, num_bins, dim, *inv_tau, size_bucket(num_anchors), num_splits,
        SOFT=soft, BLOCK_D=block_d,
    )
    return coverage, partials


@triton_op("srl_ext_triton::envelope", mutates_args=())
@on_inputs_device
def envelope_op(
    surrogates: torch.Tensor, anchors: torch.Tensor, envelope_temperature: Optional[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d surrogates), as ``srl_ext::envelope``."""
    num_bins, dim = surrogates.shape
    num_anchors = anchors.shape[0]
    check_feature_dim("enveloping_loss", "surrogates", dim)
    check_envelope(surrogates, anchors)
    if envelope_temperature is not None and not envelope_temperature > 0:
        raise ValueError(
            f"enveloping_loss: argument 'envelope_temperature' must be > 0 or None, got {envelope_temperature}"
        )
    acc = accumulation_dtype(surrogates.dtype)
    c = surrogates.to(acc).contiguous()
    coverage, partials = launch_envelope(c, anchors.to(acc).contiguous(), envelope_temperature)
    soft = envelope_temperature is not None
    covered = coverage.sum() * envelope_temperature if soft else coverage.sum()
    loss = 1 - covered / num_anchors

    num_splits = partials.shape[0]
    grad = torch.empty_like(c)
    size = num_bins * dim
    launch(_reduce_partials_kernel)[lambda meta: (triton.cdiv(size, meta["BLOCK"]),)](
        partials, grad, size, num_splits, num_anchors,
    )
    return loss, grad


register_loss_autograd(envelope_op, num_inputs=3)
