"""FDS (docs/methods.md, "FDS"): the worked cases, and statistics over several epochs against a
float64 transcription of the released module (age and STS-B variants, with and without the
released quirks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srl_ext.methods import FDS, FDS_RELEASED, kernel_window

# ----- a transcription of the released module, float64, loops as released -----


def _reflect_smooth(table: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Each column convolved along the rows, torch 'reflect' padding (edge row not repeated)."""
    rows, half = table.shape[0], window.shape[0] // 2
    out = torch.zeros_like(table)
    for r in range(rows):
        for k in range(-half, half + 1):
            j = r + k
            j = -j if j < 0 else (2 * (rows - 1) - j if j >= rows else j)
            out[r] += window[k + half] * table[j]
    return out


def _calibrate(x, m1, v1, m2, v2, low=0.1, high=10.0):
    if torch.sum(v1) < 1e-10:
        return x
    if (v1 == 0).any():
        ok = v1 != 0
        x = x.clone()
        x[:, ok] = (x[:, ok] - m1[ok]) * torch.sqrt(torch.clamp(v2[ok] / v1[ok], low, high)) + m2[ok]
        return x
    return (x - m1) * torch.sqrt(torch.clamp(v2 / v1, low, high)) + m2


class ReleasedFDS:
    """The released module's arithmetic: the age variant (groups by label value, edge pooling)
    or the STS-B one (numpy.histogram buckets on [0, 5], absent buckets filled from their
    neighbours). `alias` keeps the released aliasing of the last-epoch tensors."""

    def __init__(self, dim, bucket_num, bucket_start, window, *, sts=False, alias=True, momentum=0.9,
                 start_update=0, start_smooth=1):
        rows = bucket_num - bucket_start
        self.bucket_num, self.bucket_start, self.window, self.sts, self.alias = bucket_num, bucket_start, window, sts, alias
        self.momentum, self.start_update, self.start_smooth = momentum, start_update, start_smooth
        self.epoch = start_update
        self.running_mean = torch.zeros(rows, dim, dtype=torch.float64)
        self.running_var = torch.ones(rows, dim, dtype=torch.float64)
        self.running_mean_last_epoch = torch.zeros(rows, dim, dtype=torch.float64)
        self.running_var_last_epoch = torch.ones(rows, dim, dtype=torch.float64)
        self.smoothed_mean_last_epoch = torch.zeros(rows, dim, dtype=torch.float64)
        self.smoothed_var_last_epoch = torch.ones(rows, dim, dtype=torch.float64)
        self.num_samples_tracked = torch.zeros(rows, dtype=torch.float64)

    def _sts_bucket(self, label):
        label = np.float32(label)
        _, edges = np.histogram(np.array([], dtype=np.float32), bins=self.bucket_num, range=(0.0, 5.0))
        if label == 5.0:
            return self.bucket_num - 1
        return max(np.where(edges > label)[0][0] - 1, self.bucket_start)

    def _groups(self, labels):
        """(row, mask) per group, in the released order."""
        if self.sts:
            buckets = np.array([self._sts_bucket(y) for y in labels.tolist()])
            return [(int(b) - self.bucket_start, torch.from_numpy(buckets == b)) for b in np.unique(buckets)]
        groups = []
        for label in torch.unique(labels):
            if label > self.bucket_num - 1 or label < self.bucket_start:
                continue
            if label == self.bucket_start:
                mask = labels <= label
            elif label == self.bucket_num - 1:
                mask = labels >= label
            else:
                mask = labels == label
            groups.append((int(label - self.bucket_start), mask))
        return groups

    def update_last_epoch_stats(self, epoch):
        if epoch == self.epoch + 1:
            self.epoch += 1
            if self.alias:
                self.running_mean_last_epoch = self.running_mean
                self.running_var_last_epoch = self.running_var
            else:
                self.running_mean_last_epoch = self.running_mean.clone()
                self.running_var_last_epoch = self.running_var.clone()
            self.smoothed_mean_last_epoch = _reflect_smooth(self.running_mean_last_epoch, self.window)
            self.smoothed_var_last_epoch = _reflect_smooth(self.running_var_last_epoch, self.window)

    def update_running_stats(self, features, labels, epoch):
        if epoch < self.epoch:
            return
        present = set()
        for row, mask in self._groups(labels):
            present.add(row)
            feats = features[mask]
            n = feats.shape[0]
            mean = feats.mean(0)
            var = feats.var(0, correction=1 if n != 1 else 0)
            self.num_samples_tracked[row] += n
            factor = self.momentum if self.momentum is not None else 1 - n / float(self.num_samples_tracked[row])
            factor = 0 if epoch == self.start_update else factor
            self.running_mean[row] = (1 - factor) * mean + factor * self.running_mean[row]
            self.running_var[row] = (1 - factor) * var + factor * self.running_var[row]
        if self.sts:
            rows = self.running_mean.shape[0]
            for row in range(rows):
                if row in present:
                    continue
                for stats in (self.running_mean, self.running_var):  # the edges copy their one neighbour
                    below, above = stats[max(row - 1, 0)], stats[min(row + 1, rows - 1)]
                    stats[row] = above if row == 0 else below if row == rows - 1 else (below + above) / 2.0

    def smooth(self, features, labels, epoch):
        """Writes into `features`, as released."""
        if epoch < self.start_smooth:
            return features
        for row, mask in self._groups(labels):
            features[mask] = _calibrate(features[mask], self.running_mean_last_epoch[row], self.running_var_last_epoch[row],
                                        self.smoothed_mean_last_epoch[row], self.smoothed_var_last_epoch[row])
        return features

    def buffers(self):
        return {name: getattr(self, name) for name in (
            "running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
            "smoothed_mean_last_epoch", "smoothed_var_last_epoch", "num_samples_tracked")}


