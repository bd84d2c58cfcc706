"""MediaPipe FaceMesh → 68 iBUG / Multi-PIE points: the default, fully offline detector.

The models ship inside the ``mediapipe`` wheel; ``mediapipe`` (and OpenCV, for the crop
fallback) are imported only when a detector first runs, not when this module is imported.

Convention:
    FaceMesh returns (x / W, y / H), normalised by the image size; multiplied by (W, H)
    these are continuous pixel coordinates (pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ifn.data.landmarks.base import Face, LandmarkDetector, landmark_box

__all__ = ["MEDIAPIPE_IBUG_INDICES", "MediapipeLandmarks", "mediapipe_to_ibug68"]

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
    (:data:`MEDIAPIPE_IBUG_INDICES`). The jaw does not: FaceMesh's face oval runs inside
    the iBUG jaw contour, so its usual vertices sit off the annotated jaw. Each jaw point is
    instead placed at a fixed arc-length position along the lower face oval (temple → chin,
    per side), then pushed outwards (away from the nose tip) by ``_JAW_OUTSET`` times the
    outer-eye-corner distance. The 9 positions (mirror-symmetric) and the offset were fitted
    to the 68-point annotations of ``data/faces/annotated68``; the tests check the error
    against them.

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
    ``crop_fallback``, the full-range face detector (``model_selection=1``, the model for
    faces far from the camera) and, for each of its boxes that no FaceMesh face covers,
    FaceMesh again on a square crop of ``± crop_scale ×`` the box size around its centre:
    FaceMesh's own detector is short-range and misses faces that are small in the photo.

    Args:
        max_faces: FaceMesh ``max_num_faces``.
        min_detection_confidence: for FaceMesh and the face detector.
        refine_landmarks: FaceMesh's attention model (more accurate eyes and lips, a little
            slower).
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
        """The FaceMesh settings and the jaw mapping (part of the cache key)."""
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
            os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logs every graph start
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
        """Close the MediaPipe graphs; they are rebuilt on the next detection."""
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
            faces.append(Face(lm, landmark_box(lm), math.nan, "facemesh"))
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
                lm_box = landmark_box(lm)
                if any(_box_iou(lm_box, f.box) > 0.3 for f in faces):
                    continue
                faces.append(Face(lm, lm_box, score, "facemesh-crop"))
        return faces
