"""Head rotation, full-perspective projection and the landmark framing rule.

Convention:
    * ``R = Rot_xyz(α, β, γ) = Rz(γ) · Ry(β) · Rx(α)``: the paper rotates *successively*
      about x (α, pitch), then y (β, yaw), then z (γ, roll), all in radians, applied to
      column vectors about the face's centre.
    * The camera sits at ``(0, 0, d)`` in the rotated, centred face frame, looking down −z
      with +y up; depth is the positive distance ``d − z``.
    * Image pixels: +x right, +y down, pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``.
    * Framing: the 2D landmarks' bounding box is scaled uniformly to fit the output image
      (less ``margin`` pixels on each side) and centred. Real crops use the same function.
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import Tensor

__all__ = ["apply_framing", "euler_to_rotation", "framing_transform", "perspective_project"]


def euler_to_rotation(angles: Tensor) -> Tensor:
    """Rotation matrices from Euler angles.

    Args:
        angles: ``(*, 3)`` (α, β, γ) in radians.

    Returns:
        ``(*, 3, 3)`` ``Rz(γ) @ Ry(β) @ Rx(α)``.

    Example:
        >>> R = euler_to_rotation(torch.tensor([0.0, torch.pi / 2, 0.0]))
        >>> torch.allclose(R @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
        True
    """
    if angles.shape[-1] != 3:
        raise ValueError(f"angles must have shape (*, 3), got {tuple(angles.shape)}")
    batch_shape = angles.shape[:-1]
    flat = angles.reshape(-1, 3)
    axes = torch.eye(3, dtype=angles.dtype, device=angles.device)
    rx, ry, rz = (axis_angle_to_rotation_matrix(flat[:, i : i + 1] * axes[i]) for i in range(3))
    return (rz @ ry @ rx).reshape(*batch_shape, 3, 3)


def perspective_project(points: Tensor, camera_distance: float) -> tuple[Tensor, Tensor]:
    """Pinhole projection of centred, rotated points seen from ``(0, 0, camera_distance)``.

    The focal length is 1: the framing rule rescales the image anyway, so only the ratio of
    face depth to ``camera_distance`` (the strength of perspective) matters.

    Args:
        points: ``(*, N, 3)`` camera-aligned points (+y up), same unit as the distance.
        camera_distance: distance of the camera from the rotation centre (> face depth).

    Returns:
        ``(*, N, 2)`` image-plane coordinates with +y *down*, and ``(*, N)`` positive depths.
    """
    depth = camera_distance - points[..., 2]
    xy = points[..., :2] / depth.unsqueeze(-1)
    return torch.stack([xy[..., 0], -xy[..., 1]], dim=-1), depth


def framing_transform(points: Tensor, image_size: tuple[int, int], margin: float = 0.0) -> tuple[Tensor, Tensor]:
    """The uniform scale and offset that fit the bounding box of ``points`` into the image.

    Args:
        points: ``(B, L, 2)`` 2D points (x, y), e.g. landmarks.
        image_size: ``(H, W)`` of the output.
        margin: free pixels kept on every side of the box.

    Returns:
        scale ``(B,)`` and offset ``(B, 2)`` such that ``points * scale + offset`` has its
        bounding box centred in the image, touching two opposite sides (less the margin).

    Example:
        >>> pts = torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
        >>> s, t = framing_transform(pts, (240, 240))
        >>> apply_framing(pts, s, t)
        tensor([[[  0.,  60.],
                 [240., 180.]]])
    """
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] < 2:
        raise ValueError(f"points must have shape (B, L>=2, 2), got {tuple(points.shape)}")
    height, width = image_size
    lo = points.amin(dim=1)
    hi = points.amax(dim=1)
    extent = (hi - lo).clamp_min(torch.finfo(points.dtype).eps)
    scale = torch.minimum((width - 2 * margin) / extent[:, 0], (height - 2 * margin) / extent[:, 1])
    centre = torch.tensor([width / 2.0, height / 2.0], dtype=points.dtype, device=points.device)
    offset = centre - (lo + hi) / 2.0 * scale.unsqueeze(-1)
    return scale, offset


def apply_framing(points: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """``(B, N, 2)`` points → output pixels with a :func:`framing_transform` result."""
    return points * scale[:, None, None] + offset[:, None, :]