# ----- the worked cases -----

def _worked_module(**kwargs) -> FDS:
    fds = FDS(2, 5, ks=5, sigma=2.0, **kwargs).double()
    fds.running_mean.copy_(torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1], [10, 1.0]]))
    fds.running_var.copy_(torch.tensor([[1, 1], [1, 2], [4, 1], [1, 1], [1, 0.0]]))
    return fds


def test_smoothed_statistics_of_the_worked_table():
    """The values of the released float32 pipeline (scipy window, torch reflect pad and conv1d),
    to 6 decimals; docs/methods.md rounds some of them differently in the 6th decimal."""
    fds = _worked_module()
    fds.update(1)  # a new epoch: last-epoch copies and smoothed tables; nothing accumulated
    mean, var = fds.smoothed_mean_last_epoch, fds.smoothed_var_last_epoch
    assert mean[:, 0].tolist() == pytest.approx([1.155498, 1.372501, 3.117504, 3.858985, 4.146522], abs=1e-6)
    assert mean[:, 1].tolist() == pytest.approx([1.0] * 5, abs=1e-12)
    assert var[:, 0].tolist() == pytest.approx([2.117504, 1.615743, 1.651010, 1.615743, 2.117504], abs=1e-6)
    assert var[:, 1].tolist() == pytest.approx([1.410495, 1.403254, 1.018997, 0.981003, 0.782997], abs=1e-6)
    assert torch.equal(fds.running_mean_last_epoch, fds.running_mean) and float(fds.epoch) == 1.0


def test_calibration_of_the_worked_table():
    fds = _worked_module()
    fds.update(1)
    fds.train()
    x = torch.tensor([[2.5, 0.0], [1.0, 3.0], [9.0, 2.0]], dtype=torch.float64)
    out = fds.smooth(x, torch.tensor([2.0, 2.0, 4.0]), 1)
    assert out[0].tolist() == pytest.approx([3.438734, -0.009454], abs=1e-6)
    assert out[1].tolist() == pytest.approx([2.475047, 3.018908], abs=1e-6)
    assert out[2].tolist() == pytest.approx([2.691357, 2.0], abs=1e-6)  # v1 = 0 in the second dimension
    assert x[0].tolist() == [2.5, 0.0]  # not in place by default


def test_released_sts_b_clip_bounds_the_variance_ratio_of_the_worked_table():
    # bucket 2, column 0: v2 / v1 = 1.651008 / 4 = 0.41 is raised to 0.5; bucket 4: 2.117504 / 1 is cut to 2
    fds = _worked_module(clip=FDS_RELEASED["sts_b"]["clip"])
    fds.update(1)
    fds.train()
    x = torch.tensor([[2.5, 0.0], [1.0, 3.0], [9.0, 2.0]], dtype=torch.float64)
    out = fds.smooth(x, torch.tensor([2.0, 2.0, 4.0]), 1)
    m2_bucket2, m2_bucket4 = 3.117504, 4.146522
    assert out[0].tolist() == pytest.approx([0.5 * 0.5 ** 0.5 + m2_bucket2, -0.009454], abs=1e-6)
    assert out[1].tolist() == pytest.approx([-1.0 * 0.5 ** 0.5 + m2_bucket2, 3.018908], abs=1e-6)
    assert out[2].tolist() == pytest.approx([-1.0 * 2 ** 0.5 + m2_bucket4, 2.0], abs=1e-6)


