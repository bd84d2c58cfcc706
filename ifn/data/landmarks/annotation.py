"""Ground-truth landmarks from annotation files beside the image (``.pts``, ``.ljson``).

Convention:
    ``.pts`` (iBUG) stores (x, y), 1-based, integer at the pixel centre: continuous
    ``v − 0.5``. ``.ljson`` (menpo) stores (y, x), 0-based, integer at the pixel centre:
    swapped, ``+ 0.5``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ifn.data.landmarks.base import Detection, Face, LandmarkDetector, landmark_box
from ifn.facemodel.regions import NUM_LANDMARKS

__all__ = ["AnnotationLandmarks", "read_ljson", "read_pts"]


def read_pts(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an iBUG ``.pts`` file.

    Convention:
        ``.pts`` coordinates are 1-based with the integer at the pixel centre (the first
        pixel's centre is ``(1, 1)``); they are returned as continuous coordinates
        ``v − 0.5`` (the first pixel's centre becomes ``(0.5, 0.5)``).

    Args:
        path: the file.

    Returns:
        ``(N, 2)`` float64 (x, y) with N the file's ``n_points`` (any N; callers check 68).

    Raises:
        ValueError: malformed file (names the file).
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    header, sep, rest = text.partition("{")
    body, sep2, _ = rest.partition("}")
    if not sep or not sep2:
        raise ValueError(f"{path}: not a .pts file (no '{{ ... }}' block)")
    n_points = None
    for line in header.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "n_points":
            n_points = int(value)
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric coordinates ({exc})") from None
    if values.size % 2:
        raise ValueError(f"{path}: odd number of coordinates ({values.size})")
    points = values.reshape(-1, 2)
    if n_points is not None and n_points != len(points):
        raise ValueError(f"{path}: header says n_points={n_points} but the file holds {len(points)} points")
    return points - 0.5


def read_ljson(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a menpo ``.ljson`` landmark file (versions 1–3).

    Convention:
        menpo stores points as (y, x), 0-based, integer at the pixel centre; they are
        returned as continuous (x, y) ``= (x + 0.5, y + 0.5)``. When the file holds several
        groups, the first with 68 points is returned (else the first group).

    Args:
        path: the file.

    Returns:
        ``(N, 2)`` float64 (x, y); missing points (``null`` in the file) are ``nan``.

    Raises:
        ValueError: malformed file (names the file).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    candidates: list[Any] = []
    if isinstance(data.get("landmarks"), dict):  # version 1 keeps a single group at the top
        candidates.append(data["landmarks"].get("points"))
    for group in (data.get("groups") or {}).values():  # versions 2 and 3 name their groups
        if isinstance(group, dict) and isinstance(group.get("landmarks"), dict):
            candidates.append(group["landmarks"].get("points"))
    arrays = []
    for points in candidates:
        arr = np.array([p if p is not None else [np.nan, np.nan] for p in points or []], dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 2:
            arrays.append(arr)
    if not arrays:
        raise ValueError(f"{path}: no 2D landmark group found")
    chosen = next((a for a in arrays if len(a) == NUM_LANDMARKS), arrays[0])
    return chosen[:, ::-1] + 0.5


class AnnotationLandmarks(LandmarkDetector):
    """Ground-truth landmarks from ``<stem>.pts`` or ``<stem>.ljson`` beside the image.

    A file with a number of points other than 68 is not a face annotation (e.g. a 19-point
    tongue contour): the image then has no face, with that as the reason.

    Args:
        largest_only, min_face_size, max_side: see :class:`~ifn.data.landmarks.LandmarkDetector`.
    """

    name = "annotation"
    needs_pixels = False
    suffixes: ClassVar[tuple[str, ...]] = (".pts", ".ljson")

    def annotation_file(self, path: Path) -> Path | None:
        """The annotation beside ``path`` (``.pts`` preferred), or ``None``."""
        for suffix in self.suffixes:
            candidate = path.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return None

    def cache_extra(self, path: Path | None) -> bytes:
        """The annotation file's bytes: editing it must invalidate cached detections."""
        file = self.annotation_file(path) if path is not None else None
        return file.read_bytes() if file is not None else b""

    def _detect(self, image: np.ndarray | None, path: Path | None) -> Detection:
        if path is None:
            raise ValueError("AnnotationLandmarks needs the image path")
        file = self.annotation_file(path)
        if file is None:
            return Detection(reason=f"no annotation ({' or '.join(self.suffixes)}) beside the image")
        try:
            points = read_pts(file) if file.suffix == ".pts" else read_ljson(file)
        except (OSError, ValueError) as exc:
            return Detection(reason=f"unreadable annotation: {exc}")
        if points.shape != (NUM_LANDMARKS, 2):
            return Detection(reason=f"{file.name} has {len(points)} points, not a 68-point face annotation")
        if not np.isfinite(points).all():
            return Detection(reason=f"{file.name} has missing points")
        source = file.suffix.lstrip(".")
        return Detection(faces=[Face(points, landmark_box(points), math.nan, source)])
