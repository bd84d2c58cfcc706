"""Landmark detectors: a photograph → 68 iBUG / Multi-PIE points per face (SPEC §6, §8).

Every detector answers the same question — "where are the faces of this image, as 68
points each?" — through :meth:`LandmarkDetector.__call__`, which returns a
:class:`Detection` (a list of :class:`Face`, plus why there is none, plus how many faces the
``largest_only`` / ``min_face_size`` options dropped).

Sources:

* :class:`AnnotationLandmarks` — ``.pts`` / ``.ljson`` files beside the image (ground truth).
* :class:`MediapipeLandmarks` — the default: MediaPipe FaceMesh (legacy
  ``mp.solutions.face_mesh``, fully offline) with a 468 → 68 mapping whose jaw is re-fitted
  to the iBUG jaw contour, and a full-range face-detector fallback for small faces.
* :class:`FaceAlignmentLandmarks` — FAN 2D from ``face-alignment`` (the design card's
  choice); needs its weights (downloaded into ``torch.hub.get_dir()/checkpoints`` when
  online, or local paths).

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

import hashlib
import json
import math
import os
import urllib.error
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ifn.facemodel.regions import NUM_LANDMARKS

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
    "landmark_nme",
    "make_detector",
    "mediapipe_to_ibug68",
    "read_ljson",
    "read_pts",
]

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
        extent = self.landmarks.max(axis=0) - self.landmarks.min(axis=0)
        return float(extent.max())


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
# Annotation files
# --------------------------------------------------------------------------------------


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

    Returns:
        ``(N, 2)`` float64 (x, y).

    Raises:
        ValueError: malformed file (names the file).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    candidates: list[Any] = []
    if isinstance(data.get("landmarks"), dict):  # version 1
        candidates.append(data["landmarks"].get("points"))
    for group in (data.get("groups") or {}).values():  # versions 2 and 3
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


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------


def _landmark_box(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)]).astype(np.float64)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")


class LandmarkDetector(ABC):
    """Base class: subclasses implement :meth:`_detect` on an image of at most ``max_side``.

    Args:
        largest_only: keep only the largest face of each image.
        min_face_size: drop faces whose landmarks' bounding box is smaller (longer side,
            in pixels of the full image) and count them.
        max_side: images with a longer side above this are downscaled (area filter) for
            detection; the landmarks are mapped back to full-resolution coordinates.

    Example:
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
        self.calls = 0  # number of images detected (cache tests count it)

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
            image: ``(H, W, 3)`` uint8 RGB (may be ``None`` for :class:`AnnotationLandmarks`).
            path: the image's file (needed by :class:`AnnotationLandmarks`).
        """
        return self.select(self.detect_raw(image, path))

    def detect_raw(self, image: np.ndarray | None, path: str | os.PathLike[str] | None = None) -> Detection:
        """All faces, largest first, without the ``largest_only`` / ``min_face_size`` filters."""
        path = Path(path) if path is not None else None
        self.calls += 1
        factor_xy: np.ndarray | None = None
        small = image
        if self.needs_pixels:
            if image is None:
                raise ValueError(f"{type(self).__name__} needs the image pixels")
            _check_image(image)
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

    def select(self, detection: Detection) -> Detection:
        """Apply ``min_face_size`` then ``largest_only`` to a :meth:`detect_raw` result."""
        faces = sorted(detection.faces, key=lambda f: -f.size)
        kept = [f for f in faces if f.size >= self.min_face_size]
        dropped_small = len(faces) - len(kept)
        dropped_extra = 0
        if self.largest_only and len(kept) > 1:
            dropped_extra = len(kept) - 1
            kept = kept[:1]
        reason = detection.reason
        if not kept and reason is None:
            reason = f"all {dropped_small} face(s) smaller than min_face_size={self.min_face_size:g} px"
        return Detection(faces=kept, reason=reason, dropped_small=dropped_small, dropped_extra=dropped_extra)

    def close(self) -> None:
        """Release native resources (graphs, networks); the detector rebuilds them on use."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k not in ("name", "version"))
        return f"{type(self).__name__}({opts}, largest_only={self.largest_only}, min_face_size={self.min_face_size})"


# --------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------