def test_ema_of_the_worked_table():
    fds = _worked_module(empty_buckets="keep")
    fds.epoch.fill_(1)
    fds.accumulate(torch.tensor([[4.0, 4.0], [6.0, 2.0]], dtype=torch.float64), torch.tensor([2, 2]))
    fds.update(1)
    assert fds.running_mean[2].tolist() == pytest.approx([2.3, 1.2], abs=1e-12)
    assert fds.running_var[2].tolist() == pytest.approx([3.8, 1.1], abs=1e-12)
    assert fds.running_mean[4].tolist() == [10.0, 1.0]  # absent bucket kept
    assert fds.num_samples_tracked.tolist() == [0, 0, 2, 0, 0]


def test_neighbour_fill_is_sequential_in_bucket_order():
    fds = _worked_module()  # empty_buckets="neighbours"
    fds.epoch.fill_(1)
    fds.accumulate(torch.tensor([[4.0, 4.0], [6.0, 2.0]], dtype=torch.float64), torch.tensor([2, 2]))
    fds.update(1)
    # row 0 copies row 1 (1), row 1 = (row 0 + row 2) / 2, row 3 = (row 2 + row 4) / 2, row 4 = row 3
    assert fds.running_mean[:, 0].tolist() == pytest.approx([1.0, 1.65, 2.3, 6.15, 6.15], abs=1e-12)


# ----- several epochs against the transcription -----

def _epoch_batches(generator, epoch, *, sts, batches=4, batch=24, dim=3, labels_high=18):
    out = []
    for _ in range(batches):
        if sts:
            labels = (torch.randint(0, 26, (batch,), generator=generator).double() / 5).float()
            labels[labels > 2.6] = 5.0  # leave buckets 27..48 empty, 49 full
        else:
            labels = torch.randint(0, labels_high, (batch,), generator=generator).double()
            labels[labels == 9] = 8  # label 9 never occurs: an empty bucket
        features = torch.randn(batch, dim, generator=generator, dtype=torch.float64) * (1 + labels.double().unsqueeze(1) / 5)
        features += labels.double().unsqueeze(1) + epoch
        out.append((features, labels))
    return out


