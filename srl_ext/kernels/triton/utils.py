"""What the Triton kernel modules share: interpreter detection, autotune configs, the
deterministic mode, launches on the inputs' device, and the kernel helpers every term uses (a
program's tile of rows, row normalisation and its backward).

Kept apart from the op modules so that the one concept each (when the interpreter runs, which
configs a GPU generation tries) lives in one place.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from triton.runtime.autotuner import Autotuner

# TRITON_INTERPRET=1 runs the kernels in numpy on CPU tensors. Triton reads the variable when
# its kernels are decorated, i.e. when these modules are imported, so it must be set before.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

# Rows of D are loaded whole (one power-of-two block per row); beyond this the tiles no longer
# fit in registers and shared memory (at D = 1024 a single config takes minutes to compile and
# still does not fit). SRL's projection dimension is 128.
MAX_FEATURE_DIM = 256

# The floor of the row norms, as torch.nn.functional.normalize (srl_ext.reference.EPS).
EPS = 1e-12

# Set to 1: the deterministic mode (``deterministic``) from the start of the process.
DETERMINISTIC_ENV = "SRL_EXT_TRITON_DETERMINISTIC"
_deterministic = False


def set_deterministic(enabled: bool) -> None:
    """Pin one config per GPU (True) or let the autotuner time them (False, the default).

    The tile sizes set the summation order, and the autotuner picks them by timing, which can
    differ from one process to the next: results are bitwise equal run to run within a process,
    across processes only in this mode. The pinned config is the last of each GPU's list, the
    smallest tiles, which fit in shared memory for every dtype and D up to MAX_FEATURE_DIM, so
    the kernels are slower. Under torch.compile the mode at compile time counts.
    """
    global _deterministic
    _deterministic = bool(enabled)


# Set by ``only_config``: (GPU list name, index) of the one config every kernel runs, or None.
_only_config: tuple[str, int] | None = None


@contextlib.contextmanager
def only_config(gpu: str, index: int):
    """Within this context every kernel runs config `index` of its `gpu` list ("hopper" or
    "ampere"; the last config where a list is shorter), on any GPU, and nothing is timed.

    For checks that compare every config with the reference (bench/check_triton_configs.py):
    the autotuner runs only the config it picks, so another process, picking another, would run
    a config no test has seen. Choices made here are kept apart from the others (``launch``).
    """
    global _only_config
    previous, _only_config = _only_config, (gpu, index)
    try:
        yield
    finally:
        _only_config = previous


def _tuning_mode():
    """What the configs an autotuner may choose from depend on (its choices are kept per mode)."""
    return _only_config if _only_config is not None else deterministic()


def deterministic() -> bool:
    """Whether the configs are pinned: ``set_deterministic(True)``, SRL_EXT_TRITON_DETERMINISTIC=1,
    or ``torch.use_deterministic_algorithms(True)`` (the switch a reproducible run sets anyway)."""
    return _deterministic or os.environ.get(DETERMINISTIC_ENV) == "1" or torch.are_deterministic_algorithms_enabled()


def split_float(value: float) -> tuple[float, float]:
    """(hi, lo), two float32 values whose sum is `value` to about 2^-48 relative.

    Triton passes Python floats to kernels as float32; a float64 kernel joins the two parts
    (``joined``) so that its temperatures and weights keep float64 precision.
    """
    hi = _to_float32(value)
    return hi, _to_float32(value - hi)


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


@triton.jit
def joined(hi, lo, dtype: tl.constexpr):
    """The scalar hi + lo (``split_float``) in `dtype`."""
    return tl.cast(hi, dtype) + tl.cast(lo, dtype)


@triton.jit
def row_tile(n, D, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's tile of BLOCK rows of an n x D row-major array: (rows, columns, row mask,
    column mask, element offsets, element mask). Rows are loaded whole (``block_dim``)."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    r_mask = r < n
    d_mask = d < D
    return r, d, r_mask, d_mask, r[:, None] * D + d[None, :], r_mask[:, None] & d_mask[None, :]


@triton.jit
def unit_rows(x_ptr, offsets, mask, eps, acc_dtype: tl.constexpr):
    """(x / max(||x||, eps), ||x||) of a tile of rows (``row_tile``), in the accumulation dtype."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(acc_dtype)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    return x / tl.maximum(norm, eps)[:, None], norm


