"""Write every final ``test/…`` metric to ``test_metrics.json`` in the run's log directory."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch

from ifn.io import atomic_write

__all__ = ["TestMetricsWriter", "write_csv_atomic", "write_json_atomic"]


def _write_atomic(path: Path, write: Callable[[IO[str]], None]) -> Path:
    with atomic_write(path, "w", newline="") as handle:
        write(handle)
    return path


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    return _write_atomic(path, lambda handle: handle.write(json.dumps(payload, indent=2, sort_keys=True) + "\n"))


def write_csv_atomic(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write ``rows`` as CSV with a header, atomically."""

    def write(handle: IO[str]) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    return _write_atomic(path, write)


class TestMetricsWriter(L.Callback):
    """After ``trainer.test``, dump the logged ``test/`` metrics as one flat JSON object.

    Args:
        filename: file name inside ``trainer.log_dir`` (or ``default_root_dir``).

    Attributes:
        path: where the last file was written (``None`` before a test ran).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, filename: str = "test_metrics.json") -> None:
        self.filename = filename
        self.path: Path | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics: dict[str, float] = {}
        for key, value in sorted(trainer.callback_metrics.items()):
            if not key.startswith("test/"):
                continue
            number = value.item() if isinstance(value, torch.Tensor) else float(value)
            metrics[key] = number if math.isfinite(number) else None
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.path = log_dir / self.filename
        if trainer.is_global_zero:
            write_json_atomic(self.path, metrics)