CONFIGS = {
    # released age code: aliasing, in-place calibration, unseen buckets kept
    "age_released": dict(sts=False, module=dict(num_buckets=15, bucket_start=3, binning="floor", alias_last_epoch=True,
                                                inplace=True, empty_buckets="keep"), alias=True, inplace=True),
    # the defaults on the age binning, with unseen buckets kept so the transcription applies
    "age_default_keep": dict(sts=False, module=dict(num_buckets=15, bucket_start=3, binning="floor", empty_buckets="keep"),
                             alias=False, inplace=False),
    "age_no_edge_label": dict(sts=False, module=dict(num_buckets=12, bucket_start=2, binning="floor", empty_buckets="keep",
                                                     momentum=None), alias=False, inplace=False, momentum=None),
    # released STS-B code: aliasing, in-place, neighbour fill
    "sts_released": dict(sts=True, module=dict(num_buckets=50, bucket_start=0, binning="histogram", value_range=(0.0, 5.0),
                                               alias_last_epoch=True, inplace=True), alias=True, inplace=True),
    "sts_default": dict(sts=True, module=dict(num_buckets=50, bucket_start=0, binning="histogram", value_range=(0.0, 5.0)),
                        alias=False, inplace=False),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_statistics_and_calibration_over_three_epochs(config):
    setup = CONFIGS[config]
    sts = setup["sts"]
    generator = torch.Generator().manual_seed(7)
    window = kernel_window("gaussian", 5, 2.0, normalize="sum")
    fds = FDS(3, kernel="gaussian", ks=5, sigma=2.0, **setup["module"]).double()
    fds.train()
    reference = ReleasedFDS(3, setup["module"]["num_buckets"], setup["module"]["bucket_start"], window, sts=sts,
                            alias=setup["alias"], momentum=setup.get("momentum", 0.9))
    labels_high = 12 if config == "age_no_edge_label" else 18
    for epoch in range(3):
        batches = _epoch_batches(generator, epoch, sts=sts, labels_high=labels_high)
        if config == "age_no_edge_label":  # labels 0 and 1 below bucket_start 2, but 2 itself never
            batches = [(f, torch.where(y == 2, torch.zeros_like(y), y)) for f, y in batches]
        # training steps: calibration with gradients
        for features, labels in batches[:2]:
            leaf = features.clone().requires_grad_()
            mine = fds.smooth(leaf * 1.0, labels, epoch)
            expected_input = (leaf * 1.0)
            expected = reference.smooth(expected_input, labels, epoch)
            assert torch.allclose(mine, expected, rtol=1e-12, atol=1e-12)
            weights = torch.randn(mine.shape, generator=generator, dtype=torch.float64)
            (grad_mine,) = torch.autograd.grad((mine * weights).sum(), leaf)
            (grad_expected,) = torch.autograd.grad((expected * weights).sum(), leaf)
            assert torch.allclose(grad_mine, grad_expected, rtol=1e-12, atol=1e-12)
        # the statistics pass, batch by batch
        collected = []
        with torch.no_grad():
            for features, labels in batches:
                h = features.clone()
                if setup["inplace"]:  # released: the pass reads the calibrated h
                    fds.accumulate(fds.smooth(h, labels, epoch), labels)
                    collected.append(reference.smooth(features.clone(), labels, epoch))
                else:
                    fds.accumulate(h, labels)
                    collected.append(features)
        reference.update_last_epoch_stats(epoch)
        reference.update_running_stats(torch.cat(collected), torch.cat([y for _, y in batches]), epoch)
        fds.update(epoch)
        for name, value in reference.buffers().items():
            assert torch.allclose(getattr(fds, name), value, rtol=1e-12, atol=1e-12), (config, epoch, name)
        assert float(fds.epoch) == reference.epoch


def test_released_aliasing_makes_the_calibration_source_include_the_latest_pass():
    """Quirk (a): after update(e) the released last-epoch mean is the running mean including
    pass e; by default it is the running mean before pass e."""
    generator = torch.Generator().manual_seed(1)
    modules = {alias: FDS(3, 15, bucket_start=3, alias_last_epoch=alias, empty_buckets="keep").double() for alias in (False, True)}
    before = None
    for epoch in range(3):
        batches = _epoch_batches(generator, epoch, sts=False)
        if epoch == 2:
            before = modules[False].running_mean.clone()
        for fds in modules.values():
            for features, labels in batches:
                fds.accumulate(features, labels)
            fds.update(epoch)
    assert torch.equal(modules[True].running_mean, modules[False].running_mean)
    assert torch.equal(modules[True].running_mean_last_epoch, modules[True].running_mean)
    assert torch.equal(modules[False].running_mean_last_epoch, before)
    assert not torch.equal(before, modules[False].running_mean)
    assert torch.equal(modules[True].smoothed_mean_last_epoch, modules[False].smoothed_mean_last_epoch)


def test_first_smoothing_epoch_is_the_identity():
    """The buffers at epoch 1 are still the initial zeros and ones: calibration changes nothing."""
    fds = FDS(3, 15, bucket_start=3).double()
    generator = torch.Generator().manual_seed(2)
    for features, labels in _epoch_batches(generator, 0, sts=False):
        fds.accumulate(features, labels)
    fds.update(0)
    fds.train()
    features, labels = _epoch_batches(generator, 1, sts=False)[0]
    assert torch.equal(fds.smooth(features, labels, 1), features)


def test_edge_pooling_needs_the_edge_label():
    fds = FDS(2, 10, bucket_start=3, empty_buckets="keep").double()
    features = torch.tensor([[1.0, 1.0], [3.0, 5.0], [10.0, 0.0], [20.0, 2.0]], dtype=torch.float64)
    fds.accumulate(features[:2], torch.tensor([1.0, 2.0]))  # below bucket_start, edge label 3 absent
    fds.accumulate(features[2:], torch.tensor([9.0, 14.0]))  # 9 = num_buckets - 1 present: 14 pools into it
    fds.update(0)
    assert fds.running_mean[0].tolist() == [0.0, 0.0] and fds.num_samples_tracked[0] == 0
    assert fds.running_mean[-1].tolist() == [15.0, 1.0] and fds.num_samples_tracked[-1] == 2
    fds.accumulate(features[:1], torch.tensor([3.0]))  # now the edge label occurs: 1 and 2 pool in
    fds.accumulate(features[1:2], torch.tensor([1.0]))
    fds.accumulate(features[2:3], torch.tensor([0.0]))
    fds.update(0)
    assert fds.running_mean[0].tolist() == pytest.approx([14 / 3, 2.0], abs=1e-12)
    assert fds.running_var[0].tolist() == pytest.approx([np.var([1, 3, 10], ddof=1), np.var([1, 5, 0], ddof=1)], abs=1e-12)


def test_calibration_edge_pooling_is_per_batch():
    fds = FDS(2, 10, bucket_start=3, empty_buckets="keep").double()
    fds.running_mean_last_epoch[0] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    fds.smoothed_mean_last_epoch[0] = torch.tensor([2.0, 2.0], dtype=torch.float64)
    fds.train()
    x = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.equal(fds.smooth(x, torch.tensor([1.0, 5.0]), 1), x)  # 1 < 3 and no 3 in the batch
    out = fds.smooth(x, torch.tensor([1.0, 3.0]), 1)
    assert out.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_single_sample_bucket_gets_zero_variance_and_then_is_left_alone():
    fds = FDS(2, 6, empty_buckets="keep").double()
    fds.accumulate(torch.tensor([[3.0, 4.0]], dtype=torch.float64), torch.tensor([2.0]))
    fds.update(0)
    assert fds.running_var[2].tolist() == [0.0, 0.0]
    fds.update(1)
    fds.train()
    x = torch.tensor([[7.0, 8.0]], dtype=torch.float64)
    assert torch.equal(fds.smooth(x, torch.tensor([2.0]), 2), x)  # sum of v1 < 1e-10


def test_eval_mode_and_early_epochs_leave_features_alone():
    fds = _worked_module()
    fds.update(1)
    x = torch.tensor([[2.5, 0.0]], dtype=torch.float64)
    fds.eval()
    assert fds.smooth(x, torch.tensor([2.0]), 5) is x
    fds.train()
    assert fds.smooth(x, torch.tensor([2.0]), 0) is x
    assert not torch.equal(fds.smooth(x, torch.tensor([2.0]), 1), x)


def test_inplace_writes_into_the_input_and_keeps_gradients():
    fds = _worked_module(inplace=True)
    fds.update(1)
    fds.train()
    leaf = torch.tensor([[2.5, 0.0], [9.0, 2.0]], dtype=torch.float64, requires_grad=True)
    h = leaf * 1.0
    out = fds.smooth(h, torch.tensor([2.0, 4.0]), 1)
    assert out is h and h[0].tolist() == pytest.approx([3.438734, -0.009454], abs=1e-6)
    out.sum().backward()
    assert leaf.grad[0].tolist() == pytest.approx([(1.651008 / 4) ** 0.5, (1.018997 / 1) ** 0.5], abs=1e-6)
    assert leaf.grad[1].tolist() == pytest.approx([(2.117505 / 1) ** 0.5, 1.0], abs=1e-6)


def test_updates_before_start_update_are_ignored():
    fds = FDS(2, 6, start_update=2)
    fds.accumulate(torch.ones(3, 2), torch.tensor([1.0, 2.0, 3.0]))
    fds.update(1)
    assert not fds.wants_statistics(1) and fds.wants_statistics(2)
    assert float(fds.running_mean.abs().sum()) == 0 and float(fds.epoch) == 2
    fds.accumulate(torch.ones(3, 2), torch.tensor([1.0, 2.0, 3.0]))
    fds.update(2)  # start_update: a copy of the pass
    assert fds.running_mean[1].tolist() == [1.0, 1.0]


def test_state_dict_holds_the_eight_statistics_buffers():
    fds = FDS(4, 20, bucket_start=3)
    generator = torch.Generator().manual_seed(3)
    for epoch in range(2):
        fds.accumulate(torch.randn(40, 4, generator=generator), torch.randint(0, 22, (40,), generator=generator))
        fds.update(epoch)
    fds.accumulate(torch.randn(5, 4, generator=generator), torch.randint(0, 22, (5,), generator=generator))  # in progress
    state = fds.state_dict()
    assert sorted(state) == sorted([
        "epoch", "running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
        "smoothed_mean_last_epoch", "smoothed_var_last_epoch", "num_samples_tracked"])
    restored = FDS(4, 20, bucket_start=3)
    restored.load_state_dict(state)
    restored.train()
    fds.train()
    x, y = torch.randn(8, 4, generator=generator), torch.randint(3, 20, (8,), generator=generator)
    assert torch.equal(restored.smooth(x, y, 2), fds.smooth(x, y, 2))


def test_released_settings():
    assert (FDS_RELEASED["agedb"]["num_buckets"], FDS_RELEASED["agedb"]["bucket_start"]) == (100, 3)
    assert (FDS_RELEASED["imdb_wiki"]["num_buckets"], FDS_RELEASED["imdb_wiki"]["bucket_start"]) == (100, 0)
    assert FDS_RELEASED["sts_b"]["binning"] == "histogram" and FDS_RELEASED["sts_b"]["num_buckets"] == 50
    # the variance-ratio clip of each benchmark folder's calibrate_mean_var
    assert FDS_RELEASED["agedb"]["clip"] == FDS_RELEASED["imdb_wiki"]["clip"] == (0.1, 10.0)
    assert FDS_RELEASED["sts_b"]["clip"] == (0.5, 2.0)
    fds = FDS(2048, **FDS_RELEASED["agedb"])
    assert fds.running_mean.shape == (97, 2048) and fds.epoch.tolist() == [0.0] and fds.clip == (0.1, 10.0)
    assert FDS(8, **FDS_RELEASED["sts_b"]).clip == (0.5, 2.0)


def test_histogram_buckets_follow_numpy_on_float32_scores():
    fds = FDS(1, **FDS_RELEASED["sts_b"], empty_buckets="keep").double()
    scores = (torch.arange(0, 51, dtype=torch.float64) / 10).float()
    fds.accumulate(torch.arange(51, dtype=torch.float64).unsqueeze(1), scores)
    fds.update(0)
    _, edges = np.histogram(np.array([], dtype=np.float32), bins=50, range=(0.0, 5.0))
    expected = [49 if s == 5.0 else np.where(edges > s)[0][0] - 1 for s in scores.numpy()]
    counts = np.bincount(expected, minlength=50)
    assert fds.num_samples_tracked.tolist() == counts.tolist()


@pytest.mark.parametrize("call, words", [
    (lambda f: f.accumulate(torch.zeros(3, 5), torch.zeros(3)), ["FDS.accumulate", "'features'", "4 columns", "(3, 5)"]),
    (lambda f: f.accumulate(torch.zeros(3, 4), torch.zeros(2)), ["FDS.accumulate", "'labels'", "B = 3", "length 2"]),
    (lambda f: f.accumulate(torch.zeros(3, 4), torch.zeros(3, 2)), ["'labels'", "(B,) or (B, 1)", "(3, 2)"]),
    (lambda f: f.accumulate(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3)), ["'features'", "float", "int64"]),
    (lambda f: f.smooth(torch.zeros(3, 4), torch.zeros(4), 3), ["FDS.smooth", "'labels'", "B = 3"]),
    (lambda f: f.update(-1), ["FDS.update", "'epoch'", ">= 0", "-1"]),
])
def test_bad_inputs_raise_value_errors(call, words):
    fds = FDS(4, 10)
    fds.train()
    with pytest.raises(ValueError) as error:
        call(fds)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(feature_dim=4, num_buckets=4, bucket_start=2), ["FDS", "'num_buckets, bucket_start'", "reflect", "R = 2"]),
    (dict(feature_dim=4, num_buckets=10, ks=4), ["'ks'", "odd"]),
    (dict(feature_dim=4, num_buckets=10, momentum=1.0), ["'momentum'", "[0, 1)"]),
    (dict(feature_dim=4, num_buckets=10, binning="histogram"), ["'value_range'", "binning='histogram'"]),
    (dict(feature_dim=4, num_buckets=10, empty_buckets="zero"), ["'empty_buckets'", "'neighbours', 'keep'"]),
    (dict(feature_dim=0, num_buckets=10), ["'feature_dim'", ">= 1"]),
    (dict(feature_dim=4, num_buckets=10, clip=(0, 10)), ["'clip'", "0 < low"]),
])
def test_bad_settings_raise_value_errors(kwargs, words):
    with pytest.raises(ValueError) as error:
        FDS(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_sts_b_scores_outside_the_range_raise():
    fds = FDS(2, **FDS_RELEASED["sts_b"])
    with pytest.raises(ValueError, match=r"FDS.accumulate: argument 'labels' must be inside value_range \[0.0, 5.0\], got 5.5"):
        fds.accumulate(torch.zeros(2, 2), torch.tensor([1.0, 5.5]))
