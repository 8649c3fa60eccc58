"""Deprecated: moved to ``srl_ext.training.engine``."""

from ._deprecated import alias

alias(__name__)
