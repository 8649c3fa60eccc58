"""Deprecated: moved to ``srl_ext.training.released_checkpoints``."""

from ._deprecated import alias

alias(__name__)
