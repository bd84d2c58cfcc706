"""Durable fits: atomic checkpoint files, one live fit per folder, and resumed runs whose
logs continue the original's.

**Atomic checkpoints.** Lightning's ``TorchCheckpointIO`` writes through fsspec, whose local
"transaction" writes the file into ``$TMPDIR`` and moves it into place when done. When
``$TMPDIR`` is on another file system, that move is a copy (``shutil.move``) into the final
name, and a kill during the copy leaves a truncated or empty ``last.ckpt`` where the
previous good one was; nothing is fsync'ed either. :class:`AtomicCheckpointIO` writes into
a temporary file in the checkpoint's own folder, fsyncs it, renames it over the name and
fsyncs the folder: the name holds the old checkpoint or the new one, never a part.

**One live fit per folder.** Two fits with the same ``default_root_dir`` would share its
``checkpoints/`` folder, and one run's ``last.ckpt`` replaced the other's.
:func:`claim_run_folder` takes a lock file (``.ifn-fit.lock``, holding the PID and host)
in the folder; a fit that finds a live one takes the next free folder
(``<root>.2``, ``<root>.3``, …) and says so. A lock whose process is gone is taken over.

**Resumed logs.** A fit resumed from a checkpoint logged into a new ``version_N`` folder, so
its logs were split from the original's. The checkpoint now records where the run logged
(:class:`RunRecord`), and a resumed fit in the same ``default_root_dir`` logs into that same
version: TensorBoard purges the events from the resumed step on (``purge_step``), the CSV
logger keeps the rows before it (:class:`ResumedCSVLogger`; Lightning's deletes the file).
The logged steps themselves: Lightning counts them in ``_batches_that_stepped``, which it
saves *before* incrementing it for the batch in progress, and on restore it adds one back
unless the checkpoint was written after a finished batch ("restarted on last"). A
checkpoint written after that increment (at the end of an epoch or of training) is
restored one step ahead. :class:`RunRecord` sets the counter to the global step at the
first batch after a resume, which it always equals with one optimizer and no gradient
accumulation (ifn's case), so the resumed run logs the same steps as an uninterrupted one.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from ifn.io import atomic_write, csv_text

__all__ = [
    "LOCK_NAME",
    "RUN_KEY",
    "AtomicCheckpointIO",
    "PeriodicLastCheckpoint",
    "ResumedCSVLogger",
    "RunRecord",
    "claim_run_folder",
    "release_run_folder",
]

#: The lock file of a live fit, in its ``default_root_dir``.
LOCK_NAME = ".ifn-fit.lock"
#: The checkpoint entry recording where the run logged.
RUN_KEY = "ifn_run"
#: Set by the fit that holds a folder, so that the DDP ranks it starts use the same folder:
#: ``{"requested": root, "used": folder}`` as JSON.
_RUN_DIR_ENV = "IFN_RUN_FOLDER"
#: A lock file still empty after this long is from a process that died while writing it.
_EMPTY_LOCK_GRACE_S = 30.0


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic in the checkpoint's own folder.

    A temporary file beside the checkpoint (``.ifn-saving-<random>.partial``) receives the bytes, is
    fsync'ed and renamed over the checkpoint, then the folder is fsync'ed so the rename
    survives a power loss. Remote paths (``s3://`` …) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`."
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name must not contain "last": `--ckpt_path last` picks the newest
        # file whose name does, and a save killed half-way leaves its temporary file behind.
        with atomic_write(path, prefix=".ifn-saving-", suffix=".partial", durable_rename=True) as handle:
            torch.save(checkpoint, handle)


class PeriodicLastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps and when training ends, whatever the
    validation metrics do.

    A ``ModelCheckpoint`` that monitors a metric writes ``last.ckpt`` only together with a new
    best checkpoint, so once the metric stops improving a kill loses everything since; this
    one is the run's resume point. Pair it with a ``ModelCheckpoint(save_last=False, …)`` for
    the best weights (two callbacks that both save ``last.ckpt`` would take turns naming
    theirs ``last-v1.ckpt``).

    Args:
        dirpath: the checkpoint folder (default: Lightning's, below the log folder).
        every_n_train_steps: the period, in optimizer steps.
    """

    def __init__(self, dirpath: _PATH | None = None, every_n_train_steps: int = 100) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning saves last.ckpt at the end only if it never saved one: the last steps
        # after the last period would be lost.
        if trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# --------------------------------------------------------------------------------------
