"""NumPy helpers for painting soft per-vertex fields on a face model, shared by the offline
builders (the procedural model, the ICT-FaceKit importer, the painted albedo prior).

All of them work on float64 arrays and are exact functions of their inputs (no randomness),
so a model built from them is the same on every machine.

Convention:
    Points are rows: ``(N, D)`` arrays, D = 2 for the frontal (x, y) projection or 3 for
    model-space positions. A polygon is closed implicitly (its last vertex connects to its
    first); a polyline is open unless ``closed=True``. Inside/outside follows the even-odd
    rule of :func:`ifn.facemodel.regions.points_in_polygon`.
"""

from __future__ import annotations

import numpy as np
import torch

from ifn.facemodel.regions import points_in_polygon

__all__ = [
    "closest_point_on_polyline",
    "distance_to_polyline",
    "inside_polygon",
    "signed_distance",
    "smoothstep",
    "triangle_normals",
]

#: Narrower smoothstep intervals are widened to this, so an empty one is a step.
_MIN_WIDTH = 1e-12
#: Segments shorter than this (squared length) are treated as points: no division by zero.
_MIN_SQUARED_LENGTH = 1e-12


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """The cubic Hermite ramp ``3t² - 2t³`` of ``t = clip((x - edge0) / (edge1 - edge0), 0, 1)``.

    0 at and below ``edge0``, 1 at and above ``edge1``, with zero slope at both ends (the
    GLSL ``smoothstep``). An interval narrower than ``1e-12`` is widened to it, so
    ``edge0 == edge1`` gives a step: 0 up to ``edge0``, 1 just above it.

    Args:
        edge0: where the ramp starts.
        edge1: where it ends, ``>= edge0``.
        x: values, any shape.

    Returns:
        Values in ``[0, 1]``, the shape of ``x``.

    Raises:
        ValueError: if ``edge1 < edge0``.

    Example:
        >>> smoothstep(0.0, 1.0, np.array([-1.0, 0.25, 0.5, 2.0])).tolist()
        [0.0, 0.15625, 0.5, 1.0]
    """
    if edge1 < edge0:
        raise ValueError(f"smoothstep needs edge0 <= edge1, got {edge0} > {edge1}")
    t = np.clip((x - edge0) / max(edge1 - edge0, _MIN_WIDTH), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _closest_on_segments(points: np.ndarray, polyline: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``points`` as ``(N, 1, D)`` and the nearest point on every segment, ``(N, S, D)``."""
    if polyline.ndim != 2 or points.ndim != 2 or polyline.shape[1] != points.shape[1] or len(polyline) < 2:
        raise ValueError(f"points must be (N, D) and the polyline (P>=2, D), got {points.shape} and {polyline.shape}")
    if closed:
        polyline = np.vstack([polyline, polyline[:1]])
    a, b = polyline[:-1][None], polyline[1:][None]  # (1, S, D)
    p = points[:, None]  # (N, 1, D)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), _MIN_SQUARED_LENGTH), 0.0, 1.0)
    return p, a + t[..., None] * ab


def distance_to_polyline(
    points: np.ndarray, polyline: np.ndarray, *, closed: bool = False, cutoff: float | None = None
) -> np.ndarray:
    """Euclidean distance of each point to a polyline.

    Args:
        points: ``(N, D)``.
        polyline: ``(P, D)``, P >= 2 (repeated points are fine).
        closed: also measure to the segment from the last point back to the first.
        cutoff: if given, distances saturate at it, and points farther than it from the
            polyline's bounding box are not measured at all (they get ``cutoff``): much
            faster when the polyline is small and only its neighbourhood matters.

    Returns:
        ``(N,)`` distances, ``min(distance, cutoff)`` when a cutoff is given.

    Raises:
        ValueError: for mismatched shapes or a polyline with fewer than 2 points.

    Example:
        >>> distance_to_polyline(np.array([[2.0, 1.0], [7.0, 4.0]]), np.array([[0.0, 0.0], [4.0, 0.0]])).tolist()
        [1.0, 5.0]
    """
    if cutoff is None:
        p, closest = _closest_on_segments(points, polyline, closed)
        return np.linalg.norm(p - closest, axis=-1).min(axis=1)
    out = np.full(len(points), float(cutoff))
    near = np.flatnonzero(
        ((points >= polyline.min(axis=0) - cutoff) & (points <= polyline.max(axis=0) + cutoff)).all(axis=1)
    )
    if len(near) == 0:
        return out
    p, closest = _closest_on_segments(points[near], polyline, closed)
    out[near] = np.minimum(np.linalg.norm(p - closest, axis=-1).min(axis=1), cutoff)
    return out


def closest_point_on_polyline(points: np.ndarray, polyline: np.ndarray, *, closed: bool = False) -> np.ndarray:
    """The nearest point of a polyline to each point (the first segment's, on a tie).

    Args:
        points: ``(N, D)``.
        polyline: ``(P, D)``, P >= 2.
        closed: include the segment from the last point back to the first.

    Returns:
        ``(N, D)`` points on the polyline.

    Example:
        >>> closest_point_on_polyline(np.array([[2.0, 1.0]]), np.array([[0.0, 0.0], [4.0, 0.0]])).tolist()
        [[2.0, 0.0]]
    """
    p, closest = _closest_on_segments(points, polyline, closed)
    best = np.linalg.norm(p - closest, axis=-1).argmin(axis=1)
    return closest[np.arange(len(points)), best]


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd inside test of 2-D points, :func:`~ifn.facemodel.regions.points_in_polygon` on NumPy.

    Only the points in the polygon's bounding box are tested (a point outside it is never
    inside), which makes small feature polygons on a large mesh cheap.

    Args:
        points: ``(N, 2)`` float64.
        polygon: ``(P, 2)`` float64, P >= 3.

    Returns:
        ``(N,)`` bool, True strictly inside.

    Example:
        >>> square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        >>> inside_polygon(np.array([[0.5, 0.5], [1.5, 0.5]]), square).tolist()
        [True, False]
    """
    out = np.zeros(len(points), dtype=bool)
    near = np.flatnonzero(((points >= polygon.min(axis=0)) & (points <= polygon.max(axis=0))).all(axis=1))
    if len(near):
        out[near] = points_in_polygon(torch.from_numpy(points[near]), torch.from_numpy(polygon)).numpy()
    return out


def signed_distance(points: np.ndarray, polygon: np.ndarray, *, cutoff: float | None = None) -> np.ndarray:
    """Distance of 2-D points to a closed polygon's border, positive inside, negative outside.

    Args:
        points: ``(N, 2)``.
        polygon: ``(P, 2)``, P >= 3.
        cutoff: saturate the magnitude at it (see :func:`distance_to_polyline`).

    Returns:
        ``(N,)`` signed distances.

    Example:
        >>> square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
        >>> signed_distance(np.array([[2.0, 1.0], [6.0, 2.0]]), square).tolist()
        [1.0, -2.0]
    """
    dist = distance_to_polyline(points, polygon, closed=True, cutoff=cutoff)
    return np.where(inside_polygon(points, polygon), dist, -dist)


def triangle_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unnormalised triangle normals ``(b - a) × (c - a)``: twice the area times the unit normal.

    Args:
        vertices: ``(V, 3)``, or ``(V, 2)`` for the frontal projection.
        triangles: ``(F, 3)`` vertex indices.

    Returns:
        ``(F, 3)``; for 2-D vertices ``(F,)``, the z component: twice the signed area,
        positive for counter-clockwise triangles.

    Example:
        >>> triangle_normals(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), np.array([[0, 1, 2]])).tolist()
        [2.0]
    """
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    if vertices.shape[1] == 2:
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return np.cross(b - a, c - a)