@triton.jit
def normalize_backward(y, norm, g, eps):
    """Gradient of y = x / max(||x||, eps) for rows y (R x D), norms ||x|| (R), dL/dy g (R x D)."""
    yg = tl.sum(y * g, axis=1)
    above = norm > eps
    scale = tl.where(above, norm, eps)
    projected = tl.where(above[:, None], g - y * yg[:, None], g)
    return projected / scale[:, None]


def block_dim(dim: int) -> int:
    """The power-of-two block that holds a whole row of `dim` (tl.dot needs at least 16).

    D picks a compile-time block, so torch.compile specialises on it (int() of a symbolic D).
    """
    return max(16, triton.next_power_of_2(int(dim)))


def check_feature_dim(function: str, argument: str, dim: int) -> None:
    if dim < 1:
        raise ValueError(f"{function}: argument '{argument}' must have D >= 1 columns, got {dim}")
    if dim > MAX_FEATURE_DIM:
        raise ValueError(
            f"{function}: the feature dimension D must be at most {MAX_FEATURE_DIM} for the Triton "
            f"backend (rows are loaded whole), got D = {dim}; use backend 'cuda', 'cpu' or 'reference'"
        )


# Triton's element offsets are 32-bit unless a kernel widens them (the envelope's anchor rows):
# every other array a kernel addresses must have fewer elements than this.
MAX_OFFSET = 2**31


def check_offsets(function: str, argument: str, elements: int, what: str = "") -> None:
    """Raise ValueError when an array of `elements` elements (for `argument`) is too large for the
    kernels' 32-bit offsets (the other backends have no such limit). Traceable: torch._check."""
    torch._check_value(
        elements < MAX_OFFSET,
        lambda: f"{function}: argument '{argument}' needs {elements} elements{what}, more than the Triton "
                f"kernels' 32-bit offsets address (at most {MAX_OFFSET - 1}); use backend 'cuda', 'cpu' "
                f"or 'reference', or fewer rows",
    )


def size_bucket(size: int) -> int:
    """`size` rounded up to a power of two, at least 16: part of the autotune keys where a size
    changes the best config (the number of programs, or of loop iterations), so that each bucket
    is timed once rather than each size (a power of two >= 16 also gives Triton one
    specialisation of the argument)."""
    return max(16, triton.next_power_of_2(int(size)))


@dataclass(frozen=True)
class TuningSpace:
    """What ``triton.autotune`` gets (``configs``, ``prune_configs_by``), and the per-GPU lists
    (for tools that compile them ahead, e.g. tools/check_triton_kernels.py)."""

    configs: list
    prune_configs_by: dict | None
    by_gpu: dict


@dataclass(frozen=True)
class UpTo:
    """A config (`spec`, as in ``autotune_configs``) for rows of at most `block_d` columns: with a
    wider BLOCK_D its tiles spill registers (tools/check_triton_kernels.py), so it is not tried."""

    block_d: int
    spec: tuple


