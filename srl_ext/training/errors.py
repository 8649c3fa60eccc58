"""The mistakes a user can make, as exceptions the drivers turn into one line.

A driver started from the command line (``cli.command``) ends on any of these with
``error: <message>`` on stderr and exit status 2, without a traceback (``--debug`` or
``SRL_EXT_DEBUG=1`` shows it). Each message names the flag, file and line or split, what was
expected and what was found. They subclass ValueError, so code calling the drivers' ``main``
can catch them as the ValueErrors they were before.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the flags, the data or the checkpoints given to a driver."""


class DataError(UserError):
    """A data file that cannot be used: a malformed line, a bad label, an empty split..."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed or evaluated here."""


class RunFolderInUse(UserError):
    """Another live process holds the run folder."""


class TrainingDiverged(UserError):
    """The loss, the predictions or the features of a training step became non-finite."""
