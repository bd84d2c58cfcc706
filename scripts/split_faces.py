"""Split a folder of photos into two folders of symbolic links (training / held-out).

The photos stay where they are (nothing is copied); the split is by file, seeded, so
every face of one photo lands on the same side.

    python scripts/split_faces.py ../shared/data/faces /tmp/faces_split --fraction 0.5 --seed 0
    # -> /tmp/faces_split/train/..., /tmp/faces_split/heldout/...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ifn.data.corpus import list_images, split_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of photos in train/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = args.source.resolve()
    files = list_images(source)
    train, heldout = split_files(files, args.fraction, args.seed)
    for name, part in (("train", train), ("heldout", heldout)):
        for path in part:
            link = args.output / name / Path(path).resolve().relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(Path(path).resolve(), link)
        print(f"{args.output / name}: {len(part)} photos")


if __name__ == "__main__":
    main()
