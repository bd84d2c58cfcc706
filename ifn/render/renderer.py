"""FaceRenderer: θ → masked, framed face image, on any device.

The pipeline is geometry (Eq. 2) → rotation about the face centre → vertex normals →
SH Lambertian shading per vertex (Eq. 4, albedo from Eq. 3) → full-perspective
projection → landmark framing into the output size → rasterization of the face region
(nvdiffrast on CUDA, pure PyTorch elsewhere) → interpolation of vertex colours.
Only the face region is drawn, on black.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifn.facemodel.model import FaceModel
from ifn.facemodel.regions import face_region_mask
from ifn.params import FaceParams, ParamLayout
from ifn.render.camera import apply_framing, euler_to_rotation, framing_transform, perspective_project
from ifn.render.rasterizer import BACKENDS, Fragments, Rasterizer, create_rasterizer, interpolate
from ifn.render.shading import sh_basis, sh_irradiance, shade

if TYPE_CHECKING:
    from ifn.render.settings import RenderSettings

__all__ = ["FaceRenderer", "RenderLayers", "RenderOutput"]


@dataclass(frozen=True)
class _Topology:
    """What depends only on the mesh, computed once per device (the triangles never change).

    Attributes:
        drawn: ``(V_d,)`` vertices used by the drawn triangles (shaded and rasterized).
        face_triangles: ``(F_d, 3)`` the drawn triangles re-indexed into ``drawn``: the face
            model's face triangles first (same order), then, when the render is clipped to
            the landmark region, the ring of triangles around them (so that the clip, not
            the painted region's edge, decides the outline).
        normal_triangles: ``(F_n, 3)`` every triangle touching a drawn vertex (so normals on
            the border of the face region also see the triangles just outside it).
        incidence: ``(V_d, F_n)`` sparse 0/1 matrix: drawn vertex × adjacent triangle.
    """

    drawn: Tensor
    face_triangles: Tensor
    normal_triangles: Tensor
    incidence: Tensor

    @classmethod
    def build(cls, face_model: FaceModel, device: torch.device, ring: bool = False) -> _Topology:
        triangles = face_model.triangles.to(device)
        face_triangles = face_model.face_triangles.to(device)
        if ring:
            in_face = torch.zeros(face_model.n_vertices, dtype=torch.bool, device=device)
            in_face[face_triangles.reshape(-1)] = True
            touching = in_face[triangles].any(dim=1) & ~face_model.face_mask.to(device)[triangles].all(dim=1)
            face_triangles = torch.cat([face_triangles, triangles[touching]])
        drawn = torch.unique(face_triangles)
        local = torch.full((face_model.n_vertices,), -1, dtype=torch.int64, device=device)
        local[drawn] = torch.arange(drawn.numel(), device=device)
        normal_triangles = triangles[(local[triangles] >= 0).any(dim=1)]
        corner_rows = local[normal_triangles].T.reshape(-1)
        corner_cols = torch.arange(normal_triangles.shape[0], device=device).repeat(3)
        keep = corner_rows >= 0
        incidence = torch.sparse_coo_tensor(
            torch.stack([corner_rows[keep], corner_cols[keep]]),
            torch.ones(int(keep.sum()), device=device),
            (drawn.numel(), normal_triangles.shape[0]),
            check_invariants=True,
        ).coalesce()
        return cls(drawn, local[face_triangles], normal_triangles, incidence)

    def normals(self, vertices: Tensor) -> Tensor:
        """Area-weighted unit normals ``(B, V_d, 3)`` of the drawn vertices.

        Same result as :func:`~ifn.render.shading.vertex_normals` restricted to ``drawn``,
        but as one sparse product instead of scatter-adds (fewer passes over memory on the CPU).
        """
        batch = vertices.shape[0]
        per_vertex = vertices.transpose(0, 1)  # (V, B, 3): gathers along dim 0 are fastest
        v0, v1, v2 = (per_vertex.index_select(0, self.normal_triangles[:, i]) for i in range(3))
        face_normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 x area
        summed = torch.sparse.mm(self.incidence.to(vertices.dtype), face_normals.reshape(face_normals.shape[0], -1))
        return F.normalize(summed.view(-1, batch, 3).transpose(0, 1), dim=-1)


def check_render_values(image_size: int, camera_distance: float, margin: float, backend: str) -> None:
    """Refuse render settings that cannot be rendered (shared by the renderer and its settings).

    Raises:
        ValueError: on an unknown backend, or a size, distance or margin out of range.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if image_size <= 0 or camera_distance <= 0 or margin < 0 or 2 * margin >= image_size:
        raise ValueError(
            "need image_size > 0, camera_distance > 0, 0 <= margin < image_size/2; "
            f"got {image_size}, {camera_distance}, {margin}"
        )


@dataclass
class RenderOutput:
    """Everything a render produces.

    Attributes:
        image: ``(B, 3, H, W)`` RGB in [0, 1], black outside the face region.
        mask: ``(B, 1, H, W)`` 1 where the face region is drawn (with ``clip_to_landmarks``:
            the rasterized faces within their landmark region).
        landmarks: ``(B, 68, 2)`` projected landmarks (vertices or points on triangles) in
            output pixels.
        vertices: ``(B, V, 3)`` posed vertices (rotated about the face centre), millimetres.
        screen_vertices: ``(B, V, 3)`` ``(x_px, y_px, depth_mm)`` as rasterized.
        fragments: the rasterizer's coverage (before any clip), per-pixel triangle ids (into
            ``face_model.face_triangles``, same order, then the ring around them) and
            barycentrics.
    """

    image: Tensor
    mask: Tensor
    landmarks: Tensor
    vertices: Tensor
    screen_vertices: Tensor
    fragments: Fragments


@dataclass
class RenderLayers:
    """A render split into what it is made of (for pictures, not for training).

    Attributes:
        image: ``(B, 3, H, W)`` the render, as :meth:`FaceRenderer.forward` makes it.
        albedo: ``(B, 3, H, W)`` the reflectance alone.
        shading: ``(B, 3, H, W)`` the SH irradiance alone (coloured where the light is).
        mask: ``(B, 1, H, W)`` the face region.
    """

    image: Tensor
    albedo: Tensor
    shading: Tensor
    mask: Tensor


@dataclass(frozen=True)
class _Surface:
    """A batch posed and rasterized, before lighting: shared by the render and the SH basis images."""

    vertices: Tensor  # (B, V, 3) posed, millimetres
    screen: Tensor  # (B, V, 3) screen vertices
    landmarks: Tensor  # (B, 68, 2)
    albedo: Tensor  # (B, N, 3) of the drawn vertices
    normals: Tensor  # (B, N, 3) of the drawn vertices
    triangles: Tensor  # (F, 3) drawn triangles, indexing the drawn vertices
    fragments: Fragments
    mask: Tensor  # (B, 1, H, W) the face region: coverage, clipped to the landmark region if asked


class FaceRenderer(nn.Module):
    """Render faces of one face model.

    Args:
        face_model: the model to render (moved with this module by ``.to(device)``).
        image_size: output height and width in pixels (square, default 240 as in the paper).
        camera_distance: camera distance from the face centre in millimetres; only the
            strength of perspective depends on it because framing rescales the image.
        margin: pixels left free on each side when fitting the landmark bounding box.
        backend: ``"auto"`` (nvdiffrast on CUDA when available; on the CPU the compiled
            kernel chosen by ``IFN_RASTER_KERNEL``, else torch), ``"cpp"``, ``"torch"`` or
            ``"nvdiffrast"``.
        clip_to_landmarks: draw the face region by the same rule as a real photo's mask —
            the polygon of the projected landmarks (jaw and brows, minus the inner lips,
            :func:`~ifn.facemodel.regions.face_region_mask`) — with the painted region, one
            ring of triangles wider, only as an outer bound. Off: the painted region alone
            (as before this option existed).

    Example:
        >>> from ifn.facemodel import procedural_face_model
        >>> renderer = FaceRenderer(procedural_face_model(), image_size=64, backend="torch")
        >>> theta = torch.zeros(2, renderer.layout.size); theta[:, renderer.layout.slices["illumination"].start] = 1.0
        >>> out = renderer(theta)
        >>> out.image.shape, out.mask.shape, out.landmarks.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]), torch.Size([2, 68, 2]))
    """

    def __init__(
        self,
        face_model: FaceModel,
        image_size: int = 240,
        camera_distance: float = 600.0,
        margin: float = 0.0,
        backend: str = "auto",
        clip_to_landmarks: bool = True,
    ) -> None:
        super().__init__()
        check_render_values(image_size, camera_distance, margin, backend)
        self.face_model = face_model
        self.layout = ParamLayout.for_face_model(face_model)
        self.image_size = int(image_size)
        self.camera_distance = float(camera_distance)
        self.margin = float(margin)
        self.backend = backend
        self.clip_to_landmarks = bool(clip_to_landmarks)
        self._rasterizers: dict[torch.device, Rasterizer] = {}
        self._topologies: dict[torch.device, _Topology] = {}
        self._settings: RenderSettings | None = None

    @classmethod
    def from_settings(cls, settings: RenderSettings, face_model: FaceModel | None = None) -> FaceRenderer:
        """The renderer of :class:`~ifn.render.settings.RenderSettings` (loads the face model
        unless an already loaded one is given)."""
        model = settings.load_face_model() if face_model is None else face_model
        renderer = cls(
            model,
            image_size=settings.image_size,
            camera_distance=settings.camera_distance,
            margin=settings.margin,
            backend=settings.backend,
            clip_to_landmarks=settings.clip_to_landmarks,
        )
        renderer._settings = settings
        return renderer

    @property
    def settings(self) -> RenderSettings:
        """The settings this renderer was built from (for a renderer built directly: its own
        values, with the face model's name standing for its file)."""
        if self._settings is None:
            from ifn.render.settings import RenderSettings

            fm = self.face_model
            self._settings = RenderSettings(
                face_model=fm.name, n_shape=fm.n_shape, n_expression=fm.n_expression, n_reflectance=fm.n_reflectance,
                image_size=self.image_size, camera_distance=self.camera_distance, margin=self.margin,
                backend=self.backend, clip_to_landmarks=self.clip_to_landmarks,
            )
        return self._settings

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, camera_distance={self.camera_distance}, margin={self.margin}, "
            f"backend={self.backend!r}, clip_to_landmarks={self.clip_to_landmarks}"
        )

    @property
    def device(self) -> torch.device:
        return self.face_model.mean_shape.device

    def rasterizer(self, device: torch.device | None = None) -> Rasterizer:
        """The rasterizer used on ``device`` (created once per device)."""
        device = torch.device(device) if device is not None else self.device
        if device not in self._rasterizers:
            self._rasterizers[device] = create_rasterizer(self.backend, device)
        return self._rasterizers[device]

    def topology(self, device: torch.device | None = None) -> _Topology:
        device = torch.device(device) if device is not None else self.device
        if device not in self._topologies:
            self._topologies[device] = _Topology.build(self.face_model, device, ring=self.clip_to_landmarks)
        return self._topologies[device]

    def forward(self, theta: Tensor | FaceParams) -> RenderOutput:
        """Render a batch.

        Args:
            theta: ``(B, m)`` flat parameters (see :mod:`ifn.params`) or
                :class:`FaceParams`.

        Returns:
            :class:`RenderOutput`.
        """
        params = self.layout.split(theta) if isinstance(theta, Tensor) else theta
        surface = self._surface(params)
        colours = shade(surface.albedo, surface.normals, params.illumination)
        image = interpolate(colours, surface.fragments, surface.triangles).clamp(0.0, 1.0) * surface.mask
        return RenderOutput(
            image=image,
            mask=surface.mask,
            landmarks=surface.landmarks,
            vertices=surface.vertices,
            screen_vertices=surface.screen,
            fragments=surface.fragments,
        )

    def layers(self, theta: Tensor | FaceParams) -> RenderLayers:
        """The render and what it is made of: albedo and shading images, for looking at.

        ``image`` is what :meth:`forward` renders; ``albedo`` is the interpolated reflectance
        (Eq. 3) and ``shading`` the interpolated SH irradiance, both clamped to [0, 1] and
        black outside the face region.
        """
        params = self.layout.split(theta) if isinstance(theta, Tensor) else theta
        surface = self._surface(params)
        irradiance = sh_irradiance(surface.normals, params.illumination)
        image = interpolate(surface.albedo * irradiance, surface.fragments, surface.triangles).clamp(0.0, 1.0)
        albedo = interpolate(surface.albedo, surface.fragments, surface.triangles).clamp(0.0, 1.0)
        shading = interpolate(irradiance, surface.fragments, surface.triangles).clamp(0.0, 1.0)
        mask = surface.mask
        return RenderLayers(image=image * mask, albedo=albedo * mask, shading=shading * mask, mask=mask)

    def illumination_basis(self, theta: Tensor | FaceParams) -> tuple[Tensor, Tensor]:
        """Unclamped images of each SH basis function under the faces' geometry and albedo.

        The render is linear in θi: ``image[b, c] = Σ_k θi[b, k, c] · basis[b, c, k]`` wherever
        it is not clamped (:func:`ifn.render.illumination_fit.relight`), so lighting can be
        fitted to a photo by least squares (:func:`ifn.render.illumination_fit.fit_illumination`).

        Returns:
            ``(B, 3, 9, H, W)`` basis images and the ``(B, 1, H, W)`` coverage mask.
        """
        params = self.layout.split(theta) if isinstance(theta, Tensor) else theta
        surface = self._surface(params)
        basis = sh_basis(surface.normals)  # (B, N, 9)
        values = (surface.albedo.unsqueeze(-1) * basis.unsqueeze(-2)).flatten(2)  # (B, N, 3·9), channel-major
        images = interpolate(values, surface.fragments, surface.triangles) * surface.mask
        return images.unflatten(1, (3, 9)), surface.mask

    def _surface(self, params: FaceParams) -> _Surface:
        """Pose, albedo, normals and rasterization of the drawn vertices: all but the lighting."""
        vertices = self.pose(params)
        topology = self.topology(vertices.device)
        # Only the drawn vertices are shaded and rasterized.
        albedo = self.face_model.reflectance(params.reflectance).index_select(1, topology.drawn)
        screen, landmarks = self.project(vertices)
        size = (self.image_size, self.image_size)
        drawn_screen = screen.index_select(1, topology.drawn)
        fragments = self.rasterizer(screen.device).rasterize(drawn_screen, topology.face_triangles, size)
        normals = topology.normals(vertices)
        mask = fragments.mask
        if self.clip_to_landmarks:
            mask = mask * face_region_mask(landmarks, size).to(mask.dtype)
        return _Surface(vertices, screen, landmarks, albedo, normals, topology.face_triangles, fragments, mask)

    def pose(self, params: FaceParams) -> Tensor:
        """``(B, V, 3)`` geometry rotated by R about the face centre (millimetres)."""
        fm = self.face_model
        geometry = fm.geometry(params.shape, params.expression)
        rotation = euler_to_rotation(params.rotation.to(geometry.dtype))
        return (geometry - fm.center) @ rotation.transpose(1, 2)

    def project(self, vertices: Tensor) -> tuple[Tensor, Tensor]:
        """Perspective projection and landmark framing of posed vertices.

        Landmarks that are vertices are read off the projected vertices; barycentric ones
        (points on triangles) are placed in 3D first and then projected, because perspective
        does not preserve barycentric weights.

        Returns:
            ``(B, V, 3)`` screen vertices ``(x_px, y_px, depth)`` and ``(B, 68, 2)`` landmarks.
        """
        image_plane, depth = perspective_project(vertices, self.camera_distance)
        if self.face_model.has_barycentric_landmarks:
            landmarks, _ = perspective_project(self.face_model.landmark_points(vertices), self.camera_distance)
        else:
            landmarks = image_plane[:, self.face_model.landmark_indices]
        scale, offset = framing_transform(landmarks, (self.image_size, self.image_size), self.margin)
        screen_xy = apply_framing(image_plane, scale, offset)
        return torch.cat([screen_xy, depth.unsqueeze(-1)], dim=-1), apply_framing(landmarks, scale, offset)
