"""Deprecated: moved to ``srl_ext.training.data``."""

from .._deprecated import alias

_new = alias(__name__)
MissingDataError = _new.MissingDataError
require_files = _new.require_files
