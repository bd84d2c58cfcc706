"""Atomic file writing, and how ifn writes a file-system path as text.

Atomic: a file is either absent, the old version, or complete — never half-written. Face
models, real-face caches, metrics JSON, per-image CSVs and predictions all go through
:func:`atomic_write`.

Paths as text (:func:`path_text`, the one rule for every JSON, CSV and report ifn writes):
on POSIX a file name is bytes and need not be valid UTF-8; Python hands such a name over as
a ``str`` with lone surrogates (``os.fsdecode``'s ``surrogateescape``), which no UTF-8 file
can hold. ifn writes a path as its UTF-8 text with ``%`` written ``%25`` and each byte that
is not valid UTF-8 written ``%XX`` (two upper-case hex digits): ``café.jpg`` stays
``café.jpg``, the Latin-1 name ``b"caf\\xe9.jpg"`` becomes ``caf%E9.jpg``, ``100%.jpg``
becomes ``100%25.jpg``. The rule is reversible: ``urllib.parse.unquote_to_bytes(text)`` gives
the path's bytes back (``os.fsdecode`` of them, the ``str`` Python uses). The JSON and CSV
writers here apply it to any string that still holds a lone surrogate, so writing a result
never fails on a file name.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PATH_ENCODING",
    "atomic_write",
    "csv_text",
    "default_file_mode",
    "fsync_folder",
    "json_text",
    "path_text",
    "tensors_sha256",
    "writable",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
]

#: How the paths in ifn's outputs are written (:func:`path_text`), in words, for the files themselves.
PATH_ENCODING = (
    "UTF-8 text; '%' and every byte that is not valid UTF-8 are written %XX "
    "(urllib.parse.unquote_to_bytes(text) gives the path's bytes)"
)
#: What path_text rewrites: the escape character itself and every lone surrogate.
_TO_ESCAPE = re.compile("[%\ud800-\udfff]")


def _percent(match: re.Match[str]) -> str:
    char = match.group()
    if char == "%":
        return "%25"
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
        return f"%{code - 0xDC00:02X}"
    # Any other lone surrogate cannot come from a POSIX file name; keep it recoverable as the
    # bytes that "surrogatepass" gives it.
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def path_text(path: str | os.PathLike[str] | bytes) -> str:
    """A path as the text ifn writes: UTF-8, with ``%`` and each byte that is not UTF-8 as ``%XX``.

    Valid UTF-8 names stay readable (only ``%`` changes); the result never holds a lone
    surrogate, so it can go into any UTF-8 file. See the module docstring for the rule.

    Args:
        path: a ``str`` (possibly holding ``surrogateescape`` characters), a path object,
            or the raw bytes of a name.

    Example:
        >>> import urllib.parse
        >>> raw = b"photos/caf\\xe9 100%.jpg"  # Latin-1, not valid UTF-8
        >>> text = path_text(os.fsdecode(raw))
        >>> text
        'photos/caf%E9 100%25.jpg'
        >>> urllib.parse.unquote_to_bytes(text) == raw
        True
        >>> path_text("café.jpg")
        'café.jpg'
    """
    if isinstance(path, bytes):
        text = path.decode("utf-8", "surrogateescape")
    else:
        text = os.fspath(path)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
    return _TO_ESCAPE.sub(_percent, text)


def writable(value: Any) -> Any:
    """``value`` (nested dicts, lists, strings) with every string that holds a lone surrogate,
    and every path object, written by :func:`path_text`; everything else unchanged.

    A lone surrogate can only come from a file name that is not UTF-8 (in a path or a
    message quoting one); left in, a UTF-8 writer fails (CSV) or JSON gets escapes that
    decode to invalid text.

    Example:
        >>> writable({"path": os.fsdecode(b"a\\xff.jpg"), "n": 1, "note": "100%"})
        {'path': 'a%FF.jpg', 'n': 1, 'note': '100%'}
    """
    if isinstance(value, str):
        return path_text(value) if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {writable(k): writable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [writable(v) for v in value]
    if isinstance(value, os.PathLike):
        return path_text(value)
    return value


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def default_file_mode() -> int:
    """The permissions ``open()`` gives a new file: ``0o666`` less the process umask
    (``mkstemp`` makes its files private; files written through one get these instead)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def json_text(payload: Any) -> str:
    """``payload`` as indented, key-sorted JSON with a final newline; strings holding lone
    surrogates (names that are not UTF-8) are written by :func:`path_text`."""
    return json.dumps(writable(payload), indent=2, sort_keys=True) + "\n"


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as CSV with a header line; strings holding lone surrogates by :func:`path_text`."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(writable(row) for row in rows)
    return buffer.getvalue()


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable (not every file system lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    prefix: str | None = None,
    suffix: str = ".tmp",
    durable_rename: bool = False,
    **open_kwargs: Any,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions a plain ``open()`` would give (``mkstemp`` alone makes
    it private). On any exception the temporary file is removed and ``path`` is untouched.
    ``prefix``/``suffix`` name the temporary file (default ``.<name>.<random>.tmp``);
    ``durable_rename`` also fsyncs the folder, so the rename survives a power loss.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_write(target, "w") as handle:
        ...     _ = handle.write("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable_rename:
        fsync_folder(path.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented, key-sorted JSON, atomically.

    Strings holding lone surrogates (names that are not UTF-8) are written by :func:`path_text`.
    """
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(json_text(payload))
    return Path(path)


def write_csv_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write ``rows`` as UTF-8 CSV with a header line, atomically.

    Strings holding lone surrogates (names that are not UTF-8) are written by :func:`path_text`.
    """
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        handle.write(csv_text(rows, columns))
    return Path(path)


def tensors_sha256(tensors: Mapping[str, Any], domain: str) -> str:
    """SHA-256 of named tensors: ``domain``, then each entry's name, dtype, shape and bytes,
    in mapping order (entries that are not tensors contribute their name only).

    The bytes are read on the CPU, so the hash does not depend on the device. Face-model
    content hashes and checkpoint weight hashes are both this digest.

    Example:
        >>> import torch
        >>> a = tensors_sha256({"w": torch.zeros(2)}, "demo")
        >>> a == tensors_sha256({"w": torch.zeros(2)}, "demo"), a == tensors_sha256({"w": torch.ones(2)}, "demo")
        (True, False)
    """
    import torch

    digest = hashlib.sha256(domain.encode())
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            digest.update(f"{key}:-".encode())
            continue
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        # A byte view works for every dtype (numpy has no bfloat16) without copying on the CPU.
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
