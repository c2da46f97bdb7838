"""The errors every part of the cleaner raises: a message a person can act on, never a traceback."""

from __future__ import annotations

from ethnic_group_recognizer.dataset import LabelError


class CleanError(ValueError):
    """An action that cannot be applied, with a message a person can act on."""


class InvalidLabelError(CleanError, LabelError):
    """A relabel to a name that cannot be a class folder (the request is wrong, not the dataset)."""
