"""Test results on disk: every final ``test/…`` metric in ``test_metrics.json``, and one row
per real photo in ``test_real_per_image.csv``, in the run's log directory.

The CSV's ``path`` column follows :func:`ifn.io.path_text`: UTF-8, with ``%`` and every byte
of a file name that is not valid UTF-8 written ``%XX``, so a photo whose name is not UTF-8
still gets its row (``urllib.parse.unquote_to_bytes(path)`` gives the name's bytes back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ifn.io import path_text, write_csv_atomic, write_json_atomic

__all__ = ["PER_IMAGE_COLUMNS", "TestMetricsWriter"]

PER_IMAGE_COLUMNS = ["path", "face_index", "photometric_error", "iou"]


class TestMetricsWriter(L.Callback):
    """After ``trainer.test``, dump the logged ``test/`` metrics as one flat JSON object, and
    the per-image real-photo results (when the test had real photos) as CSV.

    Args:
        filename: file name inside ``trainer.log_dir`` (or ``default_root_dir``).
        per_image_filename: file name of the per-image CSV.

    Attributes:
        path: where the last metrics file was written (``None`` before a test ran).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self, filename: str = "test_metrics.json", per_image_filename: str = "test_real_per_image.csv"
    ) -> None:
        self.filename = filename
        self.per_image_filename = per_image_filename
        self.path: Path | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics: dict[str, float | None] = {}
        for key, value in sorted(trainer.callback_metrics.items()):
            if not key.startswith("test/"):
                continue
            number = value.item() if isinstance(value, torch.Tensor) else float(value)
            metrics[key] = number if math.isfinite(number) else None
        rows = _gathered_rows(trainer, pl_module)
        # Under DDP trainer.log_dir is a broadcast: every rank must ask, before the rank check.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.path = log_dir / self.filename
        if not trainer.is_global_zero:
            return
        write_json_atomic(self.path, metrics)
        if rows:
            unique = {(r["path"], r["face_index"]): r for r in rows}
            ordered = [{**unique[k], "path": path_text(unique[k]["path"])} for k in sorted(unique)]
            write_csv_atomic(log_dir / self.per_image_filename, ordered, PER_IMAGE_COLUMNS)


def _gathered_rows(trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
    """Every rank's per-image rows of the test evaluator, on every rank."""
    evaluators = getattr(pl_module, "evaluators", None)
    rows = list(evaluators["test"].real_rows) if evaluators is not None and "test" in evaluators else []
    if trainer.world_size > 1:
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    return rows
