"""FDS: calibrate each label bucket's features towards kernel-smoothed statistics of its
neighbouring buckets (docs/methods.md, "FDS").

The module sits on the regressor's input h (not on the SRL projector) and only acts in
training mode. Its statistics come from one pass over the training set per epoch, fed batch by
batch, so the pass that refills the SRL memory can feed both::

    # training step, epoch e (model.train()):
    h = fds.smooth(h, labels, e)                  # identity before start_smooth and in eval mode
    # end of epoch e, no-grad pass in train mode:
    for inputs, labels in train_loader:
        fds.accumulate(h_of(inputs), labels)      # raw h (see the inplace option)
    fds.update(e)                                 # folds the pass in, clears the accumulators

The eight statistics buffers (the released module's names) are in the state_dict; the
accumulators of a pass in progress are not.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import validation as check
from . import _checks
from .smoothing import BINNINGS, histogram_bins, kernel_window

EMPTY_BUCKETS = ("neighbours", "keep")

# The released settings of each benchmark (README commands; the variance-ratio clip of each
# benchmark folder's calibrate_mean_var): FDS(feature_dim, **FDS_RELEASED[name]). They leave the
# released quirks off; docs/methods.md lists the flags that reproduce them.
FDS_RELEASED: dict[str, dict] = {
    "agedb": dict(num_buckets=100, bucket_start=3, binning="floor", kernel="gaussian", ks=5, sigma=2.0,
                  momentum=0.9, start_update=0, start_smooth=1, clip=(0.1, 10.0)),
    "imdb_wiki": dict(num_buckets=100, bucket_start=0, binning="floor", kernel="gaussian", ks=5, sigma=2.0,
                      momentum=0.9, start_update=0, start_smooth=1, clip=(0.1, 10.0)),
    "sts_b": dict(num_buckets=50, bucket_start=0, binning="histogram", value_range=(0.0, 5.0), kernel="gaussian",
                  ks=5, sigma=2.0, momentum=0.9, start_update=0, start_smooth=1, clip=(0.5, 2.0)),
}

_BELOW, _ABOVE = 0, 1  # the two extra accumulator rows of floor binning, after the R buckets


class FDS(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        num_buckets: int,
        *,
        bucket_start: int = 0,
        binning: str = "floor",
        value_range: tuple[float, float] | None = None,
        kernel: str = "gaussian",
        ks: int = 5,
        sigma: float = 2.0,
        momentum: float | None = 0.9,
        start_update: int = 0,
        start_smooth: int = 1,
        clip: tuple[float, float] = (0.1, 10.0),
        empty_buckets: str = "neighbours",
        alias_last_epoch: bool = False,
        inplace: bool = False,
    ) -> None:
        """
        Args:
            feature_dim: D of h (2048 for ResNet-50, 12000 for the STS-B pair feature).
            num_buckets, bucket_start: R = num_buckets - bucket_start buckets (rows); label
                bucket b is row b - bucket_start.
            binning: "floor" (age datasets): bucket int(y); labels <= bucket_start pool into the
                first row and labels >= num_buckets - 1 into the last, each only when that edge
                label itself occurs (in the pass, or in the batch for ``smooth``); other labels
                outside are ignored. "histogram" (STS-B): numpy.histogram's bucket on
                value_range, labels below bucket_start's bucket pooled into the first row.
            kernel, ks, sigma: the smoothing window along the buckets, divided by its sum;
                reflect padding at the ends (needs R > ks // 2).
            momentum: weight of the old statistics in each update; None for the running average
                over all samples seen. The update at start_update copies the pass's statistics.
            start_update: the first epoch whose pass is folded in.
            start_smooth: the first epoch whose training steps are calibrated.
            clip: bounds of the variance ratio v2 / v1 in the calibration (released: (0.1, 10) in the
                age code, (0.5, 2) in the STS-B code).
            empty_buckets: what an update does to buckets absent from its pass: "neighbours"
                sets each, in bucket order, to the mean of its two neighbours (the end buckets
                copy their one neighbour), as the released STS-B code does; "keep" leaves them
                as they are, initially mean 0 and variance 1 (released age code, quirk (c)).
            alias_last_epoch: released quirk (a): the last-epoch statistics used as the
                calibration's source are the running statistics themselves (including the
                latest pass), while the smoothed target lags one pass behind.
            inplace: released quirk (b): ``smooth`` writes the calibrated rows into its input,
                so the caller's h (and anything read from it later) is calibrated too.
        """
        super().__init__()
        name = "FDS"
        _checks.integer(name, "feature_dim", feature_dim, 1)
        _checks.integer(name, "num_buckets", num_buckets, 2)
        _checks.integer(name, "bucket_start", bucket_start, 0)
        _checks.choice(name, "binning", binning, BINNINGS)
        if binning == "histogram":
            if value_range is None:
                check.fail(name, "value_range", "a pair (low, high) with binning='histogram'", "None")
            value_range = _checks.value_range(name, value_range)
        elif value_range is not None:
            check.fail(name, "value_range", "None with binning='floor'", repr(value_range))
        window = kernel_window(kernel, ks, sigma, normalize="sum", function=name)
        rows = num_buckets - bucket_start
        if rows < 2 or rows <= ks // 2:
            check.fail(name, "num_buckets, bucket_start",
                       f"R = num_buckets - bucket_start >= 2 and > ks // 2 = {ks // 2} (reflect padding)",
                       f"R = {rows}")
        if momentum is not None:
            momentum = _checks.number(name, "momentum", momentum, minimum=0.0)
            if momentum >= 1.0:
                check.fail(name, "momentum", "None or a number in [0, 1)", repr(momentum))
        _checks.integer(name, "start_update", start_update, 0)
        _checks.integer(name, "start_smooth", start_smooth, 0)
        if (not isinstance(clip, (tuple, list)) or len(clip) != 2
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
                or not 0 < clip[0] <= clip[1]):
            check.fail(name, "clip", "a pair (low, high) with 0 < low <= high", repr(clip))
        _checks.choice(name, "empty_buckets", empty_buckets, EMPTY_BUCKETS)
        for argument, value in (("alias_last_epoch", alias_last_epoch), ("inplace", inplace)):
            if not isinstance(value, bool):
                check.fail(name, argument, "a bool", repr(value))
        self.feature_dim = feature_dim
        self.num_buckets = num_buckets
        self.bucket_start = bucket_start
        self.binning = binning
        self.value_range = value_range
        self.kernel, self.ks, self.sigma = kernel, ks, sigma
        self.momentum = momentum
        self.start_update = start_update
        self.start_smooth = start_smooth
        self.clip = (float(clip[0]), float(clip[1]))
        self.empty_buckets = empty_buckets
        self.alias_last_epoch = alias_last_epoch
        self.inplace = inplace
        self.kernel_window = window  # float64, not a buffer: moved to the statistics when used
        self.register_buffer("epoch", torch.zeros(1).fill_(start_update))
        self.register_buffer("running_mean", torch.zeros(rows, feature_dim))
        self.register_buffer("running_var", torch.ones(rows, feature_dim))
        self.register_buffer("running_mean_last_epoch", torch.zeros(rows, feature_dim))
        self.register_buffer("running_var_last_epoch", torch.ones(rows, feature_dim))
        self.register_buffer("smoothed_mean_last_epoch", torch.zeros(rows, feature_dim))
        self.register_buffer("smoothed_var_last_epoch", torch.ones(rows, feature_dim))
        self.register_buffer("num_samples_tracked", torch.zeros(rows))
        self._reset_accumulators()

    @property
    def num_rows(self) -> int:
        return self.num_buckets - self.bucket_start

    # ----- label -> row -----
    def _floor_buckets(self, labels: torch.Tensor) -> torch.Tensor:
        return (torch.floor(labels) if labels.is_floating_point() else labels).to(torch.int64)

    def _accumulator_rows(self, function: str, labels: torch.Tensor) -> torch.Tensor:
        """Row of each sample in the accumulators: 0..R-1, or R / R + 1 for floor labels below
        the first / above the last bucket (pooled at update time if the edge label occurred)."""
        if self.binning == "histogram":
            buckets = histogram_bins(labels, self.num_buckets, self.value_range, function)
            return buckets.clamp(min=self.bucket_start) - self.bucket_start
        rows = self._floor_buckets(labels) - self.bucket_start
        below, above = rows < 0, rows > self.num_rows - 1
        rows = torch.where(below, self.num_rows + _BELOW, rows)
        return torch.where(above, self.num_rows + _ABOVE, rows)

    def _calibration_rows(self, function: str, labels: torch.Tensor) -> torch.Tensor:
        """Row whose statistics calibrate each sample, -1 for samples left unchanged."""
        if self.binning == "histogram":
            return self._accumulator_rows(function, labels)
        buckets = self._floor_buckets(labels)
        first, last = self.bucket_start, self.num_buckets - 1
        rows = buckets - first
        below, above = buckets < first, buckets > last
        rows = torch.where(below, torch.where((buckets == first).any(), 0, -1), rows)
        return torch.where(above, torch.where((buckets == last).any(), self.num_rows - 1, -1), rows)

    # ----- the statistics pass -----
    def _reset_accumulators(self) -> None:
        self._count: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._sum_sq: torch.Tensor | None = None

    def _accumulators(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._count is None:
            rows = self.num_rows + 2
            self._count = torch.zeros(rows, dtype=torch.float64, device=device)
            self._sum = torch.zeros(rows, self.feature_dim, dtype=torch.float64, device=device)
            self._sum_sq = torch.zeros(rows, self.feature_dim, dtype=torch.float64, device=device)
        elif self._count.device != device:  # the module moved during a pass
            self._count, self._sum, self._sum_sq = (t.to(device) for t in (self._count, self._sum, self._sum_sq))
        return self._count, self._sum, self._sum_sq

    def wants_statistics(self, epoch: int) -> bool:
        """Whether ``update(epoch)`` will fold a pass in (epoch >= start_update)."""
        return epoch >= self.start_update

    @torch.no_grad()
    def accumulate(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of (detached) h and its labels to this epoch's pass."""
        name = "FDS.accumulate"
        features = _checks.features(name, features, self.feature_dim)
        labels = _checks.labels(name, labels, features.shape[0])
        check.same_device(name, "labels", labels, features)
        rows = self._accumulator_rows(name, labels)
        count, total, total_sq = self._accumulators(self.running_mean.device)
        rows = rows.to(count.device)
        x = features.detach().to(count.device, torch.float64)
        count.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
        total.index_add_(0, rows, x)
        total_sq.index_add_(0, rows, x * x)

    @torch.no_grad()
    def update(self, epoch: int, group: "dist.ProcessGroup | None" = None) -> None:
        """End of epoch `epoch`: refresh the last-epoch and smoothed statistics (once per new
        epoch), then fold the accumulated pass into the running statistics (docs/methods.md,
        "FDS"). Clears the accumulators. Under torch.distributed the pass is summed over the
        ranks first: call it on every rank."""
        name = "FDS.update"
        _checks.integer(name, "epoch", epoch, 0)
        if epoch < self.start_update:
            self._reset_accumulators()
            return
        count, total, total_sq = self._accumulators(self.running_mean.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            for tensor in (count, total, total_sq):
                dist.all_reduce(tensor, group=group)
        self._reset_accumulators()
        if epoch == int(self.epoch.item()) + 1:
            self.epoch += 1
            self.running_mean_last_epoch.copy_(self.running_mean)
            self.running_var_last_epoch.copy_(self.running_var)
            self.smoothed_mean_last_epoch.copy_(self.smooth_buckets(self.running_mean))
            self.smoothed_var_last_epoch.copy_(self.smooth_buckets(self.running_var))
        if epoch < int(self.epoch.item()) or not bool((count > 0).any()):
            return  # a stale epoch, or nothing accumulated: the running statistics stay
        rows = self.num_rows
        if self.binning == "floor":  # pool the labels beyond the edges into the edge rows
            for edge, extra in ((0, rows + _BELOW), (rows - 1, rows + _ABOVE)):
                if count[edge] > 0:
                    count[edge] += count[extra]
                    total[edge] += total[extra]
                    total_sq[edge] += total_sq[extra]
        count, total, total_sq = count[:rows], total[:rows], total_sq[:rows]
        present = count > 0
        n = count[present].unsqueeze(1)
        mean = total[present] / n
        # unbiased variance; a bucket of one sample gets the biased one, 0
        var = ((total_sq[present] - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
        self.num_samples_tracked[present] += count[present].to(self.num_samples_tracked.dtype)
        if epoch == self.start_update:
            factor = torch.zeros_like(n)
        elif self.momentum is None:
            factor = 1 - n / self.num_samples_tracked[present].to(n.dtype).unsqueeze(1)
        else:
            factor = torch.full_like(n, self.momentum)
        old_mean = self.running_mean[present].to(torch.float64)
        old_var = self.running_var[present].to(torch.float64)
        self.running_mean[present] = ((1 - factor) * mean + factor * old_mean).to(self.running_mean.dtype)
        self.running_var[present] = ((1 - factor) * var + factor * old_var).to(self.running_var.dtype)
        if self.empty_buckets == "neighbours":
            for row in (~present).nonzero().flatten().tolist():
                for stats in (self.running_mean, self.running_var):
                    if row == 0:
                        stats[0] = stats[1]
                    elif row == rows - 1:
                        stats[row] = stats[row - 1]
                    else:
                        stats[row] = (stats[row - 1] + stats[row + 1]) / 2.0
        if self.alias_last_epoch and int(self.epoch.item()) > self.start_update:
            # quirk (a): the released module's last-epoch tensors are the running ones
            self.running_mean_last_epoch.copy_(self.running_mean)
            self.running_var_last_epoch.copy_(self.running_var)

    def smooth_buckets(self, stats: torch.Tensor) -> torch.Tensor:
        """Each column of an R x D table convolved along the buckets with the window (reflect
        padding, the torch kind: the edge row is not repeated)."""
        half = self.ks // 2
        columns = stats.t().unsqueeze(1)  # D x 1 x R
        padded = F.pad(columns, (half, half), mode="reflect") if half else columns
        window = self.kernel_window.to(stats.device, stats.dtype).view(1, 1, -1)
        return F.conv1d(padded, window).squeeze(1).t()

    # ----- training -----
    def smooth(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """Calibrated h for a training step: x <- (x - m1) sqrt(clip(v2 / v1)) + m2 per sample,
        with m1, v1 the last-epoch and m2, v2 the smoothed statistics of its bucket.

        Unchanged: in eval mode, before start_smooth, samples of buckets whose v1 sums below
        1e-10, and dimensions where v1 is 0. Gradients flow through the affine map. With
        ``inplace`` the rows are written into `features` and it is returned (a leaf that
        requires grad cannot be written; nor can a tensor that the producing op saved for its
        backward, such as a ReLU output).
        """
        name = "FDS.smooth"
        _checks.integer(name, "epoch", epoch, 0)
        if not self.training or epoch < self.start_smooth:
            return features
        features = _checks.features(name, features, self.feature_dim)
        labels = _checks.labels(name, labels, features.shape[0])
        check.same_device(name, "labels", labels, features)
        rows = self._calibration_rows(name, labels).to(self.running_mean.device)
        keep = rows >= 0
        index = rows.clamp(min=0)
        dtype = features.dtype
        m1 = self.running_mean_last_epoch[index].to(features.device, dtype)
        v1 = self.running_var_last_epoch[index].to(features.device, dtype)
        m2 = self.smoothed_mean_last_epoch[index].to(features.device, dtype)
        v2 = self.smoothed_var_last_epoch[index].to(features.device, dtype)
        active = keep.to(features.device) & (v1.sum(dim=1) >= 1e-10)
        valid = active.unsqueeze(1) & (v1 != 0)
        factor = torch.where(valid, (v2 / torch.where(valid, v1, 1)).clamp(*self.clip), 1)
        calibrated = torch.where(valid, (features - m1) * factor.sqrt() + m2, features)
        if self.inplace:
            features.copy_(calibrated)
            return features
        return calibrated

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, num_buckets={self.num_buckets}, bucket_start={self.bucket_start}, "
            f"binning={self.binning!r}, kernel={self.kernel!r}, ks={self.ks}, sigma={self.sigma}, "
            f"momentum={self.momentum}, start_update={self.start_update}, start_smooth={self.start_smooth}, "
            f"clip={self.clip}, empty_buckets={self.empty_buckets!r}, alias_last_epoch={self.alias_last_epoch}, inplace={self.inplace}"
        )
