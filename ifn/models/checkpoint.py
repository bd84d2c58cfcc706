"""What a checkpoint records about the face model and its weights, and the checks at load.

θ only means something together with the face model it indexes: the same 350 numbers are
a different face under another model, or under the same file re-converted. Every
checkpoint therefore stores the face model's identity (name, θ layout, content SHA-256)
and the render settings beside the weights, under the ``"ifn"`` key; loading weights into
a run with a different face model fails with one line naming both. The hash is of the
content, so a face-model file that was moved or renamed still matches.

The record also holds a SHA-256 of the weights (:func:`weights_sha256`), so a checkpoint
whose bytes changed on disk (a flipped bit, a bad copy) is refused at load instead of giving
silently worse results; checkpoints written before it was recorded load as before. Every
problem is one line naming the file (:class:`CheckpointError`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ifn.errors import UsageError
from ifn.facemodel.model import FaceModelIdentity
from ifn.io import tensors_sha256
from ifn.render.renderer import FaceRenderer
from ifn.render.settings import RenderSettings

__all__ = [
    "CHECKPOINT_KEY",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "check_face_model",
    "check_hyperparameters",
    "check_state_dict_fits",
    "check_weights",
    "face_model_record",
    "read_checkpoint",
    "record_weights",
    "weights_sha256",
]

#: The checkpoint entry that holds what ifn records beside the weights.
CHECKPOINT_KEY = "ifn"
#: 2: the record holds ``weights_sha256``.
_RECORD_VERSION = 2
#: Hyperparameters that only choose the network's starting weights, which a checkpoint's
#: weights replace: this run's values are used as they are, whatever the checkpoint says.
_INITIAL_WEIGHTS_ONLY = frozenset({"pretrained", "backbone_checkpoint"})


class CheckpointMismatchError(UsageError, ValueError):
    """A checkpoint was trained with another face model (or network) than the one in use."""


class CheckpointError(UsageError, ValueError):
    """A checkpoint file that cannot be used: unreadable, incomplete or corrupt."""


class CheckpointNotFoundError(UsageError, FileNotFoundError):
    """A checkpoint file that does not exist."""


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


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in key order.

    The bytes are read on the CPU, so the hash does not depend on the device the weights
    were on. Entries that are not tensors contribute their name only.

    Example:
        >>> a = weights_sha256({"w": torch.zeros(2)})
        >>> a == weights_sha256({"w": torch.zeros(2)}), a == weights_sha256({"w": torch.tensor([0.0, 1e-30])})
        (True, False)
    """
    return tensors_sha256(state_dict, "ifn-weights/1")


def record_weights(checkpoint: dict[str, Any]) -> None:
    """Add the SHA-256 of ``checkpoint["state_dict"]`` to its ``"ifn"`` record (which must exist)."""
    checkpoint[CHECKPOINT_KEY]["weights_sha256"] = weights_sha256(checkpoint["state_dict"])


def check_weights(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose weights are not the ones its record was written with.

    Checkpoints without a recorded hash (written before ifn recorded one) pass.

    Raises:
        CheckpointError: naming ``source``, if the state dict is missing or its hash differs.
    """
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: not a Lightning checkpoint (it holds no state_dict)")
    record = checkpoint.get(CHECKPOINT_KEY)
    recorded = record.get("weights_sha256") if isinstance(record, Mapping) else None
    if recorded is None:
        return
    actual = weights_sha256(state_dict)
    if actual != recorded:
        raise CheckpointError(
            f"{source}: weights do not match their recorded hash: the file is corrupt "
            f"(recorded sha256 {str(recorded)[:12]}, computed {actual[:12]}); use another copy or checkpoint"
        )


def check_hyperparameters(checkpoint: Mapping[str, Any], wanted: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Refuse to load a checkpoint into a network that this run describes differently.

    Lightning's CLI would silently replace this run's model settings with the checkpoint's
    (``--model.backbone resnet34`` with a resnet18 checkpoint tested a resnet18); ifn uses
    the run's settings, so they must agree with what the checkpoint was trained with.
    Settings that only pick the starting weights (``pretrained``, ``backbone_checkpoint``)
    and settings that one of the two does not know (older or newer ifn) are not compared.

    Args:
        checkpoint: the loaded checkpoint (its ``hyper_parameters``).
        wanted: this run's model settings by name (``model.<name>``).
        source: the file, for the message.

    Raises:
        CheckpointMismatchError: one line naming every setting that differs, with both values.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    differences = [
        f"model.{key}={saved[key]!r} (this run: {wanted[key]!r})"
        for key in saved
        if key in wanted and not key.startswith("_") and key not in _INITIAL_WEIGHTS_ONLY and saved[key] != wanted[key]
    ]
    if differences:
        raise CheckpointMismatchError(
            f"{source}: trained with {', '.join(differences)}; pass the checkpoint's values "
            "(or leave --ckpt_path out to start a new model)"
        )


def check_state_dict_fits(checkpoint: Mapping[str, Any], module: nn.Module, source: str = "checkpoint") -> None:
    """Refuse, in one line, weights that do not fit ``module`` (instead of PyTorch's long list).

    Raises:
        CheckpointMismatchError: naming the file, how many tensors are missing, unexpected or
            of another shape, one example, and the backbone the checkpoint was trained with.
    """
    theirs = checkpoint.get("state_dict") or {}
    ours = module.state_dict()
    strict = getattr(module, "strict_loading", True)
    missing = [k for k in ours if k not in theirs] if strict else []
    unexpected = [k for k in theirs if k not in ours] if strict else []
    reshaped = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
        for k in ours
        if k in theirs and isinstance(theirs[k], torch.Tensor) and theirs[k].shape != ours[k].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    example = (reshaped or missing or unexpected)[0]
    backbone = (checkpoint.get("hyper_parameters") or {}).get("backbone")
    trained = f" (trained with model.backbone={backbone!r})" if backbone is not None else ""
    raise CheckpointMismatchError(
        f"{source}: its weights do not fit this network{trained}: {len(missing)} missing, {len(unexpected)} "
        f"unexpected, {len(reshaped)} of another shape, e.g. {example}"
    )


def _first_sentence(err: BaseException) -> str:
    """``Type: first sentence`` of an error: torch's messages go on for lines of advice."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {re.split(r'(?<=[.!?]) ', text, maxsplit=1)[0]}"


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint file without executing code from it (``weights_only``), and check it.

    Args:
        path: the file.
        map_location: where to load the tensors.
        verify: check that it holds a state dict whose hash, when recorded, matches
            (:func:`check_weights`).

    Raises:
        CheckpointNotFoundError: if the file does not exist.
        CheckpointError: one line naming the file, if it cannot be read as a checkpoint
            (truncated, damaged, not a checkpoint) or its weights are corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    # torch raises many types here (RuntimeError, UnpicklingError, EOFError, ...): all mean the
    # file is not a checkpoint this ifn can read.
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, the file is truncated or damaged ({_first_sentence(err)})"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    if verify:
        check_weights(checkpoint, str(path))
    return checkpoint