class AnnotationLandmarks(LandmarkDetector):
    """Ground-truth landmarks from ``<stem>.pts`` or ``<stem>.ljson`` beside the image.

    A file with a number of points other than 68 is not a face annotation (e.g. a 19-point
    tongue contour): the image then has no face, with that as the reason.
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
        return Detection(faces=[Face(points, _landmark_box(points), math.nan, source)])


# --------------------------------------------------------------------------------------
# MediaPipe FaceMesh
# --------------------------------------------------------------------------------------

#: The usual FaceMesh vertex for each iBUG point (jaw entries are *not* used: see below).
MEDIAPIPE_IBUG_INDICES: tuple[int, ...] = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows 17-26
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose 27-35
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes 36-47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
)  # fmt: skip

#: FaceMesh face-oval vertices from the image-left temple down to the chin (152) ...
_OVAL_LEFT = (162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152)
#: ... and its mirror from the image-right temple down to the chin.
_OVAL_RIGHT = (389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152)
#: Arc-length position (0 = temple, 1 = chin) of jaw points 0..8 on the left oval (8..16 mirrored).
_JAW_ARC = (0.08, 0.20, 0.33, 0.45, 0.56, 0.675, 0.78, 0.885, 1.0)
#: Outward shift of the jaw from the oval, in units of the FaceMesh outer-eye-corner distance.
_JAW_OUTSET = 0.05
_NOSE_TIP = 4


def _polyline_at(poly: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Points at normalised arc lengths ``u`` (K,) along a ``(P, 2)`` polyline."""
    seg = np.diff(poly, axis=0)
    length = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(length)])
    s = np.clip(u, 0.0, 1.0) * cum[-1]
    k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    t = (s - cum[k]) / np.maximum(length[k], 1e-12)
    return poly[k] + t[:, None] * seg[k]


def mediapipe_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """Map FaceMesh landmarks to the 68 iBUG / Multi-PIE points.

    Brows, nose, eyes and lips take the usual FaceMesh vertices
    (:data:`MEDIAPIPE_IBUG_INDICES`). The jaw does not: FaceMesh's face oval is not the
    iBUG jaw contour (the usual vertices give ~16 % NME on the jaw). Each jaw point is
    instead placed at a fixed arc-length position along the lower face oval (temple → chin,
    per side), then pushed outwards (away from the nose tip) by 5 % of the outer-eye-corner
    distance. The 9 positions (mirror-symmetric) and the offset minimise the error against
    the 68-point annotations of ``data/faces/annotated68`` (4 faces); see the tests for the
    measured errors.

    Args:
        mesh: ``(N >= 468, 2)`` FaceMesh landmarks in pixels (x, y).

    Returns:
        ``(68, 2)`` float64.
    """
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.ndim != 2 or mesh.shape[0] < 468 or mesh.shape[1] < 2:
        raise ValueError(f"mesh must have shape (N>=468, 2), got {mesh.shape}")
    mesh = mesh[:, :2]
    out = mesh[list(MEDIAPIPE_IBUG_INDICES)].copy()
    arc = np.asarray(_JAW_ARC)
    eps = 0.01
    eye_dist = np.linalg.norm(mesh[33] - mesh[263])
    for oval, jaw_idx in ((_OVAL_LEFT, np.arange(0, 9)), (_OVAL_RIGHT, np.arange(16, 7, -1))):
        poly = mesh[list(oval)]
        pts = _polyline_at(poly, arc)
        tangent = _polyline_at(poly, arc + eps) - _polyline_at(poly, arc - eps)
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        sign = np.sign(((pts - mesh[_NOSE_TIP]) * normal).sum(axis=1))
        normal *= np.where(sign == 0, 1.0, sign)[:, None]
        out[jaw_idx] = pts + normal * (_JAW_OUTSET * eye_dist)
    return out


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


