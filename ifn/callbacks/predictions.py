"""``ifn predict``: write θ per face as JSON (one file per face, named after its photo).

File names never collide: ``<photo path below predict_dir, cleaned>.<16 hex>.face<k>.json``,
where the cleaned path keeps ``A–Z a–z 0–9 . _ -``, writes every other run of characters
(``/`` included) as ``__`` and drops leading dots and underscores (no hidden files), and the
16 hex digits are the start of the SHA-256 of the path's bytes below the folder. The
cleaned part is only for reading: ``a b.jpg``, ``a+b.jpg`` and ``a__b.jpg`` all clean to
``a__b.jpg``, and the hash tells them apart. The ``"image"`` field of each file holds the
photo's path by :func:`ifn.io.path_text` (the rule is repeated in ``"image_path_encoding"``).

A run never writes into a folder that holds an earlier run's predictions: if the folder is
not empty, the next free one is used (``predictions.2/``, :mod:`ifn.callbacks.outputs`) and
printed; ``overwrite`` writes into it anyway.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from ifn.callbacks.outputs import fresh_directory
from ifn.io import PATH_ENCODING, path_text, write_json_atomic
from ifn.params import ParamLayout

__all__ = ["ThetaJSONWriter", "prediction_file_name", "theta_to_dict"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Characters of the cleaned path kept in a name (its end): with the hash and the face suffix
#: the name stays far below the usual 255-byte limit of a file name.
_MAX_CLEANED = 120
_HASH_DIGITS = 16


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


def _relative(source: str, root: str | None) -> Path:
    """``source`` below ``root`` when it lies there (as listed, else after resolving links), else as given."""
    path = Path(source)
    if root is None:
        return path
    for candidate, base in ((path, Path(root)), (path.resolve(), Path(root).resolve())):
        try:
            return candidate.relative_to(base)
        except ValueError:
            continue
    return path


def prediction_file_name(source: str, root: str | None, face_index: int) -> str:
    """The file name of one face's prediction: readable, and distinct for every (photo, face).

    Args:
        source: the photo's path (a ``str`` as Python gives it: names that are not UTF-8
            hold ``surrogateescape`` characters).
        root: the folder the photos were listed from (``None``: use ``source`` as it is).
        face_index: the face's number in its photo.

    Returns:
        ``<cleaned path>.<16 hex digits of the SHA-256 of the path's bytes>.face<k>.json``.

    Example:
        >>> names = {prediction_file_name(p, "photos", 0) for p in ("photos/a b.jpg", "photos/a+b.jpg")}
        >>> sorted(name.split(".")[0] for name in names), len(names)
        (['a__b', 'a__b'], 2)
    """
    relative = _relative(source, root).as_posix()
    digest = hashlib.sha256(os.fsencode(relative)).hexdigest()[:_HASH_DIGITS]
    cleaned = _UNSAFE.sub("__", relative)[-_MAX_CLEANED:].lstrip("._") or "image"
    return f"{cleaned}.{digest}.face{int(face_index)}.json"


class ThetaJSONWriter(BasePredictionWriter):
    """Write each predicted face to ``<output_dir>/<name>``, the name by :func:`prediction_file_name`.

    Args:
        output_dir: where to write (default ``<log_dir>/predictions``); if it holds files,
            the next free ``<output_dir>.2``, ``.3``, … is used.
        overwrite: write into ``output_dir`` even if it holds an earlier run's files.

    Attributes:
        directory: the folder of the last ``predict`` (``None`` before one ran).
    """

    def __init__(self, output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.written = 0
        self.directory: Path | None = None

    def _wanted(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def _directory(self, trainer: L.Trainer) -> Path:
        return self.directory if self.directory is not None else self._wanted(trainer)

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
                name = prediction_file_name(source, root, face)
                image = path_text(source)
            else:
                index = batch_indices[i] if batch_indices is not None else batch_idx * theta.shape[0] + i
                image, face, name = None, 0, f"synthetic_{int(index):06d}.json"
            payload = {"image": image, "image_path_encoding": PATH_ENCODING, "face_index": face,
                       "face_model": identity.name,
                       "face_model_sha256": identity.sha256,
                       **theta_to_dict(theta[i], pl_module.layout)}
            write_json_atomic(directory / name, payload)
            self.written += 1

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0
        wanted = self._wanted(trainer)  # a broadcast under DDP: every rank must ask
        chosen = str(fresh_directory(wanted, overwrite=self.overwrite)) if trainer.is_global_zero else None
        self.directory = Path(trainer.strategy.broadcast(chosen))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = self._directory(trainer)
        if trainer.is_global_zero:
            print(f"[ifn] wrote {self.written} prediction(s) on rank 0 to {directory}")
