"""Test results on disk: every final ``test/…`` metric in ``test_metrics.json``, and one row
per real photo in ``test_real_per_image.csv``, in the run's log directory.

The CSV's ``path`` column follows :func:`ifn.io.path_text`: UTF-8, with ``%`` and every byte
of a file name that is not valid UTF-8 written ``%XX``, so a photo whose name is not UTF-8
still gets its row (``urllib.parse.unquote_to_bytes(path)`` gives the name's bytes back).

Neither file replaces an earlier run's: if the name is taken (``--trainer.logger false``
writes every run into ``default_root_dir``), the next free name is used
(``test_metrics.2.json``, :mod:`ifn.callbacks.outputs`) and printed; ``overwrite`` replaces.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ifn.callbacks.outputs import write_new, write_new_json
from ifn.io import csv_text, path_text

__all__ = ["PER_IMAGE_COLUMNS", "TestMetricsWriter"]

PER_IMAGE_COLUMNS = ["path", "face_index", "photometric_error", "iou"]


class TestMetricsWriter(L.Callback):
    """After ``trainer.test``, dump the logged ``test/`` metrics as one flat JSON object, and
    the per-image real-photo results (when the test had real photos) as CSV.

    Args:
        filename: file name inside ``trainer.log_dir`` (or ``default_root_dir``).
        per_image_filename: file name of the per-image CSV.
        overwrite: replace files of an earlier run instead of taking the next free name.

    Attributes:
        path: where the last metrics file was written (``None`` before a test ran).
        per_image_path: where the last per-image CSV was written (``None`` if none).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        filename: str = "test_metrics.json",
        per_image_filename: str = "test_real_per_image.csv",
        overwrite: bool = False,
    ) -> None:
        self.filename = filename
        self.per_image_filename = per_image_filename
        self.overwrite = overwrite
        self.path: Path | None = None
        self.per_image_path: Path | None = None

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
        self.path = write_new_json(self.path, metrics, overwrite=self.overwrite)
        if rows:
            unique = {(r["path"], r["face_index"]): r for r in rows}
            ordered = [{**unique[k], "path": path_text(unique[k]["path"])} for k in sorted(unique)]
            data = csv_text(ordered, PER_IMAGE_COLUMNS).encode("utf-8")
            self.per_image_path = write_new(log_dir / self.per_image_filename, data, overwrite=self.overwrite)


def _gathered_rows(trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
    """Every rank's per-image rows of the test evaluator, on every rank."""
    evaluators = getattr(pl_module, "evaluators", None)
    rows = list(evaluators["test"].real_rows) if evaluators is not None and "test" in evaluators else []
    if trainer.world_size > 1:
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    return rows
