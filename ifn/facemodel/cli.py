"""``ifn facemodel``: convert, describe and look at face models.

::

    ifn facemodel convert ict ICT-FaceKit-master.zip -o ict.npz
    ifn facemodel convert bfm2009 BFM_model_front.mat -o bfm09.npz
    ifn facemodel convert bfm2009 01_MorphableModel.mat Exp_Pca.bin std_exp.txt BFM_exp_idx.mat \\
        --landmarks bfm09_68.txt -o bfm09.npz
    ifn facemodel convert bfm2017 model2017-1_face12_nomouth.h5 --landmarks lm68.txt -o bfm17.npz
    ifn facemodel convert flame generic_model.pkl landmark_embedding.npy FLAME_albedo_from_BFM.npz -o flame.npz
    ifn facemodel info ict                      # a name (procedural, ict) or a .npz file: JSON summary
    ifn facemodel render flame.npz -o sheet.png # mean face + random faces from the prior, landmarks drawn

Errors (a missing or malformed file, a refused pickle) are one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ifn.errors import UsageError, one_line

if TYPE_CHECKING:
    from ifn.facemodel.model import FaceModel

__all__ = ["main"]

KINDS = ("ict", "bfm2009", "bfm2017", "bfm2019", "flame")
_LANDMARK_NAME = re.compile(r"lmk|landmark|embedding", re.IGNORECASE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ifn facemodel", description="Import, inspect and render face models.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert an upstream face model to the native .npz format")
    convert.add_argument("kind", choices=KINDS, help="upstream format (see docs/face_models.md)")
    convert.add_argument("source", nargs="+", help="the source files (or, for ict, the zip or FaceXModel folder)")
    convert.add_argument("-o", "--output", required=True, help="output .npz file")
    convert.add_argument("--landmarks", help="68 landmarks: vertex indices, 'triangle w0 w1 w2' rows or an embedding")
    convert.add_argument("--landmarks-one-based", action="store_true", help="the landmark file counts from 1")
    convert.add_argument("--scale", type=float, help="millimetres per source unit (default: the format's unit)")
    convert.add_argument("--no-crop", action="store_true", help="keep the whole mesh, not only the face region")
    convert.add_argument("--albedo", help="flame: FLAME_albedo_from_BFM.npz or FLAME_texture.npz")
    convert.add_argument("--uv", help="flame: an OBJ with texture coordinates, if the albedo file has none")
    convert.add_argument("--flame-shape-modes", type=int, help="flame: identity blendshapes in shapedirs")
    convert.add_argument(
        "--expression-variance", type=float, default=0.99, help="ict: fraction of blendshape variance kept by PCA"
    )
    convert.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    info = commands.add_parser("info", help="print a face model's summary as JSON")
    info.add_argument("model", help="'procedural', 'ict' or a .npz file")
    render = commands.add_parser("render", help="a sheet of the mean face and random faces, landmarks drawn")
    render.add_argument("model", help="'procedural', 'ict' or a .npz file")
    render.add_argument("-o", "--output", required=True, help="output .png file")
    render.add_argument("--rows", type=int, default=3, help="rows of random faces under the mean-face row")
    render.add_argument("--cols", type=int, default=6)
    render.add_argument("--size", type=int, default=128, help="pixels per face")
    render.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``ifn facemodel <command>``; returns the exit status.

    Raises:
        UsageError: for anything the user can fix (printed as one line by ``ifn``).
    """
    args = _parser().parse_args(list(argv))
    if args.command == "convert":
        return _convert(args)
    model = _load(args.model)
    if args.command == "info":
        print(json.dumps(_summary(model), indent=2))
        return 0
    if not 0 < args.size <= 1024 or args.rows < 0 or not 0 < args.cols <= 64:
        raise UsageError("facemodel render: need 0 < --size <= 1024, --rows >= 0, 0 < --cols <= 64")
    if Path(args.output).suffix.lower() != ".png":
        raise UsageError(f"{args.output}: the sheet is a PNG (-o {Path(args.output).stem}.png)")
    print(json.dumps(render_sheet(model, args.output, rows=args.rows, cols=args.cols, size=args.size,
                                  seed=args.seed)))
    return 0


