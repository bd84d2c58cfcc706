from __future__ import annotations

import math

import pytest
import torch

from ifn.render.shading import sh_basis, sh_irradiance, vertex_normals


def _closed_form(n: torch.Tensor) -> torch.Tensor:
    """The 9 real SH Y_lm written out from their textbook constants, times √(4π)."""
    x, y, z = n.tolist()
    y00 = 0.5 * math.sqrt(1 / math.pi)
    y1 = math.sqrt(3 / (4 * math.pi))
    y2a = 0.5 * math.sqrt(15 / math.pi)
    y20 = 0.25 * math.sqrt(5 / math.pi)
    y22 = 0.25 * math.sqrt(15 / math.pi)
    ys = [y00, y1 * y, y1 * z, y1 * x, y2a * x * y, y2a * y * z, y20 * (3 * z * z - 1), y2a * x * z, y22 * (x * x - y * y)]
    return torch.tensor(ys, dtype=torch.float64) * math.sqrt(4 * math.pi)


@pytest.mark.parametrize(
    "normal",
    [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.6, 0.0, 0.8), (1 / math.sqrt(3),) * 3],
)
def test_basis_matches_closed_form(normal):
    n = torch.tensor(normal, dtype=torch.float64)
    assert torch.allclose(sh_basis(n), _closed_form(n), atol=1e-12)


def test_basis_is_orthonormal_on_the_sphere():
    # Monte-Carlo check of ∫ H_i H_j dω / 4π = δ_ij: the normalisation of the convention.
    gen = torch.Generator().manual_seed(0)
    n = torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    n = n / n.norm(dim=1, keepdim=True)
    h = sh_basis(n)
    gram = h.T @ h / n.shape[0]
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=0.02)


def test_irradiance_known_values():
    normals = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    coeffs = torch.zeros(1, 9, 3, dtype=torch.float64)
    coeffs[0, 0] = torch.tensor([1.0, 0.5, 0.25])  # ambient, coloured
    coeffs[0, 2] = 0.1  # light from the front (+z)
    irradiance = sh_irradiance(normals, coeffs)
    front = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) + 0.1 * math.sqrt(3)
    up = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(irradiance[0, 0], front)
    assert torch.allclose(irradiance[0, 1], up)


def test_irradiance_rejects_bad_coefficients():
    with pytest.raises(ValueError, match=r"\(B, 9, C\)"):
        sh_irradiance(torch.zeros(1, 2, 3), torch.zeros(1, 27))


def test_vertex_normals_of_a_ccw_square_point_up_z():
    vertices = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    triangles = torch.tensor([[0, 1, 2], [0, 2, 3]])
    normals = vertex_normals(vertices, triangles)
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(1, 4, 3))
    flipped = vertex_normals(vertices, triangles[:, [0, 2, 1]])
    assert torch.allclose(flipped, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).expand(1, 4, 3))


def test_vertex_normals_are_area_weighted():
    # Vertex 0 is shared by a big triangle facing +z (area 8) and a small one facing +x (area 0.5).
    vertices = torch.tensor(
        [[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64
    )
    triangles = torch.tensor([[0, 1, 2], [0, 4, 3]])
    normals = vertex_normals(vertices, triangles)
    expected = torch.tensor([0.5, 0.0, 8.0], dtype=torch.float64)
    assert torch.allclose(normals[0, 0], expected / expected.norm(), atol=1e-12)
    assert torch.allclose(normals[0, 3], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(normals.norm(dim=-1), torch.ones(1, 5, dtype=torch.float64))


def test_vertex_normals_gradcheck():
    vertices = torch.tensor([[[0.0, 0.0, 0.1], [1.0, 0.0, 0.0], [1.0, 1.2, 0.3], [0.0, 1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    triangles = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert torch.autograd.gradcheck(lambda v: vertex_normals(v, triangles), (vertices,))
