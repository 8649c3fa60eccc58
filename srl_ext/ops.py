"""The compiled custom ops (``torch.ops.srl_ext.*``): fake kernels, autograd, and term functions.

The ops are defined in ``csrc/srl_ext.cpp`` with CPU kernels in ``csrc/cpu`` and CUDA kernels in
``csrc/cuda``; the dispatcher picks the kernel from the tensors' device. Every loss op returns
``(loss, grad)`` where ``grad`` is the gradient of the loss with respect to its differentiable
input, computed in the same sweep; the backward registered here scales it by the incoming
gradient. The fake kernels describe output shapes and dtypes so that ``torch.compile`` traces the
ops without graph breaks.

The four term functions at the bottom have the signatures of those in ``srl_ext.reference``.
"""

from __future__ import annotations

import torch

from .reference import accumulation_dtype

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)

    LOAD_ERROR: str | None = None
except ImportError as error:  # the package was not built: say so when a compiled backend is asked for
    LOAD_ERROR = f"srl_ext._C could not be loaded ({error}); build it with `pip install --no-build-isolation -e .`"


def available() -> bool:
    return LOAD_ERROR is None


def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA sources."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("srl_ext::envelope", "CUDA")


if available():

    @torch.library.register_fake("srl_ext::surrogate_table")
    def _surrogate_table_fake(features, bins, memory):
        num_bins, dim = memory.shape
        acc = accumulation_dtype(features.dtype)
        return (
            features.new_empty((num_bins, dim), dtype=acc),
            features.new_empty((num_bins,), dtype=acc),
            bins.new_empty((num_bins,)),
        )

    # Outputs are contiguous, as the kernels return them: empty_like would keep the strides of a
    # transposed input, and opcheck and inductor compare strides.
    @torch.library.register_fake("srl_ext::surrogate_table_backward")
    def _surrogate_table_backward_fake(grad_surrogates, features, bins, surrogates, mean_norms, counts):
        return features.new_empty(features.shape)

    @torch.library.register_fake("srl_ext::contrastive")
    def _contrastive_fake(features, bins, surrogates, temperature, label_weighting):
        return features.new_empty((), dtype=accumulation_dtype(features.dtype)), features.new_empty(features.shape)

    @torch.library.register_fake("srl_ext::envelope")
    def _envelope_fake(surrogates, anchors, temperature):
        acc = accumulation_dtype(surrogates.dtype)
        return surrogates.new_empty((), dtype=acc), surrogates.new_empty(surrogates.shape, dtype=acc)

    @torch.library.register_fake("srl_ext::homogeneity")
    def _homogeneity_fake(surrogates, sign, beta):
        acc = accumulation_dtype(surrogates.dtype)
        return surrogates.new_empty((), dtype=acc), surrogates.new_empty(surrogates.shape, dtype=acc)

    def _save_table(ctx, inputs, output):
        features, bins, _memory = inputs
        surrogates, mean_norms, counts = output
        ctx.save_for_backward(features, bins, surrogates, mean_norms, counts)

    def _table_backward(ctx, grad_surrogates, _grad_mean_norms, _grad_counts):
        features, bins, surrogates, mean_norms, counts = ctx.saved_tensors
        grad_features = torch.ops.srl_ext.surrogate_table_backward(
            grad_surrogates, features, bins, surrogates, mean_norms, counts
        )
        return grad_features, None, None  # memory rows are detached

    def _save_fused_grad(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    def _scale_fused_grad(input_count: int, grad_position: int):
        """Backward of a fused op: the saved gradient times the incoming one, for one input."""

        def backward(ctx, grad_loss, _grad_of_grad):
            (fused_grad,) = ctx.saved_tensors
            grads = [None] * input_count
            grads[grad_position] = (grad_loss * fused_grad).to(fused_grad.dtype)
            return tuple(grads)

        return backward

    torch.library.register_autograd("srl_ext::surrogate_table", _table_backward, setup_context=_save_table)
    torch.library.register_autograd(
        "srl_ext::contrastive", _scale_fused_grad(5, 0), setup_context=_save_fused_grad
    )
    torch.library.register_autograd("srl_ext::envelope", _scale_fused_grad(3, 0), setup_context=_save_fused_grad)
    torch.library.register_autograd(
        "srl_ext::homogeneity", _scale_fused_grad(3, 0), setup_context=_save_fused_grad
    )


def surrogate_table(features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    return torch.ops.srl_ext.surrogate_table(features, bins, memory)[0]


def contrastive_loss(
    features: torch.Tensor,
    bins: torch.Tensor,
    surrogates: torch.Tensor,
    temperature: float,
    label_weighting: bool = False,
) -> torch.Tensor:
    return torch.ops.srl_ext.contrastive(
        features, bins, surrogates.detach(), float(temperature), bool(label_weighting)
    )[0]


def enveloping_loss(
    surrogates: torch.Tensor, anchors: torch.Tensor, temperature: float | None = None
) -> torch.Tensor:
    return torch.ops.srl_ext.envelope(surrogates, anchors, None if temperature is None else float(temperature))[0]


def homogeneity_loss(surrogates: torch.Tensor, sign: float = -1.0, beta: float = 0.1) -> torch.Tensor:
    return torch.ops.srl_ext.homogeneity(surrogates, float(sign), float(beta))[0]