def _load(spec: str) -> FaceModel:
    from ifn.facemodel.model import load_face_model

    try:
        return load_face_model(spec)
    except (OSError, ValueError) as err:
        raise UsageError(one_line(err)) from err


def _convert(args: argparse.Namespace) -> int:
    # Checked before converting (which takes a while): the result could not be saved.
    if Path(args.output).suffix != ".npz":
        raise UsageError(f"{args.output}: face model files end in .npz (-o {Path(args.output).stem}.npz)")
    try:
        model = _run_converter(args)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UsageError(f"facemodel convert {args.kind}: {one_line(err)}") from err
    path = model.save(args.output)
    print(json.dumps({"written": str(path), **_summary(model)}))
    return 0


def _run_converter(args: argparse.Namespace) -> FaceModel:
    sources = [Path(s) for s in args.source]
    crop = not args.no_crop
    if args.kind == "ict":
        from ifn.facemodel.ict import convert_ict

        if len(sources) != 1:
            raise ValueError("ict takes one source: the GitHub zip or the FaceXModel folder")
        return convert_ict(sources[0], progress=not args.no_progress, expression_variance=args.expression_variance)
    if args.kind == "bfm2009":
        from ifn.facemodel.bfm import convert_bfm2009

        return convert_bfm2009(sources, landmarks=args.landmarks, landmarks_one_based=args.landmarks_one_based,
                               scale=args.scale, crop=crop)
    if args.kind in ("bfm2017", "bfm2019"):
        from ifn.facemodel.bfm import convert_bfm2017

        h5 = [s for s in sources if s.suffix.lower() in (".h5", ".hdf5")]
        others = [s for s in sources if s not in h5]
        if len(h5) != 1:
            raise ValueError(f"{args.kind} takes one .h5 model file, got {len(h5)}")
        landmarks = _one_landmark_file(args.landmarks, others, args.kind)
        return convert_bfm2017(h5[0], landmarks=landmarks, landmarks_one_based=args.landmarks_one_based,
                               scale=1.0 if args.scale is None else args.scale, crop=crop, name=args.kind)
    from ifn.facemodel.flame import convert_flame

    roles = _flame_roles(sources)
    landmarks = _one_landmark_file(args.landmarks, roles["landmarks"], "flame")
    albedo = args.albedo or (roles["albedo"][0] if roles["albedo"] else None)
    uv = args.uv or (roles["uv"][0] if roles["uv"] else None)
    if len(roles["model"]) != 1:
        raise ValueError(f"flame takes one model pickle (generic_model.pkl), got {[str(p) for p in roles['model']]}")
    kwargs: dict[str, Any] = {} if args.scale is None else {"scale": args.scale}
    return convert_flame(roles["model"][0], landmarks=landmarks, albedo=albedo, uv=uv, n_shape=args.flame_shape_modes,
                         landmarks_one_based=args.landmarks_one_based, crop=crop, **kwargs)


def _one_landmark_file(option: str | None, positional: list[Path], kind: str) -> str:
    files = ([option] if option else []) + [str(p) for p in positional]
    if len(files) != 1:
        raise ValueError(f"{kind} needs exactly one 68-landmark file (positional or --landmarks), got {files}; "
                         "see docs/face_models.md")
    return files[0]


def _flame_roles(sources: list[Path]) -> dict[str, list[Path]]:
    """Sort FLAME's files: the model pickle, an albedo .npz, a UV .obj, the landmark embedding."""
    import numpy as np

    roles: dict[str, list[Path]] = {"model": [], "albedo": [], "uv": [], "landmarks": []}
    for path in sources:
        suffix = path.suffix.lower()
        if suffix == ".obj":
            roles["uv"].append(path)
        elif suffix == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                files = set(npz.files)
            is_albedo = {"MU", "PC"} <= files or {"mean", "tex_dir"} <= files
            roles["albedo" if is_albedo else "landmarks"].append(path)
        elif suffix == ".pkl" and not _LANDMARK_NAME.search(path.name):
            roles["model"].append(path)
        else:
            roles["landmarks"].append(path)
    return roles


