"""Outputs that never replace an earlier run's: fresh names, written atomically, and the
per-path report of every photo folder a command reads.

A run writes ``test_metrics.json``, the per-image CSV, ``photos_<role>.json`` and the
``predictions/`` folder into its log directory. That folder is a new ``version_N`` per run
with the default loggers, but not always (``--trainer.logger false`` writes into
``default_root_dir``, ``--predictions.output_dir`` names a fixed folder, two runs may start
at once). So a file that exists is never replaced: the output takes the next free name
(``test_metrics.2.json``, ``predictions.2/``) unless the writer's ``overwrite`` is set. A
name is claimed atomically: the complete file is linked to it, which fails if the name
exists, so two runs can not both take it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L

from ifn.io import atomic_write, default_file_mode, json_text, path_text

__all__ = ["PhotoReportWriter", "candidate_names", "fresh_directory", "write_new", "write_new_json"]

#: Roles whose folder a stage reads (breeding reads the training photos during fit).
_STAGE_ROLES = {"fit": ("train",), "test": ("test",), "predict": ("predict",), "validate": ()}


def candidate_names(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path``, then ``<stem>.2<suffix>``, ``<stem>.3<suffix>``, … (without end).

    Example:
        >>> [p.name for p, _ in zip(candidate_names("run/test_metrics.json"), range(3))]
        ['test_metrics.json', 'test_metrics.2.json', 'test_metrics.3.json']
    """
    path = Path(path)
    yield path
    n = 2
    while True:
        yield path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1


def write_new(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path``, or to the first free :func:`candidate_names` if it exists.

    The bytes go to a temporary file in the same folder, are fsync'ed, and the file is then
    hard-linked to the first free name (an atomic claim: a link never replaces a file). On a
    file system without hard links the free name is taken with an exclusive create check,
    then renamed over (a small window in which two runs could pick the same name).

    Args:
        path: the wanted name.
        data: the content.
        overwrite: replace ``path`` (atomically) instead of choosing another name.

    Returns:
        The path written.
    """
    path = Path(path)
    if overwrite:
        with atomic_write(path) as handle:
            handle.write(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        for candidate in candidate_names(path):
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if not candidate.exists():  # no hard links here: check, then rename
                    os.replace(tmp, candidate)
                    return candidate
        raise AssertionError("unreachable")  # candidate_names never ends
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_new_json(path: str | os.PathLike[str], payload: Any, *, overwrite: bool = False) -> Path:
    """:func:`write_new` of ``payload`` as indented, key-sorted UTF-8 JSON (paths that are not
    UTF-8 written by :func:`ifn.io.path_text`)."""
    return write_new(path, json_text(payload).encode("utf-8"), overwrite=overwrite)


def fresh_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``path`` if it is absent or empty (or ``overwrite``), else the first free
    ``<name>.2``, ``<name>.3``, …; the folder is created (claimed atomically by ``mkdir``)."""
    path = Path(path)
    if overwrite:
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in candidate_names(path):
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            with contextlib.suppress(OSError):
                if candidate.is_dir() and not any(candidate.iterdir()):
                    return candidate  # an empty folder holds no earlier output
    raise AssertionError("unreachable")


class PhotoReportWriter(L.Callback):
    """Write ``photos_<role>.json`` (one entry per path found: used with its faces, skipped
    with a reason, ignored by type) into the log directory for every photo folder the
    command reads, and print one summary line per folder.

    Args:
        filename: the report's name, ``{role}`` replaced by ``train``/``test``/``predict``.
        overwrite: replace an existing report instead of writing ``photos_<role>.2.json``.

    Attributes:
        paths: the reports written, by role.
    """

    def __init__(self, filename: str = "photos_{role}.json", overwrite: bool = False) -> None:
        self.filename = filename
        self.overwrite = overwrite
        self.paths: dict[str, Path] = {}

    # At the start of the stage, not in setup(): the loggers have created their folder by
    # then (the CSV logger warns about, and clears, a version folder that already holds files).
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "fit")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "test")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "predict")

    def _write(self, trainer: L.Trainer, stage: str) -> None:
        photos = getattr(trainer.datamodule, "photos", None)
        if photos is None:
            return
        roles = [role for role in _STAGE_ROLES.get(stage, ()) if photos.configured(role)]
        if not roles:
            return
        # Under DDP trainer.log_dir is a broadcast: every rank asks, before the rank check.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        for role in roles:
            corpus = photos.corpus(role, progress=False)  # built in prepare_data: read from memory
            if corpus is None:
                continue
            report = corpus.report()
            path = write_new_json(log_dir / self.filename.format(role=role), report, overwrite=self.overwrite)
            self.paths[role] = path
            print(f"[ifn] photos ({role}): {corpus.summary_line(path_text(path))}")
