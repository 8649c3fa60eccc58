"""Data-parallel SRL (srl_ext.distributed) against one process on the concatenated batch.

Two processes with the gloo backend on the CPU are spawned once for the module; each computes
every scenario on its slice of fixed global inputs and saves what it got. The tests compare
those results with one process run here on the whole batch.
"""

from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from srl_ext import SRLLoss, SurrogateMemory, distributed, functional, reference
from srl_ext.training import ddp

WORLD = 2
NUM_BINS = 7  # bins 5 and 6 never occur: their rows come from the memory, row 6 is zero
PRESENT_BINS = 5
DIM = 8
INPUT_DIM = 6
NUM_ANCHORS = 40
# Local batch sizes of ranks 0 and 1: the equal split is the DistributedSampler case.
SPLITS = {"equal": (6, 6), "unequal": (4, 9)}
BACKENDS = ("reference", "cpu")
SETTINGS = {
    "hard": dict(temperature=0.3),
    "soft_weighted": dict(
        temperature=0.2, envelope="soft", envelope_temperature=0.1, label_weighting=True, homogeneity_sign=1.0
    ),
}
LOSS_WEIGHTS = dict(w1=1.0, w2=2.0, w3=0.5)


def global_inputs(batch: int, seed: int = 0):
    """Features (B x D), model inputs (B x INPUT_DIM), bins, memory and anchors, float64."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, DIM, generator=generator, dtype=torch.float64)
    inputs = torch.randn(batch, INPUT_DIM, generator=generator, dtype=torch.float64)
    bins = torch.randint(0, PRESENT_BINS, (batch,), generator=generator)
    memory = torch.randn(NUM_BINS, DIM, generator=generator, dtype=torch.float64)
    memory[-1] = 0
    anchors = reference.normalize(torch.randn(NUM_ANCHORS, DIM, generator=generator, dtype=torch.float64))
    return features, inputs, bins, memory, anchors


def local_slice(split: str, rank: int) -> slice:
    sizes = SPLITS[split]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def make_model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(INPUT_DIM, DIM).double()


def make_loss(backend: str, distributed: bool = False) -> SRLLoss:
    return SRLLoss(
        NUM_BINS, DIM, num_anchors=NUM_ANCHORS, temperature=0.3, backend=backend, distributed=distributed,
        **LOSS_WEIGHTS,
    ).double()


def memory_batches(epoch: int):
    """Two batches per epoch of features and bins for the memory; epoch 1 leaves bins 3-6 out."""
    generator = torch.Generator().manual_seed(100 + epoch)
    high = PRESENT_BINS if epoch == 0 else 3
    return [
        (torch.randn(8, DIM, generator=generator), torch.randint(0, high, (8,), generator=generator))
        for _ in range(2)
    ]


def gather_inputs(rank: int):
    """Per-rank predictions (n x 2 float) and labels (n int64) of different lengths 3 and 5."""
    length = 3 + 2 * rank
    predictions = torch.arange(2 * length, dtype=torch.float32).reshape(length, 2) + 100 * rank
    labels = torch.arange(length) + 10 * rank
    return predictions, labels


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {"rank": distributed.rank(), "world_size": distributed.world_size(),
                   "is_main": ddp.is_main_process()}

        # (a) the terms and the gradient w.r.t. this rank's features
        for split in SPLITS:
            features, _, bins, memory, anchors = global_inputs(sum(SPLITS[split]))
            part = local_slice(split, rank)
            local_features = features[part].clone().requires_grad_(True)
            results[("table", split)] = distributed.surrogate_table(local_features, bins[part], memory).detach()
            for backend in BACKENDS:
                for setting, kwargs in SETTINGS.items():
                    terms = distributed.srl_terms(
                        local_features, bins[part], memory, anchors, backend=backend, **kwargs
                    )
                    grad = torch.autograd.grad(sum(terms), local_features)[0]
                    results[("terms", split, backend, setting)] = torch.stack([t.detach() for t in terms])
                    results[("feature_grad", split, backend, setting)] = grad

        # (b) parameter gradients of a DDP-wrapped projector under SRLLoss(distributed=True)
        for split in SPLITS:
            _, inputs, bins, memory, _ = global_inputs(sum(SPLITS[split]))
            part = local_slice(split, rank)
            for backend in BACKENDS:
                model = DistributedDataParallel(make_model())
                loss_fn = make_loss(backend, distributed=True)
                out = loss_fn(model(inputs[part]), bins[part], memory)
                out.total.backward()
                results[("ddp_total", split, backend)] = out.total.detach()
                results[("ddp_grads", split, backend)] = [p.grad.clone() for p in model.module.parameters()]

        # (c) the memory: each rank accumulates its own half of every batch
        for normalize in (False, True):
            memory = SurrogateMemory(NUM_BINS, DIM, normalize=normalize)
            tables = []
            for epoch in range(2):
                for features, bins in memory_batches(epoch):
                    half = slice(rank * 4, rank * 4 + 4)
                    memory.accumulate(features[half], bins[half])
                memory.update()
                tables.append(memory.table.clone())
            results[("memory", normalize)] = tables

        # (d) gathering predictions of different lengths
        predictions, labels = gather_inputs(rank)
        results["gathered"] = (ddp.gather_tensors(predictions), ddp.gather_tensors(labels))

        # anchors: identical from the seed; a differing tensor is caught and can be broadcast
        distributed.assert_same_across_ranks(make_loss("reference").anchors, "anchors")
        differing = torch.full((3, 2), float(rank))
        try:
            distributed.assert_same_across_ranks(differing, "anchors")
            results["mismatch_error"] = None
        except RuntimeError as error:
            results["mismatch_error"] = str(error)
        results["broadcast"] = distributed.broadcast_(differing).clone()

        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        ddp.leave()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two gloo ranks computed, indexed by rank."""
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_process_helpers(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [WORLD, WORLD]
    assert [r["is_main"] for r in ranks] == [True, False]


@pytest.mark.parametrize("split", SPLITS)
def test_table_is_the_global_batch_table(ranks, split):
    features, _, bins, memory, _ = global_inputs(sum(SPLITS[split]))
    expected = reference.surrogate_table(features, bins, memory)
    for result in ranks:
        torch.testing.assert_close(result[("table", split)], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", SPLITS)
def test_terms_and_feature_gradients(ranks, split, backend, setting):
    """Every rank reports the single-process terms; its features get W times their rows of the
    single-process gradient (DDP divides by W)."""
    features, _, bins, memory, anchors = global_inputs(sum(SPLITS[split]))
    features.requires_grad_(True)
    terms = functional.srl_terms(features, bins, memory, anchors, backend=backend, **SETTINGS[setting])
    grad = torch.autograd.grad(sum(terms), features)[0]
    expected_terms = torch.stack([t.detach() for t in terms])
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result[("terms", split, backend, setting)], expected_terms)
        torch.testing.assert_close(
            result[("feature_grad", split, backend, setting)], WORLD * grad[local_slice(split, rank)]
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", SPLITS)
def test_ddp_parameter_gradients(ranks, split, backend):
    _, inputs, bins, memory, _ = global_inputs(sum(SPLITS[split]))
    model = make_model()
    out = make_loss(backend)(model(inputs), bins, memory)
    out.total.backward()
    for result in ranks:
        torch.testing.assert_close(result[("ddp_total", split, backend)], out.total.detach())
        for got, expected in zip(result[("ddp_grads", split, backend)], model.parameters()):
            torch.testing.assert_close(got, expected.grad)


@pytest.mark.parametrize("normalize", (False, True))
def test_memory_update_reduces_across_ranks(ranks, normalize):
    memory = SurrogateMemory(NUM_BINS, DIM, normalize=normalize)
    tables = []
    for epoch in range(2):
        for features, bins in memory_batches(epoch):
            memory.accumulate(features, bins)
        memory.update()
        tables.append(memory.table.clone())
    assert not torch.equal(tables[0], tables[1])  # the second epoch moved the table
    for result in ranks:
        for got, expected in zip(result[("memory", normalize)], tables):
            torch.testing.assert_close(got, expected)


def test_gather_tensors_unequal_lengths(ranks):
    parts = [gather_inputs(r) for r in range(WORLD)]
    expected_predictions = torch.cat([p for p, _ in parts])
    expected_labels = torch.cat([l for _, l in parts])
    for result in ranks:
        predictions, labels = result["gathered"]
        assert predictions.shape == (8, 2) and labels.dtype == torch.int64
        torch.testing.assert_close(predictions, expected_predictions, rtol=0, atol=0)
        torch.testing.assert_close(labels, expected_labels, rtol=0, atol=0)


def test_anchor_checks(ranks):
    for result in ranks:
        assert result["mismatch_error"] is not None and "anchors differ across ranks" in result["mismatch_error"]
        torch.testing.assert_close(result["broadcast"], torch.zeros(3, 2), rtol=0, atol=0)


def test_single_process_fallbacks():
    """Without an initialised process group every helper is the single-process operation."""
    assert not dist.is_initialized()
    assert (distributed.rank(), distributed.world_size(), ddp.is_main_process()) == (0, 1, True)
    features, _, bins, memory, anchors = global_inputs(10)
    got = distributed.srl_terms(features, bins, memory, anchors, temperature=0.3, backend="reference")
    expected = functional.srl_terms(features, bins, memory, anchors, temperature=0.3, backend="reference")
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=0, atol=0)
    torch.testing.assert_close(
        distributed.surrogate_table(features, bins, memory), reference.surrogate_table(features, bins, memory)
    )
    predictions = torch.arange(5.0)
    assert ddp.gather_tensors(predictions) is predictions
    distributed.assert_same_across_ranks(predictions, "anchors")
    with pytest.raises(ValueError, match="'tensor'"):
        ddp.gather_tensors(torch.tensor(1.0))
    with pytest.raises(ValueError, match="'bins'"):
        distributed.srl_terms(features, bins + NUM_BINS, memory, anchors, temperature=0.3)


def test_setup_helpers_without_torchrun(monkeypatch):
    """Outside torchrun (WORLD_SIZE unset or 1) nothing is initialised and the device is kept."""
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        assert not ddp.launched_by_torchrun()
        assert ddp.init_from_env("cpu") == torch.device("cpu")
        assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ddp.launched_by_torchrun()
    assert ddp.broadcast_object({"path": "runs/x"}) == {"path": "runs/x"}
    ddp.barrier()
    assert list(ddp.shard_indices(5)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("length, world", [(10, 2), (11, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_indices_cover_the_split_once_in_order(monkeypatch, length, world):
    shards = []
    for r in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda group=None: world)
        monkeypatch.setattr(distributed, "rank", lambda group=None, r=r: r)
        shards.append(list(ddp.shard_indices(length)))
    assert [i for shard in shards for i in shard] == list(range(length))  # gathered in rank order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
