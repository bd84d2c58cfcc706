from __future__ import annotations

import pytest
import torch

from ifn.facemodel.regions import FACE_OUTLINE, MOUTH_INTERIOR, face_region_mask, points_in_polygon, polygon_mask


def test_outline_is_jaw_then_brows_backwards():
    assert FACE_OUTLINE[:17] == tuple(range(17))
    assert FACE_OUTLINE[17:] == (26, 25, 24, 23, 22, 21, 20, 19, 18, 17)
    assert MOUTH_INTERIOR == (60, 61, 62, 63, 64, 65, 66, 67)


def test_points_in_concave_polygon():
    # An L shape: the notch (1.5, 1.5) is outside.
    poly = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0], [1.0, 2.0], [0.0, 2.0]])
    pts = torch.tensor([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5], [3.0, 0.5], [-0.1, 1.0]])
    assert points_in_polygon(pts, poly).tolist() == [True, True, True, False, False, False]


def test_polygon_mask_counts_pixel_centres():
    square = torch.tensor([[[2.0, 3.0], [7.0, 3.0], [7.0, 5.0], [2.0, 5.0]]])
    mask = polygon_mask(square, (10, 10))
    # Pixel centres x in {2.5..6.5} (5 columns), y in {3.5, 4.5} (2 rows).
    assert mask.sum().item() == 10
    assert mask[0, 3:5, 2:7].all()


def test_face_region_mask_removes_the_mouth():
    landmarks = torch.zeros(1, 68, 2)
    outline = torch.tensor([[10.0, 10.0], [90.0, 10.0], [90.0, 90.0], [10.0, 90.0]])
    for k, i in enumerate(FACE_OUTLINE):
        landmarks[0, i] = outline[min(k * 4 // len(FACE_OUTLINE), 3)]
    landmarks[0, list(FACE_OUTLINE)] = torch.stack(
        [outline[0]] * 7 + [outline[1]] * 7 + [outline[2]] * 7 + [outline[3]] * 6
    )
    mouth = torch.tensor([[40.0, 60.0], [60.0, 60.0], [60.0, 70.0], [40.0, 70.0]])
    landmarks[0, list(MOUTH_INTERIOR)] = torch.cat([mouth, mouth[[3, 2, 1, 0]]])[[0, 0, 1, 1, 2, 2, 3, 3]]
    mask = face_region_mask(landmarks, (100, 100))
    assert mask.shape == (1, 1, 100, 100)
    assert mask[0, 0, 50, 50] == 1 and mask[0, 0, 5, 5] == 0 and mask[0, 0, 65, 50] == 0
    assert mask.sum().item() == 80 * 80 - 20 * 10


def test_face_region_mask_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, 68, 2\)"):
        face_region_mask(torch.zeros(1, 5, 2), (10, 10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_polygon_mask_equals_the_point_test_at_every_pixel_centre(dtype):
    """The scanline rasterization answers exactly as points_in_polygon on pixel centres,
    also for vertices and edges that pass through pixel centres (ties)."""
    gen = torch.Generator().manual_seed(0)
    height, width = 37, 53
    ys = torch.arange(height, dtype=dtype) + 0.5
    xs = torch.arange(width, dtype=dtype) + 0.5
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(1, -1, 2)
    for trial in range(24):
        n = int(torch.randint(3, 30, (1,), generator=gen))
        polygon = (torch.rand(3, n, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height]) * 1.2 - 5)
        if trial % 2:
            polygon = polygon.round() + 0.5  # on pixel centres
        polygon = polygon.to(dtype)
        expected = points_in_polygon(centres.expand(3, -1, -1), polygon).reshape(3, height, width)
        assert torch.equal(polygon_mask(polygon, (height, width)), expected), trial
