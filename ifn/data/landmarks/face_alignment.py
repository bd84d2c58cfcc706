"""FAN 2D landmarks from the ``face-alignment`` package (68 iBUG points, native).

``face_alignment`` and ``torch`` are imported only when weights are resolved or the network
first runs, so importing this module costs nothing.

Convention:
    face-alignment returns (x, y) truncated to the integer pixel *index*; ``+ 0.5`` is that
    pixel's centre in continuous coordinates.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifn.data.landmarks.base import Detection, Face, LandmarkDetector, MissingWeightsError
from ifn.data.landmarks.mediapipe import MediapipeLandmarks

__all__ = ["FaceAlignmentLandmarks"]

_FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/" + _FAN_FILE
_SFD_FILE = "s3fd-619a316812.pth"
_SFD_URL = "https://www.adrianbulat.com/downloads/python-fan/" + _SFD_FILE


def _hub_checkpoints() -> Path:
    """Where face-alignment itself looks for (and downloads) its weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, dest: Path) -> None:
    """Download into the hub cache (module-level so tests can simulate being offline)."""
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), progress=False)


@dataclass(frozen=True)
class _Missing:
    """A weights file that could not be resolved, and why."""

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

    Raises:
        MissingWeightsError: a weights file is neither given, cached nor downloadable.
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
        """``given`` if it exists, else the hub-cache file (downloaded when allowed), else a
        :class:`_Missing` saying why: returned, not raised, so one error names every missing file."""
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
        """Box source, flip augmentation and the FAN weights' digest (part of the cache key)."""
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
        """Drop the network (and the MediaPipe box detector's graphs); rebuilt on use."""
        self._fa = None
        if self._boxes_from is not None:
            self._boxes_from.close()

    def __getstate__(self) -> dict[str, Any]:  # the network is rebuilt after unpickling
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
        for lm, sc, box in zip(landmarks or [], scores or [], boxes, strict=False):
            lm = np.asarray(lm, dtype=np.float64)[:, :2] + 0.5  # integer pixel index -> centre
            score = float(np.mean(np.asarray(sc))) if sc is not None else math.nan
            faces.append(Face(lm, np.asarray(box[:4], dtype=np.float64), score, "fan"))
        return Detection(faces=faces, reason=None if faces else "no face detected")
