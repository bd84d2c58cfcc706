"""Benchmark the pure-PyTorch rasterizer on a realistic batch of ICT-FaceKit faces.

The face region of the ICT-FaceKit neutral mesh (vertices ``[0, 9409)``, quads split into
two triangles) is scaled to millimetres, centred, rotated by random yaw/pitch in ±40° and
roll in ±15°, projected from 600 mm and framed into the image, as the renderer does in
training. Prints one JSON line.

Example:
    python benchmarks/raster.py --batch 32 --size 240 --device cpu --repeats 10

Note:
    The JSON line records glibc's ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
    (raising them keeps freed large blocks mapped, avoiding page faults on reuse). The
    rasterizer reuses its own large buffers, so they made no measurable difference to it.
    Timings are the minimum over ``--repeats`` runs, which suits a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ifn.render.camera import apply_framing, euler_to_rotation, framing_transform, perspective_project
from ifn.render.raster_torch import TorchRasterizer
from ifn.render.rasterizer import interpolate

DEFAULT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ICT-FaceKit-master.zip"
MESH_MEMBER = "ICT-FaceKit-master/FaceXModel/generic_neutral_mesh.obj"
FACE_VERTICES = 9409  # the ICT-FaceKit "face area": vertices [0, 9409)
CAMERA_DISTANCE_MM = 600.0


def load_face_mesh(zip_path: str | os.PathLike[str] = DEFAULT_ZIP) -> tuple[Tensor, Tensor]:
    """The ICT-FaceKit face area in millimetres.

    Args:
        zip_path: the ICT-FaceKit GitHub download zip.

    Returns:
        vertices ``(V, 3)`` float32 in mm (V = 9409) and triangles ``(F, 3)`` int64, quads
        ``(a, b, c, d)`` split into ``(a, b, c)`` and ``(a, c, d)``.
    """
    with zipfile.ZipFile(zip_path) as archive:
        text = archive.read(MESH_MEMBER).decode()
    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    for line in io.StringIO(text):
        if line.startswith("v "):
            vertices.append([float(v) for v in line.split()[1:4]])
        elif line.startswith("f "):
            corners = [int(c.split("/")[0]) - 1 for c in line.split()[1:]]
            if max(corners) >= FACE_VERTICES:
                continue
            for k in range(1, len(corners) - 1):  # fan: quads give (a,b,c), (a,c,d)
                faces.append([corners[0], corners[k], corners[k + 1]])
    verts = torch.tensor(np.asarray(vertices[:FACE_VERTICES], dtype=np.float32)) * 10.0  # cm -> mm
    return verts, torch.tensor(faces, dtype=torch.int64)


def make_batch(vertices: Tensor, batch: int, size: int, seed: int = 0) -> Tensor:
    """Randomly posed, projected and framed copies of a mesh.

    Args:
        vertices: ``(V, 3)`` model-space mesh in mm (+y up).
        batch: number of poses B.
        size: square image size in pixels.
        seed: RNG seed of the poses.

    Returns:
        ``(B, V, 3)`` screen-space ``(x_px, y_px, depth_mm)``.
    """
    gen = torch.Generator().manual_seed(seed)
    limits = torch.tensor([math.radians(40.0), math.radians(40.0), math.radians(15.0)])
    angles = (torch.rand(batch, 3, generator=gen) * 2.0 - 1.0) * limits  # pitch, yaw, roll
    centred = vertices - (vertices.amin(0) + vertices.amax(0)) / 2.0
    rotated = centred @ euler_to_rotation(angles).transpose(1, 2)  # (B, V, 3)
    xy, depth = perspective_project(rotated, CAMERA_DISTANCE_MM)
    scale, offset = framing_transform(xy, (size, size))
    return torch.cat([apply_framing(xy, scale, offset), depth.unsqueeze(-1)], dim=-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _min_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and print one JSON line; returns the same record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zip", default=str(DEFAULT_ZIP), help="path of ICT-FaceKit-master.zip")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    mesh, triangles = load_face_mesh(args.zip)
    screen = make_batch(mesh, args.batch, args.size, args.seed).to(device)
    triangles = triangles.to(device)
    colours = torch.rand(args.batch, mesh.shape[0], 3, generator=torch.Generator().manual_seed(1)).to(device)
    rasterizer = TorchRasterizer()
    image_size = (args.size, args.size)

    fragments = rasterizer.rasterize(screen, triangles, image_size)  # warm-up (allocator, kernels)
    interpolate(colours, fragments, triangles)
    raster_s = _min_time(lambda: rasterizer.rasterize(screen, triangles, image_size), args.repeats, device)
    interp_s = _min_time(lambda: interpolate(colours, fragments, triangles), args.repeats, device)

    record: dict[str, object] = {
        "benchmark": "raster_torch",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "image_size": args.size,
        "vertices": int(mesh.shape[0]),
        "triangles": int(triangles.shape[0]),
        "coverage": round(float(fragments.mask.mean()), 4),
        "repeats": args.repeats,
        "ms_per_batch": round(raster_s * 1e3, 2),
        "images_per_s": round(args.batch / raster_s, 1),
        "interpolate_ms": round(interp_s * 1e3, 2),
        "raster_plus_interpolate_images_per_s": round(args.batch / (raster_s + interp_s), 1),
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "torch": torch.__version__,
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
