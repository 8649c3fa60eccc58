"""Deprecated: moved to ``srl_ext.training.cli``."""

from ._deprecated import alias

alias(__name__)
