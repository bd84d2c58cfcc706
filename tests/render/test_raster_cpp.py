"""The compiled CPU rasterizer against the pure-PyTorch one: equal Fragments, equal values,
matching gradients, and kernel selection that never fails silently.

The torch path is the reference (it is itself checked against a float64 brute force in
test_raster_torch.py), so agreement here is ``torch.equal``, not a tolerance.

These tests FAIL when the extension cannot be built (no compiler, no ninja): CI must not
pass without exercising the compiled path. ``IFN_RASTER_KERNEL=torch`` is the explicit
"no compiler here" switch; only then are they skipped.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from torch import Tensor

from ifn.render import raster_cpp
from ifn.render.raster_torch import TorchRasterizer
from ifn.render.rasterizer import Fragments, _interpolate_torch, create_rasterizer, interpolate

NO_COMPILER = os.environ.get(raster_cpp.KERNEL_ENV, "").strip().lower() == "torch"
pytestmark = pytest.mark.skipif(NO_COMPILER, reason="IFN_RASTER_KERNEL=torch: the compiled kernel is switched off")


@pytest.fixture(scope="module")
def cpp() -> raster_cpp.CppRasterizer:
    return raster_cpp.CppRasterizer()  # raises (test error) if the extension cannot be built


@pytest.fixture(scope="module")
def reference() -> TorchRasterizer:
    return TorchRasterizer()


def assert_same(cpp: raster_cpp.CppRasterizer, reference: TorchRasterizer, verts: Tensor, tris: Tensor,
                size: tuple[int, int]) -> Fragments:
    want = reference.rasterize(verts, tris, size)
    got = cpp.rasterize(verts, tris, size)
    assert got.triangle_id.dtype == torch.int64 and got.barycentric.dtype == torch.float32
    assert got.triangle_id.shape == want.triangle_id.shape and got.barycentric.shape == want.barycentric.shape
    assert torch.equal(got.triangle_id, want.triangle_id), (got.triangle_id != want.triangle_id).sum()
    assert torch.equal(got.barycentric, want.barycentric), (got.barycentric != want.barycentric).sum()
    # Bit-level: signed zeros too (torch.equal treats -0 == 0).
    assert torch.equal(got.barycentric.view(torch.int32), want.barycentric.view(torch.int32))
    return got


def grid_mesh(n_x: int, n_y: int, lo: float, hi: float, seed: int, snap: float = 0.3) -> tuple[Tensor, Tensor]:
    """A jittered grid, random diagonals and windings; some vertices on pixel centres or the 1/256 grid."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.linspace(lo, hi, n_x), torch.linspace(lo, hi, n_y)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    step = (hi - lo) / max(n_x, n_y)
    pos = torch.stack([gx, gy], -1) + (torch.rand(n_y, n_x, 2, generator=gen) - 0.5) * 0.6 * step
    on_centre = torch.rand(n_y, n_x, generator=gen) < snap
    pos[on_centre] = torch.floor(pos[on_centre]) + 0.5  # ties for the top-left rule
    on_grid = torch.rand(n_y, n_x, generator=gen) < snap
    pos[on_grid] = torch.round(pos[on_grid] * 256.0) / 256.0
    idx = torch.arange(n_x * n_y).view(n_y, n_x)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    flip = torch.rand(n_y - 1, n_x - 1, generator=gen) < 0.5
    t1 = torch.where(flip[..., None], torch.stack([a, b, d], -1), torch.stack([a, b, c], -1))
    t2 = torch.where(flip[..., None], torch.stack([b, c, d], -1), torch.stack([a, c, d], -1))
    tris = torch.cat([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    reverse = torch.rand(tris.shape[0], generator=gen) < 0.5
    tris[reverse] = tris[reverse].flip(1)
    return pos.view(-1, 2), tris


def with_depth(pos: Tensor, seed: int, batch: int) -> Tensor:
    """``(B, V, 3)``: the mesh shifted per image, on a wavy surface at depth 3…6."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        xy = pos + torch.rand(2, generator=gen) * 3.0
        depth = 4.5 + 0.8 * torch.sin(xy[:, :1] * 0.37) * torch.cos(xy[:, 1:] * 0.23) + torch.rand(1, generator=gen)
        out.append(torch.cat([xy, depth], 1))
    return torch.stack(out)


def test_doctests_and_name(cpp: raster_cpp.CppRasterizer) -> None:
    import doctest

    assert doctest.testmod(raster_cpp).failed == 0
    assert cpp.name == "cpp" and isinstance(create_rasterizer("cpp", "cpu"), raster_cpp.CppRasterizer)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_meshes_with_shared_edges_and_ties(cpp, reference, seed: int) -> None:
    pos, tris = grid_mesh(23, 19, -3.0, 41.0, seed)
    verts = with_depth(pos, seed, batch=3)
    frags = assert_same(cpp, reference, verts, tris, (37, 41))
    assert (frags.triangle_id >= 0).float().mean() > 0.5


def test_folded_mesh_and_back_faces(cpp, reference) -> None:
    # A mesh folded onto itself (front and back layers, both windings) at nearly equal depth.
    pos, tris = grid_mesh(17, 17, 0.0, 30.0, seed=5)
    verts = with_depth(pos, 5, batch=2)
    mirrored = verts.clone()
    mirrored[..., 0] = 30.0 - mirrored[..., 0]
    mirrored[..., 2] += 0.01
    both = torch.cat([verts, mirrored], 1)
    all_tris = torch.cat([tris, tris.flip(1) + pos.shape[0]])
    assert_same(cpp, reference, both, all_tris, (32, 32))


def test_random_triangle_soup_with_edge_cases(cpp, reference) -> None:
    gen = torch.Generator().manual_seed(11)
    n = 400
    verts = torch.empty(4, 3 * n, 3)
    verts[..., :2] = torch.rand(4, 3 * n, 2, generator=gen) * 60.0 - 10.0
    verts[..., 2] = torch.rand(4, 3 * n, generator=gen) * 5.0 + 0.5
    tris = torch.arange(3 * n).view(n, 3)
    v = verts.view(4, n, 3, 3)
    v[:, :40, 1:] = v[:, :40, :1] + (v[:, :40, 1:] - v[:, :40, :1]) * 0.05  # tiny triangles
    v[:, 40:60, 2, :2] = (v[:, 40:60, 0, :2] + v[:, 40:60, 1, :2]) / 2  # collinear: zero area
    v[:, 60:70, 1] = v[:, 60:70, 0]  # repeated vertex
    v[:, 70:80, :, :2] = v[:, 70:80, :, :2] * 40.0 - 800.0  # huge, mostly off-screen (int64 path)
    v[:, 80:90, :, :2] += 200.0  # off-screen
    v[:, 90:100, :, 0] -= 30.0  # partly outside on the left
    v[:, 100:105, 0, 2] = 0.0  # vertex at depth 0: not drawn
    v[:, 105:110, 1, 2] = -1.0  # behind the camera: not drawn
    v[:, 110, 0, 0] = math.nan
    v[:, 111, 1, 1] = math.inf
    v[:, 112, 2, 2] = math.inf
    v[:, 113, 0, 0] = 3e38  # finite but overflows the snap: clamped
    v[:, 120:200, :, :2] = torch.round(v[:, 120:200, :, :2]) + 0.5  # vertices on pixel centres
    v[:, 200:220] = v[:, 220:240]  # duplicates: equal depth, the lower id wins
    v[:, 240:250, :, 2] = 2.0  # one depth: ties between overlapping triangles
    assert_same(cpp, reference, verts, tris, (40, 48))
    threads = torch.get_num_threads()
    try:  # one image in bands of rows: triangles cut by band edges
        torch.set_num_threads(3)
        assert_same(cpp, reference, verts[:1], tris, (40, 48))
        assert_same(cpp, reference, verts[1:2], tris, (64, 48))
    finally:
        torch.set_num_threads(threads)


def test_huge_and_full_screen_triangles(cpp, reference) -> None:
    verts = torch.tensor([[[-1e7, -1e7, 5.0], [1e7, -3.0, 5.0], [2.0, 1e7, 5.0],
                           [-5.0, -5.0, 2.0], [90.0, 10.0, 9.0], [20.0, 90.0, 4.0],
                           [0.5, 0.5, 1.0], [63.5, 0.5, 1.0], [0.5, 47.5, 1.0]]])
    tris = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [8, 7, 6]])
    assert_same(cpp, reference, verts, tris, (48, 64))
    assert_same(cpp, reference, verts.expand(3, -1, -1).contiguous(), tris, (1, 1))


def test_face_mesh_batch_and_threads(cpp, reference) -> None:
    from ifn.facemodel import load_face_model
    from ifn.render import FaceRenderer

    renderer = FaceRenderer(load_face_model("procedural"), image_size=96, backend="torch")
    gen = torch.Generator().manual_seed(3)
    theta = torch.zeros(5, renderer.layout.size)
    theta[:, :3] = (torch.rand(5, 3, generator=gen) - 0.5) * 1.4
    out = renderer(theta)  # the renderer's own drawn vertices and triangles
    screen = out.screen_vertices[:, renderer.topology().drawn]
    tris = renderer.topology().face_triangles
    want = out.fragments
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got = cpp.rasterize(screen, tris, (96, 96))
            assert torch.equal(got.triangle_id, want.triangle_id) and torch.equal(got.barycentric, want.barycentric)
    finally:
        torch.set_num_threads(threads)
    colours = torch.rand(5, screen.shape[1], 3, generator=gen)
    want_values = _interpolate_torch(colours, want, tris)
    try:  # batches smaller than the thread count are split into bands of rows
        for n, batch in ((1, 1), (2, 1), (3, 1), (3, 2), (7, 2), (16, 1)):
            torch.set_num_threads(n)
            got = cpp.rasterize(screen[:batch], tris, (96, 96))
            assert torch.equal(got.triangle_id, want.triangle_id[:batch]), (n, batch)
            assert torch.equal(got.barycentric, want.barycentric[:batch]), (n, batch)
            values = raster_cpp.interpolate_cpp(colours[:batch], got, tris)
            assert torch.equal(values, want_values[:batch]), (n, batch)
    finally:
        torch.set_num_threads(threads)
    for b in range(5):  # images are independent of their batch
        alone = cpp.rasterize(screen[b : b + 1], tris, (96, 96))
        assert torch.equal(alone.triangle_id[0], want.triangle_id[b])


def test_float64_and_noncontiguous_inputs(cpp, reference) -> None:
    pos, tris = grid_mesh(9, 9, 0.0, 14.0, seed=8)
    verts = with_depth(pos, 8, batch=2).double()
    assert_same(cpp, reference, verts, tris.int(), (16, 16))
    wide = torch.cat([verts, verts], 2)[..., ::2]  # a strided view
    assert_same(cpp, reference, wide, tris.t().contiguous().t(), (16, 16))


def test_empty_inputs(cpp) -> None:
    none = cpp.rasterize(torch.zeros(2, 3, 3), torch.zeros(0, 3, dtype=torch.int64), (4, 5))
    assert none.triangle_id.shape == (2, 4, 5) and (none.triangle_id == -1).all() and (none.barycentric == 0).all()
    empty = cpp.rasterize(torch.zeros(0, 3, 3), torch.tensor([[0, 1, 2]]), (4, 5))
    assert empty.triangle_id.shape == (0, 4, 5) and empty.barycentric.shape == (0, 4, 5, 3)


@pytest.mark.parametrize(
    ("verts_shape", "tris", "size", "match"),
    [
        ((1, 3), torch.tensor([[0, 1, 2]]), (4, 4), "vertices must have shape"),
        ((1, 3, 3), torch.tensor([0, 1, 2]), (4, 4), "triangles must have shape"),
        ((1, 3, 3), torch.tensor([[0, 1, 2]]), (0, 4), "image_size"),
        ((1, 3, 3), torch.tensor([[0, 1, 3]]), (4, 4), r"indices must lie in \[0, 3\)"),
        ((1, 3, 3), torch.tensor([[0.0, 1.0, 2.0]]), (4, 4), "integer tensor"),
    ],
)
def test_bad_inputs_raise(cpp, verts_shape, tris, size, match) -> None:
    with pytest.raises(ValueError, match=match):
        cpp.rasterize(torch.ones(verts_shape), tris, size)


def test_unpickled_in_a_fresh_process(cpp, tmp_path) -> None:
    # Data-loader workers and DDP ranks receive a pickled renderer; nothing was built there.
    import pickle
    import subprocess
    import sys

    (tmp_path / "r.pkl").write_bytes(pickle.dumps(cpp))
    code = (
        "import pickle, sys, torch\n"
        "r = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "v = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]])\n"
        "from ifn.render.raster_cpp import interpolate_cpp\n"
        "f = r.rasterize(v, torch.tensor([[0, 1, 2]]), (4, 4))\n"
        "print(r.name, int((f.triangle_id == 0).sum()), float(interpolate_cpp(torch.ones(1, 3, 1), f,"
        " torch.tensor([[0, 1, 2]])).sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.pkl")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["cpp", "6", "6.0"]


def test_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        create_rasterizer("cpp", "cuda")


# ------------------------------------------------------------------ interpolate


@pytest.fixture(scope="module")
def scene(reference) -> tuple[Fragments, Tensor, int]:
    pos, tris = grid_mesh(15, 13, -2.0, 26.0, seed=4)
    verts = with_depth(pos, 4, batch=3)
    return reference.rasterize(verts, tris, (22, 25)), tris, verts.shape[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3, 7])
def test_interpolate_values_are_identical(cpp, scene, dtype, channels) -> None:
    frags, tris, n_vertices = scene
    attrs = torch.randn(3, n_vertices, channels, generator=torch.Generator().manual_seed(channels), dtype=dtype)
    got = raster_cpp.interpolate_cpp(attrs, frags, tris)
    want = _interpolate_torch(attrs, frags, tris)
    assert got.shape == want.shape == (3, channels, 22, 25) and got.dtype == dtype
    assert got.stride() == want.stride()  # the same channels-last view
    assert torch.equal(got, want)
    assert (got.permute(0, 2, 3, 1)[frags.triangle_id < 0] == 0).all()


def test_interpolate_gradient_matches_torch_path(cpp, scene) -> None:
    frags, tris, n_vertices = scene
    attrs = torch.randn(3, n_vertices, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weight = torch.randn(3, 3, 22, 25, generator=torch.Generator().manual_seed(1))
    (raster_cpp.interpolate_cpp(attrs, frags, tris) * weight).sum().backward()
    got = attrs.grad.clone()
    attrs.grad = None
    (_interpolate_torch(attrs, frags, tris) * weight).sum().backward()
    torch.testing.assert_close(got, attrs.grad, rtol=1e-5, atol=1e-5)
    # Independent check: d/d(attribute of vertex v) = Σ over pixels of b_k(pixel) where v is corner k.
    ones = torch.ones(3, n_vertices, 1, requires_grad=True)
    raster_cpp.interpolate_cpp(ones, frags, tris).sum().backward()
    expected = torch.zeros(3, n_vertices, dtype=torch.float64)
    covered = frags.triangle_id >= 0
    for b in range(3):
        corners = tris[frags.triangle_id[b][covered[b]]]  # (P, 3)
        expected[b].index_add_(0, corners.reshape(-1), frags.barycentric[b][covered[b]].double().reshape(-1))
    torch.testing.assert_close(ones.grad[..., 0].double(), expected, rtol=1e-6, atol=1e-6)


def test_interpolate_gradcheck_and_gradgradcheck(cpp) -> None:
    verts = torch.tensor([[[0.2, 0.3, 1.0], [5.7, 0.9, 2.0], [1.1, 5.2, 3.0], [6.0, 6.0, 1.5]]] * 2)
    verts[1, :, :2] += 0.4
    tris = torch.tensor([[0, 1, 2], [1, 3, 2]])
    frags = cpp.rasterize(verts, tris, (6, 7))
    attrs = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda a: raster_cpp.interpolate_cpp(a, frags, tris)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (attrs,))
    assert torch.autograd.gradgradcheck(fn, (attrs,))


def test_interpolate_dispatch_and_barycentric_gradients(cpp, scene, monkeypatch) -> None:
    frags, tris, n_vertices = scene
    attrs = torch.rand(3, n_vertices, 3)
    monkeypatch.setenv(raster_cpp.KERNEL_ENV, "cpp")
    assert torch.equal(interpolate(attrs, frags, tris), _interpolate_torch(attrs, frags, tris))
    # Barycentrics that need a gradient take the torch path, which provides it.
    bary = frags.barycentric.clone().requires_grad_(True)
    interpolate(attrs, Fragments(frags.triangle_id, bary), tris).sum().backward()
    assert bary.grad is not None and bary.grad.abs().sum() > 0


def test_interpolate_rejects_bad_ids(cpp, scene) -> None:
    frags, tris, n_vertices = scene
    bad = Fragments(torch.full_like(frags.triangle_id, tris.shape[0]), frags.barycentric)
    with pytest.raises(RuntimeError, match="triangle_id holds ids"):
        raster_cpp.interpolate_cpp(torch.rand(3, n_vertices, 3), bad, tris)
    with pytest.raises(ValueError, match="batch"):
        raster_cpp.interpolate_cpp(torch.rand(2, n_vertices, 3), frags, tris)


def test_renderer_images_identical_across_kernels(cpp) -> None:
    from ifn.facemodel import load_face_model
    from ifn.render import FaceRenderer

    model = load_face_model("procedural")
    theta = torch.zeros(3, FaceRenderer(model, image_size=64, backend="torch").layout.size)
    theta[:, :3] = torch.tensor([[0.2, -0.5, 0.1], [0.0, 0.0, 0.0], [-0.3, 0.6, -0.1]])
    start = FaceRenderer(model, image_size=64, backend="torch").layout.slices["illumination"].start
    theta[:, start : start + 3] = 0.8
    outs = {}
    for backend in ("torch", "cpp"):
        renderer = FaceRenderer(model, image_size=64, backend=backend)
        assert renderer.rasterizer(torch.device("cpu")).name == backend
        outs[backend] = renderer(theta)
    assert torch.equal(outs["torch"].image, outs["cpp"].image)
    assert torch.equal(outs["torch"].mask, outs["cpp"].mask)


# ------------------------------------------------------------------ selection


@pytest.fixture
def fresh_selection(monkeypatch):
    raster_cpp._resolve.cache_clear()
    yield monkeypatch
    raster_cpp._resolve.cache_clear()


def test_selection_by_environment(cpp, fresh_selection) -> None:
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "torch")
    assert raster_cpp.cpu_kernel() == "torch" and create_rasterizer("auto", "cpu").name == "torch"
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "cpp")
    assert create_rasterizer("auto", "cpu").name == "cpp"
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "auto")
    assert create_rasterizer("auto", "cpu").name == "cpp"
    assert create_rasterizer("torch", "cpu").name == "torch"  # an explicit backend wins
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="IFN_RASTER_KERNEL='fast'"):
        raster_cpp.cpu_kernel()


def test_auto_falls_back_with_one_warning_and_cpp_fails_loudly(fresh_selection, caplog) -> None:
    log = (
        "Error building extension 'ifn_raster_cpu': [1/2] c++ -MMD -c raster_cpu.cpp -o raster_cpu.o\n"
        "FAILED: raster_cpu.o\n"
        "raster_cpu.cpp:3:10: fatal error: torch/library.h: No such file or directory\n"
        "compilation terminated.\n"
    )
    first = raster_cpp._first_error_line(log)
    assert first == "raster_cpu.cpp:3:10: fatal error: torch/library.h: No such file or directory"
    missing = (
        "Error building extension 'ifn_raster_cpu': [1/2] /opt/g++ -MMD -c raster_cpu.cpp -o raster_cpu.o\n"
        "FAILED: raster_cpu.o\n/opt/g++ -MMD -c raster_cpu.cpp -o raster_cpu.o\n"
        "/bin/sh: 1: /opt/g++: not found\nninja: build stopped: subcommand failed.\n"
    )
    assert raster_cpp._first_error_line(missing) == "/bin/sh: 1: /opt/g++: not found"
    assert raster_cpp._first_error_line("Ninja is required to load C++ extensions") == (
        "Ninja is required to load C++ extensions"
    )

    def broken() -> None:
        raise RuntimeError(f"{first} (compiled CPU rasterizer raster_cpu.cpp; full log: {log})")

    fresh_selection.setattr(raster_cpp, "load_kernel", broken)
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "auto")
    with caplog.at_level(logging.WARNING, logger="ifn.render.raster_cpp"):
        assert create_rasterizer("auto", "cpu").name == "torch"
        assert raster_cpp.cpu_kernel() == "torch"
        frags = TorchRasterizer().rasterize(torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]]),
                                            torch.tensor([[0, 1, 2]]), (4, 4))
        interpolate(torch.ones(1, 3, 1), frags, torch.tensor([[0, 1, 2]]))
    warnings = [r for r in caplog.records if r.name == "ifn.render.raster_cpp"]
    assert len(warnings) == 1
    assert first in warnings[0].getMessage() and "full log" not in warnings[0].getMessage()
    fresh_selection.setenv(raster_cpp.KERNEL_ENV, "cpp")
    with pytest.raises(RuntimeError, match="fatal error: torch/library.h"):
        create_rasterizer("auto", "cpu")
