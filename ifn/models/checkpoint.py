"""What a checkpoint records about the face model, and the check that it matches.

θ only means something together with the face model it indexes: the same 350 numbers are
a different face under another model, or under the same file re-converted. Every
checkpoint therefore stores the face model's identity (name, θ layout, content SHA-256)
and the render settings beside the weights, under the ``"ifn"`` key; loading weights into
a run with a different face model fails with one line naming both. The hash is of the
content, so a face-model file that was moved or renamed still matches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ifn.errors import UsageError
from ifn.facemodel.model import FaceModelIdentity
from ifn.render.renderer import FaceRenderer
from ifn.render.settings import RenderSettings

__all__ = ["CHECKPOINT_KEY", "CheckpointMismatchError", "check_face_model", "face_model_record", "read_checkpoint"]

#: The checkpoint entry that holds what ifn records beside the weights.
CHECKPOINT_KEY = "ifn"
_RECORD_VERSION = 1


class CheckpointMismatchError(UsageError, ValueError):
    """A checkpoint was trained with another face model than the one in use."""


def face_model_record(renderer: FaceRenderer) -> dict[str, Any]:
    """The ``checkpoint["ifn"]`` entry for a run that renders with ``renderer``."""
    return {
        "version": _RECORD_VERSION,
        "face_model": renderer.face_model.identity().to_dict(),
        "render": renderer.settings.to_dict(),
    }


def recorded_settings(checkpoint: dict[str, Any]) -> RenderSettings | None:
    """The render settings a checkpoint was trained with (``None`` for older checkpoints)."""
    record = checkpoint.get(CHECKPOINT_KEY)
    if not record or "render" not in record:
        return None
    return RenderSettings(**record["render"])


def check_face_model(checkpoint: dict[str, Any], renderer: FaceRenderer, source: str = "checkpoint") -> None:
    """Raise if ``checkpoint`` was trained with another face model than ``renderer``'s.

    Checkpoints written before identities were recorded carry none: they are accepted when
    their θ size matches (with a warning that the face model cannot be verified).

    Raises:
        CheckpointMismatchError: naming both face models, when the hashes (or, for an old
            checkpoint, the θ sizes) differ.
    """
    ours = renderer.face_model.identity()
    record = checkpoint.get(CHECKPOINT_KEY)
    if record and "face_model" in record:
        theirs = FaceModelIdentity.from_dict(record["face_model"])
        if theirs.sha256 != ours.sha256:
            raise CheckpointMismatchError(
                f"{source} was trained with face model {theirs.describe()}, but this run uses {ours.describe()} "
                f"(data.render.face_model={renderer.settings.face_model!r}); pass the face model and mode counts "
                "it was trained with"
            )
        return
    scale = checkpoint.get("state_dict", {}).get("loss.scale")
    size = None if scale is None else int(scale.shape[0])
    if size is not None and size != renderer.layout.size:
        raise CheckpointMismatchError(
            f"{source} predicts {size} θ values but face model {ours.describe()} has {renderer.layout.size}; "
            "pass the face model and mode counts it was trained with"
        )
    rank_zero_warn(
        f"{source} was written before ifn recorded the face model in checkpoints: cannot verify that it was "
        f"trained with {ours.describe()}"
    )


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file without executing code from it (``weights_only``).

    Raises:
        FileNotFoundError: if the file does not exist.
        UsageError: naming the file, if it cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UsageError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
