"""Tests of the pure-PyTorch rasterizer against hand counts and a float64 brute force."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import Tensor

from ifn.render import raster_torch
from ifn.render.raster_torch import TorchRasterizer
from ifn.render.rasterizer import interpolate

GRID = 256.0  # the rasterizer's sub-pixel grid: test vertices on it are not moved by snapping


def on_grid(t: Tensor) -> Tensor:
    return torch.round(t * GRID) / GRID


def reference(verts: Tensor, tris: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Brute-force float64 rasterization of one image, every triangle at every pixel centre.

    A centre on an edge counts as inside iff moving it by an infinitesimal (ε, ε²) moves it
    inside (so exactly one of two triangles sharing the edge gets it).

    Args:
        verts: ``(V, 3)`` screen-space vertices on the 1/256 grid.
        tris: ``(F, 3)``.

    Returns:
        coverage ``(F, H, W)`` bool, interpolated 1/depth ``(F, H, W)``, and perspective-correct
        barycentrics ``(F, H, W, 3)``, all float64.
    """
    v = verts.double()[tris]  # (F, 3, 3)
    ii, jj = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px = (jj + 0.5).double().view(1, height, width)
    py = (ii + 0.5).double().view(1, height, width)

    def cross_to(a: Tensor, b: Tensor, x: Tensor, y: Tensor) -> Tensor:  # (b - a) × (p - a)
        return (b[:, 0, None, None] - a[:, 0, None, None]) * (y - a[:, 1, None, None]) - (
            b[:, 1, None, None] - a[:, 1, None, None]
        ) * (x - a[:, 0, None, None])

    area = (v[:, 1, 0] - v[:, 0, 0]) * (v[:, 2, 1] - v[:, 0, 1]) - (v[:, 1, 1] - v[:, 0, 1]) * (v[:, 2, 0] - v[:, 0, 0])
    orient = torch.sign(area)[:, None, None]
    inside = (area != 0)[:, None, None].expand(-1, height, width).clone()
    weights = []
    for k in range(3):
        a, b = v[:, (k + 1) % 3], v[:, (k + 2) % 3]
        n = cross_to(a, b, px, py) * orient
        # Perturbed sign: d/dε of n(p + (ε, ε²)) is -dy·orient, then dx·orient.
        dx = ((b[:, 0] - a[:, 0]) * orient[:, 0, 0])[:, None, None]
        dy = ((b[:, 1] - a[:, 1]) * orient[:, 0, 0])[:, None, None]
        tie = torch.where(dy != 0, -dy > 0, dx > 0)
        inside &= (n > 0) | ((n == 0) & tie)
        weights.append(n)
    screen = torch.stack(weights, -1) / (area.abs()[:, None, None, None])
    over_w = screen / v[:, None, None, :, 2]
    zinv = over_w.sum(-1)
    return inside, zinv, over_w / zinv.unsqueeze(-1)


