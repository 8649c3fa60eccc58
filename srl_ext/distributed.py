"""Data-parallel SRL on ``torch.distributed`` (DDP, launched with ``torchrun``).

Each rank holds a slice of the global batch. The SRL terms must be those of one process on the
concatenated batch, so:

- the surrogate table is built from the global batch (``surrogate_table``): the per-bin sums of
  z = h/||h|| are all-reduced with their gradient, the counts without;
- the terms are computed on that table with the chosen backend (``srl_terms``), and their
  gradients are scaled so that DDP's gradient averaging gives the single-process gradients;
- the memory reduces its sums and counts across ranks itself (``SurrogateMemory.update``);
- the anchors come from a fixed seed; ``assert_same_across_ranks`` checks it cheaply and
  ``broadcast_`` enforces it.

Process setup (joining the group under torchrun, sharding and gathering evaluation sets, which
rank writes files) belongs to the training application: ``srl_ext.training.ddp``.

Every function here is the single-process one when torch.distributed is not initialised or the
world has one rank, so the same training code runs with and without torchrun.

The collectives in the forward and backward of ``srl_terms`` must be reached by every rank in
the same order: call it on every rank, every step (never under ``if is_main_process()``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import backends, reference
from . import validation as check
from .settings import SRLSettings


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True when torch.distributed is initialised and `group` has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks (1 without torch.distributed)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the incoming gradients.

    Written here rather than taken from torch.distributed.nn.functional.all_reduce (deprecated
    since torch 2.6, same semantics) because the gradient scaling of ``srl_terms`` rests on this
    backward: rank r receives the sum over all ranks of dL_r'/d(global sums).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad = grad_total.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def sum_across_ranks(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The sum of `tensor` over the ranks of `group`, differentiable (see ``_SumAcrossRanks``)."""
    return _SumAcrossRanks.apply(tensor, group)


def _global_sums_and_counts(features, bins, num_bins, group):
    sums, counts = reference.bin_sums(features, bins, num_bins)
    sums = sum_across_ranks(sums, group)
    dist.all_reduce(counts, group=group)  # integer counts carry no gradient
    return sums, counts


