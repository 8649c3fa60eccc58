"""Which implementation computes the terms: a backend is a module with the four term functions
of ``srl_ext.reference`` (surrogate_table, contrastive_loss, enveloping_loss, homogeneity_loss),
the same signatures, the same results. A fused backend may also have ``srl_loss``, the whole
weighted loss in one op (``whole_loss``).

- ``reference``: ``srl_ext.reference``, plain PyTorch, any device.
- ``cpu``: the fused C++ kernels (``srl_ext.ops`` on CPU tensors).
- ``cuda``: the fused CUDA kernels (``srl_ext.ops`` on CUDA tensors), when built with them.
- ``triton``: the fused Triton kernels (``srl_ext.kernels.triton``), on CUDA tensors, or on CPU
  tensors under ``TRITON_INTERPRET=1``.
- ``auto``: ``triton`` on CUDA tensors (``reference`` where Triton cannot run), ``cpu`` on CPU
  tensors. The CUDA C++ kernels run only when
  asked for by name until they have passed tests/test_gpu.py on a real GPU (docs/gpu.md,
  ``CUDA_KERNELS_VERIFIED``); the Triton kernels' arithmetic is tested on every machine under
  the Triton interpreter.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from . import ops, reference
from .ops.fused import weighted_terms

NAMES = ("auto", "reference", "cpu", "cuda", "triton")
# Set to True once the CUDA C++ kernels have passed tests/test_gpu.py on a real GPU: then "auto"
# prefers them to Triton on CUDA tensors (docs/gpu.md).
CUDA_KERNELS_VERIFIED = False


def _triton_module() -> tuple[ModuleType | None, str | None]:
    try:
        module = importlib.import_module("srl_ext.kernels.triton")
    except ImportError as error:
        return None, f"the Triton kernels could not be imported ({error})"
    return module, None


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, the inputs are on {device}"
        return ops.LOAD_ERROR
    if name == "cuda":
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, the inputs are on {device}"
        if ops.LOAD_ERROR:
            return ops.LOAD_ERROR
        if not ops.has_cuda_kernels():
            return "srl_ext._C was built without its CUDA kernels (a CPU build of torch, no nvcc, or SRL_EXT_CUDA=0)"
        return None
    if name == "triton":
        module, error = _triton_module()
        return error if module is None else module.unavailable_reason(device)
    raise ValueError(f"backend must be one of {', '.join(NAMES)}, got {name!r}")


def auto_name(device: torch.device) -> str:
    """The backend that ``"auto"`` picks on `device` (see the module docstring)."""
    if device.type == "cuda":
        candidates = ("cuda", "triton") if CUDA_KERNELS_VERIFIED else ("triton",)
        for candidate in candidates:
            if unavailable_reason(candidate, device) is None:
                return candidate
        return "reference"
    return "cpu" if device.type == "cpu" else "reference"


def resolve(name: str, device: torch.device, function: str = "srl_ext") -> ModuleType:
    """The module that computes the terms for backend `name` on `device`; a clear error if none."""
    if name not in NAMES:
        raise ValueError(f"{function}: argument 'backend' must be one of {', '.join(map(repr, NAMES))}, got {name!r}")
    if name == "auto":
        name = auto_name(device)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(f"{function}: backend {name!r} cannot run: {reason}")
    if name == "reference":
        return reference
    if name == "triton":
        return _triton_module()[0]
    return ops


def apply_terms(impl: ModuleType, features, bins, surrogates, anchors, settings) -> tuple:
    """(contrastive, enveloping, homogeneity) by backend module `impl` on a checked surrogate table,
    with the ``SRLSettings`` `settings`."""
    return (
        impl.contrastive_loss(features, bins, surrogates, settings.temperature, settings.label_weighting),
        impl.enveloping_loss(surrogates, anchors, settings.soft_envelope_temperature),
        impl.homogeneity_loss(surrogates, settings.homogeneity_sign, settings.homogeneity_beta),
    )


def whole_loss(impl: ModuleType, features, bins, memory, anchors, settings) -> tuple:
    """(total, contrastive, enveloping, homogeneity) by backend module `impl` on checked inputs,
    with the ``SRLSettings`` `settings`: its whole-loss op if it has one (one call, one autograd
    node), else its four term functions weighed together."""
    srl_loss = getattr(impl, "srl_loss", None)
    if srl_loss is not None:
        return srl_loss(features, bins, memory, anchors, settings)
    return weighted_terms(impl, features, bins, memory, anchors, settings)


def checks_data(impl: ModuleType, device: torch.device) -> bool:
    """Whether `impl`'s whole-loss op checks the input values itself on `device` (bins in range,
    finite features), so that the Python layer need not read them first."""
    checks = getattr(impl, "checks_data", None)
    return checks is not None and checks(device)
