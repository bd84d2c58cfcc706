"""Import FLAME (2020, 2023) with an optional albedo model into the native format.

The files are the user's, from https://flame.is.tue.mpg.de/ after registration (FLAME's
own licence; the albedo models ``FLAME_albedo_from_BFM.npz`` — derived from BFM, under its
terms — and ``FLAME_texture.npz`` come from the same site or the projects that made them).

What is read:

* ``generic_model.pkl`` (any name): a pickled dict, often Python 2 and with chumpy
  objects, read by :mod:`ifn.facemodel.safe_pickle` (no chumpy, no code from the file):
  ``v_template`` ``(V, 3)`` and ``f`` ``(F, 3)`` (0-based), ``shapedirs`` ``(V, 3, K)`` —
  identity blendshapes followed by expression blendshapes, each already scaled so that
  coefficients are ~N(0, 1) (FLAME's β and ψ), in metres. The file does not say where
  identity ends: the split is where the column norms jump up (the first expression mode
  is far larger than the last identity mode), or ``n_shape`` if given.
* Pose is **not representable** in the native linear model and is fixed at zero: the
  global, neck, jaw and both eye joints keep the template's rest pose (``posedirs``,
  ``J_regressor``, ``weights`` and ``kintree_table`` are only counted). So the mouth opens
  only as far as FLAME's expression blendshapes open it (FLAME opens the jaw by rotating
  a joint) and the eyes look straight ahead; the head rotation is θ's own R.
* An albedo model (optional): ``FLAME_albedo_from_BFM.npz`` (``MU`` ``(H, W, 3)``, ``PC``
  ``(H, W, 3, K)``) or ``FLAME_texture.npz`` (``mean``, ``tex_dir``), with the UV layout
  ``vt`` ``(T, 2)`` / ``ft`` ``(F, 3)`` in the same file or in an OBJ (``head_template.obj``).
  Texture size and mode count come from the arrays. Each vertex takes the texel under
  the first UV its corners use (bilinear, image row ``(1 - v)·H``); channels are stored
  BGR (as DECA reads both files) and turned to RGB; a mean above 1.5 means 0..255. The
  modes are taken as σ-scaled (coefficients ~N(0, 1)). Without an albedo model, a painted
  prior is used.
* The landmark embedding: barycentric points on triangles (see
  :func:`~ifn.facemodel.convert.landmarks_from_mapping` for the accepted files; an object
  ``.npy`` such as DECA's ``landmark_embedding.npy`` goes through the restricted
  unpickler).

Expression prior: θe ~ U(−2, 2), no bias (ψ are in units of their standard deviations;
no expression mode is known to open the mouth). Checked on fixtures only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ifn.facemodel.convert import SourceModel, build_face_model_from_source, read_landmarks
from ifn.facemodel.model import ExpressionPrior, FaceModel
from ifn.facemodel.safe_pickle import load_pickle

__all__ = ["FLAME_EXPRESSION_PRIOR", "FLAME_LICENSE", "FLAME_URL", "convert_flame", "split_shapedirs"]

FLAME_URL = "https://flame.is.tue.mpg.de/"
FLAME_LICENSE = "FLAME licence (Max Planck Institute for Intelligent Systems; non-commercial research, registration)"
FLAME_EXPRESSION_PRIOR = ExpressionPrior(
    low=-2.0,
    high=2.0,
    first_bias=0.0,
    note="FLAME: expression blendshapes scaled to ~N(0, 1) coefficients, re-orthonormalised; U(-2, 2), no mouth "
    "bias (the jaw is a joint, fixed at zero pose). Set on fixtures, not tuned on the real model.",
)
#: A split of ``shapedirs`` must show at least this jump in column norm to be found automatically.
_MIN_JUMP = 2.0
_M = 1000.0  # FLAME: metres


def split_shapedirs(norms: np.ndarray) -> int:
    """Where identity blendshapes end in FLAME's combined ``shapedirs``.

    Both groups are ordered by decreasing norm; the expression group restarts large, so
    the split is the largest ratio ``norm[k] / norm[k - 1]``.

    Args:
        norms: ``(K,)`` norm of each blendshape column.

    Returns:
        the number of identity blendshapes.

    Raises:
        ValueError: if no ratio reaches 2 (no visible restart).

    Example:
        >>> split_shapedirs(np.array([9.0, 5.0, 1.0, 8.0, 2.0]))
        3
    """
    norms = np.asarray(norms, dtype=np.float64)
    if len(norms) < 2:
        raise ValueError("shapedirs has fewer than 2 blendshapes: cannot split identity from expression")
    ratios = norms[1:] / np.maximum(norms[:-1], 1e-300)
    k = int(np.argmax(ratios)) + 1
    if ratios[k - 1] < _MIN_JUMP:
        raise ValueError(f"shapedirs column norms show no restart (largest ratio {ratios.max():.3g}); "
                         "pass the number of identity blendshapes (--flame-shape-modes, 300 in FLAME 2020/2023)")
    return k


def _array(data: dict[str, Any], key: str, label: Path, ndim: int) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{label}: missing {key!r} (found {sorted(map(str, data))}); not a FLAME model pickle?")
    try:
        value = np.asarray(data[key], dtype=np.float64 if key != "f" else np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label}: {key!r} is not a numeric array ({err})") from err
    if value.ndim != ndim:
        raise ValueError(f"{label}: {key!r} must have {ndim} dimensions, got shape {value.shape}")
    return value


def _read_obj_uv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    text = path.read_text(errors="replace")
    vt = [line.split()[1:3] for line in text.splitlines() if line.startswith("vt ")]
    ft: list[list[int]] = []
    for line in text.splitlines():
        if line.startswith("f "):
            corners = line.split()[1:]
            if len(corners) != 3 or any(c.count("/") < 1 for c in corners):
                raise ValueError(f"{path}: face line without v/vt triangles: {line[:60]!r}")
            ft.append([int(re.split("/", c)[1]) - 1 for c in corners])
    if not vt or not ft:
        raise ValueError(f"{path}: no 'vt' or no 'f v/vt' lines")
    return np.asarray(vt, dtype=np.float64), np.asarray(ft, dtype=np.int64)


def _sample_albedo(
    albedo_path: Path, uv_path: Path | None, triangles: np.ndarray, n_vertices: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    with np.load(albedo_path, allow_pickle=False) as npz:
        files = set(npz.files)
        if {"MU", "PC"} <= files:
            mean_key, pc_key = "MU", "PC"
        elif {"mean", "tex_dir"} <= files:
            mean_key, pc_key = "mean", "tex_dir"
        else:
            raise ValueError(f"{albedo_path}: expected MU/PC (FLAME_albedo_from_BFM.npz) or mean/tex_dir "
                             f"(FLAME_texture.npz), found {sorted(files)}")
        mean, pcs = np.asarray(npz[mean_key], dtype=np.float64), np.asarray(npz[pc_key])
        if {"vt", "ft"} <= files:
            vt, ft = np.asarray(npz["vt"], dtype=np.float64), np.asarray(npz["ft"], dtype=np.int64)
        elif uv_path is not None:
            vt, ft = _read_obj_uv(uv_path)
        else:
            raise ValueError(f"{albedo_path}: no UV layout (vt/ft) in the file; pass the FLAME template OBJ "
                             "with texture coordinates (--uv head_template.obj)")
    if mean.ndim != 3 or mean.shape[2] != 3:
        raise ValueError(f"{albedo_path}: {mean_key} must be (H, W, 3), got {mean.shape}")
    height, width = mean.shape[:2]
    pcs = pcs.reshape(height, width, 3, -1)
    if ft.shape != triangles.shape:
        raise ValueError(f"{albedo_path}: ft has shape {ft.shape}, the model's f {triangles.shape}")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise ValueError(f"{albedo_path}: ft indices out of range for {len(vt)} texture coordinates")
    # Each vertex takes the UV of its first corner (seams have several; any one is on the texture).
    first_uv = np.full(n_vertices, -1, dtype=np.int64)
    corners, uvs = triangles.reshape(-1)[::-1], ft.reshape(-1)[::-1]
    first_uv[corners] = uvs  # reversed: the first occurrence is written last
    unmapped = int((first_uv < 0).sum())
    first_uv[first_uv < 0] = 0
    uv = vt[first_uv]
    x = np.clip(uv[:, 0] * width - 0.5, 0.0, width - 1.0)
    y = np.clip((1.0 - uv[:, 1]) * height - 0.5, 0.0, height - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)

    def bilinear(img: np.ndarray) -> np.ndarray:
        ones = (1,) * (img.ndim - 2)  # weights broadcast over the channel (and mode) axes
        wx, wy = (x - x0).reshape(-1, *ones), (y - y0).reshape(-1, *ones)
        top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
        bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
        return top * (1 - wy) + bottom * wy

    colour = bilinear(mean)[:, ::-1]  # BGR → RGB, (V, 3)
    modes = bilinear(pcs.astype(np.float64))[:, ::-1, :]  # (V, 3, K)
    value_scale = 255.0 if mean.max() > 1.5 else 1.0
    report = {"albedo_file": albedo_path.name, "albedo_keys": [mean_key, pc_key], "texture_size": [height, width],
              "albedo_modes": int(pcs.shape[-1]), "albedo_scale": f"file / {value_scale:g}", "channels": "BGR -> RGB",
              "vertices_without_uv": unmapped}
    return colour / value_scale, np.moveaxis(modes, -1, 0) / value_scale, report


def convert_flame(
    model: str | os.PathLike[str],
    *,
    landmarks: str | os.PathLike[str],
    albedo: str | os.PathLike[str] | None = None,
    uv: str | os.PathLike[str] | None = None,
    n_shape: int | None = None,
    landmarks_one_based: bool = False,
    scale: float = _M,
    crop: bool = True,
) -> FaceModel:
    """Convert FLAME's model pickle (+ albedo, + landmark embedding) to a :class:`FaceModel`.

    Args:
        model: ``generic_model.pkl`` (FLAME 2020) or the FLAME 2023 pickle.
        landmarks: the 68-point landmark embedding (``.npy``, ``.pkl`` or ``.npz``), or any
            file :func:`~ifn.facemodel.convert.read_landmarks` reads.
        albedo: ``FLAME_albedo_from_BFM.npz`` or ``FLAME_texture.npz``; a painted prior without.
        uv: an OBJ with FLAME's texture coordinates, if the albedo file has no ``vt``/``ft``.
        n_shape: identity blendshapes at the front of ``shapedirs`` (found from the column
            norms when ``None``).
        landmarks_one_based: the landmark file counts from 1.
        scale: millimetres per source unit (FLAME is in metres).
        crop: keep only the face region (and two rings of triangles).

    Raises:
        FileNotFoundError: for a missing file.
        ~ifn.facemodel.safe_pickle.UnsafePickleError: for a pickle naming a class outside the
            allow-list (nothing from it runs).
        ValueError: naming the file, for missing keys or inconsistent sizes.
    """
    path = Path(model)
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict (FLAME model), got {type(data).__name__}")
    template = _array(data, "v_template", path, 2)
    triangles = _array(data, "f", path, 2)
    shapedirs = _array(data, "shapedirs", path, 3)
    n_vertices = len(template)
    if template.shape[1] != 3 or shapedirs.shape[:2] != (n_vertices, 3):
        raise ValueError(f"{path}: v_template {template.shape} and shapedirs {shapedirs.shape} do not match (V, 3)")
    fields = np.moveaxis(shapedirs, -1, 0)  # (K, V, 3)
    norms = np.linalg.norm(fields.reshape(len(fields), -1), axis=1)
    k_shape = split_shapedirs(norms) if n_shape is None else int(n_shape)
    if not 0 < k_shape < len(fields):
        raise ValueError(f"{path}: cannot keep {k_shape} identity blendshapes of {len(fields)}")
    lm = read_landmarks(landmarks, one_based=landmarks_one_based)
    extra: dict[str, Any] = {
        "converted_file": path.name, "units": f"mm = metres x {scale:g}", "blendshapes": len(fields),
        "identity_blendshapes": k_shape, "split": "given" if n_shape is not None else "column-norm restart",
        "pose": "zero (rest pose): global, neck, jaw and eye joints not representable in a linear model",
        "ignored_keys": sorted(str(k) for k in data if k not in ("v_template", "f", "shapedirs")),
    }
    if "kintree_table" in data:
        extra["joints"] = int(np.asarray(data["kintree_table"]).shape[-1])
    refl_mean = refl_fields = None
    if albedo is not None:
        refl_mean, refl_fields, report = _sample_albedo(Path(albedo), Path(uv) if uv else None, triangles, n_vertices)
        extra.update(report)
    src = SourceModel(
        label=str(path),
        mean=template * scale,
        shape_fields=fields[:k_shape] * scale,
        expression_fields=fields[k_shape:] * scale,
        reflectance_mean=refl_mean,
        reflectance_fields=refl_fields,
        triangles=triangles,
        landmarks=lm,
        name="flame",
        source=f"{FLAME_URL} (converted from {path.name}" + (f" + {Path(albedo).name})" if albedo else ")"),
        license=FLAME_LICENSE + ("; albedo model under its own terms" if albedo else "; reflectance prior by ifn"),
        description=f"FLAME ({path.name}): {n_vertices} vertices, {k_shape} identity and {len(fields) - k_shape} "
        "expression blendshapes at zero pose (jaw, neck and eyes fixed), converted to mm and re-orthonormalised on "
        "the face region; " + ("albedo sampled per vertex from the UV texture model." if albedo else
                               "reflectance is ifn's painted prior (no albedo model given)."),
        expression_prior=FLAME_EXPRESSION_PRIOR,
        extra=extra,
    )
    return build_face_model_from_source(src, crop=crop)