def autotune_configs(keys: tuple[str, ...], hopper: list, ampere: list, fallback: tuple,
                     interpreter: tuple) -> TuningSpace:
    """The configs to autotune over, each a tuple of values for `keys` (the tile sizes, then
    ``num_warps`` and ``num_stages``; the interpreter's config gives the tile sizes only), or an
    ``UpTo`` of one, tried only for row blocks (BLOCK_D) up to its limit.

    On a GPU the configs of its generation are benchmarked: Hopper (sm_90, H100/H200) has more
    shared memory and gains from deeper pipelines, Ampere (sm_80/86) prefers fewer stages. The
    choice is made at the first launch from the current device, so importing this module never
    initialises CUDA. Under the interpreter a single config with small tiles: autotuning there
    would run every config in numpy (far too slow), and small tiles make the small test shapes
    cross several tiles of every loop.
    """
    if INTERPRETING:
        return TuningSpace([_config(dict(zip(keys, interpreter)))], None, {})

    def with_fallback(listed):
        # Every list ends with the fallback, small tiles that fit in shared memory with every
        # dtype and spill no register up to MAX_FEATURE_DIM: at least one config always runs.
        return [_config(dict(zip(keys, c.spec)), c.block_d) if isinstance(c, UpTo) else _config(dict(zip(keys, c)))
                for c in (*listed, fallback)]

    by_gpu = {"hopper": with_fallback(hopper), "ampere": with_fallback(ampere)}

    def for_this_gpu(configs, named_args, **kwargs):
        # The current device, which is the inputs' one (on_inputs_device); simple enough for
        # torch.compile to trace through this function.
        if _only_config is not None:
            gpu, index = _only_config
            return [by_gpu[gpu][min(index, len(by_gpu[gpu]) - 1)]]
        major, _minor = torch.cuda.get_device_capability()
        listed = by_gpu["hopper"] if major >= 9 else by_gpu["ampere"]
        if deterministic():
            return listed[-1:]
        block_d = kwargs.get("BLOCK_D", 0)
        return [c for c in listed if block_d <= c.max_block_d]

    space = TuningSpace(by_gpu["hopper"] + by_gpu["ampere"], {"early_config_prune": for_this_gpu}, by_gpu)
    TUNING_SPACES.append(space)
    return space


# Every GPU tuning space defined (the kernel modules append theirs when imported).
TUNING_SPACES: list[TuningSpace] = []


def num_configs(gpu: str) -> int:
    """The length of the longest config list for `gpu`: ``only_config(gpu, i)`` for i below it
    runs every config of every kernel (0 under the interpreter, which has no lists)."""
    return max((len(space.by_gpu[gpu]) for space in TUNING_SPACES), default=0)


def autotune(space: TuningSpace, key: list[str]):
    """``triton.autotune`` over `space`, re-tuned when the arguments named in `key` change."""
    return triton.autotune(configs=space.configs, key=key, prune_configs_by=space.prune_configs_by)


def _config(spec: dict, max_block_d: int = MAX_FEATURE_DIM) -> triton.Config:
    spec = dict(spec)
    num_warps = spec.pop("num_warps", 4)
    num_stages = spec.pop("num_stages", 2)
    config = triton.Config(spec, num_warps=num_warps, num_stages=num_stages)
    config.max_block_d = max_block_d  # the widest row block it is tried with (UpTo)
    return config


def launch(kernel):
    """The kernel, wrapped so torch.compile traces it inside a ``torch.library.triton_op``.

    An autotuner keeps one choice per shape and asks for configs only when it has none: its
    choices of each mode (timed, deterministic, ``only_config``) are kept apart, so switching the
    mode takes effect at once.
    """
    if isinstance(kernel, Autotuner):
        kernel.cache = kernel.__dict__.setdefault("choices_by_mode", {}).setdefault(_tuning_mode(), {})
    return wrap_triton(kernel)


def on_inputs_device(op):
    """`op` run with its first argument's GPU as the current device.

    Triton launches on the current device and its current stream, and the autotuner reads the
    current device's generation: inputs on cuda:1 while cuda:0 is current (nothing called
    set_device) would make a launch fail or, with peer access, race with the stream that
    produced them. Nothing changes for CPU tensors (the interpreter).
    """

    @functools.wraps(op)
    def on_device(*args, **kwargs):
        with device_of(args[0].device):
            return op(*args, **kwargs)

    return on_device


def device_of(device: torch.device):
    """A context in which `device` is the current CUDA device (nothing for other devices)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()

