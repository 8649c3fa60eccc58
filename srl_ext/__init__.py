"""srl-ext: Surrogate-driven Representation Learning (SRL, CVPR 2025) for deep imbalanced regression.

- ``srl_ext.functional``: ``srl_terms`` and one function per term, with a ``backend`` choice.
- ``srl_ext.reference``: the plain PyTorch math of each term (SPEC sections 3-6).
- ``srl_ext.SRLLoss``: the weighted terms as a module with its anchors and presets.
- ``srl_ext.SurrogateMemory``: the per-bin memory that fills bins absent from a batch.
- ``srl_ext.distributed``: data-parallel (DDP) training: the global-batch table and terms, helpers.
"""

from . import backends, distributed, functional, ops, presets, reference
from .loss import SRLLoss, SRLTerms, sample_anchors
from .memory import SurrogateMemory

__all__ = ["SRLLoss", "SRLTerms", "SurrogateMemory", "backends", "distributed", "functional", "ops", "presets", "reference", "sample_anchors"]
__version__ = "0.1.0"
