"""Mesh files of a reconstruction: PLY and OBJ with per-vertex colours, in millimetres.

Coordinates are the face model's (+x to the subject's left as seen by the camera, +y up,
+z towards the camera; the camera looks down −z), which is the Y-up convention Blender,
MeshLab and trimesh read OBJ/PLY files with. Every mesh holds all of the face model's
vertices and triangles, in the model's order, so vertex ``i`` of every file is the same
point of the face (e.g. for correspondences across photos) — including vertices that no
triangle uses, which some OBJ readers drop unless told to keep the order (trimesh:
``trimesh.load(path, process=False, maintain_order=True)``). trimesh writes the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import Tensor

from ifn.io import write_bytes_atomic

__all__ = ["MESH_FORMATS", "mesh_bytes", "write_mesh"]

#: File suffixes :func:`write_mesh` writes.
MESH_FORMATS = (".ply", ".obj")


def _colours_uint8(colours: Tensor | np.ndarray) -> np.ndarray:
    values = colours.detach().float().cpu().numpy() if isinstance(colours, Tensor) else np.asarray(colours, np.float64)
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def mesh_bytes(
    vertices: Tensor | np.ndarray, triangles: Tensor | np.ndarray, colours: Tensor | np.ndarray, suffix: str
) -> bytes:
    """The bytes of one mesh file.

    Args:
        vertices: ``(V, 3)`` positions in millimetres.
        triangles: ``(F, 3)`` vertex indices, counter-clockwise seen from outside.
        colours: ``(V, 3)`` RGB in [0, 1] (clamped, stored as 8-bit).
        suffix: ``".ply"`` (binary little-endian) or ``".obj"`` (``v x y z r g b`` lines).

    Returns:
        The file's content.

    Raises:
        ValueError: an unknown suffix or shapes that do not match.
    """
    import trimesh

    if suffix not in MESH_FORMATS:
        raise ValueError(f"mesh files end in {' or '.join(MESH_FORMATS)}, got {suffix!r}")
    v = vertices.detach().double().cpu().numpy() if isinstance(vertices, Tensor) else np.asarray(vertices, np.float64)
    f = triangles.detach().cpu().numpy() if isinstance(triangles, Tensor) else np.asarray(triangles)
    c = _colours_uint8(colours)
    if v.ndim != 2 or v.shape[1] != 3 or c.shape != v.shape or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"need vertices (V, 3), colours (V, 3), triangles (F, 3); got {v.shape}, {c.shape}, {f.shape}")
    rgba = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
    # process=False: keep every vertex and the model's order (no merging, no reordering).
    mesh = trimesh.Trimesh(vertices=v, faces=f.astype(np.int64), vertex_colors=rgba, process=False)
    if suffix == ".ply":
        return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False)
    text = trimesh.exchange.obj.export_obj(
        mesh,
        include_color=True,
        include_normals=False,
        include_texture=False,
        header="ifn reconstruction (millimetres, +y up)",
    )
    return text.encode() if isinstance(text, str) else bytes(text)


def write_mesh(
    path: str | os.PathLike[str],
    vertices: Tensor | np.ndarray,
    triangles: Tensor | np.ndarray,
    colours: Tensor | np.ndarray,
) -> Path:
    """Write a mesh atomically; the format follows the suffix (:data:`MESH_FORMATS`).

    Returns:
        The path written.
    """
    path = Path(path)
    write_bytes_atomic(path, mesh_bytes(vertices, triangles, colours, path.suffix.lower()))
    return path
