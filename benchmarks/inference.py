"""Inference latency of the regressor, crop → θ, and of face detection + cropping per photo.

For each backbone and crop size, the network (procedural face model, untrained weights: the
speed does not depend on their values) is exported with :mod:`ifn.models.export`, and one
crop (batch 1, float32 in [0, 1], input normalisation included) is run through

* ``eager``: torch eager, the exported computation (:class:`~ifn.models.export.CropRegressor`);
* ``torchscript``: the TorchScript export (:func:`~ifn.models.export.load_torchscript`);
* ``onnxruntime``: the ONNX export (:class:`~ifn.models.export.OnnxRegressor`);

with 1 and 2 threads (``torch.set_num_threads`` / onnxruntime's ``intra_op_num_threads``).
Each figure is the median (and 10th/90th percentile) over ``--runs`` calls after
``--warmup`` calls, in milliseconds per crop. Then, for a few photos, the time to decode,
detect 68 landmarks (MediaPipe, ifn's default detector) and crop every face, per photo.

Prints one JSON line (``--indent 2`` for people), with the load average before and after:
timings on a shared machine are only as good as its load. There, ``--wait-policy passive``
(idle threads sleep instead of spinning) keeps 2-thread runs from waiting on a core that
another job holds; on an idle machine the default (the libraries' spinning) is the fastest::

    python benchmarks/inference.py
    python benchmarks/inference.py --wait-policy passive     # a machine shared with other jobs
    python benchmarks/inference.py --backbones mobilenetv3_small_100 --sizes 128 --runs 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: Issue 10's target: onnxruntime, a mobile backbone at 128², 2 threads, batch 1.
TARGET_MS = 1.0
MOBILE = ("mobilenetv3_small_100", "mobilenetv3_large_100")
DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def _time_ms(fn, runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    q = statistics.quantiles(times, n=10)
    return {"median_ms": round(statistics.median(times), 4), "p10_ms": round(q[0], 4), "p90_ms": round(q[-1], 4)}


def _regressor_rows(backbone: str, size: int, threads: list[int], args, workdir: Path) -> list[dict]:
    import torch

    from ifn.models.export import CropRegressor, OnnxRegressor, export_model, load_torchscript
    from ifn.models.inverse_face_net import InverseFaceNet
    from ifn.render.settings import RenderSettings

    renderer = RenderSettings(face_model=args.face_model, image_size=size, backend="torch").build_renderer()
    model = InverseFaceNet(renderer, backbone=backbone).eval()
    stem = workdir / f"{backbone}_{size}"
    torch.set_num_threads(max(threads))
    export_model(model, stem.with_suffix(".onnx"), "onnx")
    export_model(model, stem.with_suffix(".pt"), "torchscript")
    eager = CropRegressor(model.net).eval()
    script = load_torchscript(stem.with_suffix(".pt"))
    crop = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    crop_np = crop.numpy()
    params = sum(p.numel() for p in model.net.parameters())
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        ort_regressor = OnnxRegressor(stem.with_suffix(".onnx"), threads=n, spinning=args.wait_policy == "spin")
        with torch.inference_mode():
            runtimes = {
                "eager": lambda: eager(crop),
                "torchscript": lambda: script(crop),
                "onnxruntime": lambda session=ort_regressor: session(crop_np),
            }
            for runtime, fn in runtimes.items():
                rows.append({"backbone": backbone, "size": size, "threads": n, "runtime": runtime, "batch": 1,
                             "theta_size": model.layout.size, "params": params,
                             **_time_ms(fn, args.runs, args.warmup)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _photo_rows(args) -> dict:
    import torch

    from ifn.data.landmarks import MediapipeLandmarks
    from ifn.data.photos import crop_face, read_image

    root = Path(args.photo_dir)
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.photos]
    if not photos:
        return {"skipped": f"no photos under {root}"}
    torch.set_num_threads(max(args.threads))
    detector = MediapipeLandmarks()
    detector.detect_raw(read_image(photos[0].read_bytes(), name=str(photos[0])))  # builds MediaPipe's graphs
    per_photo = []
    for path in photos:
        content = path.read_bytes()
        best = None
        for _ in range(args.photo_repeats):
            t0 = time.perf_counter_ns()
            image = read_image(content, name=str(path))
            t1 = time.perf_counter_ns()
            faces = detector.detect_raw(image).faces
            t2 = time.perf_counter_ns()
            for face in faces:
                crop_face(image, face.landmarks, args.crop_size)
            t3 = time.perf_counter_ns()
            timing = ((t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6)
            if best is None or sum(timing) < sum(best):
                best = timing
        per_photo.append({"photo": str(path.relative_to(root)), "pixels": [int(image.shape[1]), int(image.shape[0])],
                          "faces": len(faces), "decode_ms": round(best[0], 2), "detect_ms": round(best[1], 2),
                          "crop_ms": round(best[2], 2), "total_ms": round(sum(best), 2)})
    detector.close()

    def median(key: str) -> float:
        return round(statistics.median(p[key] for p in per_photo), 2)

    return {"detector": "mediapipe", "crop_size": args.crop_size, "photos": len(per_photo),
            "statistic": f"per photo: best of {args.photo_repeats}; summary: median over photos",
            "median_decode_ms": median("decode_ms"), "median_detect_ms": median("detect_ms"),
            "median_crop_ms": median("crop_ms"), "median_total_ms": median("total_ms"), "per_photo": per_photo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", *MOBILE])
    parser.add_argument("--sizes", nargs="+", type=int, default=[240, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=200, help="timed calls per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--face-model", default="procedural",
                        help="sets θ's size (the head); speed hardly depends on it")
    parser.add_argument("--photo-dir", default=str(DEFAULT_PHOTOS))
    parser.add_argument("--photos", type=int, default=8, help="photos timed for detection + crop (0: none)")
    parser.add_argument("--photo-repeats", type=int, default=3)
    parser.add_argument("--crop-size", type=int, default=240)
    parser.add_argument(
        "--wait-policy", choices=["spin", "passive"], default="spin",
        help="spin: the libraries' defaults (idle threads spin: best on an idle machine); passive: "
        "OMP_WAIT_POLICY=PASSIVE and no onnxruntime spinning (idle threads sleep: best when other jobs share the CPU)",
    )
    parser.add_argument("--indent", type=int, default=None)
    args = parser.parse_args()
    if args.wait_policy == "passive":
        # Read by OpenMP when torch loads it, so before the import.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

    import numpy as np
    import onnxruntime
    import torch

    load_before = os.getloadavg()
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ifn-bench-") as workdir:
        for backbone in args.backbones:
            for size in args.sizes:
                rows.extend(_regressor_rows(backbone, size, args.threads, args, Path(workdir)))
    photos = _photo_rows(args) if args.photos > 0 else {"skipped": "--photos 0"}
    target = [r for r in rows if r["runtime"] == "onnxruntime" and r["size"] == 128 and r["threads"] == 2
              and r["backbone"] in MOBILE]
    report = {
        "benchmark": "inference",
        "unit": "ms per crop, batch 1, crop -> theta including input normalisation",
        "statistic": f"median over {args.runs} calls after {args.warmup} warm-up calls",
        "wait_policy": args.wait_policy,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "seconds": round(time.time() - started, 1),
        "target": {"what": f"onnxruntime, mobile backbone, 128², 2 threads <= {TARGET_MS} ms",
                   "met": {r["backbone"]: r["median_ms"] <= TARGET_MS for r in target}},
        "regressor": rows,
        "detection_and_crop_per_photo": photos,
    }
    print(json.dumps(report, indent=args.indent))


if __name__ == "__main__":
    main()
