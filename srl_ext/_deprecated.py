"""Old module paths kept importable after the restructure: each warns and is the new module.

These shims are the only library files that name ``srl_ext.training`` (at import time of the
old path, never from the library's own code); they go in a later release.
"""

from __future__ import annotations

import importlib
import sys
import warnings

# old module -> new module
MOVED = {
    "srl_ext.engine": "srl_ext.training.engine",
    "srl_ext.cli": "srl_ext.training.cli",
    "srl_ext.models": "srl_ext.training.models",
    "srl_ext.data": "srl_ext.training.data",
    "srl_ext.data.images": "srl_ext.training.data.images",
    "srl_ext.data.sts_b": "srl_ext.training.data.sts_b",
    "srl_ext.released_checkpoints": "srl_ext.training.released_checkpoints",
}


def alias(old: str):
    """Make module `old` the module it moved to, with a DeprecationWarning naming the new place.

    A package (``srl_ext.data``) keeps its own module, so that its old submodules resolve to
    their shims (not to second copies of the new modules); it gets the new package's names.
    """
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    if hasattr(module, "__path__"):
        return module
    sys.modules[old] = module
    return module