# One live fit per folder
# --------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _holder(lock: Path) -> dict[str, Any] | None:
    """The live process holding ``lock`` (its record), or ``None`` if the lock is stale."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": "?", "host": "?"}  # unreadable: assume someone holds it
    if not text.strip():
        return {"pid": "?", "host": "?"} if age < _EMPTY_LOCK_GRACE_S else None
    try:
        record = json.loads(text)
        pid, host = int(record["pid"]), str(record["host"])
    except (ValueError, KeyError, TypeError):
        return None  # not a lock this ifn wrote
    if host != socket.gethostname():
        return record  # cannot tell whether it lives: leave that folder to it
    if pid == os.getpid() or not _alive(pid):
        return None
    return record


def _try_lock(folder: Path) -> dict[str, Any] | None:
    """Take ``folder``'s lock; ``None`` on success, else the live holder's record."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                return holder
            # Stale: move it aside under a unique name (only one process can move it), then retry.
            with contextlib.suppress(OSError):
                aside = tempfile.mktemp(prefix=f"{LOCK_NAME}.stale.", dir=folder)
                os.rename(lock, aside)
                os.unlink(aside)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record))
        return None
    return _holder(lock) or {"pid": "?", "host": "?"}


def claim_run_folder(root: str | os.PathLike[str]) -> Path:
    """The folder this fit writes to: ``root`` if no other live fit holds it, else the next
    free ``<root>.2``, ``<root>.3``, …; its lock is taken (released by
    :func:`release_run_folder`, or at exit).

    A process started by a fit that holds a folder (a DDP rank) gets that folder, unlocked.

    Returns:
        The folder.
    """
    root = Path(root)
    inherited = _inherited()
    if inherited and os.path.abspath(inherited["requested"]) == os.path.abspath(root):
        return Path(inherited["used"])
    candidate, n = root, 1
    while True:
        holder = _try_lock(candidate)
        if holder is None:
            break
        n += 1
        nxt = Path(f"{root}.{n}")
        rank_zero_info(
            f"[ifn] {candidate} is used by a live fit (pid {holder.get('pid')} on {holder.get('host')}); "
            f"trying {nxt}"
        )
        candidate = nxt
    os.environ[_RUN_DIR_ENV] = json.dumps({"requested": os.fsdecode(root), "used": os.fsdecode(candidate)})
    atexit.register(release_run_folder, candidate)
    if candidate != root:
        print(f"[ifn] {root} is in use by another live fit: this run writes to {candidate}")
    return candidate


def release_run_folder(folder: str | os.PathLike[str]) -> None:
    """Remove ``folder``'s lock if this process holds it."""
    lock = Path(folder) / LOCK_NAME
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        record = json.loads(lock.read_text())
        if int(record["pid"]) == os.getpid() and record["host"] == socket.gethostname():
            lock.unlink()
    inherited = _inherited()
    if inherited and inherited["used"] == os.fsdecode(folder):
        os.environ.pop(_RUN_DIR_ENV, None)


def _inherited() -> dict[str, str] | None:
    """The folder record a parent fit left in the environment (``None`` if none or garbled)."""
    try:
        record = json.loads(os.environ.get(_RUN_DIR_ENV, ""))
        return {"requested": str(record["requested"]), "used": str(record["used"])}
    except (ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------
# Resumed logs
# --------------------------------------------------------------------------------------


class RunRecord(L.Callback):
    """Record in every checkpoint where the run logs (``checkpoint["ifn_run"]``), and after
    a resume make the logged step continue the original's (see the module docstring)."""

    def __init__(self) -> None:
        self._check_step = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = trainer.loggers[0] if trainer.loggers else None
        if logger is None:
            return
        checkpoint[RUN_KEY] = {
            "logger_name": logger.name,
            "logger_version": logger.version,
            "save_dir": str(Path(logger.save_dir).resolve()) if logger.save_dir is not None else None,
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_step = trainer.ckpt_path is not None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._check_step:
            return
        self._check_step = False
        loop = trainer.fit_loop.epoch_loop
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches == 1 and len(trainer.optimizers) == 1:
            loop._batches_that_stepped = trainer.global_step


class ResumedCSVLogger(CSVLogger):
    """A ``CSVLogger`` that continues an existing ``metrics.csv``: the rows logged before
    ``resume_step`` are kept (Lightning's logger deletes the file), later ones dropped (they
    were logged after the checkpoint and are logged again).

    Args:
        save_dir, name, version: as ``CSVLogger``.
        resume_step: the global step the run resumes at.
    """

    def __init__(self, save_dir: _PATH, name: str, version: int | str, resume_step: int) -> None:
        super().__init__(save_dir, name=name, version=version)
        self.resume_step = int(resume_step)

    @property
    @rank_zero_experiment  # other DDP ranks must not rewrite the file
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is not None:
            return self._experiment
        get_filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ContinuedWriter(self.log_dir, self.resume_step)
        return self._experiment


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step", "") != "" and int(float(row["step"])) < self._resume_step]
        with atomic_write(path, "w", newline="") as handle:
            handle.write(csv_text(rows, keys))
        self.metrics_keys = sorted(keys)  # so that new rows are written under the same header
