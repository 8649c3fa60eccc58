"""srl-ext: Surrogate-driven Representation Learning (SRL, CVPR 2025) for deep imbalanced regression.

The library (this package; it never imports ``srl_ext.training``):

- ``srl_ext.settings``: ``SRLSettings`` (every setting of the terms), K per benchmark, the presets.
- ``srl_ext.functional``: ``srl_terms`` and one function per term, with a ``backend`` choice.
- ``srl_ext.reference``: the plain PyTorch math of each term (docs/method.md).
- ``srl_ext.SRLLoss``: the weighted terms as a module with its anchors and presets.
- ``srl_ext.SurrogateMemory``: the per-bin memory that fills bins absent from a batch.
- ``srl_ext.label_bins``: labels to the int64 bins the loss and the memory take (one per integer
  label, or equal-width bins on a range).
- ``srl_ext.distributed``: the global-batch table and terms of a data-parallel (DDP) step.
- ``srl_ext.metrics``: the DIR metrics; ``srl_ext.released``: the released STS-B table.

The training application of the drivers in ``train/`` is ``srl_ext.training``.
"""

from . import backends, distributed, functional, ops, reference, settings
from .methods import label_bins
from .loss import SRLLoss, SRLTerms, sample_anchors
from .memory import SurrogateMemory
from .settings import SRLSettings

__all__ = [
    "SRLLoss", "SRLSettings", "SRLTerms", "SurrogateMemory", "backends", "distributed", "functional", "label_bins",
    "ops", "reference", "sample_anchors", "settings",
]
__version__ = "0.1.0"
