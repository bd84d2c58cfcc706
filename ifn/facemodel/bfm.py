"""Import the Basel Face Model (2009 with an expression basis, 2017, 2019) into the native format.

The files are the user's (each under the University of Basel's licence, obtained from
https://faces.dmi.unibas.ch/bfm/ after registration); nothing of them ships with ``ifn``.
Every size (vertices, triangles, modes, the vertex subset an expression basis covers) is
read from the files.

**BFM 2009** (:func:`convert_bfm2009`), either

* ``BFM_model_front.mat`` (Deep3DFaceRecon's front face with expression, MATLAB v5):
  ``meanshape`` ``(1, 3N)``, ``idBase`` ``(3N, K_s)``, ``exBase`` ``(3N, K_e)``, ``meantex``
  ``(1, 3N)``, ``texBase`` ``(3N, K_r)``, ``tri`` ``(F, 3)`` and ``keypoints`` ``(1, 68)``,
  1-based. Its bases are already σ-scaled (the PCA modes times their standard deviations),
  shape in decimetres (BFM's micrometres / 10⁵) and colour in 0..255; or
* ``01_MorphableModel.mat`` (``shapeMU`` ``(3N, 1)``, ``shapePC`` ``(3N, K)``, ``shapeEV``
  ``(K, 1)``, ``texMU``, ``texPC``, ``texEV``, ``tl`` ``(F, 3)`` 1-based; shape in
  micrometres, colour in 0..255, ``*EV`` standard deviations of unit PCA columns) with
  Guo et al.'s expression basis: ``Exp_Pca.bin`` (int32 ``K_e``, float32 mean ``3M``,
  float32 modes ``K_e × 3M`` mode after mode, micrometres), ``std_exp.txt`` (``K_e``
  standard deviations) and ``BFM_exp_idx.mat`` (``trimIndex``: the ``M`` 1-based vertices of
  the full model the basis covers). ``M`` comes from the size of ``Exp_Pca.bin``. The model
  keeps those ``M`` vertices. Its mean (``expMU``) is not used (Deep3DFaceRecon does not use
  it either). BFM 2009 has no iBUG-68 landmarks: pass a landmark file.

All vectors are x, y, z interleaved per vertex (MATLAB's ``reshape(v, 3, N)``).

**BFM 2017 / 2019** (:func:`convert_bfm2017`): the statismo ``.h5`` files, face
(``model2017-1_face12_nomouth.h5``, ``model2019_face12.h5``), BFM-mask
(``model2017-1_bfm_nomouth.h5``, ``model2019_bfm.h5``) and full-head
(``model2019_fullHead.h5``) variants. Per part (``shape``, ``color``, ``expression``):
``<part>/model/mean`` ``(3N,)``, ``pcaBasis`` ``(3N, K)`` with orthonormal columns,
``pcaVariance`` ``(K,)`` variances (σ = √variance); the mesh is
``shape/representer/cells`` ``(3, F)``, 0-based. Shape in millimetres, colour in [0, 1]
(a colour mean above 1.5 is taken to be 0..255 and divided). The expression mean is not
added to the neutral face (``expression_mean_rms_mm`` in the metadata says how far it is).
No iBUG-68 landmarks in the file: pass a landmark file.

Expression prior (all BFM variants): θe ~ U(−2, 2), no bias — the bases are PCAs in units
of their standard deviations, so ±2 σ covers most of the data; which mode opens the mouth
is not known from the file, so no mode is biased. Checked on fixtures only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ifn.facemodel.convert import Landmarks, SourceModel, build_face_model_from_source, read_landmarks
from ifn.facemodel.model import ExpressionPrior, FaceModel

__all__ = ["BFM_EXPRESSION_PRIOR", "BFM_LICENSE", "BFM_URL", "convert_bfm2009", "convert_bfm2017"]

BFM_URL = "https://faces.dmi.unibas.ch/bfm/"
BFM_LICENSE = "Basel Face Model licence (University of Basel; non-commercial research, registration required)"
BFM_EXPRESSION_PRIOR = ExpressionPrior(
    low=-2.0,
    high=2.0,
    first_bias=0.0,
    note="BFM: PCA expression basis in units of its standard deviations; U(-2, 2), no mouth bias "
    "(which mode opens the mouth is not known from the file). Set on fixtures, not tuned on the real model.",
)
#: Millimetres per source unit.
_UM = 1e-3  # 01_MorphableModel.mat and Exp_Pca.bin: micrometres
_DM = 100.0  # BFM_model_front.mat: micrometres / 1e5 = decimetres


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise ValueError(f"{path}: a MATLAB v7.3 (HDF5) file; save it as v7 or older (-v7) first") from err
    except (ValueError, TypeError, OSError) as err:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    return {k: v for k, v in data.items() if not k.startswith("__")}


def _need(data: dict[str, Any], keys: Sequence[str], label: Path) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{label}: missing {missing} (found {sorted(data)})")


def _fields(basis: np.ndarray, n_vertices: int, label: str, std: np.ndarray | None = None) -> np.ndarray:
    """``(3N, K)`` columns (× ``std``) → ``(K, N, 3)`` σ-scaled fields, float64."""
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[0] != 3 * n_vertices:
        raise ValueError(f"{label}: expected ({3 * n_vertices}, K), got {basis.shape}")
    if std is not None:
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if std.shape != (basis.shape[1],):
            raise ValueError(f"{label}: {basis.shape[1]} modes but {std.size} standard deviations")
        basis = basis * std[None, :]
    return basis.T.reshape(-1, n_vertices, 3)


def _vector(values: np.ndarray, n_vertices: int | None, label: str) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size % 3 or (n_vertices is not None and flat.size != 3 * n_vertices):
        expected = "a multiple of 3" if n_vertices is None else str(3 * n_vertices)
        raise ValueError(f"{label}: {flat.size} values, expected {expected}")
    return flat.reshape(-1, 3)


def _triangles(values: np.ndarray, one_based: bool, label: str) -> np.ndarray:
    tri = np.asarray(values)
    if tri.ndim == 2 and tri.shape[0] == 3 and tri.shape[1] != 3:
        tri = tri.T
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"{label}: triangles must be (F, 3) or (3, F), got {tri.shape}")
    return tri.astype(np.int64) - (1 if one_based else 0)


def _classify(sources: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for source in sources:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix == ".bin":
            role, content = "exp_pca", path
        elif suffix == ".txt":
            role, content = "exp_std", path
        elif suffix == ".mat":
            data = _loadmat(path)
            if "shapeMU" in data:
                role = "morphable"
            elif "meanshape" in data:
                role = "front"
            elif "trimIndex" in data:
                role = "exp_index"
            else:
                raise ValueError(f"{path}: not a BFM 2009 file this converter knows (keys {sorted(data)}); expected "
                                 "01_MorphableModel.mat, BFM_model_front.mat or BFM_exp_idx.mat")
            content = (path, data)
        else:
            raise ValueError(f"{path}: unexpected file type for bfm2009 (.mat, Exp_Pca.bin or std_exp.txt)")
        if role in roles:
            raise ValueError(f"{path}: two files of the same kind ({role}); give each once")
        roles[role] = content
    return roles


def convert_bfm2009(
    sources: Sequence[str | os.PathLike[str]],
    *,
    landmarks: str | os.PathLike[str] | None = None,
    landmarks_one_based: bool = False,
    scale: float | None = None,
    crop: bool = True,
) -> FaceModel:
    """Convert BFM 2009 files (see the module docstring for the two accepted sets).

    Args:
        sources: ``BFM_model_front.mat`` alone, or ``01_MorphableModel.mat`` with
            ``Exp_Pca.bin``, ``std_exp.txt`` and ``BFM_exp_idx.mat`` (any order).
        landmarks: 68 landmarks (:func:`~ifn.facemodel.convert.read_landmarks`), in the
            converted vertex order: the front model's vertices, or the ``M`` vertices of
            ``BFM_exp_idx.mat``. Required for ``01_MorphableModel.mat``; for the front
            model it replaces ``keypoints``.
        landmarks_one_based: the landmark file counts from 1.
        scale: millimetres per source unit (default: 10⁻³ for micrometres, 100 for the
            front model's decimetres).
        crop: keep only the face region (and two rings of triangles).

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: naming the file, for a missing key, inconsistent sizes or a missing input.
    """
    roles = _classify(sources)
    override = read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks is not None else None
    if "front" in roles:
        if len(roles) > 1:
            raise ValueError("BFM_model_front.mat is a complete model: give it alone (without 01_MorphableModel.mat "
                             f"or the expression files), got {len(roles)} files")
        src = _front_model(*roles["front"], override, _DM if scale is None else scale)
    elif "morphable" in roles:
        src = _full_model(roles, override, _UM if scale is None else scale)
    else:
        raise ValueError("bfm2009 needs BFM_model_front.mat, or 01_MorphableModel.mat with Exp_Pca.bin, "
                         "std_exp.txt and BFM_exp_idx.mat")
    return build_face_model_from_source(src, crop=crop)


def _front_model(path: Path, data: dict[str, Any], override: Landmarks | None, scale: float) -> SourceModel:
    _need(data, ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri"), path)
    mean = _vector(data["meanshape"], None, f"{path}: meanshape") * scale
    n = len(mean)
    if override is None:
        _need(data, ("keypoints",), path)
        lm = Landmarks(vertices=np.asarray(data["keypoints"]).reshape(-1).astype(np.int64) - 1)
    else:
        lm = override
    return SourceModel(
        label=str(path),
        mean=mean,
        shape_fields=_fields(data["idBase"], n, f"{path}: idBase") * scale,
        expression_fields=_fields(data["exBase"], n, f"{path}: exBase") * scale,
        reflectance_mean=_vector(data["meantex"], n, f"{path}: meantex") / 255.0,
        reflectance_fields=_fields(data["texBase"], n, f"{path}: texBase") / 255.0,
        triangles=_triangles(data["tri"], True, f"{path}: tri"),
        landmarks=lm,
        name="bfm2009-front",
        source=f"{BFM_URL} (Deep3DFaceRecon's BFM_model_front.mat, converted from {path.name})",
        license=BFM_LICENSE,
        description=f"Basel Face Model 2009, Deep3DFaceRecon's front face: {n} vertices, identity, expression "
        "and colour bases as in the file (σ-scaled), converted to mm and re-orthonormalised on the face region.",
        expression_prior=BFM_EXPRESSION_PRIOR,
        extra={"converted_file": path.name, "units": f"mm = file units x {scale:g}", "colour": "0..255 / 255",
               "bases": "sigma-scaled columns (3N, K), x/y/z interleaved", "index_base": "1 (tri, keypoints)"},
    )


def _read_exp_pca(path: Path) -> tuple[np.ndarray, int]:
    raw = path.read_bytes()
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for Exp_Pca.bin (int32 count, float32 mean, float32 modes)")
    k = int(np.frombuffer(raw[:4], dtype="<i4")[0])
    floats = (len(raw) - 4) // 4
    if k <= 0 or (len(raw) - 4) % 4 or floats % (3 * (k + 1)):
        raise ValueError(f"{path}: {len(raw)} bytes do not fit {k} modes of 3·M float32 plus a 3·M mean "
                         "(truncated, or not Guo et al.'s Exp_Pca.bin?)")
    m = floats // (3 * (k + 1))
    values = np.frombuffer(raw[4:], dtype="<f4").astype(np.float64)
    return values[3 * m :].reshape(k, m, 3), m


def _full_model(roles: dict[str, Any], override: Landmarks | None, scale: float) -> SourceModel:
    path, data = roles["morphable"]
    _need(data, ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"), path)
    missing = [name for role, name in (("exp_pca", "Exp_Pca.bin"), ("exp_std", "std_exp.txt"),
                                       ("exp_index", "BFM_exp_idx.mat")) if role not in roles]
    if missing:
        raise ValueError(f"{path}: 01_MorphableModel.mat has no expression basis; also give {', '.join(missing)}")
    if override is None:
        raise ValueError(f"{path}: BFM 2009 holds no iBUG-68 landmarks; pass --landmarks FILE (68 vertex indices "
                         "of the converted model, i.e. of the vertices listed in BFM_exp_idx.mat)")
    mean = _vector(data["shapeMU"], None, f"{path}: shapeMU")
    n_full = len(mean)
    exp_modes, m = _read_exp_pca(roles["exp_pca"])
    std_path = roles["exp_std"]
    try:
        exp_std = np.loadtxt(std_path, ndmin=1).reshape(-1)
    except ValueError as err:
        raise ValueError(f"{std_path}: not a list of numbers ({err})") from err
    if exp_std.shape != (len(exp_modes),):
        raise ValueError(f"{std_path}: {exp_std.size} standard deviations for {len(exp_modes)} expression modes "
                         f"in {roles['exp_pca']}")
    idx_path, idx_data = roles["exp_index"]
    trim = np.asarray(idx_data["trimIndex"]).reshape(-1).astype(np.int64) - 1
    if trim.shape != (m,) or trim.min() < 0 or trim.max() >= n_full:
        raise ValueError(f"{idx_path}: trimIndex must list the {m} vertices of {roles['exp_pca'].name} as 1-based "
                         f"indices into the {n_full} of {path.name}, got {trim.size} in [{trim.min() + 1}, "
                         f"{trim.max() + 1}]")
    # The model keeps the vertices the expression basis covers; triangles of dropped vertices go.
    remap = np.full(n_full, -1, dtype=np.int64)
    remap[trim] = np.arange(m)
    tri_full = _triangles(data["tl"], True, f"{path}: tl")
    if tri_full.min() < 0 or tri_full.max() >= n_full:
        raise ValueError(f"{path}: tl indices out of range for {n_full} vertices")
    tri = remap[tri_full]
    tri = tri[(tri >= 0).all(axis=1)]
    shape_fields = _fields(data["shapePC"], n_full, f"{path}: shapePC", data["shapeEV"])[:, trim] * scale
    tex_fields = _fields(data["texPC"], n_full, f"{path}: texPC", data["texEV"])[:, trim] / 255.0
    return SourceModel(
        label=str(path),
        mean=mean[trim] * scale,
        shape_fields=shape_fields,
        expression_fields=exp_modes * exp_std[:, None, None] * scale,
        reflectance_mean=_vector(data["texMU"], n_full, f"{path}: texMU")[trim] / 255.0,
        reflectance_fields=tex_fields,
        triangles=tri,
        landmarks=override,
        name="bfm2009",
        source=f"{BFM_URL} ({path.name} + Guo et al.'s expression basis {roles['exp_pca'].name})",
        license=BFM_LICENSE + "; expression basis: Guo et al. (CNN-based real-time dense face reconstruction)",
        description=f"Basel Face Model 2009 with Guo et al.'s expression basis: the {m} of {n_full} vertices the "
        "expression basis covers, converted to mm and re-orthonormalised on the face region.",
        expression_prior=BFM_EXPRESSION_PRIOR,
        extra={"converted_file": path.name, "units": f"mm = file units x {scale:g} (micrometres)",
               "colour": "0..255 / 255", "bases": "unit PCA columns x *EV standard deviations",
               "expression_vertices": m, "expression_mean": "Exp_Pca.bin's mean not used"},
    )


def convert_bfm2017(
    path: str | os.PathLike[str],
    *,
    landmarks: str | os.PathLike[str],
    landmarks_one_based: bool = False,
    scale: float = 1.0,
    crop: bool = True,
    name: str = "bfm2017",
) -> FaceModel:
    """Convert a BFM 2017 or 2019 statismo ``.h5`` file (face, BFM-mask or full-head variant).

    Args:
        path: the ``.h5`` file.
        landmarks: 68 landmarks (:func:`~ifn.facemodel.convert.read_landmarks`) in the file's
            vertex order.
        landmarks_one_based: the landmark file counts from 1.
        scale: millimetres per source unit (the files are in millimetres).
        crop: keep only the face region (and two rings of triangles).
        name: the model name in the metadata (``bfm2017`` or ``bfm2019``).

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: naming the file and the dataset, for a missing dataset or inconsistent sizes.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    lm = read_landmarks(landmarks, one_based=landmarks_one_based)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from err
    with handle:
        def read(key: str) -> np.ndarray:
            if key not in handle:
                raise ValueError(f"{path}: missing dataset /{key} (not a statismo BFM 2017/2019 file?)")
            return np.asarray(handle[key][()])

        mean = _vector(read("shape/model/mean"), None, f"{path}: /shape/model/mean")
        n = len(mean)
        cells = _triangles(read("shape/representer/cells"), False, f"{path}: /shape/representer/cells")
        parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        norms: dict[str, float] = {}
        for part in ("shape", "color", "expression"):
            basis = np.asarray(read(f"{part}/model/pcaBasis"), dtype=np.float64)
            variance = np.asarray(read(f"{part}/model/pcaVariance"), dtype=np.float64).reshape(-1)
            if basis.shape == (len(variance), 3 * n) and basis.shape[0] != basis.shape[1]:
                basis = basis.T
            if (variance < 0).any():
                raise ValueError(f"{path}: /{part}/model/pcaVariance has negative entries")
            column_norms = np.linalg.norm(basis, axis=0) if basis.ndim == 2 else np.zeros(0)
            norms[part] = float(np.abs(column_norms - 1.0).max()) if column_norms.size else 0.0
            if norms[part] > 1e-2:
                raise ValueError(f"{path}: /{part}/model/pcaBasis columns are not unit vectors (max |‖u‖ - 1| = "
                                 f"{norms[part]:.3g}); this converter reads statismo's orthonormal layout")
            fields = _fields(basis, n, f"{path}: /{part}/model/pcaBasis", np.sqrt(variance))
            part_mean = _vector(read(f"{part}/model/mean"), n, f"{path}: /{part}/model/mean")
            parts[part] = (part_mean, fields)
    colour_mean, colour_fields = parts["color"]
    colour_scale = 255.0 if colour_mean.max() > 1.5 else 1.0
    exp_mean = parts["expression"][0] * scale
    return build_face_model_from_source(
        SourceModel(
            label=str(path),
            mean=mean * scale,
            shape_fields=parts["shape"][1] * scale,
            expression_fields=parts["expression"][1] * scale,
            reflectance_mean=colour_mean / colour_scale,
            reflectance_fields=colour_fields / colour_scale,
            triangles=cells,
            landmarks=lm,
            name=name,
            source=f"{BFM_URL} (converted from {path.name})",
            license=BFM_LICENSE,
            description=f"Basel Face Model {name[3:]} ({path.name}): {n} vertices, shape, expression and colour "
            "PCA (statismo layout), converted to mm and re-orthonormalised on the face region.",
            expression_prior=BFM_EXPRESSION_PRIOR,
            extra={"converted_file": path.name, "units": f"mm = file units x {scale:g}",
                   "colour": f"file / {colour_scale:g}", "bases": "unit pcaBasis columns x sqrt(pcaVariance)",
                   "pca_basis_max_norm_error": norms, "index_base": "0 (cells)",
                   "expression_mean_rms_mm": float(np.sqrt((exp_mean**2).sum(axis=1).mean())),
                   "expression_mean": "not added to the neutral face"},
        ),
        crop=crop,
    )
