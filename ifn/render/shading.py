"""Vertex normals and second-order spherical-harmonics Lambertian shading.

Convention:
    ``H_k = √(4π) · Y_k``: the 9 real SH basis functions, scaled so that the constant
    one is exactly 1 (and each has unit mean square over the sphere). Order ``k`` =
    (l, m) = (0,0), (1,−1), (1,0), (1,1), (2,−2), (2,−1), (2,0), (2,1), (2,2), i.e.::

        H = [1, √3 y, √3 z, √3 x, √15 xy, √15 yz, (√5/2)(3z² − 1), √15 xz, (√15/2)(x² − y²)]

    evaluated at unit camera-space normals (+z towards the camera). The coefficients θi
    are irradiance coefficients (the Lambertian convolution is folded in), so a constant
    θi,1 = 1 with all others 0 gives irradiance 1 everywhere, and pixel colour =
    albedo ⊙ irradiance, per channel, in linear RGB.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sh_basis", "sh_irradiance", "shade", "vertex_normals"]

_SQRT3 = math.sqrt(3.0)
_SQRT15 = math.sqrt(15.0)
_SQRT5 = math.sqrt(5.0)


def vertex_normals(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: ``(B, V, 3)`` positions.
        triangles: ``(F, 3)`` counter-clockwise (seen from outside) vertex indices.

    Returns:
        ``(B, V, 3)`` unit normals pointing outwards; unreferenced vertices get ``(0, 0, 1)``.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    v0, v1, v2 = (vertices[:, triangles[:, i]] for i in range(3))
    face_normals = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 × area: area weighting
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals.index_add_(1, triangles[:, i], face_normals)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    length = normals.norm(dim=-1, keepdim=True)
    return torch.where(length > 0, normals / length.clamp_min(1e-12), fallback)


def sh_basis(normals: Tensor) -> Tensor:
    """The 9 basis functions H_k at unit normals.

    Args:
        normals: ``(*, 3)`` unit vectors (x, y, z).

    Returns:
        ``(*, 9)``.

    Example:
        >>> sh_basis(torch.tensor([0.0, 0.0, 1.0]))
        tensor([1.0000, 0.0000, 1.7321, 0.0000, 0.0000, 0.0000, 2.2361, 0.0000, 0.0000])
    """
    if normals.shape[-1] != 3:
        raise ValueError(f"normals must have shape (*, 3), got {tuple(normals.shape)}")
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.ones_like(x),
            _SQRT3 * y,
            _SQRT3 * z,
            _SQRT3 * x,
            _SQRT15 * x * y,
            _SQRT15 * y * z,
            0.5 * _SQRT5 * (3.0 * z * z - 1.0),
            _SQRT15 * x * z,
            0.5 * _SQRT15 * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_irradiance(normals: Tensor, coefficients: Tensor) -> Tensor:
    """B(n) = Σ_k θi,k H_k(n) per colour channel (Eq. 4).

    Args:
        normals: ``(B, N, 3)`` unit normals.
        coefficients: ``(B, 9, C)`` SH coefficients per channel.

    Returns:
        ``(B, N, C)`` irradiance (may be negative for extreme light; callers clamp).
    """
    if coefficients.ndim != 3 or coefficients.shape[1] != 9:
        raise ValueError(f"SH coefficients must have shape (B, 9, C), got {tuple(coefficients.shape)}")
    return torch.bmm(sh_basis(normals), coefficients.to(normals.dtype))


def shade(albedo: Tensor, normals: Tensor, coefficients: Tensor) -> Tensor:
    """Lambertian colour = albedo ⊙ B(n).

    Args:
        albedo: ``(B, N, 3)`` linear RGB reflectance.
        normals: ``(B, N, 3)`` unit normals.
        coefficients: ``(B, 9, 3)`` SH illumination.

    Returns:
        ``(B, N, 3)`` unclamped linear RGB radiance.
    """
    return albedo * sh_irradiance(normals, coefficients)
