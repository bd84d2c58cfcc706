"""Fixtures for the real-photo pipeline: the shared face photos, a synthetic 68-point face and
a stub detector that counts its calls (so cache tests need no real detector)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ifn.data.landmarks import Face, LandmarkDetector, landmark_box

FACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """``../shared/data/faces`` beside the repository (tests skip without it)."""
    if not FACES.is_dir():
        pytest.skip(f"face photos not found at {FACES}")
    return FACES.resolve()


def template_landmarks(cx: float = 0.0, cy: float = 0.0, width: float = 2.0) -> np.ndarray:
    """A plausible frontal 68-point iBUG face, centred at (cx, cy), jaw ``width`` wide (+y down)."""
    pts: list[tuple[float, float]] = []
    for i in range(17):  # jaw: from the image-left temple down to the chin and up again
        t = math.pi * i / 16.0
        pts.append((-math.cos(t), -0.1 + 1.1 * math.sin(t)))
    for i in range(10):  # brows
        x = -0.8 + 0.14 * i + (0.34 if i >= 5 else 0.0)
        pts.append((x, -0.55 - (0.08 if i in (2, 7) else 0.0)))
    for i in range(4):  # nose bridge
        pts.append((0.0, -0.35 + 0.15 * i))
    for i in range(5):  # nostrils
        pts.append((-0.2 + 0.1 * i, 0.3))
    for ex in (-0.4, 0.4):  # eyes
        for dx, dy in ((-0.18, 0), (-0.08, -0.06), (0.08, -0.06), (0.18, 0), (0.08, 0.06), (-0.08, 0.06)):
            pts.append((ex + dx, -0.3 + dy))
    for dx, dy in (
        (-0.4, 0.6),
        (-0.25, 0.52),
        (-0.1, 0.5),
        (0, 0.52),
        (0.1, 0.5),
        (0.25, 0.52),
        (0.4, 0.6),
        (0.25, 0.72),
        (0.1, 0.76),
        (0, 0.76),
        (-0.1, 0.76),
        (-0.25, 0.72),
    ):  # outer lips
        pts.append((dx, dy))
    for dx, dy in (
        (-0.3, 0.6),
        (-0.1, 0.56),
        (0, 0.56),
        (0.1, 0.56),
        (0.3, 0.6),
        (0.1, 0.68),
        (0, 0.68),
        (-0.1, 0.68),
    ):  # inner lips (open mouth)
        pts.append((dx, dy))
    assert len(pts) == 68
    return np.array(pts, dtype=np.float64) * (width / 2.0) + np.array([cx, cy])


class StubDetector(LandmarkDetector):
    """Finds template faces in the middle of any image (none in a flat image).

    By default ``faces_per_image`` faces, each smaller than the one before; with ``sizes``,
    one centred face per size (the longer side of its landmark box, in pixels), returned in
    that order, so a test knows the sizes the selection sorts and thresholds.
    """

    name = "stub"

    def __init__(self, faces_per_image: int = 1, sizes: Sequence[float] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.faces_per_image = faces_per_image
        self.sizes = tuple(float(v) for v in sizes) if sizes is not None else None
        self.seen_shapes: list[tuple[int, ...]] = []

    def options(self) -> dict[str, object]:
        opts: dict[str, object] = {"faces_per_image": self.faces_per_image}
        if self.sizes is not None:
            opts["sizes"] = list(self.sizes)
        return opts

    def _detect(self, image: np.ndarray | None, path: Path | None) -> list[Face]:
        assert image is not None
        self.seen_shapes.append(image.shape)
        if image.std() == 0:
            return []
        h, w = image.shape[:2]
        if self.sizes is not None:  # the template's jaw width is the longer side of its box
            return [
                Face(lm, landmark_box(lm), 0.9, "stub")
                for lm in (template_landmarks(w / 2, h / 2, v) for v in self.sizes)
            ]
        faces = []
        for k in range(self.faces_per_image):
            size = 0.5 * min(h, w) / (k + 1)
            lm = template_landmarks(w / 2 + k * 0.1 * w, h / 2, size)
            faces.append(Face(lm, landmark_box(lm), 0.9, "stub"))
        return faces


@pytest.fixture()
def stub_detector() -> StubDetector:
    return StubDetector()


@pytest.fixture()
def stub_cls() -> type[StubDetector]:
    return StubDetector


@pytest.fixture()
def template() -> object:
    return template_landmarks
