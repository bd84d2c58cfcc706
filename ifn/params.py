"""The parameter vector θ = (R, θs, θe, θr, θi) and its layout.

Convention:
    θ is flat, ``(B, m)``, in this order: rotation ``(α, β, γ)`` in radians, θs, θe, θr,
    then θi. θi holds 9 SH coefficients × RGB stored coefficient-major: index
    ``3 * k + c`` is SH band-function ``k`` (0-based; ``k = 0`` is the constant term)
    for colour channel ``c`` (R, G, B). Group sizes follow the face model in use.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GROUPS", "FaceParams", "ParamLayout"]

#: Parameter groups in θ order.
GROUPS: tuple[str, ...] = ("rotation", "shape", "expression", "reflectance", "illumination")
NUM_SH = 9


@dataclass
class FaceParams:
    """θ split into its groups.

    Attributes:
        rotation: ``(B, 3)`` Euler angles (α, β, γ) in radians.
        shape: ``(B, K_s)`` θs.
        expression: ``(B, K_e)`` θe.
        reflectance: ``(B, K_r)`` θr.
        illumination: ``(B, 9, 3)`` SH coefficients per colour channel.
    """

    rotation: Tensor
    shape: Tensor
    expression: Tensor
    reflectance: Tensor
    illumination: Tensor

    @property
    def batch_size(self) -> int:
        return self.rotation.shape[0]


@dataclass(frozen=True)
class ParamLayout:
    """Sizes and slices of θ's groups for one face model.

    Example:
        >>> layout = ParamLayout(n_shape=128, n_expression=64, n_reflectance=128)
        >>> layout.size  # the paper's m
        350
        >>> layout.slices["expression"]
        slice(131, 195, None)
    """

    n_shape: int
    n_expression: int
    n_reflectance: int
    n_rotation: int = 3
    n_illumination: int = 3 * NUM_SH

    def __post_init__(self) -> None:
        if self.n_rotation != 3 or self.n_illumination != 3 * NUM_SH:
            raise ValueError("rotation has 3 and illumination 27 parameters")
        for name in ("n_shape", "n_expression", "n_reflectance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def for_face_model(cls, face_model) -> ParamLayout:  # noqa: ANN001 (avoid an import cycle)
        """The layout matching a :class:`~ifn.facemodel.model.FaceModel`'s mode counts."""
        return cls(face_model.n_shape, face_model.n_expression, face_model.n_reflectance)

    @property
    def sizes(self) -> OrderedDict[str, int]:
        return OrderedDict(
            rotation=self.n_rotation,
            shape=self.n_shape,
            expression=self.n_expression,
            reflectance=self.n_reflectance,
            illumination=self.n_illumination,
        )

    @property
    def slices(self) -> OrderedDict[str, slice]:
        out: OrderedDict[str, slice] = OrderedDict()
        start = 0
        for name, size in self.sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def size(self) -> int:
        """m = |θ|."""
        return sum(self.sizes.values())

    def split(self, theta: Tensor) -> FaceParams:
        """``(B, m)`` → :class:`FaceParams` (views, no copies)."""
        if theta.ndim != 2 or theta.shape[1] != self.size:
            raise ValueError(f"θ must have shape (B, {self.size}) for this face model, got {tuple(theta.shape)}")
        parts = {name: theta[:, s] for name, s in self.slices.items()}
        parts["illumination"] = parts["illumination"].reshape(-1, NUM_SH, 3)
        return FaceParams(**parts)

    def join(self, params: FaceParams) -> Tensor:
        """:class:`FaceParams` → ``(B, m)``."""
        parts = [
            params.rotation,
            params.shape,
            params.expression,
            params.reflectance,
            params.illumination.reshape(params.illumination.shape[0], -1),
        ]
        for (name, size), part in zip(self.sizes.items(), parts, strict=True):
            if part.shape[-1] != size:
                raise ValueError(f"{name} must have {size} values, got {tuple(part.shape)}")
        return torch.cat(parts, dim=1)
