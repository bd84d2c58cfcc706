"""Errors that are the user's to fix: the ``ifn`` command prints them as one line, no traceback.

Set ``IFN_DEBUG=1`` to get the traceback instead (the error is re-raised).
"""

from __future__ import annotations

import os

__all__ = ["DEBUG_ENV", "UsageError", "debug_enabled", "one_line"]

#: The environment variable that makes ``ifn`` re-raise errors instead of printing one line.
DEBUG_ENV = "IFN_DEBUG"


class UsageError(Exception):
    """A mistake in what the user asked for (a wrong file, a mismatched checkpoint...).

    The message must say what is wrong, naming the file or option, and what to do.
    """


def debug_enabled() -> bool:
    """Whether ``IFN_DEBUG`` asks for tracebacks (set, and not empty or ``0``)."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def one_line(message: object) -> str:
    """``message`` as one printable line: runs of white space (newlines too) become one space,
    other unprintable characters (control characters, the lone surrogates of a file name that
    is not UTF-8) their Python escape.

    Example:
        >>> one_line("Parser key 'x':\\n  Expected an int.\\x07")
        "Parser key 'x': Expected an int.\\\\x07"
    """
    text = " ".join(str(message).split())
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)
