"""Render a sheet of random faces per face model into docs/ (shown in the README).

    python scripts/gallery.py                                  # procedural only
    python scripts/gallery.py --face-model procedural --face-model /tmp/ict.npz

Faces are drawn from the synthetic prior (ifn.data.priors) (the paper's monochrome light); the first row
of each sheet is the mean face under frontal white light, then yaw −40°…40°.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from ifn.data.priors import ParameterPrior
from ifn.facemodel import load_face_model
from ifn.render import FaceRenderer


def sheet(spec: str, rows: int, cols: int, size: int, seed: int) -> torch.Tensor:
    face_model = load_face_model(spec)
    renderer = FaceRenderer(face_model, image_size=size, backend="torch")
    layout = renderer.layout
    first = torch.zeros(cols, layout.size)
    first[:, 1] = torch.linspace(-math.radians(40), math.radians(40), cols)
    light = layout.slices["illumination"].start
    first[:, light : light + 3] = 0.9
    first[:, light + 6 : light + 9] = 0.15  # a little light from the front
    random = ParameterPrior().sample(
        layout, (rows - 1) * cols, expression_prior=face_model.metadata.expression_prior,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        images = renderer(torch.cat([first, random])).image
    return make_grid(images, nrow=cols, padding=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-model", action="append", help="'procedural' or a .npz file (repeatable)")
    parser.add_argument("--out", default="docs", help="output folder")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for spec in args.face_model or ["procedural"]:
        name = load_face_model(spec).name
        path = Path(args.out) / f"gallery_{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(sheet(spec, args.rows, args.cols, args.size, args.seed), path)
        print(path)


if __name__ == "__main__":
    main()
