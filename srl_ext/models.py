"""Deprecated: moved to ``srl_ext.training.models``."""

from ._deprecated import alias

alias(__name__)
