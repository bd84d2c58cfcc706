"""The ``ifn`` command: LightningCLI (``fit``/``validate``/``test``/``predict``) plus ``facemodel``.

``ifn facemodel convert ict <zip-or-folder> -o <file>.npz`` imports ICT-FaceKit;
``ifn facemodel info <file-or-name>`` prints a face model's summary as JSON.
Everything else is handed to LightningCLI (see :mod:`ifn.lightning_cli`).

Errors that are the user's to fix — a wrong option or config key (with the closest valid
one), a value refused when the classes are built (negative batch size, unknown backbone,
missing face-model file), a damaged or invalid face model, a missing, unreadable or corrupt
checkpoint, or one trained with another face model or other model settings — are printed
as one line on stderr, ``ifn: error: <file or option>: <problem>``, with exit status 2 and
no traceback.

Debug switch: with the environment variable ``IFN_DEBUG=1`` those errors are re-raised
instead, with their full traceback (and parser errors with jsonargparse's whole message)::

    IFN_DEBUG=1 ifn test --config configs/paper.yaml --ckpt_path broken.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ifn.errors import UsageError, debug_enabled, one_line

if TYPE_CHECKING:
    from ifn.facemodel.model import FaceModel

__all__ = ["main"]


def _facemodel_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ifn facemodel", description="Import and inspect face models.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert an upstream face model to the native .npz format")
    convert.add_argument("kind", choices=["ict"], help="upstream format (ict: ICT-FaceKit)")
    convert.add_argument("source", help="GitHub download zip or FaceXModel folder")
    convert.add_argument("-o", "--output", required=True, help="output .npz file")
    convert.add_argument(
        "--expression-variance", type=float, default=0.99, help="fraction of blendshape variance kept by PCA"
    )
    convert.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    info = commands.add_parser("info", help="print a face model's summary as JSON")
    info.add_argument("model", help="'procedural' or a .npz file")
    args = parser.parse_args(list(argv))

    if args.command == "convert":
        from ifn.facemodel.ict import convert_ict

        # Checked before converting (which takes a while): the result could not be saved.
        if Path(args.output).suffix != ".npz":
            raise UsageError(f"{args.output}: face model files end in .npz (-o {Path(args.output).stem}.npz)")
        try:
            model = convert_ict(
                args.source, progress=not args.no_progress, expression_variance=args.expression_variance
            )
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise UsageError(f"facemodel convert: {one_line(err)}") from err
        path = model.save(args.output)
        print(json.dumps({"written": str(path), **_summary(model)}))
        return 0

    from ifn.facemodel.model import load_face_model

    try:
        model = load_face_model(args.model)
    except (OSError, ValueError) as err:
        raise UsageError(one_line(err)) from err
    print(json.dumps(_summary(model), indent=2))
    return 0


def _summary(model: FaceModel) -> dict:
    face = model.mean_shape[model.face_mask]
    extent = (face.amax(0) - face.amin(0)).tolist()
    meta = model.metadata
    return {
        "name": meta.name,
        "sha256": model.sha256,
        "vertices": model.n_vertices,
        "face_triangles": int(model.face_triangles.shape[0]),
        "shape_modes": model.n_shape,
        "expression_modes": model.n_expression,
        "reflectance_modes": model.n_reflectance,
        "landmarks": int(model.landmark_indices.shape[0]),
        "face_width_mm": round(extent[0], 2),
        "face_height_mm": round(extent[1], 2),
        "reflectance": meta.reflectance,
        "license": meta.license,
        "expression_prior": {"low": meta.expression_prior.low, "high": meta.expression_prior.high,
                             "first_bias": meta.expression_prior.first_bias},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ifn`` console script.

    Errors that are the user's to fix (:class:`~ifn.errors.UsageError`) are printed as one
    line on stderr, ``ifn: error: …``, with exit status 2, instead of a traceback; with
    ``IFN_DEBUG=1`` they are re-raised.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "facemodel":
            return _facemodel_main(args[1:])
        from ifn.lightning_cli import run_lightning_cli

        run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except UsageError as err:
        if debug_enabled():
            raise
        print(f"ifn: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
