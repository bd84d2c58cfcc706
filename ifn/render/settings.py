"""``RenderSettings``: the one description of what is rendered, shared by data and model.

The face model (and how many of its modes θ uses) and the camera/raster settings decide
what θ means and what an image looks like. They are set once, in one YAML node
(``data.render``), built once into a :class:`~ifn.render.renderer.FaceRenderer`, and that
renderer is handed to everything else that renders or needs the face model (the
LightningModule, breeding, callbacks), so the two sides can never disagree.

Example:
    >>> settings = RenderSettings(face_model="procedural", n_shape=5, n_expression=5, n_reflectance=10, image_size=64)
    >>> renderer = settings.build_renderer()
    >>> renderer.layout.size, renderer.image_size
    (50, 64)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ifn.facemodel.model import FaceModel, build_face_model
from ifn.render.renderer import FaceRenderer, check_render_values

__all__ = ["RenderSettings"]


@dataclass(frozen=True)
class RenderSettings:
    """Face model and rendering settings.

    Attributes:
        face_model: ``"procedural"`` or ``"ict"`` (built in) or a native ``.npz`` face model file.
        n_shape: θs size (``None``: the paper's 128, or all the model has if fewer).
        n_expression: θe size (``None``: 64, or all).
        n_reflectance: θr size (``None``: 128, or all).
        image_size: rendered image height and width in pixels (paper: 240).
        camera_distance: camera distance from the face centre in millimetres; only the
            strength of perspective depends on it, because framing rescales the image.
        margin: pixels left free on each side when framing the landmark bounding box.
        backend: rasterizer: ``auto`` (nvdiffrast on CUDA when installed; on the CPU the
            compiled kernel chosen by ``IFN_RASTER_KERNEL``, else torch), ``cpp``, ``torch``
            or ``nvdiffrast``.
        clip_to_landmarks: draw the face region by the rule real photos are masked with (the
            polygon of the projected landmarks), the painted region only as an outer bound.

    Raises:
        ValueError: on a size, distance, margin or backend out of range.
    """

    face_model: str = "procedural"
    n_shape: int | None = None
    n_expression: int | None = None
    n_reflectance: int | None = None
    image_size: int = 240
    camera_distance: float = 600.0
    margin: float = 0.0
    backend: str = "auto"
    clip_to_landmarks: bool = True

    def __post_init__(self) -> None:
        check_render_values(self.image_size, self.camera_distance, self.margin, self.backend)
        for name in ("n_shape", "n_expression", "n_reflectance"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")

    def load_face_model(self) -> FaceModel:
        """Load the face model and keep the configured number of modes (a new model each call)."""
        return build_face_model(self.face_model, self.n_shape, self.n_expression, self.n_reflectance)

    def build_renderer(self, face_model: FaceModel | None = None) -> FaceRenderer:
        """A :class:`~ifn.render.renderer.FaceRenderer` for these settings.

        Args:
            face_model: an already loaded face model to use instead of loading ``face_model``
                (it must be the configured one; its identity is what checkpoints record).
        """
        return FaceRenderer.from_settings(self, face_model)

    def replace(self, **changes: Any) -> RenderSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
