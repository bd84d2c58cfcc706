"""Appearance editing in θ: named SH light presets, light files, and swapping a group.

Light is θi, 9 second-order SH irradiance coefficients per colour channel
(:mod:`ifn.render.shading`), so relighting a face is re-rendering it with another θi and the
same geometry and albedo. A preset is an ambient term plus one directional lobe,
``E(n) = colour · (ambient + strength · n·d)``, whose SH coefficients are exact: the
band-1 functions are ``√3·(y, z, x)``, so ``n·d`` has coefficients ``(d_y, d_z, d_x) / √3``.

Directions are in camera space: +x to the right of the image, +y up, +z towards the camera.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from ifn.errors import UsageError
from ifn.params import NUM_SH, ParamLayout

__all__ = ["LIGHT_PRESETS", "directional_light", "load_light", "replace_group"]


def directional_light(
    direction: tuple[float, float, float],
    ambient: float,
    strength: float,
    colour: tuple[float, float, float] = (1, 1, 1),
) -> Tensor:
    """SH coefficients ``(9, 3)`` of ``colour · (ambient + strength · n·d)``, ``d`` normalised.

    Example:
        >>> light = directional_light((0.0, 0.0, 1.0), ambient=0.5, strength=0.5)
        >>> from ifn.render.shading import sh_irradiance
        >>> normals = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
        >>> sh_irradiance(normals, light[None])[0, :, 0].tolist()  # facing the light, then side-on
        [1.0, 0.5]
    """
    d = torch.tensor(direction, dtype=torch.float64)
    if not torch.isfinite(d).all() or d.norm() == 0:
        raise ValueError(f"a light direction must be a finite non-zero vector, got {direction}")
    d = d / d.norm()
    coefficients = torch.zeros(NUM_SH, dtype=torch.float64)
    coefficients[0] = ambient
    coefficients[1:4] = strength * torch.stack([d[1], d[2], d[0]]) / math.sqrt(3.0)
    return (coefficients[:, None] * torch.tensor(colour, dtype=torch.float64)[None, :]).float()


#: Named lights for ``ifn reconstruct --relight``.
LIGHT_PRESETS: dict[str, Tensor] = {
    "neutral": directional_light((0, 0, 1), ambient=1.0, strength=0.0),
    "front": directional_light((0, 0, 1), ambient=0.7, strength=0.4),
    "left": directional_light((-1, 0, 0.6), ambient=0.55, strength=0.6),
    "right": directional_light((1, 0, 0.6), ambient=0.55, strength=0.6),
    "top": directional_light((0, 1, 0.6), ambient=0.55, strength=0.6),
    "bottom": directional_light((0, -1, 0.6), ambient=0.55, strength=0.6),
    "warm": directional_light((0.4, 0.3, 1), ambient=0.7, strength=0.4, colour=(1.12, 0.95, 0.75)),
    "cool": directional_light((-0.4, 0.3, 1), ambient=0.7, strength=0.4, colour=(0.8, 0.95, 1.15)),
}


def load_light(spec: str | os.PathLike[str]) -> Tensor:
    """A light ``(9, 3)`` from a preset name or a JSON file.

    The file holds either a 9 × 3 list (SH function × RGB), or an object with
    ``"illumination_sh_rgb"`` (as a reconstruction's ``theta.json`` writes it), so the light
    of one reconstructed photo can be put on another face.

    Raises:
        UsageError: unknown preset, unreadable file, or not 9 × 3 finite numbers — naming it.
    """
    text = os.fspath(spec)
    if text in LIGHT_PRESETS:
        return LIGHT_PRESETS[text].clone()
    path = Path(text)
    if path.suffix.lower() != ".json":
        raise UsageError(f"--relight {text}: not a preset ({', '.join(LIGHT_PRESETS)}) nor a .json light file")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot read a light from it ({err})") from err
    if isinstance(payload, dict):
        theta = payload.get("theta")
        nested = theta.get("illumination_sh_rgb") if isinstance(theta, dict) else None
        payload = payload.get("illumination_sh_rgb", nested)
    try:
        light = torch.tensor(payload, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UsageError(f"{path}: a light is a 9 × 3 list of numbers (or 'illumination_sh_rgb'): {err}") from err
    if light.shape != (NUM_SH, 3) or not torch.isfinite(light).all():
        raise UsageError(f"{path}: a light is 9 × 3 finite numbers (SH function × RGB), got shape {tuple(light.shape)}")
    return light


def replace_group(theta: Tensor, layout: ParamLayout, group: str, values: Tensor) -> Tensor:
    """A copy of θ ``(B, m)`` with one group set to ``values`` (broadcast over the batch).

    Example:
        >>> layout = ParamLayout(n_shape=2, n_expression=1, n_reflectance=1)
        >>> replace_group(torch.zeros(1, layout.size), layout, "shape", torch.tensor([1.0, 2.0]))[0, 3:5].tolist()
        [1.0, 2.0]
    """
    if group not in layout.slices:
        raise ValueError(f"unknown θ group {group!r}; groups: {', '.join(layout.slices)}")
    out = theta.clone()
    part = out[:, layout.slices[group]]
    part[:] = values.reshape(-1).to(out) if values.numel() == part.shape[1] else values.reshape(part.shape).to(out)
    return out
