"""nvdiffrast backend (CUDA only): `RasterizeCudaContext` behind the :class:`Rasterizer` interface.

nvdiffrast comes from the ``diffrp-nvdiffrast`` package (``pip install 'ifn[gpu]'``) under
NVIDIA's non-commercial source licence, so it stays optional and is imported lazily; the
pure-PyTorch rasterizer produces the same fragments on its own. Its CUDA plugin is
JIT-compiled on first use (needs ``nvcc`` and ``ninja``; once per machine and version).

NHWC lives only in this file: nvdiffrast's ``(B, H, W, 4)`` output becomes :class:`Fragments`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from functools import lru_cache

import torch
from torch import Tensor

from ifn.render.rasterizer import Fragments, Rasterizer, _check_rasterizer_inputs

__all__ = ["NvdiffrastRasterizer", "nvdiffrast_unavailable_reason"]


def _prepare_build_environment(device: torch.device) -> None:
    """Give torch's JIT builder what it needs when the user has not set it."""
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        nvcc = shutil.which("nvcc")
        for candidate in ([os.path.dirname(os.path.dirname(nvcc))] if nvcc else []) + ["/usr/local/cuda"]:
            if os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = candidate
                break
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        # Build for this GPU only: the default (all architectures) takes many times longer.
        major, minor = torch.cuda.get_device_capability(device)
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"


@lru_cache(maxsize=1)
def _load_plugin() -> object:
    """Import nvdiffrast and build/load its CUDA plugin once.

    With torch >= 2.14's bundled pybind11 the JIT-built extension is not registered in
    ``sys.modules``, so nvdiffrast's own ``importlib.import_module`` of it fails right after
    a successful build; registering the module torch's loader returns fixes that.
    """
    ops = importlib.import_module("nvdiffrast.torch.ops")
    try:
        return ops._get_plugin(gl=False)
    except ModuleNotFoundError as err:
        if not err.name or not err.name.startswith("nvdiffrast_plugin"):
            raise
        from torch.utils import cpp_extension

        build_dir = cpp_extension._get_build_directory(err.name, False)
        sys.modules[err.name] = cpp_extension._import_module_from_library(err.name, build_dir, True)
        return ops._get_plugin(gl=False)


def nvdiffrast_unavailable_reason(device: torch.device | str) -> str | None:
    """Why nvdiffrast cannot rasterize on ``device``, or ``None`` if it can (builds the plugin)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"nvdiffrast needs a CUDA device, got {device}"
    try:
        importlib.import_module("nvdiffrast.torch")
    except ImportError as err:
        return f"nvdiffrast is not installed ({err}); install it with pip install 'ifn[gpu]'"
    try:
        _prepare_build_environment(device)
        _load_plugin()
    except Exception as err:  # noqa: BLE001 - any build failure means: fall back
        return f"building nvdiffrast's CUDA plugin failed: {type(err).__name__}: {err}"
    return None


class NvdiffrastRasterizer(Rasterizer):
    """Rasterize with nvdiffrast's CUDA rasterizer (never the OpenGL context).

    Args:
        device: the CUDA device to rasterize on.

    Raises:
        RuntimeError: if nvdiffrast cannot run on ``device`` (the message says why).
    """

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        reason = nvdiffrast_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(reason)
        import nvdiffrast.torch as dr

        self._dr = dr
        self._device = device
        self._context = dr.RasterizeCudaContext(device=device)
        self._triangles: tuple[Tensor, Tensor] | None = None

    def _int_triangles(self, triangles: Tensor) -> Tensor:
        # Topology never changes between calls: convert it once, not every batch.
        if self._triangles is None or self._triangles[0] is not triangles:
            self._triangles = (triangles, triangles.to(self._device, torch.int32).contiguous())
        return self._triangles[1]

    def rasterize(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Fragments:
        _check_rasterizer_inputs(vertices, triangles, image_size)
        if vertices.device != self._device:
            raise ValueError(f"vertices are on {vertices.device}, this rasterizer runs on {self._device}")
        height, width = image_size
        clip = _screen_to_clip(vertices.detach().float(), height, width)
        rast, _ = self._dr.rasterize(self._context, clip, self._int_triangles(triangles), resolution=[height, width])
        triangle_id = rast[..., 3].to(torch.int64) - 1
        u, v = rast[..., 0], rast[..., 1]
        barycentric = torch.stack([u, v, 1.0 - u - v], dim=-1) * (triangle_id >= 0).unsqueeze(-1)
        return Fragments(triangle_id=triangle_id, barycentric=barycentric.contiguous())


def _screen_to_clip(vertices: Tensor, height: int, width: int) -> Tensor:
    """Screen ``(x_px, y_px, depth)`` → homogeneous clip coordinates for nvdiffrast.

    nvdiffrast samples pixel centres and stores NDC y = −1 in memory row 0, so
    ``x_ndc = 2x/W − 1`` and ``y_ndc = 2y/H − 1`` keep our +y-down pixel convention.
    ``w`` is the camera depth, which makes its barycentrics perspective-correct; ``z``
    maps [near, far] to NDC [−1, 1] monotonically, so its depth test keeps the nearest.
    """
    x, y, depth = vertices.unbind(-1)
    near = depth.amin().clamp_min(1e-3) * 0.5
    far = depth.amax() * 2.0 + 1e-3
    z_clip = (depth * (far + near) - 2.0 * far * near) / (far - near)
    clip_x, clip_y = (2.0 * x / width - 1.0) * depth, (2.0 * y / height - 1.0) * depth
    return torch.stack([clip_x, clip_y, z_clip, depth], dim=-1).contiguous()
