"""Input checks of ``srl_ext.methods``: the ValueError style of ``srl_ext.validation``.

Checks that read data (finite values, labels inside the bins) run on CPU tensors in eager mode
only, as in ``srl_ext.validation``; shape and dtype checks always run.
"""

from __future__ import annotations

import math

import torch

from .. import validation as check

REAL_DTYPES = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
)


def labels(function: str, x: object, batch: int | None = None, argument: str = "labels",
           reference: str = "rows of 'features'") -> torch.Tensor:
    """A real tensor of shape (B,) or (B, 1), returned flattened to (B,); finite on CPU. With
    `batch`, its length must be B (`reference` says where B comes from)."""
    if not isinstance(x, torch.Tensor):
        check.fail(function, argument, "a tensor of shape (B,) or (B, 1)", check._describe(x))
    if not (x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1)):
        check.fail(function, argument, "a tensor of shape (B,) or (B, 1)", f"shape {tuple(x.shape)}")
    if x.dtype not in REAL_DTYPES:
        check.fail(function, argument, "a real (floating or integer) tensor", x.dtype)
    x = x.reshape(-1)
    if batch is not None and x.shape[0] != batch:
        check.fail(function, argument, f"of length B = {batch} ({reference})", f"length {x.shape[0]}")
    if x.shape[0] < 1:
        check.fail(function, argument, "at least one value", "an empty tensor")
    if x.is_floating_point() and check.reads_data(x) and not bool(torch.isfinite(x).all()):
        index = int((~torch.isfinite(x)).nonzero()[0, 0])
        check.fail(function, argument, "finite", f"a non-finite value at index {index}")
    return x


def floating_vector(function: str, argument: str, x: object, batch: int | None = None) -> torch.Tensor:
    """Like ``labels`` but floating only (predictions, targets)."""
    x = labels(function, x, batch, argument)
    check.floating(function, argument, x)
    return x


def features(function: str, x: object, dim: int | None = None) -> torch.Tensor:
    x = check.features(function, x)
    if dim is not None and x.shape[1] != dim:
        check.fail(function, "features", f"{dim} columns (feature_dim)", f"shape {tuple(x.shape)}")
    return x


def integer(function: str, argument: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        check.fail(function, argument, f"an int >= {minimum}", repr(value))
    return value


def number(function: str, argument: str, value: object, *, minimum: float | None = None,
           strict: bool = False) -> float:
    """A finite real number, optionally >= (or > with strict) minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        check.fail(function, argument, "a finite number", repr(value))
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        check.fail(function, argument, f"a finite number {'>' if strict else '>='} {minimum}", repr(value))
    return float(value)


def choice(function: str, argument: str, value: object, options: tuple[str, ...]) -> str:
    if value not in options:
        check.fail(function, argument, f"one of {', '.join(map(repr, options))}", repr(value))
    return value  # type: ignore[return-value]


def value_range(function: str, value: object) -> tuple[float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or not value[0] < value[1]):
        check.fail(function, "value_range", "a pair (low, high) of finite numbers with low < high", repr(value))
    return float(value[0]), float(value[1])