def _summary(model: FaceModel) -> dict:
    """The JSON summary ``ifn facemodel info`` prints (and ``convert`` after writing)."""
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
        "landmark_kind": "barycentric" if model.has_barycentric_landmarks else "vertices",
        "face_width_mm": round(extent[0], 2),
        "face_height_mm": round(extent[1], 2),
        "reflectance": meta.reflectance,
        "license": meta.license,
        "source": meta.source,
        "expression_prior": {"low": meta.expression_prior.low, "high": meta.expression_prior.high,
                             "first_bias": meta.expression_prior.first_bias},
    }


def render_sheet(model: FaceModel, output: str | Path, *, rows: int = 3, cols: int = 6, size: int = 128,
                 seed: int = 0, landmarks: bool = True) -> dict[str, Any]:
    """Write a PNG sheet: the mean face at yaw −40°…40°, then random faces from the prior.

    Landmarks are drawn as green dots. The returned dict (printed by the CLI) says how many
    faces were drawn, what fraction of landmarks fell inside the image and on the face
    (within one pixel of a drawn pixel), and the fraction of pixels drawn.

    Args:
        model: the face model.
        output: the ``.png`` to write (atomically).
        rows: rows of random faces from the synthetic prior (with the model's expression prior).
        cols: faces per row.
        size: pixels per face.
        seed: seed of the random faces.
        landmarks: draw the landmarks (off for pictures such as the README's gallery).

    Returns:
        ``{"written", "faces", "landmarks_in_frame", "landmarks_on_face", "face_coverage"}``.
    """
    import torch
    from torchvision.utils import make_grid, save_image

    from ifn.data.priors import ParameterPrior
    from ifn.io import atomic_write
    from ifn.render import FaceRenderer

    renderer = FaceRenderer(model, image_size=size, backend="torch")
    layout = renderer.layout
    first = torch.zeros(cols, layout.size)
    first[:, 1] = torch.linspace(-math.radians(40), math.radians(40), cols)
    light = layout.slices["illumination"].start
    first[:, light : light + 3] = 0.9
    first[:, light + 6 : light + 9] = 0.15  # a little light from the front
    random = ParameterPrior().sample(layout, rows * cols, expression_prior=model.metadata.expression_prior,
                                     generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = renderer(torch.cat([first, random]))
    images = out.image.clone()
    lm = out.landmarks
    # The framing puts the landmark box's edges on the image's (up to round-off).
    in_frame = ((lm >= -1e-3) & (lm <= size + 1e-3)).all(dim=-1)
    px = lm.floor().long().clamp(0, size - 1)
    batch = torch.arange(len(lm))[:, None].expand_as(px[..., 0])
    # The outline landmarks are the clip polygon's corners: "on the face" allows one pixel.
    near_face = torch.nn.functional.max_pool2d(out.mask, 3, stride=1, padding=1)
    on_face = near_face[batch, 0, px[..., 1], px[..., 0]] > 0
    dot = max(1, size // 96) if landmarks else -1  # -1: no offsets, nothing drawn
    green = torch.tensor([0.1, 1.0, 0.2])
    for dy in range(-dot, dot + 1):
        for dx in range(-dot, dot + 1):
            ys, xs = (px[..., 1] + dy).clamp(0, size - 1), (px[..., 0] + dx).clamp(0, size - 1)
            images[batch.reshape(-1), :, ys.reshape(-1), xs.reshape(-1)] = green
    path = Path(output)
    with atomic_write(path) as handle:
        save_image(make_grid(images, nrow=cols, padding=2), handle, format="png")
    return {
        "written": str(path),
        "faces": len(images),
        "landmarks_in_frame": round(float(in_frame.float().mean()), 4),
        "landmarks_on_face": round(float(on_face.float().mean()), 4),
        "face_coverage": round(float(out.mask.mean()), 4),
    }
