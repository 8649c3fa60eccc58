"""``SurrogateMemory``: per-bin running means of the projector outputs
(docs/method.md, "Surrogate memory").

Its table stands in for the bins absent from a batch when the surrogate table is built. Two
ways to fill it:

- ``epoch_pass`` (released code): at the end of each epoch, one no-grad pass over the training
  set calls ``accumulate`` on every batch, then ``update``.
- ``online``: the training steps call ``accumulate`` on the (detached) features they already
  computed, and ``update`` runs at the end of the epoch: no extra pass over the data.

``update`` folds the accumulated means in: the first update copies them, later ones take
``momentum * memory + (1 - momentum) * current``; bins with nothing accumulated keep their row,
and an update with nothing accumulated at all changes nothing.
Under torch.distributed the sums and counts are all-reduced first, so every rank holds the same
table.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from . import reference
from . import validation as check

MODES = ("epoch_pass", "online")


class SurrogateMemory(nn.Module):
    """A K x D table (``table``) of per-bin running means of the features, no gradient: the rows
    that stand in for the bins absent from a batch when the surrogate table is built.

    Feed it with ``accumulate(features.detach(), bins)`` and fold what was fed in with ``update()``
    once an epoch; pass ``memory.table`` to ``SRLLoss`` at every step. ``mode`` names the loop that
    feeds it (see the module docstring): the class computes the same either way, and the training
    loop does the feeding:

    >>> memory = SurrogateMemory(num_bins=102, feature_dim=128, mode="online")
    >>> out = loss_fn(h, bins, memory.table)            # every step
    >>> memory.accumulate(h.detach(), bins)             # online: the step's own features
    >>> memory.update()                                 # end of the epoch
    """

    def __init__(self, num_bins: int, feature_dim: int, *, momentum: float = 0.9, mode: str = "epoch_pass",
                 normalize: bool = False) -> None:
        """
        Args:
            num_bins, feature_dim: K and D of the table.
            momentum: weight of the old table in each update after the first (0.9 released).
            mode: "epoch_pass" or "online" (see the module docstring): how your training loop
                feeds the memory, recorded with it (``extra_repr``, checkpoints); the arithmetic is
                the same, so the loop, not this class, calls ``accumulate`` where the mode says.
            normalize: accumulate unit vectors z = h/||h|| (the released STS-B code) instead of
                the raw features h (the released image code).
        """
        super().__init__()
        name = "SurrogateMemory"
        for argument, value, low in (("num_bins", num_bins, 2), ("feature_dim", feature_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                check.fail(name, argument, f"an int >= {low}", f"{type(value).__name__} {value!r}")
        if not isinstance(mode, str) or mode not in MODES:
            check.fail(name, "mode", f"one of {', '.join(map(repr, MODES))}", repr(mode))
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            check.fail(name, "momentum", "a number in [0, 1)", f"{type(momentum).__name__} {momentum!r}")
        if not isinstance(normalize, bool):
            check.fail(name, "normalize", "True or False", f"{type(normalize).__name__} {normalize!r}")
        self.mode = mode
        self.momentum = float(momentum)
        self.normalize = bool(normalize)
        self.register_buffer("table", torch.zeros(num_bins, feature_dim))
        self.register_buffer("sums", torch.zeros(num_bins, feature_dim, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_bins, dtype=torch.int64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.half()``, ``.cuda()``... convert the table; the accumulators follow it to
        its device but keep their dtypes (float64 sums, int64 counts), which accumulate exactly
        whatever the table's precision."""
        kept = {name: self._buffers.pop(name) for name in ("sums", "counts", "num_updates")}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, value in kept.items():
                self._buffers[name] = value.to(self.table.device)
        return self

    @property
    def num_bins(self) -> int:
        return self.table.shape[0]

    @torch.no_grad()
    def accumulate(self, features: torch.Tensor, bins: torch.Tensor) -> None:
        """Add a batch's detached features to the per-bin sums (nothing changes if the input is bad).

        Bins outside [0, K) raise on CPU tensors; on GPU tensors they are not checked (a host
        sync) and their samples are left out, as the surrogate table leaves them out of every bin.
        """
        name = "SurrogateMemory.accumulate"
        features = check.features(name, features)
        if features.shape[1] != self.table.shape[1]:
            check.fail(name, "features", f"{self.table.shape[1]} columns (feature_dim)", f"shape {tuple(features.shape)}")
        bins = check.bins(name, bins, features.shape[0], self.num_bins, features)
        x = features.detach().to(self.sums.device, torch.float64)
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        sums, counts = reference.sum_by_bin(x, bins.to(self.sums.device), self.num_bins)
        self.sums += sums
        self.counts += counts

    @torch.no_grad()
    def update(self, group: dist.ProcessGroup | None = None) -> None:
        """Fold the accumulated per-bin means into the table and clear the accumulators."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(self.sums, group=group)
            dist.all_reduce(self.counts, group=group)
        present = self.counts > 0
        if not bool(present.any()):
            return  # nothing accumulated: no update, so the next one is still a first copy
        current = self.sums[present] / self.counts[present].unsqueeze(1)  # float64
        if int(self.num_updates) == 0:
            self.table[present] = current.to(self.table.dtype)
        else:  # the average in float64, rounded once to the table's dtype
            old = self.table[present].to(current.dtype)
            self.table[present] = (self.momentum * old + (1 - self.momentum) * current).to(self.table.dtype)
        self.num_updates += 1
        self.sums.zero_()
        self.counts.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_bins={self.num_bins}, feature_dim={self.table.shape[1]}, mode={self.mode!r}, "
            f"momentum={self.momentum}, normalize={self.normalize}"
        )
