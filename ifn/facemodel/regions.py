"""The face region, defined once from the 68 iBUG landmarks.

The same polygon paints a face model's mask (which vertices are drawn) and masks a real
photo's crop, so renders and real crops cover the same part of the face:

* the outline runs along the jaw (landmarks 0 → 16) and back along the brows
  (26 → 17), so the forehead above the brows is excluded;
* the mouth interior (inner-lip polygon 60 → 67) is not part of the face.

Convention:
    Landmarks are 0-based iBUG / Multi-PIE 68-point indices; 2D points are (x, y).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FACE_OUTLINE",
    "MOUTH_INTERIOR",
    "NUM_LANDMARKS",
    "face_region_mask",
    "points_in_polygon",
    "polygon_mask",
]

#: Landmarks per face: the iBUG / Multi-PIE 68-point scheme, used by face models and detectors alike.
NUM_LANDMARKS = 68
#: Landmark indices of the face outline polygon: jaw left-to-right, then brows right-to-left.
FACE_OUTLINE: tuple[int, ...] = tuple(range(17)) + tuple(range(26, 16, -1))
#: Landmark indices of the inner-lip polygon (the mouth interior).
MOUTH_INTERIOR: tuple[int, ...] = tuple(range(60, 68))


def points_in_polygon(points: Tensor, polygon: Tensor) -> Tensor:
    """Even-odd point-in-polygon test (crossing number), batched.

    Written by hand because it must give identical answers for model vertices and pixel
    centres on every device, with no OpenCV/matplotlib round trip.

    Args:
        points: ``(*, N, 2)`` query points.
        polygon: ``(*, P, 2)`` closed polygon vertices (the last connects to the first).

    Returns:
        ``(*, N)`` bool, True strictly inside.

    Example:
        >>> square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        >>> points_in_polygon(torch.tensor([[0.5, 0.5], [1.5, 0.5]]), square)
        tensor([ True, False])
    """
    if points.shape[-1] != 2 or polygon.shape[-1] != 2 or polygon.shape[-2] < 3:
        raise ValueError(
            f"points must be (*, N, 2) and polygon (*, P>=3, 2), got {tuple(points.shape)} and {tuple(polygon.shape)}"
        )
    a = polygon.unsqueeze(-3)  # (*, 1, P, 2)
    b = torch.roll(polygon, shifts=-1, dims=-2).unsqueeze(-3)
    p = points.unsqueeze(-2)  # (*, N, 1, 2)
    ay, by, py = a[..., 1], b[..., 1], p[..., 1]
    straddles = (ay > py) != (by > py)
    dy = torch.where(straddles, by - ay, torch.ones_like(by - ay))
    x_cross = a[..., 0] + (py - ay) * (b[..., 0] - a[..., 0]) / dy
    crossings = (straddles & (p[..., 0] < x_cross)).sum(dim=-1)
    return crossings % 2 == 1


def polygon_mask(polygon: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Rasterize polygons: the pixels whose centres :func:`points_in_polygon` puts inside.

    Scanline form of the same even-odd test, with identical answers: per pixel row, the
    crossings of the polygon's edges are computed once (the same arithmetic as
    :func:`points_in_polygon`) and sorted, and a pixel is inside when an odd number of them
    lie strictly to its right. That costs ``O(B·H·W·log P)`` instead of ``O(B·H·W·P)``.

    Args:
        polygon: ``(B, P, 2)`` in pixel coordinates.
        image_size: ``(H, W)``.

    Returns:
        ``(B, H, W)`` bool.
    """
    if polygon.ndim != 3 or polygon.shape[-1] != 2 or polygon.shape[1] < 3:
        raise ValueError(f"polygon must be (B, P>=3, 2), got {tuple(polygon.shape)}")
    height, width = image_size
    batch = polygon.shape[0]
    ys = torch.arange(height, dtype=polygon.dtype, device=polygon.device) + 0.5
    xs = torch.arange(width, dtype=polygon.dtype, device=polygon.device) + 0.5
    a = polygon.unsqueeze(1)  # (B, 1, P, 2)
    b = torch.roll(polygon, shifts=-1, dims=1).unsqueeze(1)
    py = ys.view(1, height, 1)
    ay, by = a[..., 1], b[..., 1]
    straddles = (ay > py) != (by > py)  # (B, H, P)
    dy = torch.where(straddles, by - ay, torch.ones_like(by - ay))
    x_cross = a[..., 0] + (py - ay) * (b[..., 0] - a[..., 0]) / dy
    x_cross = torch.where(straddles, x_cross, torch.full_like(x_cross, -torch.inf))
    x_cross, _ = x_cross.sort(dim=-1)
    # Crossings strictly right of x = all straddling crossings minus those <= x.
    at_or_left = torch.searchsorted(x_cross.reshape(batch * height, -1).contiguous(),
                                    xs.expand(batch * height, width).contiguous(), right=True)
    not_straddling = (~straddles).sum(dim=-1).reshape(batch * height, 1)  # the -inf entries, all <= x
    right = straddles.sum(dim=-1).reshape(batch * height, 1) - (at_or_left - not_straddling)
    return (right % 2 == 1).reshape(batch, height, width)


def face_region_mask(landmarks: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The face mask of a real crop: inside the outline, outside the mouth interior.

    Args:
        landmarks: ``(B, 68, 2)`` in crop pixel coordinates.
        image_size: ``(H, W)`` of the crop.

    Returns:
        ``(B, 1, H, W)`` float mask in {0, 1}.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must have shape (B, 68, 2), got {tuple(landmarks.shape)}")
    outline = polygon_mask(landmarks[:, list(FACE_OUTLINE)], image_size)
    mouth = polygon_mask(landmarks[:, list(MOUTH_INTERIOR)], image_size)
    return (outline & ~mouth).unsqueeze(1).to(landmarks.dtype)
