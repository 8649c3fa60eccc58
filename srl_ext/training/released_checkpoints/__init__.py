"""The SRL authors' released checkpoints, evaluated on this project's models.

- ``reading``: a torch file read without running pickled code (``read_checkpoint``, also for
  this project's own ``best.pt`` / ``last.pt``), a released file recognised and its tensors named
  as ours (``inspect_released``, ``ReleasedLayout``).
- ``mapping``: our model filled from a layout (``build_released_model``, ``load_released``), the
  STS-B vocabulary mapping, and the settings of an ``--evaluate`` of such a file.

The drivers' ``--evaluate`` of a released file is ``srl_ext.training.run.evaluate_released``.
docs/training.md, "The authors' released checkpoints", has the formats, the key mapping and what
is exact.
"""

from .mapping import (ReleasedModel, build_released_model, load_released, map_vocabulary,
                      read_released_vocabulary)
from .reading import (ReleasedCheckpointError, ReleasedLayout, UntrustedCheckpointError, inspect_released,
                      is_srl_ext_checkpoint, read_checkpoint)

__all__ = [
    "ReleasedCheckpointError", "ReleasedLayout", "ReleasedModel", "UntrustedCheckpointError", "build_released_model",
    "inspect_released", "is_srl_ext_checkpoint", "load_released", "map_vocabulary", "read_checkpoint",
    "read_released_vocabulary",
]
