"""Landmark detectors: a photograph → 68 iBUG / Multi-PIE points per face.

Every detector answers the same question — "where are the faces of this image, as 68
points each?" — through :meth:`LandmarkDetector.__call__`, which returns a
:class:`Detection` (a list of :class:`Face`, plus why there is none, plus how many faces the
``largest_only`` / ``min_face_size`` options dropped).

Sources, one module each so that a detector's heavy dependency is imported only by it:

* :class:`AnnotationLandmarks` (``annotation``) — ``.pts`` / ``.ljson`` files beside the
  image (ground truth).
* :class:`MediapipeLandmarks` (``mediapipe``) — the default: MediaPipe FaceMesh (legacy
  ``mp.solutions.face_mesh``, fully offline) with a 468 → 68 mapping whose jaw is re-fitted
  to the iBUG jaw contour, and a full-range face-detector fallback for small faces.
* :class:`FaceAlignmentLandmarks` (``face_alignment``) — FAN 2D from ``face-alignment``;
  needs its weights (downloaded into ``torch.hub.get_dir()/checkpoints`` when online, or
  local paths).

The detector classes are imported on first use (``from ifn.data.landmarks import
MediapipeLandmarks`` or :func:`make_detector`), so importing this package loads neither
MediaPipe, OpenCV nor face-alignment.

Convention:
    Landmarks are ``(68, 2)`` float64 (x, y) in *continuous* pixel coordinates of the image
    as read by :func:`ifn.data.photos.read_image`: pixel ``(i, j)`` covers
    ``[j, j+1) × [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``. Conversions:

    ==================  ======================================================  ===========
    source              stored as                                               continuous
    ==================  ======================================================  ===========
    ``.pts``            (x, y), 1-based, integer = pixel centre                 ``v − 0.5``
    ``.ljson`` (menpo)  (y, x), 0-based, integer = pixel centre                 swap, ``+ 0.5``
    MediaPipe           (x / W, y / H), normalised by the image size            ``v · W``
    face-alignment      (x, y) truncated to the integer pixel *index*           ``v + 0.5``
    ==================  ======================================================  ===========

    Indices are 0-based iBUG / Multi-PIE (jaw 0–16 from image-left to image-right, brows
    17–26, nose 27–35, eyes 36–47, outer lips 48–59, inner lips 60–67).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ifn.data.landmarks.annotation import AnnotationLandmarks, read_ljson, read_pts
from ifn.data.landmarks.base import (
    Detection,
    Face,
    LandmarkDetector,
    MissingWeightsError,
    check_rgb_image,
    landmark_box,
    landmark_nme,
)
from ifn.facemodel.regions import NUM_LANDMARKS

if TYPE_CHECKING:
    from ifn.data.landmarks.face_alignment import FaceAlignmentLandmarks
    from ifn.data.landmarks.mediapipe import MEDIAPIPE_IBUG_INDICES, MediapipeLandmarks, mediapipe_to_ibug68

__all__ = [
    "MEDIAPIPE_IBUG_INDICES",
    "NUM_LANDMARKS",
    "AnnotationLandmarks",
    "Detection",
    "Face",
    "FaceAlignmentLandmarks",
    "LandmarkDetector",
    "MediapipeLandmarks",
    "MissingWeightsError",
    "check_rgb_image",
    "landmark_box",
    "landmark_nme",
    "make_detector",
    "mediapipe_to_ibug68",
    "read_ljson",
    "read_pts",
]

#: Names served by :func:`__getattr__`: public name → submodule that defines it.
_LAZY: dict[str, str] = {
    "MEDIAPIPE_IBUG_INDICES": "mediapipe",
    "MediapipeLandmarks": "mediapipe",
    "mediapipe_to_ibug68": "mediapipe",
    "FaceAlignmentLandmarks": "face_alignment",
}

#: Detector names accepted by :func:`make_detector`: name → (submodule, class).
_DETECTORS: dict[str, tuple[str, str]] = {
    "annotation": ("annotation", "AnnotationLandmarks"),
    "mediapipe": ("mediapipe", "MediapipeLandmarks"),
    "face_alignment": ("face_alignment", "FaceAlignmentLandmarks"),
    "fan": ("face_alignment", "FaceAlignmentLandmarks"),
}


def _from_submodule(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __getattr__(name: str) -> Any:
    """Import a detector module the first time one of its names is asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _from_submodule(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def make_detector(detector: str | LandmarkDetector = "mediapipe", **kwargs: Any) -> LandmarkDetector:
    """A detector by name (``"mediapipe"``, ``"annotation"``, ``"face_alignment"``/``"fan"``).

    Only the named detector's module is imported.

    Args:
        detector: a name, or an existing detector (returned as is; ``kwargs`` must be empty).
        **kwargs: constructor options (``largest_only``, ``min_face_size``, ...).

    Returns:
        The detector.

    Raises:
        ValueError: unknown name, or options given with an instance.

    Example:
        >>> make_detector("annotation", min_face_size=40).min_face_size
        40.0
    """
    if isinstance(detector, LandmarkDetector):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} given with a detector instance; set them on the instance")
        return detector
    try:
        module, cls_name = _DETECTORS[detector]
    except KeyError:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(_DETECTORS)}") from None
    cls: type[LandmarkDetector] = _from_submodule(module, cls_name)
    return cls(**kwargs)