class MediapipeLandmarks(LandmarkDetector):
    """MediaPipe FaceMesh (legacy ``mp.solutions``, offline) mapped to 68 iBUG points.

    Stages: (1) FaceMesh on the whole image, up to ``max_faces`` faces; (2) if
    ``crop_fallback``, the full-range face detector (``model_selection=1``, faces up to ~5 m)
    and, for each of its boxes that no FaceMesh face covers, FaceMesh again on a square
    crop of ``± crop_scale ×`` the box size around its centre (small faces that the
    short-range detector inside FaceMesh misses, e.g. a ~90 px face in a 800 px photo).

    Args:
        max_faces: FaceMesh ``max_num_faces``.
        min_detection_confidence: for FaceMesh and the face detector.
        refine_landmarks: FaceMesh's attention model (better eyes and lips: 5.5 % vs 7.3 %
            NME without the jaw on annotated68; slightly slower).
        crop_fallback: run stage (2).
        crop_scale: half-size of the fallback crop in units of the detector box size.
        largest_only, min_face_size, max_side: see :class:`LandmarkDetector`.
    """

    name = "mediapipe"
    version = 1

    def __init__(
        self,
        *,
        max_faces: int = 8,
        min_detection_confidence: float = 0.5,
        refine_landmarks: bool = True,
        crop_fallback: bool = True,
        crop_scale: float = 1.5,
        largest_only: bool = False,
        min_face_size: float = 0.0,
        max_side: int = 2048,
    ) -> None:
        super().__init__(largest_only=largest_only, min_face_size=min_face_size, max_side=max_side)
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        self.max_faces = int(max_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self.refine_landmarks = bool(refine_landmarks)
        self.crop_fallback = bool(crop_fallback)
        self.crop_scale = float(crop_scale)
        self._graphs: dict[str, Any] = {}

    def options(self) -> dict[str, Any]:
        return {
            "max_faces": self.max_faces,
            "min_detection_confidence": self.min_detection_confidence,
            "refine_landmarks": self.refine_landmarks,
            "crop_fallback": self.crop_fallback,
            "crop_scale": self.crop_scale,
            "jaw": [list(_JAW_ARC), _JAW_OUTSET],
        }

    def _graph(self, kind: str) -> Any:
        if kind not in self._graphs:
            os.environ.setdefault("GLOG_minloglevel", "2")
            import mediapipe as mp

            if kind == "mesh":
                graph = mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=self.max_faces,
                    refine_landmarks=self.refine_landmarks,
                    min_detection_confidence=self.min_detection_confidence,
                )
            elif kind == "mesh1":
                graph = mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=1,
                    refine_landmarks=self.refine_landmarks,
                    min_detection_confidence=self.min_detection_confidence,
                )
            else:
                graph = mp.solutions.face_detection.FaceDetection(
                    model_selection=1, min_detection_confidence=self.min_detection_confidence
                )
            self._graphs[kind] = graph
        return self._graphs[kind]

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs = {}

    def __getstate__(self) -> dict[str, Any]:  # graphs are native objects: rebuild after unpickling
        state = self.__dict__.copy()
        state["_graphs"] = {}
        return state

    def _mesh_faces(self, image: np.ndarray, graph: str) -> list[np.ndarray]:
        height, width = image.shape[:2]
        result = self._graph(graph).process(np.ascontiguousarray(image))
        meshes = []
        for face in result.multi_face_landmarks or []:
            meshes.append(np.array([(p.x * width, p.y * height) for p in face.landmark], dtype=np.float64))
        return meshes

    def _detector_boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        height, width = image.shape[:2]
        result = self._graph("detector").process(np.ascontiguousarray(image))
        boxes = []
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            x0, y0 = rel.xmin * width, rel.ymin * height
            box = np.array([x0, y0, x0 + rel.width * width, y0 + rel.height * height], dtype=np.float64)
            boxes.append((box, float(det.score[0]) if det.score else math.nan))
        return boxes

    def _crop_mesh(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """FaceMesh on a square crop around ``box`` (zero-padded outside the image)."""
        import cv2

        height, width = image.shape[:2]
        centre = (box[:2] + box[2:]) / 2.0
        half = self.crop_scale * float(max(box[2] - box[0], box[3] - box[1]))
        x0, y0 = math.floor(centre[0] - half), math.floor(centre[1] - half)
        side = max(8, math.ceil(2 * half))
        crop = np.zeros((side, side, 3), dtype=np.uint8)
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(width, x0 + side), min(height, y0 + side)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        factor = 1.0
        if side < 256:  # FaceMesh's detector sees faces better when they are not tiny
            factor = 256 / side
            crop = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_CUBIC)
        meshes = self._mesh_faces(crop, "mesh1")
        if not meshes:
            return None
        return meshes[0] / factor + np.array([x0, y0], dtype=np.float64)

    def _detect(self, image: np.ndarray | None, path: Path | None) -> list[Face]:
        assert image is not None
        faces = []
        for mesh in self._mesh_faces(image, "mesh"):
            lm = mediapipe_to_ibug68(mesh)
            faces.append(Face(lm, _landmark_box(lm), math.nan, "facemesh"))
        if self.crop_fallback:
            for box, score in self._detector_boxes(image):
                centre = (box[:2] + box[2:]) / 2.0
                match = [i for i, f in enumerate(faces) if _inside(centre, f.box) or _box_iou(box, f.box) > 0.3]
                if match:  # attach the detector's confidence to the FaceMesh face
                    i = match[0]
                    if math.isnan(faces[i].score):
                        faces[i] = replace(faces[i], score=score)
                    continue
                mesh = self._crop_mesh(image, box)
                if mesh is None:
                    continue
                lm = mediapipe_to_ibug68(mesh)
                lm_box = _landmark_box(lm)
                if any(_box_iou(lm_box, f.box) > 0.3 for f in faces):
                    continue
                faces.append(Face(lm, lm_box, score, "facemesh-crop"))
        return faces


