"""Import ICT-FaceKit (ICT Face Model Light) into the native face-model format.

Source: https://github.com/ICT-VGL/ICT-FaceKit (MIT). Its ``FaceXModel`` folder holds
``generic_neutral_mesh.obj``, ``identity000..099.obj`` (full shapes = neutral + a σ-scaled
PCA mode, so identity weights are N(0, 1)), one OBJ per expression blendshape (full shapes
at weight 1; weights range over 0..1) and ``vertex_indices.json``. OBJs are in centimetres.

What :func:`convert_ict` builds:

* **Vertices:** the face area ``[0, 9409)`` plus the visible fronts of the eyeballs.
  ICT's eye is two closed shells: the sclera mesh is the *outer* surface (with the corneal
  bulge) and the iris mesh lies entirely inside it (a concave iris/pupil dish in front).
  An opaque renderer would never show the iris, so per eye we keep the forward-facing
  (+z normal) sclera triangles *outside* the cornea cap (within :data:`LIMBUS_DEG` of the
  optical axis, from the sphere fitted to the sclera's back half through the cornea apex)
  and the forward-facing iris-dish triangles inside it; the two overlap by one ring, so
  there is no crack. ICT's pupil is a hole into the iris shell, so the cornea just in
  front of it is kept too (painted as pupil). All of it lies inside the face outline.
* **Triangles:** quads split into two, every triangle counter-clockwise seen from outside
  (checked on the nose tip and on the eyeball shells), re-indexed compactly.
* **Shape:** deltas D (``N_id × 3V``) of the identities from the neutral; with N(0, 1)
  weights the covariance is DᵀD, so ``D = U S Vᵀ`` gives basis = rows of Vᵀ, σs = S.
* **Expression:** uncentred PCA of the blendshape deltas E (``53 × 3V``): basis = rows of
  Vᵀ, σe = S / √53, the fewest modes keeping ``expression_variance`` of Σ S²; positive
  θe,1 opens the mouth (it correlates positively with ``jawOpen``).
* **Face mask:** vertices whose frontal (x, y) projection lies inside (or on) the
  ``FACE_OUTLINE`` polygon of the neutral's landmarks, without the pieces of ear and neck
  that project inside it but are not connected to the face (they would float beside a
  turned head); ICT's face area has no mouth socket.
* **Reflectance:** a hand-made prior (:mod:`ifn.facemodel.albedo_prior`); ICT Face
  Model Light has no albedo model.

Convention:
    Output is model space: millimetres (ICT cm × 10), +y up, +z out of the face — ICT's
    own axes, which already agree.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from zlib import error as zlib_error

import numpy as np
import torch

from ifn.facemodel.albedo_prior import build_reflectance_prior, in_range_fraction, landmark_region_weights
from ifn.facemodel.basis import orthonormal_basis
from ifn.facemodel.convert import mesh_components as _components
from ifn.facemodel.geometry import distance_to_polyline, smoothstep, triangle_normals
from ifn.facemodel.model import ExpressionPrior, FaceModel, FaceModelMetadata
from ifn.facemodel.regions import FACE_OUTLINE, points_in_polygon

__all__ = ["ICT_EXPRESSION_PRIOR", "ICT_EYES", "ICT_FACE_RANGE", "ICT_URL", "LIMBUS_DEG", "convert_ict"]

ICT_URL = "https://github.com/ICT-VGL/ICT-FaceKit"
ICT_LICENSE = "MIT (ICT-FaceKit, Copyright (c) 2020 USC Institute for Creative Technologies); reflectance prior by ifn"
#: The "full face area" vertex range of the ICT topology (README, "Face Area Details").
ICT_FACE_RANGE: tuple[int, int] = (0, 9409)
#: Per eye: (sclera vertex range, iris vertex range), left eye then right eye.
ICT_EYES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((21451, 22221), (22221, 23021)),
    ((23021, 23791), (23791, 24591)),
)
#: Angle (degrees, from the eyeball centre about the optical axis) of the cornea/iris edge.
#: Measured on ICT: the iris dish reaches 22° (radius 16.3–16.9 mm from the centre) and
#: folds back by 24–26°; the sclera's corneal bulge ends at ~26°. 23° gives a visible iris
#: of ~12.5 mm diameter (human: ~11.7 mm).
LIMBUS_DEG = 23.0

#: Expression prior for this conversion's θe (units of σe = S/√53); see the note.
ICT_EXPRESSION_PRIOR = ExpressionPrior(
    low=-2.5,
    high=2.5,
    first_bias=3.0,
    note=(
        "ICT-FaceKit PCA basis, θe in units of σe = S/√53, so a single blendshape at weight 1 has "
        "coefficients U_ij·√53: jawOpen has θe,1 = +5.7, mouthClose -3.9 (alone it pushes the lips through "
        "each other); 96 % of all single-blendshape coefficients on the kept modes lie within ±2.5 (99 % "
        "within ±3.6). U(-2.5, 2.5) covers that span; the +3.0 bias puts θe,1 in [0.5, 5.5], between a "
        "closed mouth and a full jawOpen, never beyond it. Measured on 4000 samples: inner lips cross by "
        ">1 mm in 2 % (worst 1 % by >2.7 mm), the mouth is open >3 mm in 93 % (median inner-lip gap 17 mm; "
        "full jawOpen 28 mm), eyelids never cross, max vertex displacement median 25 mm, 99th percentile "
        "46 mm (single blendshapes: jawOpen 42 mm, all others <= 19 mm). The paper's U(-12, 12) + 4.8 "
        "(76 blendshapes) rescaled to the same blendshape-weight spread, U(-10, 10) + 4.0, would cross the "
        "lips in 31 % of samples with 125 mm 99th-percentile displacement."
    ),
)

_NEUTRAL = "generic_neutral_mesh.obj"
_INDICES = "vertex_indices.json"
_IDENTITY = re.compile(r"^identity(\d+)\.obj$")
_MAX_MEMBER_BYTES = 256 * 1024 * 1024
_V_LINE = re.compile(rb"^v[ \t]+([^\r\n]*)", re.MULTILINE)


def convert_ict(
    source: str | os.PathLike[str],
    *,
    progress: bool = True,
    expression_variance: float = 0.99,
    face_range: tuple[int, int] = ICT_FACE_RANGE,
    eyes: Sequence[tuple[tuple[int, int], tuple[int, int]]] = ICT_EYES,
) -> FaceModel:
    """Convert ICT-FaceKit to a :class:`FaceModel`.

    Args:
        source: GitHub's download zip (read in memory, never extracted) or a folder: the
            ``FaceXModel`` folder itself or a folder containing it (e.g. the unzipped
            ``ICT-FaceKit-master``).
        progress: show a progress bar over the OBJ files.
        expression_variance: fraction of the blendshapes' energy (Σ S²) the expression
            PCA must keep, in ``(0, 1]``; the fewest modes that reach it are kept.
        face_range: ``[start, stop)`` of the face-area vertices (ICT's full face area).
        eyes: per eye ``((sclera_start, sclera_stop), (iris_start, iris_stop))``; ``()``
            keeps no eyeballs. The defaults are ICT's.

    Returns:
        The face model (float32, millimetres); ``model.save(path)`` writes it.

    Raises:
        FileNotFoundError: if ``source`` or a required file inside it does not exist.
        ValueError: naming the entry or file, for an unsafe zip entry (absolute or with
            ``..``), a malformed or truncated OBJ, or inconsistent metadata.

    Example:
        >>> model = convert_ict("ICT-FaceKit-master.zip")  # doctest: +SKIP
        >>> model.save("ict.npz")  # doctest: +SKIP
    """
    if not 0.0 < expression_variance <= 1.0:
        raise ValueError(f"expression_variance must lie in (0, 1], got {expression_variance}")
    with _open_source(source) as src:
        try:
            info = json.loads(_decode(src.read(_INDICES), src.label(_INDICES)))
        except json.JSONDecodeError as err:
            raise ValueError(f"{src.label(_INDICES)}: not valid JSON ({err})") from err
        expression_names = _expression_names(info, src.label(_INDICES))
        landmarks_src = _landmark_indices(info, src)
        identity_files = src.identity_files()
        files = [_NEUTRAL, *identity_files, *[f"{name}.obj" for name in expression_names]]
        missing = [name for name in files if not src.exists(name)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{src.label('')}: missing {shown}")

        bar = _progress(files, progress)
        neutral_bytes = src.read(_NEUTRAL)
        neutral_cm = _parse_vertices(neutral_bytes, src.label(_NEUTRAL))
        n_source = len(neutral_cm)
        polygons_tri = _parse_triangles(neutral_bytes, n_source, src.label(_NEUTRAL))
        del neutral_bytes
        bar.update(1)

        neutral_all = neutral_cm * 10.0
        topo = _select_topology(neutral_all, polygons_tri, landmarks_src, face_range, eyes, src.label(_NEUTRAL))
        kept = topo["kept"]
        neutral = neutral_all[kept]

        def read_delta(name: str) -> np.ndarray:
            verts = _parse_vertices(src.read(name), src.label(name), expected=n_source)
            bar.update(1)
            return verts[kept].reshape(-1) * 10.0 - neutral.reshape(-1)

        identity_deltas = np.stack([read_delta(name) for name in identity_files])
        expression_deltas = np.stack([read_delta(f"{name}.obj") for name in expression_names])
        bar.close()
        source_name = src.name

    n_vertices = len(kept)
    # Uncentred SVDs (the deltas are changes from the neutral), largest component of each mode positive.
    shape_basis, shape_std = orthonormal_basis(identity_deltas)
    expr_basis, s_expr = orthonormal_basis(expression_deltas)
    energy = np.cumsum(s_expr**2) / max(float(np.sum(s_expr**2)), 1e-300)
    k_expr = int(min(np.searchsorted(energy, expression_variance - 1e-12) + 1, len(s_expr)))
    expr_basis, s_expr = expr_basis[:k_expr], s_expr[:k_expr]
    expr_std = s_expr / np.sqrt(len(expression_names))
    first_mode_rule = "largest-magnitude component positive"
    if "jawOpen" in expression_names:
        jaw = expression_deltas[expression_names.index("jawOpen")]
        if expr_basis[0] @ jaw < 0:
            expr_basis[0] = -expr_basis[0]
        first_mode_rule = "positive θe,1 opens the mouth (positive correlation with jawOpen)"
    # Coefficients of the single blendshapes in units of σe (U·√N over the kept modes).
    single = (expression_deltas @ expr_basis.T) / expr_std
    prior = ICT_EXPRESSION_PRIOR
    coverage = float(((single >= prior.low) & (single <= prior.high)).mean())

    landmarks = topo["landmarks"]
    face_mask, mask_report = _face_mask(neutral, topo["triangles"], landmarks, topo["eye_vertex"])
    weights = landmark_region_weights(neutral, neutral[landmarks], candidates=~topo["eye_vertex"])
    weights["sclera"] = topo["sclera_vertex"].astype(np.float64)
    weights["iris"] = topo["iris_vertex"].astype(np.float64)
    weights["pupil"] = topo["pupil_weight"]
    reflectance = build_reflectance_prior(neutral, weights, spatial_region=face_mask & ~topo["eye_vertex"])
    in_range = in_range_fraction(reflectance)

    extra = {
        "converted_file": source_name,
        "units": "millimetres (ICT centimetres x 10)",
        "source_vertices": int(n_source),
        "face_vertex_range": list(face_range),
        "eyes": [[list(sclera), list(iris)] for sclera, iris in eyes],
        "limbus_deg": LIMBUS_DEG,
        "kept_vertices": int(n_vertices),
        "eye_vertices": int(topo["eye_vertex"].sum()),
        "triangles": len(topo["triangles"]),
        "eye_triangles": int(topo["n_eye_triangles"]),
        "face_quads_split": int(topo["n_quads"]),
        "orientation": topo["orientation"],
        "identity_modes": len(identity_files),
        "blendshapes": len(expression_names),
        "expression_modes": k_expr,
        "expression_variance_target": expression_variance,
        "expression_variance_kept": float(energy[k_expr - 1]),
        "expression_first_mode_sign": first_mode_rule,
        "expression_single_blendshape_coefficients_in_prior": coverage,
        "expression_jawopen_theta1": float(single[expression_names.index("jawOpen"), 0])
        if "jawOpen" in expression_names
        else None,
        "face_mask": mask_report,
        "reflectance_modes": list(reflectance.mode_names),
        "reflectance_in_range_fraction": in_range,
    }
    description = (
        f"ICT Face Model Light ({ICT_URL}) converted by ifn: face area [{face_range[0]}, {face_range[1]}) plus "
        f"the visible fronts of the eyeballs, {n_vertices} vertices in mm; {len(identity_files)} identity modes "
        f"(SVD of the σ-scaled identity deltas), {k_expr} expression modes (PCA of {len(expression_names)} "
        f"blendshapes keeping {energy[k_expr - 1] * 100:.2f} % of their energy). Reflectance is a hand-made "
        "PRIOR, not a measurement (ICT Face Model Light has no albedo model): a painted mean albedo (skin, "
        "cheeks, nose, lips, brows, sclera, iris from landmark geometry and vertex ranges) with modes for "
        "global skin tone, regional colour and smooth spatial variation, orthonormalised like a PCA "
        f"({in_range * 100:.2f} % of albedo values in [0, 1] for θr ~ N(0, 1))."
    )
    metadata = FaceModelMetadata(
        name="ict-facekit",
        source=f"{ICT_URL} (converted from {source_name})",
        license=ICT_LICENSE,
        reflectance="prior",
        description=description,
        expression_prior=prior,
        expression_names=tuple(expression_names),
        extra=extra,
    )
    return FaceModel(
        mean_shape=torch.from_numpy(neutral),
        shape_basis=torch.from_numpy(shape_basis.reshape(-1, n_vertices, 3)),
        shape_std=torch.from_numpy(shape_std),
        expression_basis=torch.from_numpy(expr_basis.reshape(-1, n_vertices, 3)),
        expression_std=torch.from_numpy(expr_std),
        reflectance_mean=torch.from_numpy(reflectance.mean),
        reflectance_basis=torch.from_numpy(reflectance.basis),
        reflectance_std=torch.from_numpy(reflectance.std),
        triangles=torch.from_numpy(topo["triangles"]),
        landmark_indices=torch.from_numpy(landmarks),
        face_mask=torch.from_numpy(face_mask),
        metadata=metadata,
    )


# ------------------------------------------------------------------------------ reading
class _Source:
    """Files of the ``FaceXModel`` folder, from a zip (in memory) or a directory."""

    def __init__(self, path: Path, zf: zipfile.ZipFile | None, prefix: str | Path) -> None:
        self.path, self._zip, self._prefix = path, zf, prefix
        self.name = path.name
        self._members: set[str] = set(zf.namelist()) if zf is not None else set()

    def label(self, name: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{self._prefix}{name}"
        return str(Path(self._prefix) / name)

    def exists(self, name: str) -> bool:
        if self._zip is not None:
            return f"{self._prefix}{name}" in self._members
        return (Path(self._prefix) / name).is_file()

    def read(self, name: str) -> bytes:
        if not self.exists(name):
            raise FileNotFoundError(f"{self.label(name)}: not found")
        if self._zip is not None:
            return self.read_member(f"{self._prefix}{name}")
        return (Path(self._prefix) / name).read_bytes()

    def read_member(self, member: str) -> bytes:
        assert self._zip is not None
        info = self._zip.getinfo(member)
        label = f"{self.path}:{member}"
        if info.file_size > _MAX_MEMBER_BYTES:
            raise ValueError(f"{label}: {info.file_size} bytes is too large for an ICT-FaceKit file")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, zlib_error) as err:  # e.g. a CRC error
            raise ValueError(f"{label}: cannot read the zip entry ({err})") from err

    def read_optional(self, name: str) -> bytes | None:
        """A file beside ``FaceXModel`` (the repository's README), if present."""
        if self._zip is not None:
            if not self._prefix:  # FaceXModel's files at the archive root: no parent folder
                return None
            parent = str(PurePosixPath(str(self._prefix).rstrip("/")).parent)
            member = name if parent == "." else f"{parent}/{name}"
            return self.read_member(member) if member in self._members else None
        candidate = Path(self._prefix).parent / name
        return candidate.read_bytes() if candidate.is_file() else None

    def identity_files(self) -> list[str]:
        if self._zip is not None:
            names = [m[len(self._prefix) :] for m in self._members if m.startswith(self._prefix)]
        else:
            names = [p.name for p in Path(self._prefix).iterdir() if p.is_file()]
        found = sorted((int(m.group(1)), name) for name in names if (m := _IDENTITY.match(name)))
        if not found:
            raise FileNotFoundError(f"{self.label('')}: no identityNNN.obj files")
        return [name for _, name in found]


@contextmanager
def _open_source(source: str | os.PathLike[str]) -> Iterator[_Source]:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ICT-FaceKit source not found: {path}")
    if path.is_dir():
        yield _Source(path, None, _find_folder(path))
        return
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: neither a folder nor a zip archive ({err})") from err
    with zf:
        names = zf.namelist()
        for name in names:
            _check_entry(name, path)
        yield _Source(path, zf, _find_prefix(names, path))


def _check_entry(name: str, archive: Path) -> None:
    """Refuse entry names that could escape a destination folder (absolute or with ``..``)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or "\x00" in norm:
        raise ValueError(f"{archive}: refusing unsafe zip entry {name!r} (absolute path)")
    if ".." in norm.split("/"):
        raise ValueError(f"{archive}: refusing unsafe zip entry {name!r} ('..' component)")


def _find_prefix(names: Sequence[str], archive: Path) -> str:
    hits = sorted(n[: -len(_NEUTRAL)] for n in names if n == _NEUTRAL or n.endswith(f"/{_NEUTRAL}"))
    if not hits:
        raise FileNotFoundError(f"{archive}: no FaceXModel/{_NEUTRAL} in the archive (is it ICT-FaceKit?)")
    preferred = [h for h in hits if h.rstrip("/").endswith("FaceXModel")]
    candidates = preferred or hits
    if len(candidates) > 1:
        raise ValueError(f"{archive}: ambiguous, {_NEUTRAL} found in {candidates}")
    return candidates[0]


def _find_folder(path: Path) -> Path:
    for candidate in (path, path / "FaceXModel"):
        if (candidate / _NEUTRAL).is_file():
            return candidate
    nested = sorted(p / "FaceXModel" for p in path.iterdir() if (p / "FaceXModel" / _NEUTRAL).is_file())
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise ValueError(f"{path}: ambiguous, several FaceXModel folders: {[str(p) for p in nested]}")
    raise FileNotFoundError(
        f"{path}: no {_NEUTRAL} here, in {path / 'FaceXModel'} or in <subfolder>/FaceXModel "
        "(expected ICT-FaceKit's FaceXModel folder or a folder containing it)"
    )


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{label}: not UTF-8 text ({err})") from err


def _expression_names(info: object, label: str) -> list[str]:
    names = info.get("expressions") if isinstance(info, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{label}: expected a non-empty list of names under 'expressions'")
    bad = [n for n in names if "/" in n or "\\" in n or n in (".", "..")]
    if bad:
        raise ValueError(f"{label}: expression names must be plain file stems, got {bad}")
    if len(set(names)) != len(names):
        raise ValueError(f"{label}: duplicate expression names")
    return list(names)


def _landmark_indices(info: object, src: _Source) -> np.ndarray:
    """The 68 landmark vertex indices: ``idx_to_landmark_verts``, cross-checked with the README."""
    label = src.label(_INDICES)
    from_json = info.get("idx_to_landmark_verts") if isinstance(info, dict) else None
    readme = src.read_optional("README.md")
    from_readme = _readme_landmarks(readme) if readme is not None else None
    values = from_json if from_json is not None else from_readme
    if values is None:
        raise ValueError(f"{label}: no 'idx_to_landmark_verts' and no landmark list in README.md")
    try:
        indices = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label}: landmark indices are not integers ({err})") from err
    if indices.shape != (68,):
        raise ValueError(f"{label}: expected 68 landmark indices, got shape {indices.shape}")
    if from_json is not None and from_readme is not None and not np.array_equal(indices, from_readme):
        raise ValueError(f"{label}: 'idx_to_landmark_verts' disagrees with the 68 indices in README.md")
    return indices


def _readme_landmarks(readme: bytes) -> np.ndarray | None:
    text = readme.decode("utf-8", errors="replace")
    match = re.search(r"Multi-PIE 68 point facial landmarks indices:\s*\n\s*([0-9,\s]+)", text)
    if not match:
        return None
    numbers = [int(t) for t in re.findall(r"\d+", match.group(1))]
    return np.asarray(numbers[:68], dtype=np.int64) if len(numbers) >= 68 else None


def _progress(files: Sequence[str], enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=len(files), desc="ICT-FaceKit OBJs", unit="file", disable=not enabled)


def _parse_vertices(data: bytes, label: str, expected: int | None = None) -> np.ndarray:
    """The ``v x y z`` lines of an OBJ as ``(V, 3)`` float64 (fast: one numpy parse)."""
    lines = _V_LINE.findall(data)
    if expected is not None and len(lines) != expected:
        raise ValueError(
            f"{label}: expected {expected} vertices ('v' lines, like {_NEUTRAL}), found {len(lines)} "
            "(truncated or not an ICT-FaceKit mesh?)"
        )
    if not lines:
        raise ValueError(f"{label}: no vertices ('v' lines) found")
    try:
        values = np.array(b" ".join(lines).split(), dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{label}: malformed vertex line ({err})") from err
    if values.size != 3 * len(lines):  # extra per-vertex values (e.g. colours): take x, y, z
        rows = [line.split() for line in lines]
        if any(len(r) < 3 for r in rows):
            raise ValueError(f"{label}: a 'v' line has fewer than 3 coordinates")
        values = np.array([r[:3] for r in rows], dtype=np.float64)
    out = values.reshape(-1, 3)
    if not np.isfinite(out).all():
        raise ValueError(f"{label}: non-finite vertex coordinates")
    return out


def _parse_triangles(data: bytes, n_vertices: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Faces as triangles (polygons fanned), plus the arity of the polygon each came from."""
    tris: list[tuple[int, int, int]] = []
    arity: list[int] = []
    for line in data.split(b"\n"):
        if not line.startswith(b"f ") and not line.startswith(b"f\t"):
            continue
        try:
            idx = [int(tok.split(b"/", 1)[0]) for tok in line.split()[1:]]
        except ValueError as err:
            raise ValueError(f"{label}: malformed face line {line[:60]!r}") from err
        if len(idx) < 3:
            raise ValueError(f"{label}: face with fewer than 3 vertices: {line[:60]!r}")
        idx = [i - 1 if i > 0 else n_vertices + i for i in idx]  # 1-based; negative = relative
        for k in range(1, len(idx) - 1):
            tris.append((idx[0], idx[k], idx[k + 1]))
            arity.append(len(idx))
    if not tris:
        raise ValueError(f"{label}: no faces ('f' lines) found")
    out = np.asarray(tris, dtype=np.int64)
    if out.min() < 0 or out.max() >= n_vertices:
        raise ValueError(f"{label}: face indices outside the {n_vertices} vertices")
    return out, np.asarray(arity, dtype=np.int64)


# ----------------------------------------------------------------------------- geometry
def _in_range(triangles: np.ndarray, rng: tuple[int, int]) -> np.ndarray:
    return ((triangles >= rng[0]) & (triangles < rng[1])).all(axis=1)


def _sphere_fit(points: np.ndarray) -> np.ndarray:
    a = np.c_[2.0 * points, np.ones(len(points))]
    sol = np.linalg.lstsq(a, (points**2).sum(axis=1), rcond=None)[0]
    return sol[:3]


def _orient_outward(vertices: np.ndarray, triangles: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, float]:
    """Flip a closed shell's winding if most normals point towards ``centre``."""
    if len(triangles) == 0:
        return triangles, 1.0
    normals = triangle_normals(vertices, triangles)
    out = ((normals * (vertices[triangles].mean(axis=1) - centre)).sum(axis=1) > 0).mean()
    return (triangles[:, ::-1].copy(), float(1.0 - out)) if out < 0.5 else (triangles, float(out))


def _select_topology(
    vertices: np.ndarray,
    parsed: tuple[np.ndarray, np.ndarray],
    landmarks: np.ndarray,
    face_range: tuple[int, int],
    eyes: Sequence[tuple[tuple[int, int], tuple[int, int]]],
    label: str,
) -> dict:
    triangles, arity = parsed
    n = len(vertices)
    if not 0 <= face_range[0] < face_range[1] <= n:
        raise ValueError(f"{label}: face range {face_range} does not fit its {n} vertices")
    if landmarks.min() < face_range[0] or landmarks.max() >= face_range[1]:
        raise ValueError(f"landmark vertex indices must lie in the face range {face_range}")
    face_sel = _in_range(triangles, face_range)
    face_tris = triangles[face_sel]
    n_quads = int((arity[face_sel] == 4).sum() // 2)
    if len(face_tris) == 0:
        raise ValueError(f"{label}: no faces within the face range {face_range}")
    # Winding: the vertex normal at the nose tip (landmark 30) must point out of the face (+z).
    vn = np.zeros_like(vertices)
    np.add.at(vn, face_tris.reshape(-1), np.repeat(triangle_normals(vertices, face_tris), 3, axis=0))
    flipped_face = bool(vn[landmarks[30], 2] < 0)
    if flipped_face:
        face_tris = face_tris[:, ::-1].copy()
    nose_z = abs(float(vn[landmarks[30], 2])) / max(float(np.linalg.norm(vn[landmarks[30]])), 1e-12)
    orientation: dict = {"face_flipped": flipped_face, "nose_tip_normal_z": round(nose_z, 4)}

    outline = torch.from_numpy(vertices[landmarks[list(FACE_OUTLINE)], :2])
    eye_tris: list[np.ndarray] = []
    sclera_ids: list[np.ndarray] = []
    iris_ids: list[np.ndarray] = []
    limbus = np.cos(np.radians(LIMBUS_DEG))
    pupil_weight = np.zeros(n)
    for e, (sclera_rng, iris_rng) in enumerate(eyes):
        for rng in (sclera_rng, iris_rng):
            if not 0 <= rng[0] < rng[1] <= n:
                raise ValueError(f"{label}: eye vertex range {rng} does not fit its {n} vertices")
        sclera_t = triangles[_in_range(triangles, sclera_rng)]
        iris_t = triangles[_in_range(triangles, iris_rng)]
        if len(sclera_t) == 0 or len(iris_t) == 0:
            raise ValueError(f"{label}: no faces within eye ranges {sclera_rng}, {iris_rng}")
        sclera_v = vertices[sclera_rng[0] : sclera_rng[1]]
        centre = _sphere_fit(sclera_v)
        back = sclera_v[sclera_v[:, 2] < centre[2]]
        if len(back) >= 8:  # the back half is spherical; the corneal bulge would bias the fit
            centre = _sphere_fit(back)
        front = sclera_v[sclera_v[:, 2] > centre[2]]
        up = np.array([0.0, 0.0, 1.0])
        apex = front[np.argmax(np.linalg.norm(front - centre, axis=1))] if len(front) else centre + up
        axis = (apex - centre) / max(np.linalg.norm(apex - centre), 1e-12)
        sclera_t, frac_s = _orient_outward(vertices, sclera_t, centre)
        iris_t, frac_i = _orient_outward(vertices, iris_t, centre)
        orientation[f"eye{e}_outward_fraction"] = [round(frac_s, 4), round(frac_i, 4)]
        rel = vertices - centre
        cos_angle = (rel @ axis) / np.maximum(np.linalg.norm(rel, axis=1), 1e-12)
        in_cap = cos_angle > limbus

        def forward(t: np.ndarray) -> np.ndarray:
            return triangle_normals(vertices, t)[:, 2] > 0

        def inside(t: np.ndarray) -> np.ndarray:
            flat = points_in_polygon(torch.from_numpy(vertices[t.reshape(-1), :2]), outline).numpy()
            return flat.reshape(-1, 3).all(axis=1)

        keep_s = sclera_t[forward(sclera_t) & ~in_cap[sclera_t].all(axis=1)]
        keep_i = iris_t[forward(iris_t) & in_cap[iris_t].any(axis=1)]
        # ICT's pupil is a hole (a tube into the iris shell): keep the cornea right in front
        # of it as the pupil's cover, painted as iris, so the eye has no see-through hole.
        pupil_deg = np.degrees(np.arccos(np.clip(cos_angle[iris_rng[0] : iris_rng[1]].max(), -1.0, 1.0)))
        pupil_cos = np.cos(np.radians(2.0 * pupil_deg))
        angle = np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0)))
        cornea = slice(sclera_rng[0], sclera_rng[1])
        pupil_weight[cornea] = 1.0 - smoothstep(pupil_deg, 1.3 * pupil_deg, angle[cornea])
        cover = sclera_t[forward(sclera_t) & (cos_angle[sclera_t] > pupil_cos).any(axis=1)]
        keep_s, keep_i, cover = keep_s[inside(keep_s)], keep_i[inside(keep_i)], cover[inside(cover)]
        eye_tris += [keep_s, keep_i, cover]
        sclera_ids.append(np.unique(keep_s))
        iris_ids += [np.unique(keep_i), np.unique(cover)]
        orientation[f"eye{e}_pupil_cover_triangles"] = len(cover)

    eye_all = np.concatenate(eye_tris) if eye_tris else np.zeros((0, 3), np.int64)
    kept = np.union1d(np.arange(face_range[0], face_range[1]), eye_all.reshape(-1))
    remap = np.full(n, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    all_tris = remap[np.concatenate([face_tris, eye_all])]
    eye_vertex = np.zeros(len(kept), bool)
    sclera_vertex = np.zeros(len(kept), bool)
    iris_vertex = np.zeros(len(kept), bool)
    if eye_tris:
        iris_vertex[remap[np.concatenate(iris_ids)]] = True
        sclera_vertex[remap[np.concatenate(sclera_ids)]] = True
        sclera_vertex &= ~iris_vertex
        eye_vertex = sclera_vertex | iris_vertex
    return {
        "kept": kept,
        "triangles": all_tris,
        "landmarks": remap[landmarks],
        "n_quads": n_quads,
        "n_eye_triangles": len(eye_all),
        "eye_vertex": eye_vertex,
        "sclera_vertex": sclera_vertex,
        "iris_vertex": iris_vertex,
        "pupil_weight": np.where(iris_vertex, pupil_weight[kept], 0.0),
        "orientation": orientation,
    }


def _face_mask(
    vertices: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray, eye_vertex: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Vertices inside or on the landmark face outline (frontal projection).

    Of the face area, only the part connected to the nose tip is kept (with border vertices
    that touch it): bits of the ears and of the neck behind the jaw also project inside the
    outline from the front, hidden behind the cheeks, but would float beside the face in a
    turned head. The eyes are kept whole.
    """
    polygon = vertices[landmarks[list(FACE_OUTLINE)], :2]
    inside = points_in_polygon(torch.from_numpy(vertices[:, :2]), torch.from_numpy(polygon)).numpy()
    border = distance_to_polyline(vertices[:, :2], polygon, closed=True) < 1e-3
    candidate = inside | border
    drawn = triangles[candidate[triangles].all(axis=1)]
    labels = _components(len(vertices), drawn)
    main = labels == labels[landmarks[30]]
    # Vertices of no drawn triangle (e.g. outline landmarks on the border) stay if they touch the face.
    isolated = np.bincount(labels, minlength=len(vertices))[labels] == 1
    touches_main = np.zeros(len(vertices), bool)
    touches_main[triangles[main[triangles].any(axis=1)].reshape(-1)] = True
    mask = candidate & (main | eye_vertex | (isolated & touches_main))
    outline_set = set(FACE_OUTLINE)
    strictly_inner = [i for i in range(68) if i not in outline_set]
    report = {
        "vertices": int(mask.sum()),
        "triangles_drawn": int(mask[triangles].all(axis=1).sum()),
        "eye_vertices": int((mask & eye_vertex).sum()),
        "dropped_disconnected_vertices": int((candidate & ~mask).sum()),
        "landmarks_strictly_inside": int(inside[landmarks].sum()),
        "landmarks_on_border": int((border & ~inside)[landmarks].sum()),
        "landmarks_outside": [i for i in range(68) if not mask[landmarks[i]]],
        "inner_landmarks_not_strictly_inside": [i for i in strictly_inner if not inside[landmarks[i]]],
    }
    return mask, report
