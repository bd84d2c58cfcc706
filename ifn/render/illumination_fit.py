"""Closed-form fit of SH illumination to a photo (analysis by synthesis, lighting only).

With geometry and albedo fixed, a render is linear in the 9×3 SH coefficients θi,
so the lighting that best explains a photo inside a mask is a small least-squares problem
per image and colour channel. No library solves this masked, batched, ridge-regularised
9-unknown problem directly, so it is written here (``torch.linalg.solve`` does the algebra).

Breeding uses it to give the bred bank the lighting of the real photos (coloured,
directional) instead of only the network's estimate of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit_illumination", "relight"]


def relight(basis: Tensor, coefficients: Tensor) -> Tensor:
    """The render under SH lighting ``coefficients``, from its basis images (no re-rasterizing).

    Equals :class:`~ifn.render.FaceRenderer`'s image for the same geometry and albedo:
    ``Σ_k coefficients[b, k, c] · basis[b, c, k]``, clamped to [0, 1], black off the face.

    Args:
        basis: ``(B, 3, 9, H, W)`` from :meth:`ifn.render.FaceRenderer.illumination_basis`.
        coefficients: ``(B, 9, 3)`` SH lighting.

    Returns:
        ``(B, 3, H, W)`` image.
    """
    return torch.einsum("bckhw,bkc->bchw", basis, coefficients.to(basis.dtype)).clamp(0.0, 1.0)


def fit_illumination(
    basis: Tensor,
    image: Tensor,
    mask: Tensor,
    initial: Tensor,
    ridge: float = 0.01,
) -> Tensor:
    """Per image and channel: argmin_x ‖mask ⊙ (Σ_k x_k basis_k − image)‖² + λ‖x − initial‖².

    Args:
        basis: ``(B, 3, 9, H, W)`` unclamped SH basis images
            (:meth:`ifn.render.FaceRenderer.illumination_basis`).
        image: ``(B, 3, H, W)`` target photos in [0, 1].
        mask: ``(B, 1, H, W)`` pixels to fit (bool or {0, 1}); typically photo mask ∩ render mask.
        initial: ``(B, 9, 3)`` the current estimate, the ridge's anchor (and the answer for an
            image with no pixel to fit).
        ridge: λ relative to the mean diagonal of the normal matrix, so it does not depend on
            the image size or the albedo's brightness. 0 gives plain least squares.

    Returns:
        ``(B, 9, 3)`` fitted coefficients (float32, on ``basis``'s device).

    Example:
        >>> basis = torch.rand(1, 3, 9, 8, 8)
        >>> truth = torch.randn(1, 9, 3)
        >>> image = torch.einsum("bckhw,bkc->bchw", basis, truth)
        >>> fitted = fit_illumination(basis, image, torch.ones(1, 1, 8, 8), torch.zeros(1, 9, 3), ridge=0.0)
        >>> torch.allclose(fitted, truth, atol=1e-3)
        True
    """
    b, c, k, h, w = basis.shape
    if image.shape != (b, c, h, w) or mask.shape != (b, 1, h, w) or initial.shape != (b, k, c):
        raise ValueError(
            f"shapes do not match: basis {tuple(basis.shape)}, image {tuple(image.shape)}, "
            f"mask {tuple(mask.shape)}, initial {tuple(initial.shape)}"
        )
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    weight = (mask > 0.5 if mask.dtype != torch.bool else mask).to(torch.float64).flatten(2)  # (B, 1, P)
    a = basis.to(torch.float64).flatten(3)  # (B, C, K, P)
    y = image.to(torch.float64).flatten(2)  # (B, C, P)
    normal = torch.einsum("bckp,bcjp,bqp->bckj", a, a, weight)  # (B, C, K, K)
    rhs = torch.einsum("bckp,bcp,bqp->bck", a, y, weight)  # (B, C, K)
    anchor = initial.to(torch.float64).transpose(1, 2)  # (B, C, K)
    scale = normal.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)  # (B, C, 1)
    lam = ridge * scale
    eye = torch.eye(k, dtype=torch.float64, device=basis.device)
    # A tiny absolute term keeps an all-empty mask solvable: it then returns the anchor.
    system = normal + (lam.unsqueeze(-1) + 1e-9) * eye
    solution = torch.linalg.solve(system, (rhs + (lam + 1e-9) * anchor).unsqueeze(-1)).squeeze(-1)
    return solution.transpose(1, 2).to(torch.float32)
