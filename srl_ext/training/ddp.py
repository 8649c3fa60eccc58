"""Process setup for data-parallel training under ``torchrun`` (docs/distributed.md).

The math of the global-batch terms is in the library (``srl_ext.distributed``); this module is
what the training application needs around it: joining the process group, who writes files,
sharding and gathering the evaluation sets, broadcasting decisions. Every function is the
single-process one when torch.distributed is not initialised or the world has one rank.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from .. import validation as check
from ..distributed import broadcast_
from .errors import UserError


def is_distributed() -> bool:
    """True when torch.distributed runs with more than one rank."""
    return distributed.is_distributed()


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return distributed.rank()


def world_size() -> int:
    """Number of ranks (1 without torch.distributed)."""
    return distributed.world_size()


def is_main_process() -> bool:
    """Rank 0 of the default group: the process that writes checkpoints and logs."""
    return distributed.rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` asks for more than one process (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; returns this rank's device.

    Under torchrun (WORLD_SIZE > 1) and not yet initialised: gloo for a CPU `device`, nccl for a
    CUDA one, whose index becomes LOCAL_RANK (``torch.cuda.set_device``; an index given in
    `device` is overridden: one GPU per process). Otherwise nothing is
    initialised and `device` comes back as it is, so single-process runs are unchanged.
    """
    device = torch.device(device)
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave() -> None:
    """Destroy the process group, after collecting what is left of the run (DDP models, their
    reducers and buffers) while the group and the interpreter are whole. Without the collection,
    gloo processes on a loaded CPU aborted at exit now and then after finishing their work
    ("terminate called without an active exception": 7 of 70 runs of a two-process driver run;
    0 of 80 with it)."""
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """The module the training steps call: DistributedDataParallel under torch.distributed, else `model`."""
    if not distributed.is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def broadcast_object(obj, src: int = 0, group: dist.ProcessGroup | None = None):
    """Rank `src`'s `obj` (any picklable value) on every rank; `obj` itself without torch.distributed."""
    if not distributed.is_distributed(group):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (e.g. BatchNorm statistics) on every rank."""
    if distributed.is_distributed():
        for buffer in module.buffers():
            broadcast_(buffer)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    gathered = [None] * distributed.world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(values: dict, device: torch.device) -> dict:
    """The mean over the ranks of each number in `values` (floats back); `values` without torch.distributed."""
    if not distributed.is_distributed():
        return values
    names = list(values)
    stacked = torch.stack([torch.as_tensor(values[key], dtype=torch.float64, device=device) for key in names])
    dist.all_reduce(stacked)
    return dict(zip(names, (stacked / distributed.world_size()).tolist()))


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait for every rank (e.g. for rank 0's checkpoint before reading it); nothing without torch.distributed."""
    if distributed.is_distributed(group):
        dist.barrier(group=group)


def shard_indices(length: int, group: dist.ProcessGroup | None = None) -> range:
    """This rank's contiguous share of ``range(length)``, without padding: concatenated in rank
    order (``gather_tensors``) the shares give back ``range(length)`` exactly once, in order."""
    size, index = distributed.world_size(group), distributed.rank(group)
    base, extra = divmod(length, size)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def gather_tensors(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The concatenation along dim 0 of `tensor` from every rank, in rank order, on every rank.

    The ranks may hold different lengths (an evaluation set split without padding); the other
    dimensions and the dtype must agree. No gradient. Without torch.distributed: `tensor`.
    """
    if tensor.dim() < 1:
        check.fail("gather_tensors", "tensor", "a tensor with at least 1 dimension", "a 0-d tensor")
    if not distributed.is_distributed(group):
        return tensor
    size = distributed.world_size(group)
    length = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    lengths = [torch.empty_like(length) for _ in range(size)]
    dist.all_gather(lengths, length, group=group)
    lengths = [int(n) for n in lengths]
    padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(gathered, lengths)])


def training_device(name: str, data_parallel: bool) -> torch.device:
    """The device to train on, made the current one if it is a GPU: whatever runs on the current
    device (Triton launches, torch.cuda calls without a device) would stay on cuda:0 for
    `--device cuda:1` otherwise."""
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if device.index is None or data_parallel:
        # under torchrun every rank uses its own GPU, LOCAL_RANK's (ddp.init_from_env set it)
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def check_tables_fit(device_name: str, flag: str, value, size: int, what: str) -> None:
    """A UserError naming ``flag`` unless ``size`` bytes (the tables ``value`` of ``flag`` sizes)
    fit in the memory of device ``device_name`` (a GPU's, or the machine's), before they are made."""
    device = torch.device(device_name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        available = torch.cuda.get_device_properties(index).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > available:
        raise UserError(f"{flag}: expected a size whose tables fit in the {available / 2**30:.0f} GiB of {device}, "
                        f"got {value}: {what} need {size / 2**30:.0f} GiB")
