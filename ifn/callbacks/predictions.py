"""``ifn predict``: write θ per face as JSON (one file per face, named after its photo)."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from ifn.io import write_json_atomic
from ifn.params import ParamLayout

__all__ = ["ThetaJSONWriter", "theta_to_dict"]


def theta_to_dict(theta: Any, layout: ParamLayout) -> dict[str, Any]:
    """One θ ``(m,)`` → named groups (rotation also in degrees; illumination as 9 × RGB)."""
    params = layout.split(theta.detach().float().cpu().reshape(1, -1))
    rotation = params.rotation[0].tolist()
    names = ("alpha_pitch", "beta_yaw", "gamma_roll")
    return {
        "rotation_rad": dict(zip(names, rotation, strict=True)),
        "rotation_deg": dict(zip(names, (math.degrees(r) for r in rotation), strict=True)),
        "shape": params.shape[0].tolist(),
        "expression": params.expression[0].tolist(),
        "reflectance": params.reflectance[0].tolist(),
        "illumination_sh_rgb": params.illumination[0].tolist(),
        "theta": theta.detach().float().cpu().reshape(-1).tolist(),
    }


def _file_name(source: str, root: str | None) -> str:
    """A flat, visible file name for a photo: its path below ``root`` with ``/`` as ``__``."""
    path = Path(source)
    if root is not None:
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(Path(root).resolve())
    return re.sub(r"[^A-Za-z0-9._-]+", "__", path.as_posix()).lstrip("._") or "image"


class ThetaJSONWriter(BasePredictionWriter):
    """Write each predicted face to ``<output_dir>/<photo path below predict_dir, / as __>.face<k>.json``.

    Args:
        output_dir: where to write (default ``<log_dir>/predictions``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written = 0

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        directory = self._directory(trainer)
        theta = prediction["theta"]
        identity = pl_module.face_model.identity()
        photos = getattr(trainer.datamodule, "photos", None)
        root = photos.settings.predict_dir if photos is not None else None
        for i in range(theta.shape[0]):
            if "path" in prediction:
                source = str(prediction["path"][i])
                face = int(prediction["face_index"][i])
                name = _file_name(source, root) + f".face{face}.json"
            else:
                index = batch_indices[i] if batch_indices is not None else batch_idx * theta.shape[0] + i
                source, face, name = None, 0, f"synthetic_{int(index):06d}.json"
            payload = {"image": source, "face_index": face, "face_model": identity.name,
                       "face_model_sha256": identity.sha256,
                       **theta_to_dict(theta[i], pl_module.layout)}
            write_json_atomic(directory / name, payload)
            self.written += 1

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = self._directory(trainer)  # a broadcast under DDP: every rank must ask
        if trainer.is_global_zero:
            print(f"[ifn] wrote {self.written} prediction(s) on rank 0 to {directory}")
