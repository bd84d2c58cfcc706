"""Render a sheet of random faces per face model into docs/ (shown in the README).

    python scripts/gallery.py                                  # procedural only
    python scripts/gallery.py --face-model procedural --face-model /tmp/ict.npz

Faces are drawn from the synthetic prior (ifn.data.priors) (the paper's monochrome light); the first row
of each sheet is the mean face under frontal white light, then yaw −40°…40°. The pictures are
`ifn facemodel render` sheets without the landmarks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ifn.facemodel import load_face_model
from ifn.facemodel.cli import render_sheet


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
        model = load_face_model(spec)
        path = Path(args.out) / f"gallery_{model.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        render_sheet(model, path, rows=args.rows - 1, cols=args.cols, size=args.size, seed=args.seed, landmarks=False)
        print(path)


if __name__ == "__main__":
    main()
