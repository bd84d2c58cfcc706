"""What every landmark detector shares: the results, the detector interface, the NME metric.

Nothing here imports a detector's heavy dependency (MediaPipe, face-alignment); OpenCV is
imported only when an image larger than ``max_side`` has to be downscaled.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ifn.facemodel.regions import NUM_LANDMARKS

__all__ = [
    "Detection",
    "Face",
    "LandmarkDetector",
    "MissingWeightsError",
    "check_rgb_image",
    "landmark_box",
    "landmark_nme",
]


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """The bounding box of a set of points.

    Args:
        landmarks: ``(N, 2)`` (x, y).

    Returns:
        ``(4,)`` float64 ``(x0, y0, x1, y1)``.
    """
    landmarks = np.asarray(landmarks)
    return np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)]).astype(np.float64)


def check_rgb_image(image: Any) -> None:
    """Raise unless ``image`` is an ``(H, W, 3)`` uint8 RGB array, the one image type detectors
    and the cropper accept (:func:`ifn.data.photos.read_image` returns it for any file).

    Raises:
        TypeError: not a numpy array.
        ValueError: wrong shape or dtype (both named in the message).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        landmarks: ``(68, 2)`` float64 (x, y), continuous pixel coordinates of the full image.
        box: ``(4,)`` float64 ``(x0, y0, x1, y1)``: the detector's face box when it has one,
            else the landmarks' bounding box.
        score: detector confidence in ``[0, 1]``; ``nan`` when the source gives none.
        source: which stage found it (e.g. ``"facemesh"``, ``"facemesh-crop"``, ``"pts"``).
    """

    landmarks: np.ndarray
    box: np.ndarray
    score: float = math.nan
    source: str = ""

    @property
    def size(self) -> float:
        """Face size in pixels: the longer side of the landmarks' bounding box."""
        box = landmark_box(self.landmarks)
        return float(max(box[2] - box[0], box[3] - box[1]))


@dataclass(frozen=True)
class Detection:
    """What a detector found in one image.

    Attributes:
        faces: the faces kept, largest first.
        reason: why ``faces`` is empty (``None`` when it is not).
        dropped_small: faces dropped because smaller than ``min_face_size``.
        dropped_extra: faces dropped by ``largest_only``.
    """

    faces: list[Face] = field(default_factory=list)
    reason: str | None = None
    dropped_small: int = 0
    dropped_extra: int = 0


class MissingWeightsError(FileNotFoundError):
    """Model weights are not on disk and could not be downloaded."""


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------


