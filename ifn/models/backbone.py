"""The network: a timm backbone whose classifier regresses θ, and its input range.

The network sees images shifted to [−0.5, 0.5] (:func:`ifn.data.batch.to_network_input`);
its last layer starts small (weights ~ N(0, 0.01²), bias 0, the paper's initialisation),
so an untrained network predicts θ ≈ 0, the mean face.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
from torch import nn

from ifn.errors import UsageError

__all__ = ["BackboneError", "PretrainedWeightsError", "create_backbone"]


class BackboneError(UsageError, ValueError):
    """A backbone name that timm does not know (the message names the closest ones)."""


class PretrainedWeightsError(UsageError, RuntimeError):
    """Pretrained weights that cannot be obtained (the message says what to do instead)."""


def _unknown_backbone(name: str) -> BackboneError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return BackboneError(f"model.backbone: unknown timm model {name!r}{hint} (timm.list_models() lists them)")


def _pretrained_error(name: str, err: Exception) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"could not load pretrained weights for timm model {name!r} ({type(err).__name__}: {err}). "
        "Without network access, download them elsewhere and pass "
        "--model.backbone_checkpoint /path/to/model.safetensors, or put them in the Hugging Face cache "
        "and set HF_HUB_OFFLINE=1; or train from scratch with --model.pretrained false."
    )


def create_backbone(
    name: str, num_outputs: int, pretrained: bool = False, checkpoint_path: str | None = None
) -> nn.Module:
    """A timm model whose last layer outputs θ (bias 0, weights ~ N(0, 0.01²), paper §6.1).

    Args:
        name: any timm model name, e.g. ``resnet18``, ``resnet101``.
        num_outputs: m = |θ|.
        pretrained: load ImageNet weights through timm's normal mechanism (Hugging Face
            hub cache; needs network access the first time).
        checkpoint_path: a local weights file (``.safetensors``/``.pth``) instead of the hub;
            implies ``pretrained``. The classifier in it is discarded.

    Raises:
        FileNotFoundError: if ``checkpoint_path`` does not exist.
        BackboneError: if ``name`` is not a timm model (naming the closest ones).
        PretrainedWeightsError: if pretrained weights cannot be obtained, with what to do instead.
    """
    kwargs: dict[str, Any] = {"num_classes": num_outputs}
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise _unknown_backbone(name) from err
        raise
    except Exception as err:
        if not pretrained:
            raise
        raise _pretrained_error(name, err) from err
    head = net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"timm model {name!r} has a {type(head).__name__} head; ifn needs a Linear classifier")
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return net
