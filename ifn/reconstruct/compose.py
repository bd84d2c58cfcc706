"""Putting a reconstruction back into its photo: inverse crop warp, alpha compositing, contours.

A crop maps photo pixels to crop pixels by ``p_crop = scale · p_image + offset``
(:class:`ifn.data.photos.FaceCrop`, continuous coordinates: pixel ``(i, j)`` covers
``[j, j+1) × [i, i+1)``). Pasting inverts that map with OpenCV's bilinear warp, only over
the photo window the crop covers, so a large photo costs no more than its face.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INPUT_CONTOUR",
    "OURS_CONTOUR",
    "as_tensor_image",
    "composite",
    "draw_contours",
    "mask_to_uint8",
    "to_uint8",
    "warp_to_photo",
]

#: Contour colours of the overlay (RGB): the photo's face mask, and the reconstruction's.
INPUT_CONTOUR = (230, 40, 40)
OURS_CONTOUR = (40, 220, 60)


def _as_hwc(values: Tensor | np.ndarray) -> np.ndarray:
    """``(C, S, S)`` tensor or ``(S, S[, C])`` array → float32 ``(S, S, C)``."""
    if isinstance(values, Tensor):
        array = values.detach().float().cpu().numpy()
        array = array.transpose(1, 2, 0) if array.ndim == 3 else array[..., None]
    else:
        array = np.asarray(values, dtype=np.float32)
        if array.ndim == 2:
            array = array[..., None]
    return np.ascontiguousarray(array, dtype=np.float32)


def warp_to_photo(
    values: Tensor | np.ndarray, scale: float, offset: tuple[float, float], photo_shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resample crop-space values into the photo window they cover (bilinear, 0 outside).

    Args:
        values: ``(C, S, S)`` tensor or ``(S, S[, C])`` array in crop pixels.
        scale: the crop's ``scale``.
        offset: the crop's ``(x, y)`` offset.
        photo_shape: ``(H, W)`` of the photo.

    Returns:
        ``(h, w, C)`` float32 values of the window and the window ``(y0, y1, x0, x1)`` of the
        photo (empty when the crop lies outside the photo).

    Example:
        >>> crop = np.zeros((4, 4), np.float32); crop[1, 2] = 1.0
        >>> window, (y0, y1, x0, x1) = warp_to_photo(crop, 1.0, (-3.0, -5.0), (10, 10))
        >>> (y0, x0), np.argwhere(window[..., 0] == 1.0).tolist()
        ((5, 3), [[1, 2]])
    """
    import cv2

    crop = _as_hwc(values)
    size_y, size_x = crop.shape[:2]
    tx, ty = float(offset[0]), float(offset[1])
    s = float(scale)
    height, width = photo_shape
    x0 = max(0, int(np.floor(-tx / s)))
    y0 = max(0, int(np.floor(-ty / s)))
    x1 = min(width, int(np.ceil((size_x - tx) / s)))
    y1 = min(height, int(np.ceil((size_y - ty) / s)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, crop.shape[2]), np.float32), (0, 0, 0, 0)
    # photo index → crop index: (j + x0 + 0.5)·s + tx − 0.5; WARP_INVERSE_MAP takes dst → src.
    matrix = np.array([[s, 0.0, (x0 + 0.5) * s + tx - 0.5], [0.0, s, (y0 + 0.5) * s + ty - 0.5]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    window = cv2.warpAffine(
        crop, matrix, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    if window.ndim == 2:
        window = window[..., None]
    return window.astype(np.float32), (y0, y1, x0, x1)


def composite(photo: np.ndarray, image: Tensor, alpha: Tensor, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """The photo with a crop-space image pasted over it: ``photo·(1 − α) + image·α``.

    Args:
        photo: ``(H, W, 3)`` uint8 RGB.
        image: ``(3, S, S)`` in [0, 1], crop pixels.
        alpha: ``(1, S, S)`` in [0, 1] (e.g. the render's mask); bilinear resampling makes
            its edge soft in the photo.
        scale, offset: the crop transform.

    Returns:
        ``(H, W, 3)`` uint8 RGB, the photo's size.
    """
    out = photo.astype(np.float32) / 255.0
    colour, (y0, y1, x0, x1) = warp_to_photo(image, scale, offset, photo.shape[:2])
    weight, _ = warp_to_photo(alpha, scale, offset, photo.shape[:2])
    if colour.size:
        weight = np.clip(weight, 0.0, 1.0)
        region = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = region * (1.0 - weight) + np.clip(colour, 0.0, 1.0) * weight
    return np.rint(out * 255.0).clip(0, 255).astype(np.uint8)


def draw_contours(
    photo: np.ndarray,
    masks: list[tuple[Tensor, tuple[int, int, int]]],
    scale: float,
    offset: tuple[float, float],
    thickness: int | None = None,
) -> np.ndarray:
    """Draw the outline of crop-space masks on the photo (in place on a copy).

    Args:
        photo: ``(H, W, 3)`` uint8 RGB.
        masks: ``[(mask (1, S, S), (r, g, b)), …]`` drawn in order.
        scale, offset: the crop transform.
        thickness: line width in photo pixels (default: about 1/300 of the photo's larger side).

    Returns:
        A new ``(H, W, 3)`` uint8 image.
    """
    import cv2

    out = np.ascontiguousarray(photo.copy())
    width = thickness or max(1, round(max(photo.shape[:2]) / 300))
    for mask, colour in masks:
        window, (y0, _, x0, _) = warp_to_photo(mask, scale, offset, photo.shape[:2])
        if not window.size:
            continue
        binary = (window[..., 0] > 0.5).astype(np.uint8)
        # RETR_LIST: holes too (the mouth is outside the face region).
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), width, lineType=cv2.LINE_AA)
    return out


def to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] → ``(H, W, 3)`` uint8 (rounded)."""
    return np.rint(image.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)


def mask_to_uint8(mask: Tensor) -> np.ndarray:
    """``(1, H, W)`` → ``(H, W, 3)`` uint8 (white where set)."""
    return to_uint8(mask.expand(3, -1, -1).float())


def as_tensor_image(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