# --------------------------------------------------------------------------------------
# face-alignment (FAN)
# --------------------------------------------------------------------------------------

_FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/" + _FAN_FILE
_SFD_FILE = "s3fd-619a316812.pth"
_SFD_URL = "https://www.adrianbulat.com/downloads/python-fan/" + _SFD_FILE


def _hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, dest: Path) -> None:
    """Download into the hub cache (module-level so tests can simulate being offline)."""
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), progress=False)


@dataclass(frozen=True)
class _Missing:
    message: str


class FaceAlignmentLandmarks(LandmarkDetector):
    """FAN 2D landmarks from the ``face-alignment`` package (68 iBUG points, native).

    Weights: ``fan_weights`` / ``detector_weights`` when given, else the library's own
    cache ``torch.hub.get_dir()/checkpoints`` (``2DFAN4-11f355bf06.pth.tar`` and, for
    ``face_detector="sfd"``, ``s3fd-619a316812.pth``), downloaded there when ``download``
    and online. Offline with a file missing, construction raises
    :class:`MissingWeightsError` naming every missing file and how to provide it.

    Face boxes (FAN needs one per face):

    * ``"mediapipe"`` (default, offline): the bounding box of the :class:`MediapipeLandmarks`
      68 points — the same normalisation FAN was trained with (landmark box, centre moved
      up by 0.12 of its height, scale = (w + h) / 195), and its multi-face/small-face logic;
    * ``"sfd"``: the library's S3FD detector (needs its weights);
    * a callable ``image -> list of (x0, y0, x1, y1[, score])``.

    Args:
        fan_weights: path to ``2DFAN4-11f355bf06.pth.tar`` (a state dict).
        face_detector: see above.
        detector_weights: path to ``s3fd-619a316812.pth`` for ``"sfd"``.
        device: torch device string.
        flip_input: the library's test-time flip augmentation (two forward passes).
        download: try to download missing weights into the hub cache.
        largest_only, min_face_size, max_side: see :class:`LandmarkDetector`.
    """

    name = "face_alignment"
    version = 1

    def __init__(
        self,
        *,
        fan_weights: str | os.PathLike[str] | None = None,
        face_detector: str | Callable[[np.ndarray], Sequence[Sequence[float]]] = "mediapipe",
        detector_weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        flip_input: bool = True,
        download: bool = True,
        largest_only: bool = False,
        min_face_size: float = 0.0,
        max_side: int = 2048,
    ) -> None:
        super().__init__(largest_only=largest_only, min_face_size=min_face_size, max_side=max_side)
        if isinstance(face_detector, str) and face_detector not in ("mediapipe", "sfd"):
            raise ValueError(f"face_detector must be 'mediapipe', 'sfd' or a callable, got {face_detector!r}")
        self.face_detector = face_detector
        self.device = device
        self.flip_input = bool(flip_input)
        self.fan_path = self._resolve(fan_weights, _FAN_FILE, _FAN_URL, "fan_weights", download)
        self.sfd_path = None
        if face_detector == "sfd":
            self.sfd_path = self._resolve(detector_weights, _SFD_FILE, _SFD_URL, "detector_weights", download)
        missing = [p for p in (self.fan_path, self.sfd_path) if isinstance(p, _Missing)]
        if missing:
            lines = "\n".join(f"  - {m.message}" for m in missing)
            raise MissingWeightsError(
                f"face-alignment weights missing:\n{lines}\n"
                f"Provide them with FaceAlignmentLandmarks(fan_weights=..., detector_weights=...), or copy the "
                f"files into {_hub_checkpoints()} (torch.hub.get_dir()/checkpoints), or run once online; "
                f"the offline default detector is 'mediapipe'."
            )
        self._fa: Any = None
        self._fan_digest: str | None = None
        self._boxes_from: MediapipeLandmarks | None = (
            MediapipeLandmarks(max_side=max_side) if face_detector == "mediapipe" else None
        )

    @staticmethod
    def _resolve(given: str | os.PathLike[str] | None, file: str, url: str, arg: str, download: bool) -> Any:
        if given is not None:
            path = Path(given).expanduser()
            if path.is_file():
                return path
            return _Missing(f"{file}: {arg}={str(given)!r} does not exist")
        path = _hub_checkpoints() / file
        if path.is_file():
            return path
        if download:
            try:
                _download(url, path)
                return path
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                return _Missing(f"{file}: not in {path.parent} and the download from {url} failed ({exc})")
        return _Missing(f"{file}: not in {path.parent} (download disabled)")

    def options(self) -> dict[str, Any]:
        detector = self.face_detector if isinstance(self.face_detector, str) else "callable"
        if self._fan_digest is None:  # identifies the weights, not just their file name
            self._fan_digest = hashlib.sha256(self.fan_path.read_bytes()).hexdigest()[:16]
        opts: dict[str, Any] = {
            "face_detector": detector,
            "flip_input": self.flip_input,
            "fan": f"{self.fan_path.name}:{self._fan_digest}",
        }
        if self._boxes_from is not None:
            opts["mediapipe"] = self._boxes_from.options()
        return opts

    def _model(self) -> Any:
        if self._fa is None:
            import torch
            from face_alignment import api as fa_api

            fan_path = self.fan_path

            class _FaceAlignment(fa_api.FaceAlignment):  # loads FAN from our resolved path
                def _load_native(self, network_name: str, network_size: int, device: str, dtype: Any) -> Any:
                    net = fa_api.FAN(network_size)
                    net.load_state_dict(torch.load(str(fan_path), map_location=device, weights_only=True))
                    net.to(device, dtype=dtype)
                    net.eval()
                    return net

            if self.face_detector == "sfd":
                detector, kwargs = "sfd", {"path_to_detector": str(self.sfd_path)}
            else:
                detector, kwargs = "folder", {}
            self._fa = _FaceAlignment(
                fa_api.LandmarksType.TWO_D,
                device=self.device,
                flip_input=self.flip_input,
                face_detector=detector,
                face_detector_kwargs=kwargs,
                compile=False,
            )
        return self._fa

    def close(self) -> None:
        self._fa = None
        if self._boxes_from is not None:
            self._boxes_from.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fa"] = None
        return state

    def _boxes(self, image: np.ndarray) -> list[np.ndarray]:
        if self._boxes_from is not None:
            return [np.append(f.box, f.score) for f in self._boxes_from.detect_raw(image).faces]
        if callable(self.face_detector):
            return [np.asarray(b, dtype=np.float64) for b in self.face_detector(image)]
        return [np.asarray(b, dtype=np.float64) for b in self._model().face_detector.detect_from_image(image.copy())]

    def _detect(self, image: np.ndarray | None, path: Path | None) -> Detection:
        assert image is not None
        boxes = self._boxes(image)
        if not boxes:
            return Detection(reason="no face detected")
        fa = self._model()
        landmarks, scores, _ = fa.get_landmarks_from_image(
            image, detected_faces=[b[:4] for b in boxes], return_bboxes=True, return_landmark_score=True
        )
        faces = []
        for lm, sc, box in zip(landmarks or [], scores or [], boxes):
            lm = np.asarray(lm, dtype=np.float64)[:, :2] + 0.5  # integer pixel index -> centre
            score = float(np.mean(np.asarray(sc))) if sc is not None else math.nan
            faces.append(Face(lm, np.asarray(box[:4], dtype=np.float64), score, "fan"))
        return Detection(faces=faces, reason=None if faces else "no face detected")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

