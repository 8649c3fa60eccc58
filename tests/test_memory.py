"""SurrogateMemory (docs/method.md, "Surrogate memory") in one process: the arithmetic of each
update, checked inputs, state_dict; the all-reduce across ranks is in tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from srl_ext import SurrogateMemory

NUM_BINS = 5
DIM = 4


def batch(seed: int, size: int = 12, high: int = NUM_BINS):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, DIM, generator=generator), torch.randint(0, high, (size,), generator=generator)


def bin_means(features: torch.Tensor, bins: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(b): features[bins == b].double().mean(dim=0).float() for b in bins.unique()}


def state(memory: SurrogateMemory) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in memory.state_dict().items()}


def test_first_update_copies_the_means():
    memory = SurrogateMemory(NUM_BINS, DIM)
    features, bins = batch(0, high=3)  # bins 3 and 4 absent
    memory.accumulate(features[:5], bins[:5])
    memory.accumulate(features[5:], bins[5:])
    memory.update()
    means = bin_means(features, bins)
    for b in range(NUM_BINS):
        expected = means.get(b, torch.zeros(DIM))
        torch.testing.assert_close(memory.table[b], expected)
    assert int(memory.num_updates) == 1
    assert int(memory.counts.sum()) == 0 and not memory.sums.any()  # accumulators cleared


def test_later_updates_are_an_ema_and_absent_bins_keep_their_rows():
    memory = SurrogateMemory(NUM_BINS, DIM)
    first, first_bins = batch(0)
    memory.accumulate(first, first_bins)
    memory.update()
    before = memory.table.clone()
    second, second_bins = batch(1, high=2)  # only bins 0 and 1
    memory.accumulate(second, second_bins)
    memory.update()
    current = bin_means(second, second_bins)
    for b in range(NUM_BINS):
        if b in current:
            torch.testing.assert_close(memory.table[b], 0.9 * before[b] + 0.1 * current[b])
        else:
            torch.testing.assert_close(memory.table[b], before[b], rtol=0, atol=0)


def test_momentum_argument_sets_the_ema_weight():
    memory = SurrogateMemory(NUM_BINS, DIM, momentum=0.5)
    for seed in (0, 1):
        features, bins = batch(seed, high=1)  # all in bin 0
        memory.accumulate(features, bins)
        memory.update()
    first, second = batch(0, high=1)[0].mean(0), batch(1, high=1)[0].mean(0)
    torch.testing.assert_close(memory.table[0], 0.5 * first + 0.5 * second)


def test_normalize_averages_unit_vectors():
    features = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0]])
    bins = torch.tensor([1, 1, 2])
    raw, unit = SurrogateMemory(NUM_BINS, DIM), SurrogateMemory(NUM_BINS, DIM, normalize=True)
    for memory in (raw, unit):
        memory.accumulate(features, bins)
        memory.update()
    torch.testing.assert_close(raw.table[1], torch.tensor([1.5, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(unit.table[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(unit.table[2], torch.tensor([0.0, 0.0, 0.0, -1.0]))
    torch.testing.assert_close(unit.table[0], torch.zeros(DIM), rtol=0, atol=0)


def test_epoch_pass_and_online_give_identical_tables():
    """The mode only records how the training loop feeds the memory; the same features give the
    same table."""
    tables = {}
    for mode in ("epoch_pass", "online"):
        memory = SurrogateMemory(NUM_BINS, DIM, mode=mode)
        for epoch in range(3):
            for step in range(2):
                memory.accumulate(*batch(10 * epoch + step, high=NUM_BINS - epoch))
            memory.update()
        tables[mode] = memory.table
    torch.testing.assert_close(tables["epoch_pass"], tables["online"], rtol=0, atol=0)


def test_state_dict_round_trip_keeps_pending_sums_and_the_update_count():
    memory = SurrogateMemory(NUM_BINS, DIM, normalize=True)
    memory.accumulate(*batch(0))
    memory.update()
    memory.accumulate(*batch(1))  # saved mid-epoch: accumulated, not yet folded in
    restored = SurrogateMemory(NUM_BINS, DIM, normalize=True)
    restored.load_state_dict(memory.state_dict())
    for name, value in memory.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value, rtol=0, atol=0)
    memory.update()
    restored.update()  # an EMA step, not a first copy: num_updates came back
    torch.testing.assert_close(restored.table, memory.table, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make_input, argument",
    [
        (lambda f, b: (f[0], b), "features"),  # 1-D
        (lambda f, b: (f[:, :3], b), "features"),  # wrong D
        (lambda f, b: (f.to(torch.int64), b), "features"),
        (lambda f, b: (torch.cat([f[:-1], torch.full((1, DIM), float("nan"))]), b), "features"),
        (lambda f, b: (f, b.to(torch.int32)), "bins"),
        (lambda f, b: (f, b[:-1]), "bins"),
        (lambda f, b: (f, b + NUM_BINS), "bins"),
        (lambda f, b: (f, b - NUM_BINS), "bins"),
    ],
)
def test_bad_input_raises_and_leaves_the_state_unchanged(make_input, argument):
    memory = SurrogateMemory(NUM_BINS, DIM)
    memory.accumulate(*batch(0))
    memory.update()
    memory.accumulate(*batch(1))
    before = state(memory)
    with pytest.raises(ValueError, match=f"'{argument}'"):
        memory.accumulate(*make_input(*batch(2)))
    for name, value in memory.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(mode="weekly"), "mode"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(num_bins=1), "num_bins"),
        (dict(feature_dim=0), "feature_dim"),
    ],
)
def test_bad_settings_raise(kwargs, argument):
    settings = dict(num_bins=NUM_BINS, feature_dim=DIM) | kwargs
    with pytest.raises(ValueError, match=argument):
        SurrogateMemory(**settings)


def test_update_with_nothing_accumulated_changes_nothing():
    memory = SurrogateMemory(3, 2)
    memory.update()
    assert int(memory.num_updates) == 0
    memory.accumulate(torch.tensor([[2.0, 4.0]]), torch.tensor([1]))
    memory.update()  # still the first update: a copy, not 0.1 x the mean
    assert torch.equal(memory.table[1], torch.tensor([2.0, 4.0]))


def test_out_of_range_bins_on_a_gpu_are_left_out(monkeypatch):
    # Bins are checked on CPU tensors only (a host sync on a GPU); unchecked, an out-of-range bin
    # must not index out of range (a device-side assert on CUDA): its sample is left out.
    from srl_ext import validation

    monkeypatch.setattr(validation, "reads_data", lambda x: False)  # as for GPU tensors
    features, bins = batch(0)
    bad = bins.clone()
    bad[[0, 5]] = torch.tensor([NUM_BINS, -1])
    memory, expected = SurrogateMemory(NUM_BINS, DIM), SurrogateMemory(NUM_BINS, DIM)
    memory.accumulate(features, bad)
    keep = torch.ones(len(bins), dtype=torch.bool)
    keep[[0, 5]] = False
    expected.accumulate(features[keep], bins[keep])
    assert torch.equal(memory.counts, expected.counts)
    torch.testing.assert_close(memory.sums, expected.sums, rtol=0, atol=1e-15)
