"""Deprecated: moved to ``srl_ext.training.data.images``."""

from .._deprecated import alias

alias(__name__)