class LandmarkDetector(ABC):
    """Base class: subclasses implement :meth:`_detect` on an image of at most ``max_side``.

    Args:
        largest_only: keep only the largest face of each image.
        min_face_size: drop faces whose landmarks' bounding box is smaller (longer side,
            in pixels of the full image) and count them.
        max_side: images with a longer side above this are downscaled (area filter) for
            detection; the landmarks are mapped back to full-resolution coordinates.

    Example:
        >>> from ifn.data.landmarks import make_detector
        >>> det = make_detector("annotation")
        >>> det.settings()["name"]
        'annotation'
    """

    #: registry name, also part of the cache key
    name: ClassVar[str] = ""
    #: bump when a change of the code changes the landmarks (invalidates caches)
    version: ClassVar[int] = 1
    #: whether :meth:`_detect` looks at pixels (else no decoding/downscaling is needed)
    needs_pixels: ClassVar[bool] = True

    def __init__(self, *, largest_only: bool = False, min_face_size: float = 0.0, max_side: int = 2048) -> None:
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be >= 0, got {min_face_size}")
        if max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {max_side}")
        self.largest_only = bool(largest_only)
        self.min_face_size = float(min_face_size)
        self.max_side = int(max_side)
        self.calls = 0  # lets callers (and the cache tests) tell whether detection really ran

    # -- what subclasses provide ---------------------------------------------------------
    @abstractmethod
    def _detect(self, image: np.ndarray | None, path: Path | None) -> list[Face] | Detection:
        """Faces of ``image`` (already downscaled to ``max_side``); coordinates of that image."""

    def options(self) -> dict[str, Any]:
        """Options that change the raw detections (part of the cache key)."""
        return {}

    def cache_extra(self, path: Path | None) -> bytes:
        """Extra bytes that the detections depend on besides the image (e.g. an annotation)."""
        return b""

    # -- the public API --------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that determines :meth:`detect_raw`'s output, for cache keys."""
        return {"name": self.name, "version": self.version, "max_side": self.max_side, **self.options()}

    def __call__(self, image: np.ndarray | None, path: str | os.PathLike[str] | None = None) -> Detection:
        """Detect, then apply ``largest_only`` / ``min_face_size``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (may be ``None`` for detectors that read no pixels,
                such as :class:`~ifn.data.landmarks.AnnotationLandmarks`).
            path: the image's file (needed by :class:`~ifn.data.landmarks.AnnotationLandmarks`).

        Returns:
            The kept faces, largest first.
        """
        return self.select(self.detect_raw(image, path))

    def detect_raw(self, image: np.ndarray | None, path: str | os.PathLike[str] | None = None) -> Detection:
        """All faces, largest first, without the ``largest_only`` / ``min_face_size`` filters.

        Args:
            image, path: as for :meth:`__call__`.

        Returns:
            Every face found, in full-resolution coordinates; ``reason`` set when none.
        """
        path = Path(path) if path is not None else None
        self.calls += 1
        factor_xy: np.ndarray | None = None
        small = image
        if self.needs_pixels:
            if image is None:
                raise ValueError(f"{type(self).__name__} needs the image pixels")
            check_rgb_image(image)
            height, width = image.shape[:2]
            if max(height, width) > self.max_side:
                import cv2

                factor = self.max_side / max(height, width)
                size = (max(1, round(width * factor)), max(1, round(height * factor)))  # (w, h)
                small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                factor_xy = np.array([width / size[0], height / size[1]])
        found = self._detect(small, path)
        det = found if isinstance(found, Detection) else Detection(faces=list(found))
        faces = det.faces
        if factor_xy is not None:
            # continuous coordinates scale exactly with the image (area resize maps edges to edges)
            faces = [replace(f, landmarks=f.landmarks * factor_xy, box=f.box * np.tile(factor_xy, 2)) for f in faces]
        faces = sorted(faces, key=lambda f: -f.size)
        return Detection(faces=faces, reason=None if faces else (det.reason or "no face detected"))

    def select(
        self, detection: Detection, *, largest_only: bool | None = None, min_face_size: float | None = None
    ) -> Detection:
        """Apply ``min_face_size`` then ``largest_only`` to a :meth:`detect_raw` result.

        The faces are ordered largest first (ties keep their order); the returned faces are
        the input's own :class:`Face` objects, so callers can map them back to indices.

        Args:
            detection: typically a :meth:`detect_raw` result (or one read from a cache).
            largest_only: overrides the detector's own setting (``None``: use it).
            min_face_size: overrides the detector's own setting (``None``: use it).

        Returns:
            The kept faces and how many each filter dropped; when none is kept, ``reason``
            is the input's, or says that every face was too small.
        """
        largest_only = self.largest_only if largest_only is None else bool(largest_only)
        min_face_size = self.min_face_size if min_face_size is None else float(min_face_size)
        faces = sorted(detection.faces, key=lambda f: -f.size)
        kept = [f for f in faces if f.size >= min_face_size]
        dropped_small = len(faces) - len(kept)
        dropped_extra = 0
        if largest_only and len(kept) > 1:
            dropped_extra = len(kept) - 1
            kept = kept[:1]
        reason = detection.reason
        if not kept and reason is None:
            reason = f"all {dropped_small} face(s) smaller than min_face_size={min_face_size:g} px"
        return Detection(faces=kept, reason=reason, dropped_small=dropped_small, dropped_extra=dropped_extra)

    def close(self) -> None:  # noqa: B027 - optional hook: most detectors hold nothing native
        """Release native resources (graphs, networks); the detector rebuilds them on use."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k not in ("name", "version"))
        return f"{type(self).__name__}({opts}, largest_only={self.largest_only}, min_face_size={self.min_face_size})"


# --------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------


def landmark_nme(pred: np.ndarray, target: np.ndarray, points: Sequence[int] | slice | None = None) -> float:
    """Mean point-to-point error normalised by the inter-ocular distance (300-W convention).

    Args:
        pred: ``(68, 2)`` predicted landmarks.
        target: ``(68, 2)`` ground truth.
        points: which landmarks to average over (default all; e.g. ``slice(17, 68)``
            without the jaw, ``slice(0, 17)`` the jaw only).

    Returns:
        ``mean ||pred - target|| / ||target[36] - target[45]||`` (outer eye corners).

    Raises:
        ValueError: wrong shapes, or coincident outer eye corners in ``target``.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != (NUM_LANDMARKS, 2) or target.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"pred and target must be (68, 2), got {pred.shape} and {target.shape}")
    iod = float(np.linalg.norm(target[36] - target[45]))
    if iod <= 0:
        raise ValueError("target has coincident outer eye corners (36, 45)")
    sel = slice(None) if points is None else points
    err = np.linalg.norm(pred - target, axis=1)[sel]
    return float(err.mean() / iod)
