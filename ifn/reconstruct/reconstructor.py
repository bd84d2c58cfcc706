"""A photo → editable 3-D faces, in memory: detection, crops, the network, refinement, layers.

:class:`Reconstructor` is the Python API behind ``ifn reconstruct``::

    from ifn.data.photos import read_image
    from ifn.reconstruct import Reconstructor

    reconstructor = Reconstructor.from_checkpoint("runs/quickstart/checkpoints/last.ckpt", refine_steps=50)
    for face in reconstructor(read_image("photo.jpg")):
        print(face.face_index, face.photometric_error, face.iou)
        vertices, colours = reconstructor.mesh(face, "albedo")   # (V, 3) mm, (V, 3) RGB

Refinement (``refine_steps > 0``) fits the *whole* face model, not only the modes the
network regresses: a network trained on the first K modes of each group gives the start
(the other modes at 0, which is exactly the same face), and analysis by synthesis may then
use every mode the model has (``refine_modes``). A reconstruction's θ is in the layout of
the renderer that made it (:attr:`FaceReconstruction.layout`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ifn.data.batch import to_network_input
from ifn.data.landmarks import Detection, Face, LandmarkDetector, make_detector
from ifn.data.photos import FaceCrop, crop_face, read_image
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.models.metrics import mask_iou_per_image, photometric_error_per_image
from ifn.params import FaceParams, ParamLayout
from ifn.reconstruct.editing import replace_group
from ifn.reconstruct.refine import RefineSettings, refine
from ifn.render.renderer import FaceRenderer
from ifn.render.shading import sh_irradiance, vertex_normals

__all__ = ["FaceReconstruction", "Reconstructor", "pad_theta"]

#: Mesh kinds of :meth:`Reconstructor.mesh`.
MESH_KINDS = ("albedo", "shaded", "neutral")


@dataclass
class FaceReconstruction:
    """One face of one photo, reconstructed.

    Attributes:
        face_index: the face's number in its photo (largest first).
        face: the detection (68 landmarks in photo pixels).
        crop: the network's input crop and its transform to the photo.
        theta: ``(m,)`` θ in :attr:`layout`.
        layout: θ's group sizes.
        image, albedo, shading: ``(3, S, S)`` the render and its layers, crop pixels.
        mask: ``(1, S, S)`` where the render draws the face.
        landmarks: ``(68, 2)`` the render's projected landmarks, crop pixels.
        photometric_error: RMSE (0–255) of the render against the crop inside the crop's mask.
        iou: IoU (%) of the render's mask with the crop's mask.
        network: before refinement (``None`` without it): ``{"theta", "photometric_error",
            "iou"}`` of the network's own estimate, and the refinement's ``"best_step"``.
    """

    face_index: int
    face: Face
    crop: FaceCrop
    theta: Tensor
    layout: ParamLayout
    image: Tensor
    albedo: Tensor
    shading: Tensor
    mask: Tensor
    landmarks: Tensor
    photometric_error: float
    iou: float
    network: dict[str, Any] | None = None

    @property
    def params(self) -> FaceParams:
        return self.layout.split(self.theta[None])


def pad_theta(theta: Tensor, source: ParamLayout, target: ParamLayout) -> Tensor:
    """θ of a truncated model in a layout with at least as many modes per group (zeros after).

    The first K modes of a group mean the same in both layouts (truncation keeps the first
    modes), so the padded θ is exactly the same face.

    Example:
        >>> a = ParamLayout(n_shape=1, n_expression=1, n_reflectance=1)
        >>> b = ParamLayout(n_shape=2, n_expression=1, n_reflectance=1)
        >>> pad_theta(torch.arange(a.size, dtype=torch.float32)[None], a, b)[0, :6].tolist()
        [0.0, 1.0, 2.0, 3.0, 0.0, 4.0]
    """
    parts = source.split(theta)

    def pad(x: Tensor, n: int) -> Tensor:
        if n < x.shape[1]:
            raise ValueError(f"cannot pad {x.shape[1]} modes into {n}")
        return torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[1])], dim=1)

    return target.join(
        FaceParams(
            parts.rotation,
            pad(parts.shape, target.n_shape),
            pad(parts.expression, target.n_expression),
            pad(parts.reflectance, target.n_reflectance),
            parts.illumination,
        )
    )


class Reconstructor:
    """Photos → :class:`FaceReconstruction` lists (see the module docstring).

    Args:
        network: a trained :class:`~ifn.models.inverse_face_net.InverseFaceNet` (its renderer
            sets the crop size and framing).
        detector: a landmark detector or its name (:func:`~ifn.data.landmarks.make_detector`).
        refine_steps: analysis-by-synthesis steps per face (0: the network alone).
        refine_settings: the refinement's weights and step sizes (``steps`` is set from
            ``refine_steps``).
        refine_modes: ``"all"`` (refine every mode of the face model) or ``"network"``
            (only the modes the network regresses).
        batch_size: faces per forward pass and per refinement batch.
    """

    def __init__(
        self,
        network: InverseFaceNet,
        detector: LandmarkDetector | str = "mediapipe",
        *,
        refine_steps: int = 0,
        refine_settings: RefineSettings | None = None,
        refine_modes: str = "all",
        batch_size: int = 16,
    ) -> None:
        if refine_modes not in ("all", "network"):
            raise ValueError(f"refine_modes must be 'all' or 'network', got {refine_modes!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network.eval()
        self.detector = make_detector(detector) if isinstance(detector, str) else detector
        base = refine_settings or RefineSettings()
        self.refine_settings = RefineSettings(**{**base.__dict__, "steps": int(refine_steps)})
        self.refine_steps = int(refine_steps)
        self.batch_size = int(batch_size)
        self.network_renderer: FaceRenderer = network.renderer
        if refine_steps > 0 and refine_modes == "all":
            settings = self.network_renderer.settings.replace(n_shape=None, n_expression=None, n_reflectance=None)
            self.renderer = settings.build_renderer().to(self.network_renderer.device)
        else:
            self.renderer = self.network_renderer

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        face_model: str | None = None,
        device: str | torch.device = "cpu",
        backend: str | None = None,
        **kwargs: Any,
    ) -> Reconstructor:
        """Load a checkpoint written by ``ifn fit`` (and its face model) and wrap it.

        Args:
            path: the checkpoint.
            face_model: where its face model is now, if it moved.
            device: where to run.
            backend: rasterizer (``"torch"``, ``"nvdiffrast"``; default: the recorded one).
            **kwargs: :class:`Reconstructor` options.
        """
        overrides = {"backend": backend} if backend else {}
        network = InverseFaceNet.from_checkpoint(path, face_model=face_model, **overrides).to(device)
        return cls(network, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def layout(self) -> ParamLayout:
        """The layout of the reconstructions' θ."""
        return self.renderer.layout

    @property
    def image_size(self) -> int:
        return self.network_renderer.image_size

    @property
    def device(self) -> torch.device:
        return self.renderer.device

    # ------------------------------------------------------------------ pipeline
    def detect(self, image: np.ndarray) -> Detection:
        """Faces of an ``(H, W, 3)`` uint8 RGB image, largest first (the detector's filters applied)."""
        return self.detector(image)

    def crops(self, image: np.ndarray, faces: list[Face]) -> list[FaceCrop]:
        """The network's input crop of each face (the renderer's framing)."""
        return [crop_face(image, f.landmarks, self.image_size, self.network_renderer.margin) for f in faces]

    @torch.no_grad()
    def estimate(self, crops: list[FaceCrop]) -> Tensor:
        """The network's θ ``(N, m)`` in :attr:`layout` for a list of crops (batched)."""
        parts = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            image = torch.stack([c.image for c in chunk]).to(self.device)
            theta = self.network(to_network_input(image)).float()
            parts.append(pad_theta(theta, self.network_renderer.layout, self.layout))
        return torch.cat(parts) if parts else torch.zeros(0, self.layout.size, device=self.device)

    def reconstruct_crops(
        self,
        crops: list[FaceCrop],
        faces: list[Face],
        face_indices: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[FaceReconstruction]:
        """Network (+ refinement) and render layers for crops of detected faces, batched.

        Args:
            crops: the crops, from :meth:`crops` (of one photo or of several).
            faces: the detections they come from (same order).
            face_indices: each face's number in its photo (default ``0, 1, …``).
            progress: called with 1 after each refinement step of a batch.
        """
        face_indices = list(range(len(crops))) if face_indices is None else list(face_indices)
        if not len(crops) == len(faces) == len(face_indices):
            raise ValueError(f"{len(crops)} crops, {len(faces)} faces, {len(face_indices)} face indices")
        theta = self.estimate(crops)
        out: list[FaceReconstruction] = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            image = torch.stack([c.image for c in chunk]).to(self.device)
            mask = torch.stack([c.mask for c in chunk]).to(self.device)
            start_theta = theta[start : start + len(chunk)]
            network: list[dict[str, Any] | None] = [None] * len(chunk)
            final = start_theta
            if self.refine_steps > 0:
                landmarks = torch.stack([c.landmarks for c in chunk]).to(self.device)
                result = refine(self.renderer, start_theta, image, mask, landmarks, self.refine_settings, progress)
                final = result.theta
                network = [
                    {
                        "theta": start_theta[i].cpu(),
                        "photometric_error": float(result.initial_photometric[i]),
                        "iou": float(result.initial_iou[i]),
                        "best_step": int(result.best_step[i]),
                    }
                    for i in range(len(chunk))
                ]
            with torch.no_grad():
                layers = self.renderer.layers(final)
                # The landmarks need only pose and projection, not a second rasterization.
                _, landmarks_out = self.renderer.project(self.renderer.pose(self.layout.split(final)))
                photometric, _ = photometric_error_per_image(layers.image, image, mask)
                iou, _ = mask_iou_per_image(layers.mask, mask)
            for i, crop in enumerate(chunk):
                out.append(
                    FaceReconstruction(
                        face_index=face_indices[start + i],
                        face=faces[start + i],
                        crop=crop,
                        theta=final[i].detach().cpu(),
                        layout=self.layout,
                        image=layers.image[i].cpu(),
                        albedo=layers.albedo[i].cpu(),
                        shading=layers.shading[i].cpu(),
                        mask=layers.mask[i].cpu(),
                        landmarks=landmarks_out[i].cpu(),
                        photometric_error=float(photometric[i]),
                        iou=float(iou[i]),
                        network=network[i],
                    )
                )
        return out

    def __call__(self, image: np.ndarray | str | os.PathLike[str]) -> list[FaceReconstruction]:
        """Every face of one photo (an ``(H, W, 3)`` uint8 RGB array or an image file).

        Returns:
            One :class:`FaceReconstruction` per detected face, largest first; ``[]`` when
            there is none.
        """
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        faces = self.detect(image).faces
        if not faces:
            return []
        return self.reconstruct_crops(self.crops(image, faces), faces)

    # ------------------------------------------------------------------ editing
    @torch.no_grad()
    def render_edit(self, face: FaceReconstruction, group: str, values: Tensor) -> tuple[Tensor, Tensor]:
        """The face re-rendered with one θ group replaced (e.g. ``"illumination"`` by a light).

        Returns:
            ``(3, S, S)`` image and ``(1, S, S)`` mask, crop pixels.
        """
        theta = replace_group(face.theta[None].to(self.device), self.layout, group, values.to(self.device))
        out = self.renderer(theta)
        return out.image[0].cpu(), out.mask[0].cpu()

    @torch.no_grad()
    def mesh(self, face: FaceReconstruction, kind: str = "albedo") -> tuple[Tensor, Tensor]:
        """Vertices ``(V, 3)`` in millimetres and colours ``(V, 3)`` in [0, 1] of one face.

        Args:
            kind: ``"albedo"`` — posed (rotated about the face centre, camera axes), albedo
                colours; ``"shaded"`` — posed, albedo × the estimated light's irradiance;
                ``"neutral"`` — the identity alone (expression 0, unrotated, model space),
                albedo colours.
        """
        if kind not in MESH_KINDS:
            raise ValueError(f"mesh kind must be one of {MESH_KINDS}, got {kind!r}")
        params = self.layout.split(face.theta[None].to(self.device))
        model = self.renderer.face_model
        albedo = model.reflectance(params.reflectance)
        if kind == "neutral":
            vertices = model.geometry(params.shape, torch.zeros_like(params.expression))
            return vertices[0].cpu(), albedo[0].clamp(0, 1).cpu()
        vertices = self.renderer.pose(params)
        if kind == "albedo":
            return vertices[0].cpu(), albedo[0].clamp(0, 1).cpu()
        normals = vertex_normals(vertices, model.triangles)
        colours = albedo * sh_irradiance(normals, params.illumination)
        return vertices[0].cpu(), colours[0].clamp(0, 1).cpu()
