"""One rasterizer interface, three backends, shared attribute interpolation.

A rasterizer turns screen-space triangles into :class:`Fragments` (which triangle covers
each pixel centre, with which barycentric weights). Everything after that —
interpolation, shading, masks — is backend-independent code in this module and in
:mod:`ifn.render.renderer`.

Backends: ``torch`` (pure PyTorch, any device: the reference), ``cpp`` (the same
Fragments from a compiled CPU kernel, :mod:`ifn.render.raster_cpp`) and ``nvdiffrast``
(CUDA). ``auto`` takes nvdiffrast on CUDA and, on the CPU, the kernel named by
``IFN_RASTER_KERNEL`` (``auto``: compiled, else torch with one warning).

Convention:
    Screen-space vertices are ``(x_px, y_px, depth)``: continuous pixel coordinates
    (+x right, +y down, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``) and the
    positive camera distance. Nearer (smaller depth) wins. Barycentric weights are
    perspective-correct (interpolating in 3D, not on the screen) and sum to 1.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BACKENDS", "Fragments", "Rasterizer", "create_rasterizer", "interpolate"]

#: Names accepted by :func:`create_rasterizer` (``auto`` picks per device).
BACKENDS: tuple[str, ...] = ("auto", "torch", "cpp", "nvdiffrast")


@dataclass(frozen=True)
class Fragments:
    """What a rasterizer saw at each pixel centre.

    Attributes:
        triangle_id: ``(B, H, W)`` int64 index into the triangles passed in; −1 where empty.
        barycentric: ``(B, H, W, 3)`` float32 perspective-correct weights of the triangle's
            three vertices (zero where empty).
    """

    triangle_id: Tensor
    barycentric: Tensor

    @property
    def mask(self) -> Tensor:
        """``(B, 1, H, W)`` float coverage (1 inside the drawn surface)."""
        return (self.triangle_id >= 0).unsqueeze(1).to(self.barycentric.dtype)


class Rasterizer(abc.ABC):
    """Backend interface: z-buffered rasterization of a batch of meshes sharing topology."""

    name: str = "abstract"

    @abc.abstractmethod
    def rasterize(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Fragments:
        """Rasterize.

        Args:
            vertices: ``(B, V, 3)`` screen-space ``(x_px, y_px, depth)``, depth > 0.
            triangles: ``(F, 3)`` int64 vertex indices, the same for the whole batch.
            image_size: ``(H, W)``.

        Returns:
            :class:`Fragments` on the device of ``vertices``.
        """


def _check_rasterizer_inputs(vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> None:
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if triangles.ndim != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles must have shape (F, 3), got {tuple(triangles.shape)}")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size}")


def interpolate(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at every covered pixel.

    Differentiable with respect to ``attributes`` on every backend. On the CPU, when the
    compiled kernel is selected (see :mod:`ifn.render.raster_cpp`) and the barycentrics
    carry no gradient, a C++ loop computes the same values bit for bit, and the backward.

    Args:
        attributes: ``(B, V, C)`` per-vertex values.
        fragments: output of a rasterizer for the same ``triangles``.
        triangles: ``(F, 3)`` the triangles that were rasterized.

    Returns:
        ``(B, C, H, W)`` interpolated values, zero where no triangle covers the pixel.
    """
    batch = attributes.shape[0]
    tri_id = fragments.triangle_id
    if tri_id.shape[0] != batch:
        raise ValueError(f"attributes batch {batch} != fragments batch {tri_id.shape[0]}")
    if (
        attributes.device.type == "cpu"
        and tri_id.device.type == "cpu"
        and attributes.dtype in (torch.float32, torch.float64)
        and not fragments.barycentric.requires_grad
    ):
        from ifn.render.raster_cpp import cpu_kernel, interpolate_cpp

        if cpu_kernel() == "cpp":
            return interpolate_cpp(attributes, fragments, triangles)
    return _interpolate_torch(attributes, fragments, triangles)


def _interpolate_torch(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """The pure-PyTorch :func:`interpolate` (any device; the reference of the compiled one)."""
    batch, _, channels = attributes.shape
    tri_id = fragments.triangle_id
    _, height, width = tri_id.shape
    n_triangles = triangles.shape[0]
    # One table row per (image, triangle) holding its three corners' values, plus a zero row
    # for empty pixels: one gather per pixel and three multiply-adds, no nonzero()/scatter.
    corners = attributes[:, triangles].reshape(batch, n_triangles, 3 * channels)
    table = torch.cat([corners, corners.new_zeros(batch, 1, 3 * channels)], dim=1)
    rows = torch.where(tri_id >= 0, tri_id, n_triangles).reshape(batch, -1)
    weights = fragments.barycentric.reshape(batch, -1, 3).to(attributes.dtype)
    # On the CPU, gathering a few images at a time keeps their table in cache: about twice
    # as fast as one gather over the whole batch's table. GPUs prefer one big launch.
    table_bytes = table[0].numel() * table.element_size()
    step = batch if attributes.is_cuda else max(1, (1 << 20) // max(table_bytes, 1))
    chunks = []
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        offsets = (torch.arange(stop - start, device=rows.device) * (n_triangles + 1)).unsqueeze(1)
        flat_rows = (rows[start:stop] + offsets).reshape(-1)
        values = table[start:stop].reshape(-1, 3 * channels).index_select(0, flat_rows).view(-1, 3, channels)
        w = weights[start:stop].reshape(-1, 3)
        chunk = (values[:, 0] * w[:, 0:1]).addcmul(values[:, 1], w[:, 1:2]).addcmul(values[:, 2], w[:, 2:3])
        chunks.append(chunk)
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


def create_rasterizer(backend: str, device: torch.device | str) -> Rasterizer:
    """Build a rasterizer by name.

    Args:
        backend: ``"torch"`` (any device), ``"cpp"`` (CPU only, compiled on first use),
            ``"nvdiffrast"`` (CUDA only) or ``"auto"``: nvdiffrast on CUDA when it imports
            and builds, otherwise torch; on the CPU the kernel named by ``IFN_RASTER_KERNEL``
            (``auto``, the default: cpp, or torch with one logged warning if it cannot be
            built; ``cpp``; ``torch``).
        device: the device the rasterizer will run on.

    Raises:
        ValueError: for an unknown backend name, or ``cpp`` on a non-CPU device.
        RuntimeError: if nvdiffrast or cpp is forced but cannot run.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        from ifn.render.raster_torch import TorchRasterizer

        return TorchRasterizer()
    if backend == "cpp" or (backend == "auto" and device.type == "cpu"):
        from ifn.render.raster_cpp import CppRasterizer, cpu_kernel

        if backend == "cpp":
            if device.type != "cpu":
                raise ValueError(f"the cpp rasterizer runs on the CPU only, got device {device}")
            return CppRasterizer()
        if cpu_kernel() == "cpp":
            return CppRasterizer()
        from ifn.render.raster_torch import TorchRasterizer

        return TorchRasterizer()
    if backend == "nvdiffrast":
        from ifn.render.raster_nvdiffrast import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    if device.type == "cuda":
        from ifn.render.raster_nvdiffrast import NvdiffrastRasterizer, nvdiffrast_unavailable_reason

        reason = nvdiffrast_unavailable_reason(device)
        if reason is None:
            return NvdiffrastRasterizer(device)
        import warnings

        warnings.warn(f"nvdiffrast unavailable ({reason}); using the pure-PyTorch rasterizer", stacklevel=2)
    from ifn.render.raster_torch import TorchRasterizer

    return TorchRasterizer()