def surrogate_table(
    features: torch.Tensor,
    bins: torch.Tensor,
    memory: torch.Tensor,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """The K x D surrogate table of the global batch (docs/method.md, "The surrogate table"),
    identical on every rank.

    The local per-bin sums of z = normalize(h) are all-reduced with their gradient and the
    counts without; present bins take the global means, absent bins the detached memory row;
    rows are normalised as ``srl_ext.reference.surrogate_table`` (EPS floor, zero rows stay
    zero). The table is plain PyTorch (a B x D scatter): the fused kernels build a table from
    one process's batch only. Without torch.distributed (or with one rank) this is
    ``reference.surrogate_table``.

    Gradient: rank r's features receive the sum over all ranks of the gradients reaching the
    table (the backward of the all-reduce), i.e. W times the single-process gradient when every
    rank computes the same loss of the table; see ``srl_terms`` for why that is what DDP needs.
    """
    name = "distributed.surrogate_table"
    features, bins, memory = check.table_inputs(name, features, bins, memory)
    if not is_distributed(group):
        return reference.surrogate_table(features, bins, memory)
    sums, counts = _global_sums_and_counts(features, bins, memory.shape[0], group)
    return reference.surrogates_from_sums(sums, counts, memory)


def srl_terms(features, bins, memory, anchors, settings: SRLSettings | None = None, *, backend: str = "auto",
              group: dist.ProcessGroup | None = None, **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``srl_ext.functional.srl_terms`` on the global batch of a data-parallel step.

    Call it on every rank with that rank's features and bins; `memory` and `anchors` must be
    the same on every rank. Without torch.distributed (or with one rank) it is
    ``functional.srl_terms``; the settings are taken as there.

    Values: on every rank, the three terms of one process on the concatenated batch (the
    contrastive value is all-reduced, so rank 0 can log it as it is).

    Gradients: DDP averages the parameter gradients over the W ranks, so the gradient that each
    rank's backward sends to its own features must be W times the single-process gradient of
    those rows; the average over ranks then sums the rows back into the global gradient.
    - Enveloping and homogeneity are functions T(C) of the global table, computed identically
      on every rank. Rank r's features reach C through the all-reduced sums S = sum_r' S_r', whose
      backward sums dT/dS over the W ranks: W * dT/dS, times dS_r/dθ. DDP's mean over ranks:
      (1/W) sum_r W dT/dS dS_r/dθ = dT/dS dS/dθ, the single-process gradient. No correction.
    - Contrastive: a mean over samples, with the table detached. Rank r differentiates its local
      mean scaled by W * B_r / B (B = global batch), so sample i gets (W / B) dl_i, and DDP's
      mean gives (1/B) sum_i dl_i. With equal local batches the scale is 1. Its value is
      replaced by the global mean (forward only), the gradient keeps the scaled local form.
    - Label-distance weighting divides the weights by their maximum over the batch: a constant
      shift of the contrastive value (no gradient), taken over the global batch here.
    So a plain `loss.backward()` under DDP gives the single-process gradients. Without DDP
    (gradients not averaged), divide by ``world_size()``.
    """
    name = "distributed.srl_terms" if is_distributed(group) else "srl_terms"
    features, bins, memory, anchors = check.srl_inputs(name, features, bins, memory, anchors)
    settings = SRLSettings.resolve(name, settings, **options)
    impl = backends.resolve(backend, features.device, name)
    if not is_distributed(group):
        surrogates = impl.surrogate_table(features, bins, memory)
        return backends.apply_terms(impl, features, bins, surrogates, anchors, settings)
    num_bins = memory.shape[0]
    sums, counts = _global_sums_and_counts(features, bins, num_bins, group)
    surrogates = reference.surrogates_from_sums(sums, counts, memory)
    local_contrastive, enveloping, homogeneity = backends.apply_terms(impl, features, bins, surrogates, anchors, settings)
    contrastive = _global_mean(local_contrastive, bins, counts, num_bins, settings.label_weighting, group)
    return contrastive, enveloping, homogeneity


def _global_mean(local_mean, bins, global_counts, num_bins, label_weighting, group):
    """The contrastive term whose value is the global-batch mean and whose gradient, after
    DDP's averaging, is that of the global-batch mean (see ``srl_terms``)."""
    local_batch = bins.shape[0]
    global_batch = global_counts.sum().to(local_mean.dtype)  # a tensor: no host synchronisation
    scaled = local_mean * (world_size(group) * local_batch / global_batch)
    with torch.no_grad():
        value = local_mean.detach().clone()
        if label_weighting:
            # log w_ik = log d_ik - log max_{i,k} d_ik: the local max shifts the local mean by a
            # constant; replace it by the max over the global batch (max_k |y - k| = max(y, K-1-y)).
            local_max = (torch.maximum(bins, num_bins - 1 - bins).max() + 1).reshape(1)
            global_max = local_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
            value += torch.log(local_max.to(value.dtype) / global_max.to(value.dtype)).squeeze(0)
        value *= local_batch / global_batch
        dist.all_reduce(value, group=group)
    return value + (scaled - scaled.detach())


def broadcast_(tensor: torch.Tensor, src: int = 0, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Overwrite `tensor` in place with rank `src`'s copy (e.g. the anchors); returns it."""
    if is_distributed(group):
        with torch.no_grad():
            dist.broadcast(tensor, src=src, group=group)
    return tensor


def assert_same_across_ranks(tensor: torch.Tensor, what: str, group: dist.ProcessGroup | None = None) -> None:
    """Raise RuntimeError on every rank unless `tensor` is the same on every rank.

    A cheap check for things drawn from a fixed seed (the anchors), meant for once at start-up: a
    fingerprint (shape, dtype, and the float64 sum, position-weighted sum and sum of squares) is
    gathered instead of the tensor. Identical tensors always pass; differing ones fail except on
    a measure-zero coincidence.
    """
    if not is_distributed(group):
        return
    x = tensor.detach().reshape(-1).to(torch.float64)
    positions = torch.arange(1, x.numel() + 1, dtype=torch.float64, device=x.device)
    fingerprint = (tuple(tensor.shape), str(tensor.dtype), x.sum().item(), (x * positions).sum().item(), (x * x).sum().item())
    prints = [None] * world_size(group)
    dist.all_gather_object(prints, fingerprint, group=group)
    differing = [r for r, p in enumerate(prints) if p != prints[0]]
    if differing:
        raise RuntimeError(
            f"{what} differ across ranks: ranks {differing} do not match rank 0 "
            f"(draw them from the same seed, or call srl_ext.distributed.broadcast_)"
        )