_DETECTORS: dict[str, type[LandmarkDetector]] = {
    "annotation": AnnotationLandmarks,
    "mediapipe": MediapipeLandmarks,
    "face_alignment": FaceAlignmentLandmarks,
    "fan": FaceAlignmentLandmarks,
}


def make_detector(detector: str | LandmarkDetector = "mediapipe", **kwargs: Any) -> LandmarkDetector:
    """A detector by name (``"mediapipe"``, ``"annotation"``, ``"face_alignment"``/``"fan"``).

    Args:
        detector: a name, or an existing detector (returned as is; ``kwargs`` must be empty).
        **kwargs: constructor options (``largest_only``, ``min_face_size``, ...).
    """
    if isinstance(detector, LandmarkDetector):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} given with a detector instance; set them on the instance")
        return detector
    try:
        cls = _DETECTORS[detector]
    except KeyError:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(_DETECTORS)}") from None
    return cls(**kwargs)


def landmark_nme(pred: np.ndarray, target: np.ndarray, points: Sequence[int] | slice | None = None) -> float:
    """Mean point-to-point error normalised by the inter-ocular distance (300-W convention).

    Args:
        pred: ``(68, 2)`` predicted landmarks.
        target: ``(68, 2)`` ground truth.
        points: which landmarks to average over (default all; e.g. ``slice(17, 68)``
            without the jaw, ``slice(0, 17)`` the jaw only).

    Returns:
        ``mean ||pred - target|| / ||target[36] - target[45]||`` (outer eye corners).
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