def reference_winner(verts: Tensor, tris: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest covering triangle per pixel (−1 if none), its barycentrics, and the gap in 1/depth to
    the runner-up (inf where fewer than two triangles cover the pixel)."""
    inside, zinv, bary = reference(verts, tris, height, width)
    score = torch.where(inside, zinv, torch.full_like(zinv, -torch.inf))
    top2 = score.topk(min(2, score.shape[0]), dim=0).values
    winner = score.argmax(0)
    winner = torch.where(inside.any(0), winner, -1)
    gap = (top2[0] - top2[1]) if top2.shape[0] > 1 else torch.full_like(top2[0], torch.inf)
    gap = torch.where(torch.isfinite(gap) | (top2[0] > -torch.inf), gap, torch.inf)
    bary_w = torch.gather(bary, 0, winner.clamp(min=0)[None, :, :, None].expand(1, -1, -1, 3))[0]
    bary_w[winner < 0] = 0
    return winner, bary_w, gap


def jittered_mesh(n_x: int, n_y: int, lo: float, hi_x: float, hi_y: float, seed: int) -> tuple[Tensor, Tensor]:
    """A regular grid with jittered vertices (no fold-overs) and random cell diagonals.

    Returns ``(V, 2)`` on-grid positions and ``(F, 3)`` triangles of both windings.
    """
    gen = torch.Generator().manual_seed(seed)
    xs = torch.linspace(lo, hi_x, n_x, dtype=torch.float64)
    ys = torch.linspace(lo, hi_y, n_y, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    step = min(float(xs[1] - xs[0]), float(ys[1] - ys[0]))
    jitter = (torch.rand(n_y, n_x, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.6 * step
    pos = torch.stack([gx, gy], -1) + jitter
    # Some vertices exactly on pixel centres / pixel-centre lines, to exercise the tie rule.
    snap = torch.rand(n_y, n_x, generator=gen) < 0.3
    pos[snap] = torch.floor(pos[snap]) + 0.5
    pos = on_grid(pos).view(-1, 2)
    idx = torch.arange(n_x * n_y).view(n_y, n_x)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    flip = torch.rand(n_y - 1, n_x - 1, generator=gen) < 0.5
    t1 = torch.where(flip[..., None], torch.stack([a, b, d], -1), torch.stack([a, b, c], -1))
    t2 = torch.where(flip[..., None], torch.stack([b, c, d], -1), torch.stack([a, c, d], -1))
    tris = torch.cat([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    reverse = torch.rand(tris.shape[0], generator=gen) < 0.5  # mixed windings
    tris[reverse] = tris[reverse].flip(1)
    return pos, tris


@pytest.fixture(scope="module")
def rasterizer() -> TorchRasterizer:
    return TorchRasterizer()


def test_doctests() -> None:
    assert doctest.testmod(raster_torch).failed == 0


def test_name_and_factory() -> None:
    from ifn.render.rasterizer import create_rasterizer

    assert TorchRasterizer.name == "torch"
    assert isinstance(create_rasterizer("torch", "cpu"), TorchRasterizer)


@pytest.mark.parametrize("reverse", [False, True])
def test_square_on_pixel_centres_fill_rule(rasterizer: TorchRasterizer, reverse: bool) -> None:
    # Square [2.5, 6.5] x [3.5, 7.5]: every edge runs through pixel centres. Top-left rule:
    # left column j = 2 and top row i = 3 are in; right column j = 6 and bottom row i = 7 out.
    verts = torch.tensor([[[2.5, 3.5, 1.0], [6.5, 3.5, 1.0], [6.5, 7.5, 1.0], [2.5, 7.5, 1.0]]])
    tris = torch.tensor([[0, 1, 2], [0, 2, 3]])  # upper-right and lower-left halves
    if reverse:
        tris = tris.flip(1)
    ids = rasterizer.rasterize(verts, tris, (10, 9)).triangle_id[0]
    expected = torch.full((10, 9), -1)
    for i in range(3, 7):
        for j in range(2, 6):
            # The diagonal (j - 2 == i - 3) has the upper-right triangle on its left side:
            # it is that triangle's left edge, so it owns the centres on it.
            expected[i, j] = 0 if j - 2 >= i - 3 else 1
    assert torch.equal(ids, expected)
    assert int((ids >= 0).sum()) == 16


def test_square_off_centres(rasterizer: TorchRasterizer) -> None:
    # [2.3, 6.8] x [3.1, 7.9] contains the centres of columns 2..6 and rows 3..7: 25 pixels.
    x0, x1, y0, y1 = on_grid(torch.tensor([2.3, 6.8, 3.1, 7.9])).tolist()
    verts = torch.tensor([[[x0, y0, 2.0], [x1, y0, 2.0], [x1, y1, 2.0], [x0, y1, 2.0]]])
    frags = rasterizer.rasterize(verts, torch.tensor([[0, 1, 2], [0, 2, 3]]), (10, 9))
    covered = frags.triangle_id[0] >= 0
    assert int(covered.sum()) == 25
    assert covered[3:8, 2:7].all()
    assert torch.equal(frags.mask[0, 0].bool(), covered)


def test_mesh_has_no_cracks_and_no_double_coverage(rasterizer: TorchRasterizer) -> None:
    height, width = 20, 23
    pos, tris = jittered_mesh(9, 8, -3.0, width + 3.0, height + 3.0, seed=1)  # overhangs every side
    n_faces = tris.shape[0]
    depth = torch.full((pos.shape[0], 1), 5.0, dtype=torch.float64)
    mesh = torch.cat([pos, depth], 1).float()

    # Each triangle alone (its own three vertex copies on screen, everything else far away):
    # the per-pixel count of triangles that claim the centre must be exactly 1.
    alone = torch.full((n_faces, 3 * n_faces, 3), -1000.0)
    alone[..., 2] = 1.0
    own = torch.arange(3 * n_faces).view(n_faces, 3)
    alone[torch.arange(n_faces)[:, None], own] = mesh[tris]
    single = rasterizer.rasterize(alone, own, (height, width)).triangle_id
    counts = (single >= 0).sum(0)
    assert int(counts.min()) == 1 and int(counts.max()) == 1

    # The shared-vertex mesh picks the same owner, and so does the float64 reference.
    ids = rasterizer.rasterize(mesh[None], tris, (height, width)).triangle_id[0]
    owner = torch.where(single >= 0, torch.arange(n_faces)[:, None, None], 0).sum(0)
    assert torch.equal(ids, owner)
    inside, _, _ = reference(mesh, tris, height, width)
    assert int(inside.sum(0).min()) == 1 and int(inside.sum(0).max()) == 1
    assert torch.equal(inside.double().argmax(0), ids)


@pytest.mark.parametrize("swap", [False, True])
def test_nearer_triangle_wins_overlap(rasterizer: TorchRasterizer, swap: bool) -> None:
    near = [[1.0, 1.0, 2.0], [12.0, 2.0, 2.0], [3.0, 11.0, 2.0]]
    far = [[4.0, 3.0, 9.0], [15.0, 4.0, 9.0], [7.0, 14.0, 9.0]]
    verts = torch.tensor([near + far])
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
    if swap:
        tris = tris.flip(0)
    ids = rasterizer.rasterize(verts, tris, (16, 16)).triangle_id[0]
    inside, _, _ = reference(verts[0], torch.tensor([[0, 1, 2], [3, 4, 5]]), 16, 16)
    near_id, far_id = (1, 0) if swap else (0, 1)
    overlap = inside[0] & inside[1]
    assert overlap.sum() > 5
    assert (ids[inside[0]] == near_id).all()
    assert (ids[inside[1] & ~inside[0]] == far_id).all()
    assert (ids[~inside.any(0)] == -1).all()


def test_interpenetrating_triangles_match_reference(rasterizer: TorchRasterizer) -> None:
    # Two tilted triangles that cross: the winner switches along the intersection line.
    verts = torch.tensor(
        [[[0.5, 1.0, 2.0], [17.0, 1.5, 8.0], [2.0, 15.0, 2.0], [16.5, 0.5, 3.0], [15.0, 15.5, 3.0], [0.0, 9.0, 7.0]]]
    )
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterizer.rasterize(verts, tris, (16, 18))
    winner, bary, gap = reference_winner(verts[0], tris, 16, 18)
    clear = gap > 1e-5  # ignore centres (almost) on the intersection line
    assert (winner[clear] == 0).any() and (winner[clear] == 1).any()
    assert torch.equal(frags.triangle_id[0][clear], winner[clear])
    assert torch.allclose(frags.barycentric[0][clear].double(), bary[clear], atol=1e-5)


def test_random_triangles_match_float64_reference(rasterizer: TorchRasterizer) -> None:
    gen = torch.Generator().manual_seed(3)
    height, width = 17, 21
    for _ in range(6):
        xy = on_grid(torch.rand(14, 2, generator=gen, dtype=torch.float64) * 30.0 - 5.0)
        depth = torch.rand(14, 1, generator=gen, dtype=torch.float64) * 8.0 + 1.0
        verts = torch.cat([xy, depth], 1).float()
        tris = torch.randint(0, 14, (12, 3), generator=gen)
        frags = rasterizer.rasterize(verts[None], tris, (height, width))
        winner, bary, gap = reference_winner(verts, tris, height, width)
        clear = gap > 1e-6  # exact depth ties (shared vertices/edges) may go either way
        assert torch.equal(frags.triangle_id[0][clear], winner[clear])
        assert torch.allclose(frags.barycentric[0][clear].double(), bary[clear], atol=1e-5, rtol=0)
        empty = frags.triangle_id[0] < 0
        assert (frags.barycentric[0][empty] == 0).all()
        assert torch.allclose(frags.barycentric[0][~empty].sum(-1), torch.ones(()), atol=1e-6)


def test_equal_depth_barycentrics_reproduce_pixel_centres(rasterizer: TorchRasterizer) -> None:
    pos, tris = jittered_mesh(6, 5, 0.0, 16.0, 12.0, seed=2)
    verts = torch.cat([pos, torch.full((pos.shape[0], 1), 3.0, dtype=torch.float64)], 1).float()[None]
    frags = rasterizer.rasterize(verts, tris, (12, 16))
    xy = interpolate(verts[..., :2], frags, tris)[0]  # (2, H, W)
    covered = frags.triangle_id[0] >= 0
    ii, jj = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    assert covered.sum() > 150
    assert torch.allclose(xy[0][covered], (jj + 0.5)[covered], atol=1e-4)
    assert torch.allclose(xy[1][covered], (ii + 0.5)[covered], atol=1e-4)


def test_perspective_correct_interpolation_of_3d_attribute(rasterizer: TorchRasterizer) -> None:
    # Screen vertices with very different depths; their camera-space points (focal f,
    # principal point c) span a plane. At every covered pixel the interpolated camera-space
    # position must be the ray-plane intersection, which screen-linear weights would miss.
    f, c = 20.0, 8.0
    screen = torch.tensor([[1.0, 2.0, 1.5], [15.25, 4.5, 9.0], [5.5, 15.0, 3.0]], dtype=torch.float64)
    cam = torch.stack([(screen[:, 0] - c) * screen[:, 2] / f, (screen[:, 1] - c) * screen[:, 2] / f, screen[:, 2]], 1)
    frags = rasterizer.rasterize(screen.float()[None], torch.tensor([[0, 1, 2]]), (16, 16))
    covered = frags.triangle_id[0] >= 0
    assert covered.sum() > 40
    point = interpolate(cam.float()[None], frags, torch.tensor([[0, 1, 2]]))[0].permute(1, 2, 0).double()
    ii, jj = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ray = torch.stack([(jj + 0.5 - c) / f, (ii + 0.5 - c) / f, torch.ones_like(ii)], -1).double()
    normal = torch.linalg.cross(cam[1] - cam[0], cam[2] - cam[0])
    t = (cam[0] @ normal) / (ray @ normal)  # ray(t) = t · (x, y, 1) meets the plane
    expected = ray * t.unsqueeze(-1)
    assert torch.allclose(point[covered], expected[covered], atol=1e-4, rtol=1e-5)
    # Depth is linear in 3D, so it interpolates exactly; screen-linear weights would not.
    depth = interpolate(screen[:, 2:].float()[None], frags, torch.tensor([[0, 1, 2]]))[0, 0]
    assert torch.allclose(depth[covered].double(), expected[covered][:, 2], atol=1e-4, rtol=1e-5)
    weights = frags.barycentric[0][covered].double()
    screen_weights = weights * screen[:, 2] / (weights * screen[:, 2]).sum(-1, keepdim=True)
    assert ((screen_weights @ screen[:, 2]) - expected[covered][:, 2]).abs().max() > 0.5


def test_partly_offscreen_and_huge_triangles(rasterizer: TorchRasterizer) -> None:
    # Small triangles, triangles crossing the border, and huge ones (which take the int64 path),
    # in one call.
    height, width = 14, 19
    verts = torch.tensor(
        [
            [[-4.0, -3.0, 2.0], [8.0, 2.0, 2.0], [1.0, 9.0, 2.0]],  # crosses the top-left corner
            [[15.0, 10.0, 1.0], [30.0, 12.5, 1.0], [17.5, 25.0, 1.0]],  # crosses the bottom-right
            [[-900.0, -700.0, 6.0], [1200.0, 4.0, 6.0], [3.0, 1100.0, 6.0]],  # huge, behind the others
            [[4.0, 4.0, 0.5], [6.5, 4.0, 0.5], [4.0, 6.0, 0.5]],  # small, in front
        ]
    ).view(-1, 3)
    tris = torch.arange(12).view(4, 3)
    frags = rasterizer.rasterize(verts[None], tris, (height, width))
    winner, bary, _ = reference_winner(verts, tris, height, width)
    assert (winner == 2).sum() > 50 and (winner == 3).any() and (winner == 1).any()
    assert torch.equal(frags.triangle_id[0], winner)
    assert torch.allclose(frags.barycentric[0].double(), bary, atol=1e-5)


def test_offscreen_degenerate_and_invalid_triangles_draw_nothing(rasterizer: TorchRasterizer) -> None:
    verts = torch.tensor(
        [
            [[-9.0, 1.0, 1.0], [-2.0, 3.0, 1.0], [-5.0, 8.0, 1.0]],  # left of the image
            [[3.0, 20.0, 1.0], [9.0, 30.0, 1.0], [1.0, 25.0, 1.0]],  # below it
            [[1.0, 1.0, 1.0], [5.0, 5.0, 1.0], [9.0, 9.0, 1.0]],  # collinear through centres
            [[2.0, 2.0, 1.0], [2.0, 2.0, 1.0], [8.0, 3.0, 1.0]],  # two equal vertices
            [[1.0, 1.0, -1.0], [9.0, 1.0, 2.0], [1.0, 9.0, 2.0]],  # behind the camera
            [[1.0, 1.0, float("nan")], [9.0, 1.0, 2.0], [1.0, 9.0, 2.0]],  # not finite
        ]
    ).view(-1, 3)
    frags = rasterizer.rasterize(verts[None], torch.arange(18).view(6, 3), (10, 10))
    assert (frags.triangle_id == -1).all()
    assert (frags.barycentric == 0).all()
    # A valid triangle next to them still draws.
    frags = rasterizer.rasterize(
        torch.cat([verts, torch.tensor([[0.0, 0.0, 1.0], [9.0, 0.0, 1.0], [0.0, 9.0, 1.0]])])[None],
        torch.arange(21).view(7, 3),
        (10, 10),
    )
    assert set(frags.triangle_id.unique().tolist()) == {-1, 6}


@pytest.mark.parametrize(
    ("verts_shape", "tris", "size"),
    [
        ((5, 3), torch.tensor([[0, 1, 2]]), (4, 4)),
        ((1, 5, 2), torch.tensor([[0, 1, 2]]), (4, 4)),
        ((1, 5, 3), torch.tensor([[0, 1, 2, 3]]), (4, 4)),
        ((1, 5, 3), torch.tensor([0, 1, 2]), (4, 4)),
        ((1, 5, 3), torch.tensor([[0.0, 1.0, 2.0]]), (4, 4)),
        ((1, 5, 3), torch.tensor([[0, 1, 5]]), (4, 4)),
        ((1, 5, 3), torch.tensor([[0, -1, 2]]), (4, 4)),
        ((1, 5, 3), torch.tensor([[0, 1, 2]]), (0, 4)),
        ((1, 5, 3), torch.tensor([[0, 1, 2]]), (4,)),
    ],
)
def test_bad_inputs_raise(rasterizer: TorchRasterizer, verts_shape: tuple, tris: Tensor, size: tuple) -> None:
    with pytest.raises(ValueError):
        rasterizer.rasterize(torch.rand(verts_shape) + 1.0, tris, size)


def test_empty_inputs(rasterizer: TorchRasterizer) -> None:
    frags = rasterizer.rasterize(torch.rand(2, 4, 3) + 1.0, torch.zeros(0, 3, dtype=torch.int64), (3, 5))
    assert frags.triangle_id.shape == (2, 3, 5) and (frags.triangle_id == -1).all()
    assert frags.barycentric.shape == (2, 3, 5, 3) and (frags.barycentric == 0).all()


def test_batch_elements_are_independent(rasterizer: TorchRasterizer) -> None:
    pos, tris = jittered_mesh(7, 6, -2.0, 20.0, 18.0, seed=4)
    gen = torch.Generator().manual_seed(5)
    batch = []
    for _ in range(3):  # different shears, shifts and depth ramps per element
        m = torch.eye(2, dtype=torch.float64) + (torch.rand(2, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.6
        xy = on_grid(pos @ m.T + torch.rand(2, generator=gen, dtype=torch.float64) * 4.0)
        depth = 3.0 + 0.2 * xy[:, :1] + torch.rand(1, generator=gen, dtype=torch.float64)
        batch.append(torch.cat([xy, depth], 1).float())
    verts = torch.stack(batch)
    together = rasterizer.rasterize(verts, tris, (18, 20))
    for b in range(3):
        alone = rasterizer.rasterize(verts[b : b + 1], tris, (18, 20))
        assert torch.equal(together.triangle_id[b], alone.triangle_id[0])
        assert torch.equal(together.barycentric[b], alone.barycentric[0])
    assert not torch.equal(together.triangle_id[0], together.triangle_id[1])


def test_no_gradient_through_fragments_but_through_interpolate(rasterizer: TorchRasterizer) -> None:
    verts = torch.tensor([[[0.0, 0.0, 1.0], [8.0, 0.0, 2.0], [0.0, 8.0, 3.0]]], requires_grad=True)
    tris = torch.tensor([[0, 1, 2]])
    frags = rasterizer.rasterize(verts, tris, (8, 8))
    assert not frags.barycentric.requires_grad and not frags.triangle_id.requires_grad
    colours = torch.rand(1, 3, 3, requires_grad=True)
    interpolate(colours, frags, tris).sum().backward()
    # d(sum)/d(colour of vertex k) = Σ over covered pixels of b_k, for every channel.
    per_vertex = frags.barycentric.sum((0, 1, 2))
    assert torch.allclose(colours.grad[0], per_vertex[:, None].expand(3, 3))


def test_face_sized_batch_is_consistent(rasterizer: TorchRasterizer) -> None:
    # A larger mixed workload through the grouping machinery (many box-size classes, merged
    # groups): every covered pixel's winner agrees with the reference where unambiguous.
    pos, tris = jittered_mesh(30, 28, 4.0, 60.0, 52.0, seed=6)
    ripple = 4.0 + 0.5 * torch.sin(pos[:, :1] * 0.3) + 0.3 * torch.cos(pos[:, 1:] * 0.2)
    big = torch.tensor([[-5.0, -5.0], [70.0, 10.0], [20.0, 70.0]], dtype=torch.float64)
    verts = torch.cat([torch.cat([pos, ripple], 1), torch.cat([big, torch.full((3, 1), 6.0, dtype=torch.float64)], 1)])
    tris = torch.cat([tris, torch.tensor([[pos.shape[0], pos.shape[0] + 1, pos.shape[0] + 2]])])
    frags = rasterizer.rasterize(verts.float()[None], tris, (56, 64))
    winner, bary, gap = reference_winner(verts.float(), tris, 56, 64)
    clear = gap > 1e-6
    assert clear.float().mean() > 0.95
    assert torch.equal(frags.triangle_id[0][clear], winner[clear])
    assert torch.allclose(frags.barycentric[0][clear].double(), bary[clear], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree() -> None:
    pos, tris = jittered_mesh(40, 36, -6.0, 90.0, 80.0, seed=7)
    gen = torch.Generator().manual_seed(8)
    batch = []
    for _ in range(4):
        xy = on_grid(pos + torch.rand(2, generator=gen, dtype=torch.float64) * 5.0)
        depth = 5.0 + 0.05 * xy[:, :1] + 0.2 * torch.sin(xy[:, 1:] * 0.4)
        batch.append(torch.cat([xy, depth], 1).float())
    verts = torch.stack(batch)
    cpu = TorchRasterizer().rasterize(verts, tris, (72, 80))
    cuda = TorchRasterizer().rasterize(verts.cuda(), tris.cuda(), (72, 80))
    assert cuda.triangle_id.device.type == "cuda"
    assert torch.equal(cpu.triangle_id, cuda.triangle_id.cpu())
    assert torch.allclose(cpu.barycentric, cuda.barycentric.cpu(), atol=1e-6)
