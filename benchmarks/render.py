"""Render throughput, and how it compares with one training step of the network.

Renders batches of θ drawn from the synthetic prior (ifn.data.priors) and prints one JSON line::

    python benchmarks/render.py --face-model procedural --device cpu
    python benchmarks/render.py --face-model /tmp/ict.npz --device cuda --backend nvdiffrast

``render_to_step_ratio`` = time to render a batch / time of one resnet18 training step
(forward + backward + AdaDelta update, same batch size and image size, same device,
measured in the same run). Timings are the minimum over ``--repeats`` after warm-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-model", default="procedural", help="'procedural' or a .npz face model file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "nvdiffrast"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--step-repeats", type=int, default=3, help="repeats of the resnet18 training step")
    parser.add_argument("--no-step", action="store_true", help="skip the resnet18 step measurement")
    args = parser.parse_args()

    from ifn.data.priors import ParameterPrior
    from ifn.facemodel import load_face_model
    from ifn.render import FaceRenderer

    device = torch.device(args.device)
    face_model = load_face_model(args.face_model).to(device)
    renderer = FaceRenderer(face_model, image_size=args.size, backend=args.backend).to(device)
    generator = torch.Generator().manual_seed(0)
    prior = ParameterPrior()
    thetas = [
        prior.sample(renderer.layout, args.batch, expression_prior=face_model.metadata.expression_prior,
                     generator=generator, device=device)
        for _ in range(4)
    ]
    calls = iter(range(10**9))

    @torch.no_grad()
    def render() -> None:
        renderer(thetas[next(calls) % len(thetas)])

    render_s = _time(render, device, args.repeats, args.warmup)
    out = renderer(thetas[0])
    result = {
        "face_model": face_model.name,
        "backend": renderer.rasterizer(device).name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "vertices": face_model.n_vertices,
        "triangles": int(face_model.face_triangles.shape[0]),
        "mean_coverage": round(out.mask.mean().item(), 4),
        "ms_per_batch": round(render_s * 1e3, 2),
        "images_per_s": round(args.batch / render_s, 1),
    }
    if not args.no_step:
        import timm

        net = timm.create_model("resnet18", pretrained=False, num_classes=renderer.layout.size).to(device)
        optimizer = torch.optim.Adadelta(net.parameters(), lr=0.01, weight_decay=0.001)
        images = out.image - 0.5
        target = thetas[0]

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(images), target)
            loss.backward()
            optimizer.step()

        step_s = _time(step, device, args.step_repeats, 1)
        result["train_step_ms"] = round(step_s * 1e3, 2)
        result["render_to_step_ratio"] = round(render_s / step_s, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
