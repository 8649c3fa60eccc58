"""What every fused op shares, whichever kernels run it (``torch.ops.srl_ext`` for the C++ and CUDA
kernels, ``torch.ops.srl_ext_triton`` for the Triton ones): the contract its fake kernel states,
its autograd, and the four term functions of ``srl_ext.reference`` on top of it.

Every loss op returns ``(loss, grad)``, ``grad`` being the gradient of the loss with respect to
its one differentiable input, computed in the same sweep; the backward scales it by the incoming
gradient and returns it in that input's dtype. The surrogate table op returns
``(surrogates, mean_norms, counts)`` and has a backward op of its own.

The whole-loss op ``srl_loss`` (the table, the three terms and their weighted total in one call)
returns ``(total, contrastive, enveloping, homogeneity, grads)``, ``grads`` (4 x B x D) holding
the gradient of each of the four losses with respect to the features: one autograd node, whose
backward weighs them by the incoming gradients (usually only the total's: one multiplication).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..reference import accumulation_dtype


# ----- the contract: metadata only, torch._check (traceable), the outputs' shapes and dtypes -----
def _check_rows(name: str, x: torch.Tensor, cols: int | None = None) -> None:
    torch._check_value(x.dim() == 2, lambda: f"srl_ext: argument '{name}' must be 2-D, got shape {tuple(x.shape)}")
    torch._check_value(x.shape[1] >= 1, lambda: f"srl_ext: argument '{name}' must have D >= 1 columns, got 0")
    if cols is not None:
        torch._check_value(x.shape[1] == cols, lambda: f"srl_ext: argument '{name}' must have {cols} columns")


def _check_device(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    torch._check_value(x.device == like.device,
                       lambda: f"srl_ext: argument '{name}' must be on {like.device}, got {x.device}")


def _check_floating(name: str, x: torch.Tensor) -> None:
    torch._check_value(x.dtype.is_floating_point,
                       lambda: f"srl_ext: argument '{name}' must be floating point, got {x.dtype}")


def _check_vector(name: str, x: torch.Tensor, length, dtype: torch.dtype | None, like: torch.Tensor) -> None:
    """A vector of `length` entries on `like`'s device: of `dtype`, or floating point when None."""
    _check_device(name, x, like)
    torch._check_value(x.dim() == 1 and x.shape[0] == length,
                       lambda: f"srl_ext: argument '{name}' must have shape ({length},), got {tuple(x.shape)}")
    if dtype is None:
        _check_floating(name, x)
    else:
        torch._check_value(x.dtype == dtype, lambda: f"srl_ext: argument '{name}' must be {dtype}, got {x.dtype}")


def check_table(features, bins, memory) -> None:
    _check_rows("features", features)
    _check_floating("features", features)
    _check_rows("memory", memory, features.shape[1])
    _check_device("memory", memory, features)
    _check_vector("bins", bins, features.shape[0], torch.int64, features)


def check_table_backward(grad_surrogates, features, bins, surrogates, mean_norms, counts) -> None:
    """The table's backward op reads every argument by the sizes of the others: each is checked."""
    check_table(features, bins, surrogates)
    num_bins = surrogates.shape[0]
    _check_rows("grad_surrogates", grad_surrogates, features.shape[1])
    torch._check_value(grad_surrogates.shape[0] == num_bins,
                       lambda: f"srl_ext: argument 'grad_surrogates' must have {num_bins} rows, got {grad_surrogates.shape[0]}")
    _check_device("grad_surrogates", grad_surrogates, features)
    _check_floating("grad_surrogates", grad_surrogates)
    _check_vector("mean_norms", mean_norms, num_bins, None, features)
    _check_vector("counts", counts, num_bins, torch.int64, features)


def check_contrastive(features, bins, surrogates) -> None:
    check_table(features, bins, surrogates)


def check_envelope(surrogates, anchors) -> None:
    _check_rows("surrogates", surrogates)
    _check_rows("anchors", anchors, surrogates.shape[1])
    _check_device("anchors", anchors, surrogates)


def check_homogeneity(surrogates) -> None:
    _check_rows("surrogates", surrogates)
    torch._check_value(surrogates.shape[0] >= 2, lambda: "srl_ext: argument 'surrogates' must have K >= 2 rows")


