"""Errors that are the user's to fix: the ``ifn`` command prints them as one line, no traceback."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A mistake in what the user asked for (a wrong file, a mismatched checkpoint...).

    The message must say what is wrong, naming the file or option, and what to do.
    """
