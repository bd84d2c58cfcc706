"""Compiled CPU rasterizer and interpolation: the torch path's results, faster.

A small C++ extension (``ifn/render/csrc/raster_cpu.cpp``) compiled on first use with
:func:`torch.utils.cpp_extension.load` (needs ``g++`` and ``ninja``) into PyTorch's
extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later
processes load the cached build in well under a second. It is hand-written because no
library provides this rasterizer: it must return *exactly* the :class:`Fragments` of
:class:`ifn.render.raster_torch.TorchRasterizer` (same fill rule on the same snapped grid,
same float32 roundings, same depth-test keys), one image (or band of rows) per thread, in one pass over each
image's triangles and one over its pixels. :func:`interpolate` gives the torch path's
values bit for bit; its backward (w.r.t. the attributes) is a C++ loop too.

Kernel selection (CPU only; CUDA never uses this module), by ``IFN_RASTER_KERNEL``:
    * ``auto`` (default): the compiled kernel; if it cannot be built, ONE logged warning
      with the compiler's first error line, then the pure-PyTorch path.
    * ``cpp``: the compiled kernel or a :class:`RuntimeError` with the build error.
    * ``torch``: the pure-PyTorch path, nothing is compiled.

Convention:
    Screen space, fill rule and barycentrics exactly as in :mod:`ifn.render.raster_torch`.
    Where PyTorch's CPU kernels round ``a + b * c`` once (fused multiply-add, as its AVX2
    and AVX-512 kernels do), the extension does too; this is probed at load time, not assumed.

Example:
    >>> from ifn.render.rasterizer import create_rasterizer
    >>> rasterizer = create_rasterizer("auto", "cpu")  # "cpp" unless IFN_RASTER_KERNEL=torch
    >>> verts = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]])
    >>> frags = rasterizer.rasterize(verts, torch.tensor([[0, 1, 2]]), (4, 4))
    >>> frags.triangle_id[0]
    tensor([[ 0,  0,  0, -1],
            [ 0,  0, -1, -1],
            [ 0, -1, -1, -1],
            [-1, -1, -1, -1]])
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ifn.render.rasterizer import Fragments, Rasterizer, _check_rasterizer_inputs

__all__ = ["KERNELS", "KERNEL_ENV", "CppRasterizer", "cpu_kernel", "interpolate_cpp", "load_kernel"]

logger = logging.getLogger(__name__)

#: Environment variable choosing the CPU kernel.
KERNEL_ENV = "IFN_RASTER_KERNEL"
#: Values accepted in :data:`KERNEL_ENV`.
KERNELS: tuple[str, ...] = ("auto", "cpp", "torch")

_SOURCE = Path(__file__).resolve().parent / "csrc" / "raster_cpu.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _first_error_line(message: str) -> str:
    """The first line of a build log that says what went wrong.

    Skips what ninja and cpp_extension wrap around it (the command lines, ``FAILED:``,
    ``ninja: build stopped``); prefers a line with "error", else the first other line.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    wrapper = re.compile(r"^(error building extension|failed:|ninja:|\[\d+/\d+\])", re.IGNORECASE)
    said = [line for line in lines if not wrapper.match(line) and not (" -c " in line and " -o " in line)]
    for line in said:
        if "error" in line.lower():
            return line
    if said:
        return said[0]
    return lines[0] if lines else "unknown error"


def _addcmul_is_fused(dtype: torch.dtype) -> bool:
    """Whether PyTorch's CPU ``addcmul`` rounds ``a + b * c`` once (fused) or twice.

    With ``b = c = 1 + 2⁻¹²`` (float32; 2⁻²⁷ for float64) and ``a = −(1 + 2⁻¹¹)`` the
    product's last bit is lost by a separate rounding, kept by a fused one. 67 elements
    cover both the vectorised body and the scalar tail.
    """
    eps = 2.0**-12 if dtype == torch.float32 else 2.0**-27
    b = torch.full((67,), 1.0 + eps, dtype=dtype)
    a = torch.full((67,), -(1.0 + 2.0 * eps), dtype=dtype)
    out = torch.addcmul(a, b, b)
    fused = out == eps * eps
    if bool(fused.all()):
        return True
    if bool((out == 0).all()):
        return False
    raise RuntimeError("PyTorch's addcmul rounds differently in different elements; the compiled kernel cannot match")


