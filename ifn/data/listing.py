"""Which paths a photo command reads: every path found under its inputs, each exactly once.

:func:`find_images` takes files, folders (walked recursively) and glob patterns and returns
one :class:`FoundPath` per path it met, with what it is:

- ``"image"``: a regular file with an image extension, a candidate photo (whether it
  decodes, and holds a face, is decided later by reading it);
- ``"ignored"``: not an image by its type: another extension (``.txt``, ``.pts``), a
  directory named like an image (``x.jpg/``), a FIFO or device, or a second path to a file
  or folder already listed (a symlink or hard link to it);
- ``"skipped"``: a path that cannot be read: a broken symlink, a symlink loop, a folder
  or file without read permission, an input that does not exist.

Nothing is dropped silently, so a report can say what happened to every path.

Convention:
    Symlinks are followed. Real folders are walked before symlinked ones, and every folder
    is walked once (by device and inode): a symlink to a folder already walked is
    ``"ignored"`` (named after where it was listed), one to a folder that contains it (a
    loop) is ``"skipped"``. The same holds for files: the first path to a file is the
    image, later ones (symlinks, hard links) are ``"ignored"``. Paths are returned as found
    (below the given folder, not resolved), sorted by their POSIX text; a path given twice
    is listed once. Names that are not valid UTF-8 stay ``str`` with ``surrogateescape``
    characters (what :func:`os.fsdecode` gives), and are written with
    :func:`ifn.io.path_text` in reports.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ifn.io import path_text

__all__ = ["IMAGE_EXTENSIONS", "FoundPath", "Status", "count_statuses", "find_images", "report_entries"]

#: File extensions taken as images (case-insensitive); the content decides how to decode.
#: GIF is an image too: an animated one is read as its first frame.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip

Status = Literal["image", "ignored", "skipped"]
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class FoundPath:
    """One path met while listing, and what it is.

    Attributes:
        path: the path as found: below the given folder (not resolved), or as given.
        status: ``"image"`` (a candidate photo), ``"ignored"`` (not an image by its type,
            or a second path to something already listed) or ``"skipped"`` (unreadable).
        reason: why it is ignored or skipped, in a few words (``None`` for an image).
    """

    path: Path
    status: Status
    reason: str | None = None


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _oserror_reason(err: OSError, what: str) -> str:
    """A few words for an ``OSError`` met while reading ``what`` (``"file"``/``"folder"``)."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {what} (permission denied)"
    if err.errno == errno.ENOENT:
        return "no such file or folder"
    return f"cannot read {what} ({err.strerror or err})"


