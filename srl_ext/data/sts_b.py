"""Deprecated: moved to ``srl_ext.training.data.sts_b``."""

from .._deprecated import alias

alias(__name__)
