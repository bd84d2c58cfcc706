"""Write every final ``test/…`` metric to ``test_metrics.json`` in the run's log directory."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from ifn.io import write_json_atomic

__all__ = ["TestMetricsWriter"]


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