_SPECIAL_KINDS = {
    stat.S_IFIFO: "named pipe",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class _Walk:
    """State of one :func:`find_images` call: what was found, and which files and folders
    (by device and inode) were already listed, with the path they were listed under."""

    def __init__(self, extensions: frozenset[str]) -> None:
        self.extensions = extensions
        self.found: dict[str, FoundPath] = {}  # by absolute path text: a path given twice is listed once
        self.files: dict[tuple[int, int], Path] = {}
        self.folders: dict[tuple[int, int], Path] = {}
        self.deferred: list[tuple[Path, os.stat_result]] = []  # symlinked folders, walked after the real ones

    def add(self, path: Path, status: Status, reason: str | None = None) -> None:
        self.found.setdefault(os.path.abspath(path), FoundPath(path, status, reason))

    def seen(self, path: Path) -> bool:
        return os.path.abspath(path) in self.found

    # -- one path --------------------------------------------------------------------------
    def visit(self, path: Path, *, is_link: bool, given: bool) -> None:
        """Classify ``path`` (a folder is queued for walking). ``given``: an input itself."""
        if self.seen(path):
            return
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as err:
            if is_link or os.path.islink(path):
                reason = "symbolic link loop" if err.errno == errno.ELOOP else _broken_link_reason(path, err)
            else:
                reason = _oserror_reason(err, "file")
            self.add(path, "skipped", reason)
            return
        if stat.S_ISDIR(info.st_mode):
            self.folder(path, info, is_link=is_link, given=given)
        elif stat.S_ISREG(info.st_mode):
            self.file(path, info)
        else:
            kind = _SPECIAL_KINDS.get(stat.S_IFMT(info.st_mode), "special file")
            self.add(path, "ignored", f"not a regular file ({kind})")

    def file(self, path: Path, info: os.stat_result) -> None:
        if path.suffix.lower() not in self.extensions:
            suffix = path.suffix or "none"
            self.add(path, "ignored", f"not an image file type (extension {suffix})")
            return
        key = (info.st_dev, info.st_ino)
        first = self.files.get(key)
        if first is not None:
            self.add(path, "ignored", f"same file as {path_text(first)} (listed there)")
            return
        if not os.access(path, os.R_OK):
            self.add(path, "skipped", "cannot read file (permission denied)")
            return
        self.files[key] = path
        self.add(path, "image")

    def folder(self, path: Path, info: os.stat_result, *, is_link: bool, given: bool) -> None:
        if not given and path.suffix.lower() in self.extensions:
            # Named like a photo: say so, else a user looking for x.jpg finds it nowhere. Its
            # content is listed all the same.
            self.add(path, "ignored", "a directory, not an image file (its content is listed)")
        if is_link and not given:
            self.deferred.append((path, info))
            return
        self.walk(path, info)

    def walk(self, path: Path, info: os.stat_result) -> None:
        """List one folder (real sub-folders at once, symlinked ones later), unless that
        folder (by device and inode) was listed already."""
        key = (info.st_dev, info.st_ino)
        first = self.folders.get(key)
        if first is not None:
            if os.path.abspath(first) == os.path.abspath(path):
                return  # the same folder given twice
            # Replaces a "directory named like an image" entry: this says more.
            if _is_within(path, first):
                loop = f"symbolic link loop (points to {path_text(first)}, which contains it)"
                entry = FoundPath(path, "skipped", loop)
            else:
                entry = FoundPath(path, "ignored", f"same folder as {path_text(first)} (listed there)")
            self.found[os.path.abspath(path)] = entry
            return
        self.folders[key] = path
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self.found[os.path.abspath(path)] = FoundPath(path, "skipped", _oserror_reason(err, "folder"))
            return
        for entry in entries:
            try:
                is_link = entry.is_symlink()
            except OSError:
                is_link = False
            self.visit(path / entry.name, is_link=is_link, given=False)

    def finish(self) -> None:
        """Walk the symlinked folders found so far (and those they hold), in sorted order."""
        done: set[str] = set()
        while self.deferred:
            self.deferred.sort(key=lambda item: item[0].as_posix())
            path, info = self.deferred.pop(0)
            if os.path.abspath(path) not in done:
                done.add(os.path.abspath(path))
                self.walk(path, info)


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` does not descend into
    symlinked folders (as pathlib's ``**`` before Python 3.13): the standard one follows
    them and, with a symlink loop in the tree, expands paths until they are too long."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    cut = parts.index("**")
    head, rest = os.sep.join(parts[:cut]), os.sep.join(parts[cut + 1 :])
    if cut == 0:
        bases = ["."]
    elif cut == 1 and parts[0] == "":
        bases = [os.sep]
    else:
        bases = [b for b in glob.glob(head) if os.path.isdir(b)] if _GLOB_MAGIC.search(head) else [head]
    matches: list[str] = []
    for base in bases:
        if not os.path.isdir(base):
            continue
        for folder, subfolders, _ in os.walk(base):  # followlinks=False
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # as glob's ** skips them
            shown = folder if cut else os.path.relpath(folder)
            if not rest:
                matches.append(shown)
            else:
                matches += _glob(os.path.join(glob.escape(shown), rest) if shown != "." else rest)
    return matches


def _broken_link_reason(path: Path, err: OSError) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return f"broken symbolic link ({err.strerror or err})"
    return f"broken symbolic link (target {path_text(target)} not found)"


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (both as listed, absolute)."""
    inner, outer = Path(os.path.abspath(path)).parts, Path(os.path.abspath(folder)).parts
    return len(inner) > len(outer) and inner[: len(outer)] == outer


def find_images(
    inputs: Sequence[str | os.PathLike[str]], extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> list[FoundPath]:
    """Every path found under ``inputs``, once each, with whether it is a candidate photo.

    Args:
        inputs: files, folders (walked recursively, symlinks followed) and glob patterns
            (``photos/*.jpg``, ``photos/**/*.png``; a path that exists is never taken as a
            pattern, so ``a[1].jpg`` is that file). A pattern that matches nothing, or a
            path that does not exist, is one ``"skipped"`` entry.
        extensions: the suffixes taken as images, compared case-insensitively.

    Returns:
        One :class:`FoundPath` per path, sorted by POSIX text (see the module docstring for
        what is ``"image"``, ``"ignored"`` and ``"skipped"``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b.JPG", "a.png", "notes.txt", "x.jpg/c.png"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     _ = (root / name).write_bytes(b"")
        >>> os.symlink(root / "gone.jpg", root / "link.jpg")
        >>> [(f.path.relative_to(root).as_posix(), f.status) for f in find_images([root])]
        ... # doctest: +NORMALIZE_WHITESPACE
        [('a.png', 'image'), ('b.JPG', 'image'), ('link.jpg', 'skipped'), ('notes.txt', 'ignored'),
         ('x.jpg', 'ignored'), ('x.jpg/c.png', 'image')]
    """
    walk = _Walk(_normalise_extensions(extensions))
    for given in inputs:
        text = os.fspath(given)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        path = Path(text)
        if not os.path.lexists(path) and _GLOB_MAGIC.search(text):
            matches = sorted(set(_glob(text)))
            if not matches:
                walk.add(path, "skipped", "no file matches this pattern")
            for match in matches:
                walk.visit(Path(match), is_link=os.path.islink(match), given=True)
            continue
        if not os.path.lexists(path):
            walk.add(path, "skipped", "no such file or folder")
            continue
        walk.visit(path, is_link=os.path.islink(path), given=True)
    walk.finish()
    return sorted(walk.found.values(), key=lambda f: f.path.as_posix())


def count_statuses(found: Iterable[FoundPath]) -> dict[str, int]:
    """``{"image": n, "ignored": n, "skipped": n}`` of a listing (every key present)."""
    counts = Counter(f.status for f in found)
    return {status: counts.get(status, 0) for status in ("image", "ignored", "skipped")}


def report_entries(found: Iterable[FoundPath], root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """A listing as JSON-ready entries ``{"path", "status", "reason"}``.

    Args:
        found: what :func:`find_images` returned.
        root: write paths below this folder when they lie there (else as found).

    Returns:
        One dict per path, paths written by :func:`ifn.io.path_text` (valid UTF-8 whatever
        the name's bytes).
    """
    return [{"path": display_path(f.path, root), "status": f.status, "reason": f.reason} for f in found]


def display_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """``path`` below ``root`` when it lies there, else as it is, by :func:`ifn.io.path_text`."""
    path = Path(path)
    if root is not None:
        try:
            return path_text(path.relative_to(root).as_posix())
        except ValueError:
            pass
    return path_text(path.as_posix())