def _ensure_ninja_on_path() -> None:
    # cpp_extension runs "ninja" from PATH; a venv used without activation has it beside
    # the interpreter, and the ninja wheel knows its own binary directory.
    if shutil.which("ninja"):
        return
    candidates = [str(Path(sys.executable).parent)]
    try:
        import ninja  # type: ignore[import-not-found]

        candidates.append(str(ninja.BIN_DIR))
    except ImportError:
        pass
    for directory in candidates:
        if shutil.which("ninja", path=directory):
            os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")
            return


def load_kernel() -> None:
    """Build (first time) and load the extension; a no-op once loaded.

    Raises:
        RuntimeError: if it cannot be built or loaded; the message starts with the
            compiler's first error line and carries the full build log.
    """
    with _LOCK:
        if "error" in _STATE:
            raise RuntimeError(_STATE["error"])
        if "fused" in _STATE:
            return
        try:
            fused32 = _addcmul_is_fused(torch.float32)
            fused64 = _addcmul_is_fused(torch.float64)
            _ensure_ninja_on_path()
            # cpp_extension logs notices of its own (no CUDA runtime, compiler version
            # checks): the outcome is reported once, below, so they stay quiet.
            cpp_logger = logging.getLogger("torch.utils.cpp_extension")
            level = cpp_logger.level
            cpp_logger.setLevel(logging.CRITICAL)
            try:
                from torch.utils import cpp_extension

                flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
                name = "ifn_raster_cpu"
                if fused32 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
                    flags += ["-mavx2", "-mfma"]  # inline FMA instructions instead of libm calls
                    name += "_fma"
                cpp_extension.load(
                    name=name,
                    sources=[str(_SOURCE)],
                    extra_cflags=flags,
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=False,
                )
            finally:
                cpp_logger.setLevel(level)
        except Exception as error:  # any build or load failure is reported, none hidden
            message = f"{_first_error_line(str(error))} (compiled CPU rasterizer {_SOURCE.name}; full log: {error})"
            _STATE["error"] = message
            raise RuntimeError(message) from error
        _STATE["fused"] = {torch.float32: fused32, torch.float64: fused64}


@functools.cache
def _resolve(choice: str) -> str:
    if choice == "torch":
        return "torch"
    if choice == "cpp":
        load_kernel()
        return "cpp"
    try:
        load_kernel()
    except RuntimeError as error:
        first = str(error).split(" (compiled CPU rasterizer", 1)[0]
        logger.warning(
            "compiled CPU rasterizer unavailable (%s); using the pure-PyTorch one (set %s=torch to skip the build)",
            first,
            KERNEL_ENV,
        )
        return "torch"
    return "cpp"


def cpu_kernel() -> str:
    """The CPU kernel in use, ``"cpp"`` or ``"torch"``, as chosen by ``IFN_RASTER_KERNEL``.

    Raises:
        ValueError: for an unknown value of the variable.
        RuntimeError: if ``cpp`` is asked for and the extension cannot be built.
    """
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={choice!r} is not one of {KERNELS}")
    return _resolve(choice)


def _ops() -> Any:
    load_kernel()
    return torch.ops.ifn_raster


def _fused(dtype: torch.dtype) -> bool:
    load_kernel()  # also in a process that unpickled a CppRasterizer without building it
    return _STATE["fused"][dtype]


