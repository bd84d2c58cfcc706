from __future__ import annotations

import math

import pytest
import torch

from ifn.render.camera import apply_framing, euler_to_rotation, framing_transform, perspective_project


@pytest.mark.parametrize(
    ("angles", "axis", "moved", "expected"),
    [
        # α pitches about x: +90° takes +y (up) to +z (towards the camera).
        ((math.pi / 2, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        # β yaws about y: +90° takes +z to +x.
        ((0.0, math.pi / 2, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)),
        # γ rolls about z: +90° takes +x to +y.
        ((0.0, 0.0, math.pi / 2), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    ],
)
def test_single_axis_rotations(angles, axis, moved, expected):
    rotation = euler_to_rotation(torch.tensor(angles, dtype=torch.float64))
    # The rotation axis is fixed, the moved vector goes where a right-handed rotation takes it.
    assert torch.allclose(rotation @ torch.tensor(axis, dtype=torch.float64), torch.tensor(axis, dtype=torch.float64))
    assert torch.allclose(rotation @ torch.tensor(moved, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_rotation_order_is_x_then_y_then_z():
    a, b, c = 0.3, -0.5, 0.2
    rotation = euler_to_rotation(torch.tensor([a, b, c], dtype=torch.float64))
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]], dtype=torch.float64)
    ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]], dtype=torch.float64)
    rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(rotation, rz @ ry @ rx, atol=1e-12)


def test_rotation_is_orthonormal_and_batched():
    angles = torch.rand(4, 5, 3, dtype=torch.float64) * 2 - 1
    rotation = euler_to_rotation(angles)
    assert rotation.shape == (4, 5, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(4, 5, 3, 3)
    assert torch.allclose(rotation @ rotation.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(4, 5, dtype=torch.float64))


def test_rotation_gradcheck():
    angles = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(euler_to_rotation, (angles,))


def test_rotation_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(\*, 3\)"):
        euler_to_rotation(torch.zeros(2, 4))


def test_perspective_projection_flips_y_and_divides_by_depth():
    points = torch.tensor([[[10.0, 20.0, 100.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    image, depth = perspective_project(points, camera_distance=600.0)
    assert torch.allclose(depth, torch.tensor([[500.0, 600.0]], dtype=torch.float64))
    assert torch.allclose(image[0, 0], torch.tensor([10.0 / 500.0, -20.0 / 500.0], dtype=torch.float64))
    assert torch.allclose(image[0, 1], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(("width", "height"), [(4.0, 1.0), (1.0, 3.0), (2.0, 2.0)])
def test_framing_fits_bbox_touching_two_opposite_sides(width, height):
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(3, 30, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height], dtype=torch.float64) + 5.0
    scale, offset = framing_transform(points, (240, 240))
    framed = apply_framing(points, scale, offset)
    lo, hi = framed.amin(dim=1), framed.amax(dim=1)
    assert (lo >= -1e-9).all() and (hi <= 240 + 1e-9).all()
    touching_x = torch.isclose(lo[:, 0], torch.zeros(3, dtype=torch.float64)) & torch.isclose(hi[:, 0], torch.full((3,), 240.0, dtype=torch.float64))
    touching_y = torch.isclose(lo[:, 1], torch.zeros(3, dtype=torch.float64)) & torch.isclose(hi[:, 1], torch.full((3,), 240.0, dtype=torch.float64))
    assert (touching_x | touching_y).all()
    # Centred: the bbox centre is the image centre.
    assert torch.allclose((lo + hi) / 2, torch.full((3, 2), 120.0, dtype=torch.float64))
    # Uniform: the aspect ratio of the bbox is preserved.
    extent_in = points.amax(1) - points.amin(1)
    assert torch.allclose((hi - lo) / extent_in, scale.unsqueeze(-1).expand(3, 2))


def test_framing_margin_and_rectangular_output():
    points = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    scale, offset = framing_transform(points, (100, 200), margin=10.0)
    framed = apply_framing(points, scale, offset)
    assert torch.allclose(framed[0, 0], torch.tensor([60.0, 10.0]))
    assert torch.allclose(framed[0, 1], torch.tensor([140.0, 90.0]))


def test_framing_rejects_bad_shape():
    with pytest.raises(ValueError, match="B, L>=2, 2"):
        framing_transform(torch.zeros(2, 1, 2), (240, 240))
