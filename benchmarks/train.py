"""Throughput of full synthetic training steps, and the share of each step spent rendering.

One step is what ``ifn fit`` does per batch, built from the same pieces but without a
Trainer (a plain loop gives cleaner timings):

1. sample θ: ``PriorSource.batch`` (the DataModule's training stream) and move it to the device;
2. render: ``SyntheticFaceDataModule.render_batch`` (what ``on_after_batch_transfer`` calls);
3. train: ``InverseFaceNet.training_step`` (forward + model-space loss), backward, optimiser step.

Each phase is timed separately inside the same loop (CUDA synchronised at every phase
boundary when on a GPU). Prints one JSON line::

    python benchmarks/train.py --device cpu --size 240
    python benchmarks/train.py --size 112 --n-shape 10 --n-expression 5 --n-reflectance 10 --optimizer adam
    python benchmarks/train.py --face-model models/ict.npz --device cuda --backend nvdiffrast --steps 50

``images_per_s`` = batch / mean step time; ``render_fraction`` = mean render time / mean
step time; the ``*_ms`` fields are means over the ``--steps`` measured steps after
``--warmup`` steps (``step_ms_min`` is the fastest step, for noisy shared machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-model", default="procedural", help="'procedural' or a .npz face model file")
    parser.add_argument("--n-shape", type=int, default=None, help="θs size (default: 128 or all the model has)")
    parser.add_argument("--n-expression", type=int, default=None, help="θe size (default: 64 or all)")
    parser.add_argument("--n-reflectance", type=int, default=None, help="θr size (default: 128 or all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "nvdiffrast"])
    parser.add_argument("--backbone", default="resnet18", help="timm model name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--steps", type=int, default=5, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--optimizer", default="adadelta", choices=["adadelta", "adam"],
                        help="adadelta: the paper's (lr 0.01, wd 0.001); adam: configs/quickstart.yaml's (lr 0.001)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --batch >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from ifn.data.datamodule import SyntheticFaceDataModule
    from ifn.models.inverse_face_net import InverseFaceNet
    from ifn.render.settings import RenderSettings

    device = torch.device(args.device)
    render = RenderSettings(
        face_model=args.face_model, n_shape=args.n_shape, n_expression=args.n_expression,
        n_reflectance=args.n_reflectance, image_size=args.size, backend=args.backend,
    )
    datamodule = SyntheticFaceDataModule(render=render, batch_size=args.batch, val_size=0, test_size=0, seed=args.seed)
    # As in the CLI: the model is handed the DataModule's renderer.
    model = InverseFaceNet(datamodule.renderer, backbone=args.backbone, pretrained=False).to(device)
    model.train()
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    else:
        optimizer = model.configure_optimizers()  # the paper's AdaDelta
    source = datamodule.source
    # training_step logs through self.log, which only warns without a Trainer.
    warnings.filterwarnings("ignore", message=".*self.log.*")

    timings: dict[str, list[float]] = {"sample": [], "render": [], "train": [], "step": []}
    loss_value = float("nan")
    for index in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        theta = source.batch(index, 0, args.batch).to(device, non_blocking=True)
        _sync(device)
        t1 = time.perf_counter()
        batch = datamodule.render_batch(theta)
        _sync(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step(batch, index)
        loss.backward()
        optimizer.step()
        _sync(device)
        t3 = time.perf_counter()
        if index >= args.warmup:
            for key, seconds in (("sample", t1 - t0), ("render", t2 - t1), ("train", t3 - t2), ("step", t3 - t0)):
                timings[key].append(seconds)
            loss_value = loss.item()

    mean = {key: statistics.fmean(values) for key, values in timings.items()}
    out = {
        "benchmark": "train_step",
        "face_model": datamodule.renderer.face_model.name,
        "theta_size": datamodule.layout.size,
        "backend": datamodule.renderer.rasterizer(device).name,
        "backbone": args.backbone,
        "optimizer": args.optimizer,
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": round(args.batch / mean["step"], 2),
        "render_fraction": round(mean["render"] / mean["step"], 4),
        "step_ms": round(mean["step"] * 1e3, 1),
        "step_ms_min": round(min(timings["step"]) * 1e3, 1),
        "sample_ms": round(mean["sample"] * 1e3, 2),
        "render_ms": round(mean["render"] * 1e3, 1),
        "train_ms": round(mean["train"] * 1e3, 1),
        "final_loss": round(loss_value, 4),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