def check_srl_loss(features, bins, memory, anchors) -> None:
    check_table(features, bins, memory)
    torch._check_value(memory.shape[0] >= 2, lambda: "srl_ext: argument 'memory' must have K >= 2 rows")
    _check_rows("anchors", anchors, features.shape[1])
    _check_device("anchors", anchors, features)


# Fake kernels: the contract, then outputs allocated contiguous, as the kernels return them
# (empty_like would keep the strides of a transposed input; opcheck and inductor compare them).
def fake_surrogate_table(features, bins, memory):
    check_table(features, bins, memory)
    acc = accumulation_dtype(features.dtype)
    num_bins, dim = memory.shape
    return features.new_empty((num_bins, dim), dtype=acc), features.new_empty((num_bins,), dtype=acc), bins.new_empty((num_bins,))


def fake_surrogate_table_backward(grad_surrogates, features, bins, surrogates, mean_norms, counts):
    check_table_backward(grad_surrogates, features, bins, surrogates, mean_norms, counts)
    return features.new_empty(features.shape)


def fake_contrastive(features, bins, surrogates, temperature, label_weighting):
    check_contrastive(features, bins, surrogates)
    return features.new_empty((), dtype=accumulation_dtype(features.dtype)), features.new_empty(features.shape)


def fake_envelope(surrogates, anchors, envelope_temperature):
    check_envelope(surrogates, anchors)
    acc = accumulation_dtype(surrogates.dtype)
    return surrogates.new_empty((), dtype=acc), surrogates.new_empty(surrogates.shape, dtype=acc)


def fake_homogeneity(surrogates, sign, beta):
    check_homogeneity(surrogates)
    acc = accumulation_dtype(surrogates.dtype)
    return surrogates.new_empty((), dtype=acc), surrogates.new_empty(surrogates.shape, dtype=acc)


def fake_srl_loss(features, bins, memory, anchors, w1, w2, w3, temperature, homogeneity_sign, homogeneity_beta,
                  envelope_temperature, label_weighting):
    check_srl_loss(features, bins, memory, anchors)
    acc = accumulation_dtype(features.dtype)
    losses = tuple(features.new_empty((), dtype=acc) for _ in range(4))
    return (*losses, features.new_empty((4, *features.shape), dtype=acc))


# ----- autograd, one registration for both namespaces -----
# The fused ops compute their gradient in the forward sweep and their backward scales it: they
# have no second derivative. Under create_graph=True (a gradient penalty, a Hessian-vector
# product) the gradient they return carries a node that refuses to be differentiated, as
# torch.autograd.function.once_differentiable does, rather than a gradient that silently
# ends the graph. csrc/cpu/srl_loss.cpp does the same for its C++ autograd, with this message.
DIFFERENTIATED_TWICE = (
    "srl_ext: the fused SRL ops are differentiable once; a second derivative (create_graph=True, e.g. a "
    "gradient penalty) of the SRL loss needs backend='reference'"
)


class _DifferentiableOnce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad):
        return grad.clone()

    @staticmethod
    def backward(ctx, _grad):
        raise RuntimeError(DIFFERENTIATED_TWICE)


def differentiable_once(grad: torch.Tensor | None) -> torch.Tensor | None:
    """`grad`, returned by a fused backward: as it is, or under create_graph=True with a node that
    raises DIFFERENTIATED_TWICE when a second backward reaches it."""
    if grad is None or not torch.is_grad_enabled():
        return grad
    return _DifferentiableOnce.apply(grad.detach().requires_grad_())


def _register(op, backward, setup_context) -> None:
    if isinstance(op, str):
        torch.library.register_autograd(op, backward, setup_context=setup_context)
    else:  # a torch.library.triton_op
        op.register_autograd(backward, setup_context=setup_context)


