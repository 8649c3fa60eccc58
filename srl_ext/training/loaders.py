"""The loaders of a run: one per epoch and split, seeded from (seed, epoch, stream) so that a
resumed run sees the data in the order of an unbroken one; under torch.distributed, sharded."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import ddp
from .checkpoint import epoch_seed
from .config import TrainConfig


def epoch_loader(dataset: Dataset, settings: TrainConfig, epoch: int, stream: int, *, shuffle: bool, train: bool,
                 distributed: bool, collate: Callable | None, pin_memory: bool) -> DataLoader:
    """One epoch's loader. Under torch.distributed: with ``shuffle`` (the training steps) a
    DistributedSampler, which pads the last shard with repeats so that every rank takes the
    same number of steps (DDP needs it); without (memory pass, evaluation) this rank's
    contiguous shard without padding, so that no sample is counted twice."""
    batch_size = settings.batch_size
    seed = epoch_seed(settings.seed, epoch, stream)
    # the loader's generator seeds its workers' augmentations: one stream per rank
    worker_seed = epoch_seed(settings.seed, epoch, stream + 1000 * ddp.rank())
    generator = torch.Generator().manual_seed(worker_seed)
    sampler = None
    if distributed and shuffle:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)  # epoch 0: the seed is per epoch
        shuffle = False
    elif distributed:
        dataset = Subset(dataset, ddp.shard_indices(len(dataset)))
    length = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=settings.workers,
        collate_fn=collate, generator=generator, pin_memory=pin_memory,
        drop_last=train and drops_last_batch(length, batch_size),
    )


def drops_last_batch(length: int, batch_size: int) -> bool:
    """A last training batch of one sample cannot pass BatchNorm in train mode: only that one is dropped."""
    return length % batch_size == 1


def train_steps(length: int, batch_size: int) -> int:
    """The training steps of an epoch over `length` samples (``epoch_loader``)."""
    return length // batch_size + (length % batch_size > 0 and not drops_last_batch(length, batch_size))
