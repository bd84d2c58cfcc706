"""Image grids: input | render of the prediction | its albedo | its shading | overlay.

At every validation for synthetic faces, and once per ``ifn test`` for real photos, so one
can see at a glance whether pose and shape, skin tone and light follow the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from kornia.morphology import dilation
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["ImageGridLogger", "mask_contour", "overlay", "reconstruction_rows"]


def mask_contour(mask: Tensor, width: int = 2) -> Tensor:
    """``(B, 1, H, W)`` mask → its outer boundary band of ``width`` pixels."""
    kernel = torch.ones(2 * width + 1, 2 * width + 1, device=mask.device, dtype=mask.dtype)
    return (dilation(mask, kernel) - mask).clamp(0, 1)


def overlay(image: Tensor, render: Tensor, input_mask: Tensor, render_mask: Tensor) -> Tensor:
    """Blend input and render, then draw the input mask contour red and the render's green.

    Args:
        image, render: ``(B, 3, H, W)`` in [0, 1].
        input_mask, render_mask: ``(B, 1, H, W)``.

    Returns:
        ``(B, 3, H, W)``.
    """
    out = 0.5 * image + 0.5 * render
    red = torch.tensor([1.0, 0.0, 0.0], device=image.device).view(1, 3, 1, 1)
    green = torch.tensor([0.0, 1.0, 0.0], device=image.device).view(1, 3, 1, 1)
    for mask, colour in ((input_mask, red), (render_mask, green)):
        edge = mask_contour(mask)
        out = out * (1 - edge) + colour * edge
    return out


def reconstruction_rows(pl_module: L.LightningModule, batch: Any, n: int) -> Tensor:
    """The grid rows of ``n`` faces: input | render | albedo | shading | overlay, ``(5n, 3, H, W)``."""
    prediction = pl_module(batch.input[:n])
    layers = pl_module.renderer.layers(prediction)
    image, mask = batch.image[:n], batch.mask[:n]
    contours = overlay(image, layers.image, mask, layers.mask)
    return torch.cat([image, layers.image, layers.albedo, layers.shading, contours])


class ImageGridLogger(L.Callback):
    """Log a grid (rows: input | render of prediction | albedo | shading | overlay) once per
    validation, and the same grid of the first real photos once per test.

    Written as PNGs under ``<log_dir>/images/`` (``val_step<N>.png``, ``test_real.png``; works
    with any logger) and sent to TensorBoard / Weights & Biases when those loggers are in use.

    Args:
        num_images: faces per grid.
        every_n_validations: log every n-th validation run.
    """

    def __init__(self, num_images: int = 8, every_n_validations: int = 1) -> None:
        self.num_images = num_images
        self.every_n_validations = max(1, every_n_validations)
        self._validations = 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validations += 1

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        if (self._validations - 1) % self.every_n_validations:
            return
        self._log_grid(trainer, pl_module, batch, f"val_step{trainer.global_step:07d}.png", "val/reconstructions")

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or getattr(batch, "is_synthetic", True):
            return
        self._log_grid(trainer, pl_module, batch, "test_real.png", "test/real_reconstructions")

    def _log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, name: str, key: str) -> None:
        # Under DDP trainer.log_dir is a broadcast: every rank must ask, before the rank check
        # (asked on rank 0 alone, it deadlocked 2-process DDP training at the first validation).
        directory = Path(trainer.log_dir or trainer.default_root_dir) / "images"
        if not trainer.is_global_zero:
            return
        n = min(self.num_images, len(batch))
        grid = make_grid(reconstruction_rows(pl_module, batch, n).float().cpu(), nrow=n, padding=2)
        self._write(trainer, grid, directory / name, key)

    def _write(self, trainer: L.Trainer, grid: Tensor, path: Path, key: str) -> None:
        step = trainer.global_step
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, global_step=step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[grid], step=step)