class CppRasterizer(Rasterizer):
    """The compiled CPU rasterizer: the same :class:`Fragments` as ``TorchRasterizer``.

    Fragments carry no gradient (as with the torch path). Safe to share between threads.
    """

    name = "cpp"

    def __init__(self) -> None:
        load_kernel()

    @torch.no_grad()
    def rasterize(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Fragments:
        """Rasterize a batch of meshes sharing one triangle list (one image per thread).

        Args:
            vertices: ``(B, V, 3)`` screen-space ``(x_px, y_px, depth)`` on the CPU.
            triangles: ``(F, 3)`` integer vertex indices, the same for the whole batch.
            image_size: ``(H, W)``.

        Returns:
            :class:`Fragments` identical to :class:`~ifn.render.raster_torch.TorchRasterizer`'s.

        Raises:
            ValueError: for malformed shapes, a non-integer triangle tensor, indices outside
                ``[0, V)`` or a non-CPU tensor.
        """
        _check_rasterizer_inputs(vertices, triangles, image_size)
        if triangles.dtype.is_floating_point or triangles.dtype.is_complex or triangles.dtype == torch.bool:
            raise ValueError(f"triangles must be an integer tensor, got {triangles.dtype}")
        if vertices.device.type != "cpu" or triangles.device.type != "cpu":
            raise ValueError(f"the compiled rasterizer runs on the CPU, got {vertices.device} / {triangles.device}")
        n_vertices = vertices.shape[1]
        triangles = triangles.to(torch.int64).contiguous()
        verts = vertices.detach().to(torch.float32).contiguous()
        height, width = int(image_size[0]), int(image_size[1])
        fused = _fused(torch.float32)
        try:  # the kernel checks the indices (serially: no extra pass of torch threads)
            triangle_id, barycentric = _ops().rasterize(verts, triangles, height, width, fused)
        except RuntimeError as error:
            if "triangle indices must lie" not in str(error):
                raise
            lo, hi = torch.aminmax(triangles)
            raise ValueError(
                f"triangle indices must lie in [0, {n_vertices}) for vertices of shape "
                f"{tuple(vertices.shape)}, got [{int(lo)}, {int(hi)}]"
            ) from None
        return Fragments(triangle_id, barycentric)


class _InterpolateBackward(torch.autograd.Function):
    """``(B, H, W, C)`` gradient of the values → ``(B, V, C)`` gradient of the attributes.

    A Function of its own so that double backward works: this map is linear in the
    gradient, and its own backward is the forward interpolation.
    """

    @staticmethod
    def forward(ctx: Any, grad: Tensor, triangle_id: Tensor, barycentric: Tensor, triangles: Tensor,
                n_vertices: int) -> Tensor:
        ctx.save_for_backward(triangle_id, barycentric, triangles)
        # Any layout: the kernel reads the gradient through its strides.
        return _ops().interpolate_backward(grad, triangle_id, barycentric, triangles, n_vertices)

    @staticmethod
    def backward(ctx: Any, grad_attr: Tensor) -> tuple[Tensor | None, ...]:
        triangle_id, barycentric, triangles = ctx.saved_tensors
        values = _Interpolate.apply(grad_attr, triangle_id, barycentric, triangles)
        return values, None, None, None, None


class _Interpolate(torch.autograd.Function):
    """``(B, V, C)`` attributes → ``(B, H, W, C)`` values, differentiable w.r.t. the attributes."""

    @staticmethod
    def forward(ctx: Any, attributes: Tensor, triangle_id: Tensor, barycentric: Tensor, triangles: Tensor) -> Tensor:
        ctx.save_for_backward(triangle_id, barycentric, triangles)
        ctx.n_vertices = attributes.shape[1]
        fused = _fused(attributes.dtype)
        return _ops().interpolate(attributes.contiguous(), triangle_id, barycentric, triangles, fused)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        triangle_id, barycentric, triangles = ctx.saved_tensors
        grad_attr = _InterpolateBackward.apply(grad, triangle_id, barycentric, triangles, ctx.n_vertices)
        return grad_attr, None, None, None


def interpolate_cpp(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """:func:`ifn.render.rasterizer.interpolate` on the CPU with the compiled kernel.

    Same values, bit for bit, as the pure-PyTorch interpolation; differentiable w.r.t.
    ``attributes`` (not w.r.t. the barycentrics: callers needing that use the torch path).

    Args:
        attributes: ``(B, V, C)`` float32 or float64 per-vertex values on the CPU.
        fragments: CPU :class:`Fragments` for the same ``triangles``.
        triangles: ``(F, 3)`` the triangles that were rasterized.

    Returns:
        ``(B, C, H, W)`` values (a channels-last view, like the torch path), zero where no
        triangle covers the pixel.

    Raises:
        ValueError: if the batch sizes of ``attributes`` and ``fragments`` differ.
    """
    batch = attributes.shape[0]
    if fragments.triangle_id.shape[0] != batch:
        raise ValueError(f"attributes batch {batch} != fragments batch {fragments.triangle_id.shape[0]}")
    triangle_id = fragments.triangle_id.contiguous()
    barycentric = fragments.barycentric.detach().to(torch.float32).contiguous()
    triangles = triangles.to(torch.int64).contiguous()
    values = _Interpolate.apply(attributes, triangle_id, barycentric, triangles)
    return values.permute(0, 3, 1, 2)