def register_loss_autograd(op, num_inputs: int) -> None:
    """The backward of loss op `op` (its name or a triton_op): input 0 gets the saved gradient
    times the incoming one, in input 0's dtype; the other inputs get none."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.input_dtype = inputs[0].dtype

    def backward(ctx, grad_loss, _grad_of_grad):
        (fused_grad,) = ctx.saved_tensors
        return (differentiable_once((grad_loss * fused_grad).to(ctx.input_dtype)),) + (None,) * (num_inputs - 1)

    _register(op, backward, setup_context)


def register_table_autograd(op, backward_op: Callable) -> None:
    """The backward of surrogate table op `op`: `backward_op` to the features (memory rows are detached)."""

    def setup_context(ctx, inputs, output):
        features, bins, _memory = inputs
        ctx.save_for_backward(features, bins, *output)

    def backward(ctx, grad_surrogates, _grad_mean_norms, _grad_counts):
        if grad_surrogates is None:
            return None, None, None
        return differentiable_once(backward_op(grad_surrogates, *ctx.saved_tensors)), None, None

    _register(op, backward, setup_context)


SRL_LOSS_INPUTS = 12  # features, bins, memory, anchors, then the eight settings


def register_srl_loss_autograd(op) -> None:
    """The backward of whole-loss op `op`: the features get the saved gradients of the four losses
    weighed by the incoming ones (None for a loss that reached no backward, so a plain
    total.backward() costs one multiplication), in the features' dtype."""

    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[4])
        ctx.input_dtype = inputs[0].dtype

    def backward(ctx, *grad_losses):
        (grads,) = ctx.saved_tensors
        grad = None
        for index, grad_loss in enumerate(grad_losses[:4]):
            if grad_loss is not None:
                term = grad_loss * grads[index]
                grad = term if grad is None else grad + term
        if grad is not None:
            grad = differentiable_once(grad.to(ctx.input_dtype))
        return (grad,) + (None,) * (SRL_LOSS_INPUTS - 1)

    _register(op, backward, setup_context)


# ----- the term functions (the signatures of srl_ext.reference) -----
def weighted_terms(impl, features, bins, memory, anchors, settings) -> tuple:
    """(total, contrastive, enveloping, homogeneity) from the four term functions of `impl` (a
    backend module, or ``Terms``), weighed with the ``SRLSettings`` `settings`: the whole loss
    where no whole-loss op runs."""
    surrogates = impl.surrogate_table(features, bins, memory)
    contrastive = impl.contrastive_loss(features, bins, surrogates, settings.temperature, settings.label_weighting)
    enveloping = impl.enveloping_loss(surrogates, anchors, settings.soft_envelope_temperature)
    homogeneity = impl.homogeneity_loss(surrogates, settings.homogeneity_sign, settings.homogeneity_beta)
    total = settings.w1 * contrastive + settings.w2 * enveloping + settings.w3 * homogeneity
    return total, contrastive, enveloping, homogeneity


class Terms:
    """``surrogate_table``, ``contrastive_loss``, ``enveloping_loss`` and ``homogeneity_loss`` on
    four fused ops, given as a function from the op name to the op."""

    def __init__(self, op: Callable[[str], Callable]) -> None:
        self._op = op

    def surrogate_table(self, features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self._op("surrogate_table")(features, bins, memory)[0]

    def contrastive_loss(self, features, bins, surrogates, temperature: float, label_weighting: bool = False):
        return self._op("contrastive")(features, bins, surrogates.detach(), float(temperature), bool(label_weighting))[0]

    def enveloping_loss(self, surrogates, anchors, envelope_temperature: float | None = None):
        smoothness = None if envelope_temperature is None else float(envelope_temperature)
        return self._op("envelope")(surrogates, anchors, smoothness)[0]

    def homogeneity_loss(self, surrogates, sign: float = -1.0, beta: float = 0.1):
        return self._op("homogeneity")(surrogates, float(sign), float(beta))[0]

    def srl_loss(self, features, bins, memory, anchors, settings) -> tuple:
        """(total, contrastive, enveloping, homogeneity) by the whole-loss op, with the
        ``SRLSettings`` `settings`; one autograd node."""
        s = settings
        return self._op("srl_loss")(
            features, bins, memory, anchors, s.w1, s.w2, s.w3, s.temperature, s.homogeneity_sign, s.homogeneity_beta,
            s.soft_envelope_temperature, s.label_weighting,
        )[:4]
