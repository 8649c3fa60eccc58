"""The compiled custom ops (``torch.ops.srl_ext.*``), the backends "cpu" and "cuda".

The ops are defined in ``csrc/srl_ext.cpp`` with CPU kernels in ``csrc/cpu`` and CUDA kernels in
``csrc/cuda``; the dispatcher picks the kernel from the tensors' device. Their fake kernels (the
contract, so that ``torch.compile`` traces them without graph breaks), their autograd and the
four term functions (the signatures of ``srl_ext.reference``) are those of every fused op:
``srl_ext.ops.fused``, shared with the Triton ops.

``srl_loss`` is the whole loss: one op call (``srl_ext::srl_loss``) on CPU tensors, where it has
a kernel (csrc/cpu/srl_loss.cpp), and the four term ops weighed together elsewhere.
"""

from __future__ import annotations

import torch

from . import fused

try:
    from .. import _C  # loading the library registers the ops; _C.srl_loss: the eager fast path

    LOAD_ERROR: str | None = None
    _fast_srl_loss = getattr(_C, "srl_loss", None)  # None in a library built before it existed
except ImportError as error:  # the package was not built: say so when a compiled backend is asked for
    LOAD_ERROR = f"srl_ext._C could not be loaded ({error}); build it with `pip install --no-build-isolation -e .`"
    _fast_srl_loss = None


def available() -> bool:
    return LOAD_ERROR is None


def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA sources."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("srl_ext::envelope", "CUDA")


if available():
    for _name in ("surrogate_table", "surrogate_table_backward", "contrastive", "envelope", "homogeneity", "srl_loss"):
        torch.library.register_fake(f"srl_ext::{_name}", getattr(fused, f"fake_{_name}"))
    fused.register_table_autograd(
        "srl_ext::surrogate_table", lambda *args: torch.ops.srl_ext.surrogate_table_backward(*args)
    )
    fused.register_loss_autograd("srl_ext::contrastive", num_inputs=5)
    fused.register_loss_autograd("srl_ext::envelope", num_inputs=3)
    fused.register_loss_autograd("srl_ext::homogeneity", num_inputs=3)
    # srl_ext::srl_loss has its autograd in C++ (csrc/cpu/srl_loss.cpp: the Python registration
    # costs ~30 us per call for an op of twelve arguments); fused.register_srl_loss_autograd is
    # the same backward, for the Triton op.

_terms = fused.Terms(lambda name: getattr(torch.ops.srl_ext, name))
surrogate_table = _terms.surrogate_table
contrastive_loss = _terms.contrastive_loss
enveloping_loss = _terms.enveloping_loss
homogeneity_loss = _terms.homogeneity_loss


def whole_loss_devices() -> frozenset[str]:
    """The device types whose tensors the whole-loss op has a kernel for."""
    if not available():
        return frozenset()
    return frozenset(
        device for device in ("cpu", "cuda")
        if torch._C._dispatch_has_kernel_for_dispatch_key("srl_ext::srl_loss", device.upper())
    )


_WHOLE_LOSS_DEVICES = whole_loss_devices()


def srl_loss(features, bins, memory, anchors, settings) -> tuple:
    """(total, contrastive, enveloping, homogeneity) with the ``SRLSettings`` `settings`: the
    whole-loss op where it has a kernel, the four term ops weighed together elsewhere.

    In eager mode on plain tensors the op (with its autograd) is called through
    ``srl_ext._C.srl_loss``, without the generic argument parsing of ``torch.ops`` (about 5 us of
    a call's fixed cost); under ``torch.compile``, a ``__torch_function__`` mode or on tensor
    subclasses (fake tensors...) through ``torch.ops.srl_ext.srl_loss``, which traces and
    dispatches them."""
    if features.device.type in _WHOLE_LOSS_DEVICES:
        if (_fast_srl_loss is not None and type(features) is torch.Tensor and type(bins) is torch.Tensor
                and type(memory) is torch.Tensor and type(anchors) is torch.Tensor
                and not torch._C._is_torch_function_mode_enabled() and not torch.compiler.is_compiling()):
            s = settings
            return _fast_srl_loss(features, bins, memory, anchors, s.w1, s.w2, s.w3, s.temperature,
                                  s.homogeneity_sign, s.homogeneity_beta, s.soft_envelope_temperature,
                                  s.label_weighting)[:4]
        return _terms.srl_loss(features, bins, memory, anchors, settings)
    return fused.weighted_terms(_terms, features, bins, memory, anchors, settings)


# The phases of one CPU whole-loss call, in the order of srl_loss_phase_times (csrc/cpu/srl_loss.cpp,
# Phase): along the call's critical path, so they add up to its time.
SRL_LOSS_PHASES = ("setup", "table", "region_start", "parts", "join", "finish", "outputs")


def cpu_isa(isa: str | None = None) -> str:
    """The kernel set the CPU whole-loss op runs: "avx512", "avx2" or "baseline" (portable C++).

    With `isa` ("auto": the best this CPU supports, the default; or a set's name) it switches to
    it first, for the whole process; the environment variable SRL_EXT_CPU_ISA sets the starting
    choice. Every set gives the same numbers; ``python -m bench.isa`` times them on this CPU. A
    set the CPU cannot run, or an unknown name, is a ValueError."""
    return torch.ops.srl_ext.cpu_isa(isa)


def srl_loss_phase_times() -> dict[str, float]:
    """Seconds spent in each phase (SRL_LOSS_PHASES) of the calling thread's last CPU whole-loss
    op call: where its time goes above its matrix products (`python -m bench.floor`)."""
    return dict(zip(SRL_LOSS_PHASES, torch.ops.srl_ext.srl_loss_phase_times(), strict=True))


def checks_data(device: torch.device) -> bool:
    """The CPU kernel of the whole-loss op checks the values as it reads them (bins in range,
    finite features and used memory rows, norms that fit: a ValueError) and normalises the
    anchors' cosines itself."""
    return device.type == "cpu" and "cpu" in _WHOLE_LOSS_DEVICES
