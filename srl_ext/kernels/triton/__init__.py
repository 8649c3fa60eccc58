"""The Triton backend: the four SRL terms as fused Triton kernels (``srl_ext.backends``: "triton").

Each term is a ``torch.library.triton_op`` in the namespace ``srl_ext_triton`` with its autograd
registered, so ``torch.compile`` traces it, and so is the whole loss (``srl_loss``: the table, the
terms and their weighted total in fewer launches); the functions here have the signatures of
``srl_ext.reference``. On CUDA tensors the kernels are compiled; on CPU tensors they run only in
Triton's interpreter (``TRITON_INTERPRET=1`` set before this package is imported), which is slow
and meant for tests.

Each op runs on its inputs' GPU (the current device while it runs) and its current stream.
Tile sizes are autotuned by timing, so results are bitwise reproducible across processes only
with ``set_deterministic(True)`` (or SRL_EXT_TRITON_DETERMINISTIC=1, or
``torch.use_deterministic_algorithms(True)``), which pins one config per GPU.
"""

import torch

from ...ops.fused import Terms
from . import contrastive, envelope, homogeneity, table, utils, whole_loss
from .utils import deterministic, set_deterministic

_OPS = {"surrogate_table": table.surrogate_table_op, "contrastive": contrastive.contrastive_op,
        "envelope": envelope.envelope_op, "homogeneity": homogeneity.homogeneity_op,
        "srl_loss": whole_loss.srl_loss_op}
_terms = Terms(_OPS.__getitem__)
surrogate_table = _terms.surrogate_table
contrastive_loss = _terms.contrastive_loss
enveloping_loss = _terms.enveloping_loss
homogeneity_loss = _terms.homogeneity_loss
srl_loss = _terms.srl_loss  # the whole loss in one op (whole_loss.py); backends.whole_loss uses it

__all__ = [
    "contrastive_loss",
    "deterministic",
    "enveloping_loss",
    "homogeneity_loss",
    "set_deterministic",
    "srl_loss",
    "surrogate_table",
    "unavailable_reason",
]


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on tensors of `device`, or None when they can."""
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu" and utils.INTERPRETING:
        return None
    if device.type == "cpu":
        return (
            "Triton has no CPU backend; to run the Triton kernels on CPU tensors (slowly, for tests) "
            "set TRITON_INTERPRET=1 in the environment before srl_ext.kernels.triton is imported"
        )
    return (
        f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), the inputs are on {device}"
    )
