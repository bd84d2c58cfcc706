"""``ifn reconstruct INPUT... --ckpt_path CKPT [--out DIR]``: photos → editable 3-D faces.

Examples::

    ifn reconstruct photos/ --ckpt_path runs/quickstart/checkpoints/last.ckpt --out recon/
    ifn reconstruct 'shots/*.jpg' --ckpt_path last.ckpt --refine 50 --relight left --relight warm
    ifn reconstruct me.jpg --ckpt_path last.ckpt --albedo-from friend.jpg --expression-from smile.jpg
    ifn reconstruct clip.mp4 --ckpt_path last.ckpt --every 10

What is written is described in :mod:`ifn.reconstruct.run`; errors the user can fix (a
missing checkpoint, an unknown light, an earlier run in ``--out``) are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from ifn.errors import UsageError, one_line
from ifn.reconstruct.editing import LIGHT_PRESETS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifn reconstruct",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="photos, folders, glob patterns or video files")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `ifn fit`")
    parser.add_argument("--out", default="reconstructions", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds an earlier run")
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="analysis-by-synthesis steps per face after the network (0: off)",
    )
    parser.add_argument(
        "--refine-modes",
        choices=["all", "network"],
        default="all",
        help="refine every mode of the face model, or only those the network regresses",
    )
    parser.add_argument(
        "--relight",
        action="append",
        default=[],
        metavar="LIGHT",
        help=f"re-render under a light: a preset ({', '.join(LIGHT_PRESETS)}), a JSON file "
        "(9×3 SH or a theta.json), or a photo whose light to take; repeatable",
    )
    parser.add_argument(
        "--albedo-from", default=None, metavar="PHOTO", help="swap in the reflectance of this photo's face"
    )
    parser.add_argument("--expression-from", default=None, metavar="PHOTO", help="swap in this photo's expression")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="videos: every N-th frame")
    parser.add_argument("--mesh-format", choices=["ply", "obj", "both"], default="both")
    parser.add_argument(
        "--detector", default="mediapipe", help="landmark detector (mediapipe, face_alignment, annotation)"
    )
    parser.add_argument("--face-model", default=None, help="the checkpoint's face model, if its file moved")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per network and refinement batch")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``ifn reconstruct``; prints the run's one-line summary and the index path."""
    args = _parser().parse_args(list(argv))
    if args.refine < 0:
        raise UsageError(f"--refine: steps must be >= 0, got {args.refine}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: must be >= 1, got {args.batch_size}")
    from pathlib import Path

    from ifn.reconstruct.reconstructor import Reconstructor
    from ifn.reconstruct.run import Edits, group_edit, light_edits, reconstruct_paths

    index = Path(args.out) / "index.json"
    if index.exists() and not args.overwrite:  # before loading anything
        raise UsageError(f"{args.out}: holds an earlier run (index.json); pass --overwrite or choose another --out")
    try:
        reconstructor = Reconstructor.from_checkpoint(
            args.ckpt_path,
            face_model=args.face_model,
            device=args.device,
            detector=args.detector,
            refine_steps=args.refine,
            refine_modes=args.refine_modes,
            batch_size=args.batch_size,
        )
    except (OSError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{args.ckpt_path}: {one_line(err)}") from err
    edits = Edits(
        lights=light_edits(args.relight, reconstructor),
        reflectance=group_edit(reconstructor, args.albedo_from, "reflectance"),
        expression=group_edit(reconstructor, args.expression_from, "expression"),
    )
    formats = {"ply": (".ply",), "obj": (".obj",), "both": (".ply", ".obj")}[args.mesh_format]
    result = reconstruct_paths(
        reconstructor,
        args.inputs,
        args.out,
        edits=edits,
        overwrite=args.overwrite,
        every=args.every,
        mesh_formats=formats,
        progress=not args.no_progress,
        settings={"argv": list(argv)},
    )
    summary = result["summary"]
    print(f"[ifn] {summary['line']}; index: {index}", file=sys.stderr)
    if "mean_network_photometric_error" in summary:
        print(json.dumps({k: round(v, 3) for k, v in summary.items() if k.startswith("mean_")}), file=sys.stderr)
    return 0
