"""User-facing errors: one line, naming the file and what is wrong."""

from __future__ import annotations


class CostfilterError(Exception):
    """An error caused by the user's input (a file, a folder, an option).

    The CLI prints ``str(error)`` on one line and exits with status 2, never a traceback.
    """


class DataError(CostfilterError):
    """A dataset folder, image or mask is missing, unreadable or inconsistent."""


class CheckpointError(CostfilterError):
    """A checkpoint is missing, corrupt, tampered with or of an unknown format."""
