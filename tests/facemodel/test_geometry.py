"""The shared field-painting helpers, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ifn.facemodel.geometry import (
    closest_point_on_polyline,
    distance_to_polyline,
    inside_polygon,
    signed_distance,
    smoothstep,
    triangle_normals,
)
from ifn.facemodel.regions import points_in_polygon

#: An L-shaped open polyline and points with hand-computed distances to it (open / closed).
L_LINE = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 3.0]])
L_POINTS = np.array([[2.0, 1.0], [5.0, 1.0], [-3.0, -4.0], [4.0, 5.0], [0.0, 3.0]])
L_OPEN = [1.0, 1.0, 5.0, 2.0, 3.0]
# Closing adds the segment (4, 3) -> (0, 0), on the line 3x = 4y: (2, 1) is |3·2 - 4·1| / 5 = 0.4
# from it, (0, 3) is |3·0 - 4·3| / 5 = 2.4.
L_CLOSED = [0.4, 1.0, 5.0, 2.0, 2.4]


def test_smoothstep_values_endpoints_and_shape() -> None:
    x = np.array([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    np.testing.assert_allclose(smoothstep(0.0, 1.0, x), [0.0, 0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0], rtol=0, atol=1e-15)
    # Rescaled interval: same curve in t = (x - 2) / 4.
    np.testing.assert_allclose(smoothstep(2.0, 6.0, np.array([3.0, 4.0])), [0.15625, 0.5], rtol=0, atol=1e-15)
    t = np.linspace(-0.5, 1.5, 201)
    s = smoothstep(0.0, 1.0, t)
    assert (np.diff(s) >= 0).all()  # monotonic
    np.testing.assert_allclose(s + smoothstep(0.0, 1.0, 1.0 - t), 1.0, atol=1e-15)  # point-symmetric about 0.5
    # Zero slope at both ends: s(ε) ≈ 3ε².
    assert smoothstep(0.0, 1.0, np.array([1e-3]))[0] == pytest.approx(3e-6 - 2e-9, rel=1e-9)
    assert smoothstep(0.0, 1.0, np.zeros((2, 3))).shape == (2, 3)


def test_smoothstep_degenerate_interval_is_a_step_and_reversed_edges_are_refused() -> None:
    np.testing.assert_array_equal(smoothstep(1.0, 1.0, np.array([0.5, 1.0, 1.0 + 1e-9, 3.0])), [0, 0, 1, 1])
    # An empty interval is widened to 1e-12: half-way up at 5e-13.
    assert smoothstep(0.0, 0.0, np.array([5e-13]))[0] == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="edge0 <= edge1"):
        smoothstep(1.0, 0.0, np.array([0.5]))


def test_distance_to_an_open_and_a_closed_polyline() -> None:
    np.testing.assert_allclose(distance_to_polyline(L_POINTS, L_LINE), L_OPEN, rtol=1e-12)
    np.testing.assert_allclose(distance_to_polyline(L_POINTS, L_LINE, closed=True), L_CLOSED, rtol=1e-12)


def test_distance_cutoff_saturates_and_skips_far_points() -> None:
    points = np.vstack([L_POINTS, [[100.0, 100.0]]])
    np.testing.assert_allclose(
        distance_to_polyline(points, L_LINE, cutoff=1.5), [1.0, 1.0, 1.5, 1.5, 1.5, 1.5], rtol=1e-12
    )
    # A cutoff beyond every distance changes nothing.
    exact = distance_to_polyline(points, L_LINE)
    np.testing.assert_allclose(distance_to_polyline(points, L_LINE, cutoff=1e3), exact, rtol=1e-12)
    assert exact[-1] == pytest.approx(math.hypot(96.0, 97.0))


def test_distance_in_3d_and_with_a_zero_length_segment() -> None:
    segment = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    np.testing.assert_allclose(distance_to_polyline(np.array([[3.0, 4.0, 5.0], [0.0, 0.0, -2.0]]), segment), [5.0, 2.0])
    repeated = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    np.testing.assert_allclose(distance_to_polyline(np.array([[0.0, -3.0], [-4.0, 3.0]]), repeated), [3.0, 5.0])
    with pytest.raises(ValueError, match="polyline"):
        distance_to_polyline(np.zeros((2, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="polyline"):
        distance_to_polyline(np.zeros((2, 3)), L_LINE)


def test_closest_point_on_polyline() -> None:
    closest = closest_point_on_polyline(L_POINTS, L_LINE, closed=True)
    np.testing.assert_allclose(closest, [[1.76, 1.32], [4.0, 1.0], [0.0, 0.0], [4.0, 3.0], [1.44, 1.08]], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(L_POINTS - closest, axis=1), L_CLOSED, rtol=1e-12)
    open_closest = closest_point_on_polyline(L_POINTS[[0, -1]], L_LINE)
    np.testing.assert_allclose(open_closest, [[2.0, 0.0], [0.0, 0.0]])


def test_inside_polygon_of_a_concave_polygon_matches_points_in_polygon() -> None:
    ell = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 1.0], [1.0, 1.0], [1.0, 4.0], [0.0, 4.0]])
    pts = np.array([[0.5, 3.0], [3.0, 3.0], [3.0, 0.5], [5.0, 5.0], [-1.0, 0.5]])
    assert inside_polygon(pts, ell).tolist() == [True, False, True, False, False]
    rng = np.random.default_rng(0)
    many = rng.uniform(-2.0, 6.0, (500, 2))
    expected = points_in_polygon(torch.from_numpy(many), torch.from_numpy(ell)).numpy()
    np.testing.assert_array_equal(inside_polygon(many, ell), expected)
    assert not inside_polygon(np.array([[10.0, 10.0]]), ell).any()


def test_signed_distance_is_positive_inside() -> None:
    square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    pts = np.array([[2.0, 1.0], [2.0, 2.0], [6.0, 2.0], [-1.0, -1.0]])
    np.testing.assert_allclose(signed_distance(pts, square), [1.0, 2.0, -2.0, -math.sqrt(2.0)], rtol=1e-12)
    np.testing.assert_allclose(signed_distance(pts, square, cutoff=1.5), [1.0, 1.5, -1.5, -1.414213562373095])


def test_triangle_normals_in_2d_and_3d() -> None:
    flat = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(triangle_normals(flat, np.array([[0, 1, 2], [0, 2, 1]])), [2.0, -2.0])
    space = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    normals = triangle_normals(space, np.array([[0, 1, 2], [0, 3, 4]]))
    np.testing.assert_array_equal(normals, [[0.0, 0.0, 1.0], [6.0, 0.0, 0.0]])
