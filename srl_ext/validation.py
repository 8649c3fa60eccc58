"""Input checks shared by the public API: a ValueError that names the argument, the expected
and the actual value. Nothing here mutates its inputs.

Shape, dtype and device checks are free (metadata only). The checks that read data (bins in
range, finite features) would force a host-device synchronisation on a GPU and a graph break under
``torch.compile``, so they run on CPU tensors in eager mode only. Elsewhere an out-of-range bin
never indexes out of bounds: the C++ kernels raise, and on the GPU (fused kernels, reference,
``SurrogateMemory``) the sample belongs to no bin and its contrastive loss is NaN.
"""

from __future__ import annotations

import math

import torch

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fail(function: str, argument: str, expected: str, actual: object) -> None:
    raise ValueError(f"{function}: argument '{argument}' must be {expected}, got {actual}")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}, on {x.device}"
    return f"{type(x).__name__} {x!r}"


def tensor(function: str, argument: str, x: object, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        fail(function, argument, f"a {ndim}-D tensor ({layout})", _describe(x))
    if x.dim() != ndim:
        fail(function, argument, f"a {ndim}-D tensor ({layout})", f"shape {tuple(x.shape)}")
    return x


def floating(function: str, argument: str, x: torch.Tensor) -> None:
    if x.dtype not in FEATURE_DTYPES:
        fail(function, argument, "float16, bfloat16, float32 or float64", x.dtype)


def same_device(function: str, argument: str, x: torch.Tensor, reference: torch.Tensor) -> None:
    if x.device != reference.device:
        fail(function, argument, f"on the device of 'features' ({reference.device})", x.device)


def positive(function: str, argument: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        fail(function, argument, "a finite number > 0", repr(value))
    return float(value)


def number(function: str, argument: str, value: object, *, minimum: float | None = None) -> float:
    """A finite real number (``minimum``: at least that), as a float; bools are refused."""
    expected = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            minimum is not None and value < minimum):
        fail(function, argument, expected, repr(value))
    return float(value)


def boolean(function: str, argument: str, value: object) -> bool:
    """True or False (numpy and torch booleans too); a string such as "no" is refused, not taken as True."""
    if isinstance(value, bool) or type(value).__name__ == "bool_" or (
            isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1):
        return bool(value)
    fail(function, argument, "True or False", f"{type(value).__name__} {value!r}")


def reads_data(x: torch.Tensor) -> bool:
    """Whether the data-reading checks may run on x (see the module docstring)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision tensors, the dtype itself otherwise (``reference.accumulation_dtype``)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def finite_rows(function: str, argument: str, x: torch.Tensor, acc: torch.dtype, rows: torch.Tensor | None = None) -> None:
    """Rows of x (all, or those where ``rows`` is True) hold finite values, and their norms in the
    accumulation dtype ``acc`` do not overflow (values of 1e20 are finite in float32, their norm
    is not). Reads data: call on CPU tensors in eager mode only (``reads_data``)."""
    selected = torch.ones(x.shape[0], dtype=torch.bool) if rows is None else rows
    bad = (~torch.isfinite(x)).any(dim=1) & selected
    if bool(bad.any()):
        fail(function, argument, "finite", f"a non-finite value in row {int(bad.nonzero()[0, 0])}")
    norms = torch.linalg.vector_norm(x.to(acc), dim=1)
    overflow = ~torch.isfinite(norms) & selected
    if bool(overflow.any()):
        row = int(overflow.nonzero()[0, 0])
        largest = float(x[row].abs().max())
        fail(function, argument, f"rows whose norm fits in {acc} (the values are finite but the norm overflows)",
             f"row {row} with values up to {largest:.3g}; scale the inputs down")


def features(function: str, x: object, read_data: bool = True) -> torch.Tensor:
    """`read_data=False`: metadata only, for the kernels that check the values themselves."""
    x = tensor(function, "features", x, 2, "B x D")
    if x.device.type == "meta" and not torch.compiler.is_compiling():  # no data for the terms to read
        fail(function, "features", "a tensor with data (on a CPU or GPU device)", "a tensor on the meta device")
    floating(function, "features", x)
    if x.shape[0] < 1 or x.shape[1] < 1:
        fail(function, "features", "a non-empty B x D tensor", f"shape {tuple(x.shape)}")
    if read_data and reads_data(x):
        finite_rows(function, "features", x.detach(), accumulation_dtype(x.dtype))
    return x


def bins(function: str, x: object, batch: int, num_bins: int, features_: torch.Tensor,
         read_data: bool = True) -> torch.Tensor:
    x = tensor(function, "bins", x, 1, "B bin indices")
    if x.dtype != torch.int64:
        fail(function, "bins", "an int64 tensor", x.dtype)
    if x.shape[0] != batch:
        fail(function, "bins", f"of length B = {batch} (rows of 'features')", f"length {x.shape[0]}")
    same_device(function, "bins", x, features_)
    if read_data and reads_data(x) and batch > 0:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= num_bins:
            bad = low if low < 0 else high
            fail(function, "bins", f"bin indices in [0, K) = [0, {num_bins})", f"{bad}")
    return x


def table(function: str, argument: str, x: object, dim: int, features_: torch.Tensor, what: str) -> torch.Tensor:
    """A K x D (or N x D) floating table whose D matches the features'."""
    x = tensor(function, argument, x, 2, what)
    floating(function, argument, x)
    if x.shape[1] != dim:
        fail(function, argument, f"{dim} columns (D of 'features')", f"shape {tuple(x.shape)}")
    same_device(function, argument, x, features_)
    return x


def columns(function: str, argument: str, x: torch.Tensor) -> None:
    """At least one feature column: D = 0 has no direction to normalise (and the CUDA envelope
    divides by D when it plans its shared memory)."""
    if x.shape[1] < 1:
        fail(function, argument, "a K x D tensor with D >= 1", f"shape {tuple(x.shape)}")


def num_bins(function: str, argument: str, x: torch.Tensor) -> int:
    if x.shape[0] < 2:
        fail(function, argument, "at least K = 2 rows (bins)", f"shape {tuple(x.shape)}")
    return x.shape[0]


def anchors(function: str, x: object, dim: int, features_: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The anchors as the terms use them: constants (detached, so no backend returns a gradient
    for them) normalised to unit rows (a zero row stays zero), whatever their scale: the
    enveloping term measures cosines, and anchors scaled by 10 would make it negative.
    `normalize=False`: checked only, for the whole-loss CPU kernel, which divides each cosine by
    its anchor's norm instead of copying the N x D anchors."""
    x = table(function, "anchors", x, dim, features_, "N x D vectors")
    if x.shape[0] < 1:
        fail(function, "anchors", "at least N = 1 anchor", f"shape {tuple(x.shape)}")
    if not normalize:
        return x
    x = x.detach()
    acc = accumulation_dtype(x.dtype)
    return (x.to(acc) / torch.linalg.vector_norm(x.to(acc), dim=1, keepdim=True).clamp_min(1e-12)).to(x.dtype)


def used_memory_rows(function: str, memory: torch.Tensor, bins: torch.Tensor, features_: torch.Tensor) -> None:
    """The memory rows the surrogate table takes (bins absent from the batch) are finite and have a
    norm that fits, as the features must (CPU tensors in eager mode only)."""
    if not (reads_data(memory) and reads_data(bins)):
        return
    counts = torch.bincount(bins, minlength=memory.shape[0])[: memory.shape[0]]
    finite_rows(function, "memory", memory.detach(), accumulation_dtype(features_.dtype), rows=counts == 0)


def envelope(function: str, mode: object, temperature: object) -> float | None:
    """The envelope temperature to use: None for the hard max, a positive number for soft."""
    if mode not in ("hard", "soft"):
        fail(function, "envelope", "'hard' or 'soft'", repr(mode))
    if mode == "hard":
        if temperature is not None:
            fail(function, "envelope_temperature", "None with envelope='hard' (it sets the soft form)", repr(temperature))
        return None
    if temperature is None:
        fail(function, "envelope_temperature", "a number > 0 with envelope='soft'", "None")
    return positive(function, "envelope_temperature", temperature)



def table_inputs(function: str, h: object, y: object, rows: object, name: str = "memory", read_data: bool = True):
    """Checked (features, bins, K x D table `name`): bins index the table's rows."""
    h = features(function, h, read_data)
    rows = table(function, name, rows, h.shape[1], h, "K x D")
    y = bins(function, y, h.shape[0], num_bins(function, name, rows), h, read_data)
    if name == "memory" and read_data:
        used_memory_rows(function, rows, y, h)
    return h, y, rows


def srl_inputs(function: str, h: object, y: object, memory: object, p: object, read_data: bool = True):
    """The checked (features, bins, memory, anchors) of the SRL terms (errors name `function`), the
    anchors normalised. `read_data=False`: metadata only, the anchors as given, for the
    whole-loss CPU kernel, which checks the values (bins in range, finite features and used
    memory rows, norms that fit) and normalises the anchors' cosines itself."""
    h, y, memory = table_inputs(function, h, y, memory, read_data=read_data)
    return h, y, memory, anchors(function, p, h.shape[1], h, normalize=read_data)


def signature(*tensors: object) -> tuple | None:
    """What the metadata checks of `tensors` depend on (shapes, dtypes, devices), or None when one
    is not a tensor: a call with the signature of the last checked one needs no new checks."""
    key = []
    for x in tensors:
        if not isinstance(x, torch.Tensor):
            return None
        key += (x.shape, x.dtype, x.device)
    return tuple(key)