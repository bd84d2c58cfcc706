"""CPU rendering side by side: compiled kernel, pure-PyTorch fallback, and 3DDFA_V2's Sim3DR.

For each face model, image size and thread count, the same batch of faces (θ from the
synthetic prior, projected and framed by :class:`ifn.render.FaceRenderer`, its drawn
triangles, random per-vertex colours) is rendered by

* ``cpp``: :class:`ifn.render.raster_cpp.CppRasterizer` + the compiled interpolation,
* ``torch``: :class:`ifn.render.raster_torch.TorchRasterizer` + the PyTorch interpolation,
* ``sim3dr`` (with ``--sim3dr DIR``, 1 thread only: it is single-threaded): Sim3DR's C++
  rasterizer, one image at a time, writing 8-bit colours (a benchmark reference only).

and timed for ``forward`` (rasterize + interpolate) and ``forward_backward`` (the same,
then the backward w.r.t. the colours of a given image gradient). ``renderer_fwd_bwd``
is a whole :class:`FaceRenderer` forward + backward w.r.t. θ (pose, shape, SH shading,
rasterization, interpolation) with that backend. The kernels are timed in turns inside the
same loop, so load from other processes hits them alike; each figure is the minimum over
``--repeats``, and the load average is recorded. ``*_cpu_img_s`` divides by the process
CPU time (all threads) instead of the wall clock: at one thread what a quiet core gives.
On a Linux machine with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``)
busy with other sessions, a process gets its session's share of the cores whatever its
thread count, so only a quiet machine shows the gain of a second thread. Prints one JSON
object.

Example:
    python benchmarks/raster_compare.py --face-models /tmp/ict.npz procedural \\
        --sim3dr /tmp/sim3dr_src/Sim3DR

Building the reference (never a dependency of ifn, never in this repository)::

    git clone https://github.com/cleardusk/3DDFA_V2 /tmp/3DDFA_V2 && cd /tmp/3DDFA_V2/Sim3DR
    python -m venv /tmp/cy && /tmp/cy/bin/pip install cython numpy setuptools
    /tmp/cy/bin/python setup.py build_ext --inplace   # makes Sim3DR_Cython*.so here
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from ifn.render.raster_torch import TorchRasterizer
from ifn.render.rasterizer import _interpolate_torch


def _faces(face_model: str, batch: int, size: int, seed: int):
    """Screen-space drawn vertices, triangles and colours of a prior batch, as the renderer rasterizes them."""
    from ifn.data.priors import ParameterPrior
    from ifn.facemodel import load_face_model
    from ifn.render import FaceRenderer

    model = load_face_model(face_model)
    renderer = FaceRenderer(model, image_size=size, backend="torch")
    generator = torch.Generator().manual_seed(seed)
    theta = ParameterPrior().sample(renderer.layout, batch, expression_prior=model.metadata.expression_prior,
                                    generator=generator)
    with torch.no_grad():
        out = renderer(theta)
    topology = renderer.topology()
    screen = out.screen_vertices[:, topology.drawn].contiguous()
    colours = torch.rand(batch, screen.shape[1], 3, generator=generator)
    return model, renderer, theta, screen, topology.face_triangles, colours


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the comparison and print one JSON object; returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-models", nargs="+", default=["/tmp/ict.npz", "procedural"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[240, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sim3dr", default=None, help="directory holding a built Sim3DR_Cython*.so")
    parser.add_argument("--no-renderer", action="store_true", help="skip the whole-renderer forward + backward")
    args = parser.parse_args(argv)

    from ifn.render import FaceRenderer
    from ifn.render.raster_cpp import CppRasterizer, interpolate_cpp

    build_start = time.perf_counter()
    cpp = CppRasterizer()  # builds the extension if it is not cached yet
    load_s = time.perf_counter() - build_start
    reference = TorchRasterizer()
    sim3dr = None
    if args.sim3dr:
        sys.path.insert(0, os.path.abspath(args.sim3dr))
        import Sim3DR_Cython  # type: ignore[import-not-found]

        sim3dr = Sim3DR_Cython

    results = []
    for face_model in args.face_models:
        for size in args.sizes:
            model, _, theta, screen, tris, colours = _faces(face_model, args.batch, size, args.seed)
            hw = (size, size)
            weight = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
            want = reference.rasterize(screen, tris, hw)
            got = cpp.rasterize(screen, tris, hw)
            identical = bool(torch.equal(want.triangle_id, got.triangle_id)
                             and torch.equal(want.barycentric, got.barycentric))
            renderers = {} if args.no_renderer else {
                name: FaceRenderer(model, image_size=size, backend=name) for name in ("cpp", "torch")
            }
            sim_forward = None
            if sim3dr is not None:
                # Sim3DR keeps the larger z: negate the depth so that nearer wins, as in ifn.
                sim_verts = [np.ascontiguousarray(np.stack([v[:, 0], v[:, 1], -v[:, 2]], 1), dtype=np.float32)
                             for v in screen.numpy()]
                sim_tris = np.ascontiguousarray(tris.numpy(), dtype=np.int32)
                sim_cols = [np.ascontiguousarray(c, dtype=np.float32) for c in colours.numpy()]

                def sim_forward(sim_verts=sim_verts, sim_tris=sim_tris, sim_cols=sim_cols, size=size) -> None:
                    for v, c in zip(sim_verts, sim_cols, strict=True):
                        image = np.zeros((size, size, 3), dtype=np.uint8)
                        depth = np.full((size, size), -1e8, dtype=np.float32)
                        sim3dr.rasterize(image, v, sim_tris, c, depth, sim_tris.shape[0], size, size, 3)

            def forward(kernel: str, screen=screen, tris=tris, hw=hw, colours=colours) -> None:
                with torch.no_grad():
                    if kernel == "cpp":
                        interpolate_cpp(colours, cpp.rasterize(screen, tris, hw), tris)
                    else:
                        _interpolate_torch(colours, reference.rasterize(screen, tris, hw), tris)

            def forward_backward(kernel: str, screen=screen, tris=tris, hw=hw, colours=colours, weight=weight) -> None:
                leaf = colours.clone().requires_grad_(True)
                if kernel == "cpp":
                    image = interpolate_cpp(leaf, cpp.rasterize(screen, tris, hw), tris)
                else:
                    image = _interpolate_torch(leaf, reference.rasterize(screen, tris, hw), tris)
                image.backward(weight)  # the gradient of some loss w.r.t. the image

            def renderer_fwd_bwd(kernel: str, renderers=renderers, theta=theta) -> None:
                leaf = theta.clone().requires_grad_(True)
                renderers[kernel](leaf).image.mean().backward()

            for threads in args.threads:
                torch.set_num_threads(threads)
                load_before = os.getloadavg()[0]
                tasks: dict[tuple[str, str], Callable[[], object]] = {}
                for kernel in ("cpp", "torch"):
                    tasks[(kernel, "forward")] = lambda k=kernel: forward(k)
                    tasks[(kernel, "forward_backward")] = lambda k=kernel: forward_backward(k)
                    if renderers:
                        tasks[(kernel, "renderer_fwd_bwd")] = lambda k=kernel: renderer_fwd_bwd(k)
                if sim_forward is not None and threads == 1:
                    tasks[("sim3dr", "forward")] = sim_forward
                for fn in tasks.values():  # warm-up: buffers, allocator, caches
                    fn()
                best = dict.fromkeys(tasks, float("inf"))
                best_cpu = dict.fromkeys(tasks, float("inf"))
                for _ in range(args.repeats):  # in turns, so that load changes hit all alike
                    for key, fn in tasks.items():
                        wall, cpu = _timed(fn)
                        best[key] = min(best[key], wall)
                        best_cpu[key] = min(best_cpu[key], cpu)
                load_after = os.getloadavg()[0]
                for kernel in ("cpp", "torch", "sim3dr"):
                    rows = {what: best[(k, what)] for (k, what) in best if k == kernel}
                    if not rows:
                        continue
                    record: dict[str, object] = {
                        "face_model": model.name,
                        "triangles": int(tris.shape[0]),
                        "size": size,
                        "batch": args.batch,
                        "threads": threads if kernel != "sim3dr" else 1,
                        "kernel": kernel,
                    }
                    for what, seconds in rows.items():
                        record[f"{what}_img_s"] = round(args.batch / seconds, 1)
                    # Images per CPU-second of the process (all its threads, spin-waits
                    # included): unlike the wall clock, not stretched by other processes.
                    # At one thread it is what a quiet core gives; at n threads, n times it
                    # bounds what n quiet cores give, and its drop from one thread is the
                    # cost of splitting the batch.
                    for what in rows:
                        record[f"{what}_cpu_img_s"] = round(args.batch / best_cpu[(kernel, what)], 1)
                    record["load_1min"] = [round(load_before, 2), round(load_after, 2)]
                    results.append(record)
            results.append({"face_model": model.name, "size": size, "fragments_identical": identical,
                            "coverage": round(float(want.mask.mean()), 4)})
    summary = {
        "benchmark": "raster_compare",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "extension_load_s": round(load_s, 2),
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "results": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
