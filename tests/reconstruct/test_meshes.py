"""Mesh files open in trimesh with every vertex, triangle and colour as written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from ifn.reconstruct.meshes import write_mesh


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_mesh_round_trip_keeps_order_positions_and_colours(tmp_path, suffix):
    rng = np.random.default_rng(0)
    vertices = torch.from_numpy(rng.normal(scale=50.0, size=(7, 3)))
    triangles = torch.tensor([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 0, 3]])
    colours = torch.from_numpy(rng.uniform(-0.2, 1.2, size=(7, 3)))  # clamped on writing
    path = write_mesh(tmp_path / f"face{suffix}", vertices, triangles, colours)
    mesh = trimesh.load(path, process=False, maintain_order=True)
    assert mesh.vertices.shape == (7, 3) and mesh.faces.tolist() == triangles.tolist()
    np.testing.assert_allclose(mesh.vertices, vertices.numpy(), atol=1e-4)
    expected = np.rint(np.clip(colours.numpy(), 0, 1) * 255).astype(np.uint8)
    assert mesh.visual.vertex_colors[:, :3].tolist() == expected.tolist()


def test_unknown_mesh_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.ply or \.obj"):
        write_mesh(tmp_path / "face.stl", torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(3, 3))
    assert not (tmp_path / "face.stl").exists()
