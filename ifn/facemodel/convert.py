"""What every converter of a morphable model (BFM, FLAME) does once it has read its files.

A reader (:mod:`ifn.facemodel.bfm`, :mod:`ifn.facemodel.flame`) turns its source into a
:class:`SourceModel`: the mean mesh in millimetres, the *σ-scaled* fields of each linear
part (a mode times its standard deviation, the change at θ = +1), colour in [0, 1],
triangles and the 68 landmarks. :func:`build_face_model_from_source` then

1. checks the units (the landmark face must be a human size; a wrong unit is an error
   that names the scale to pass);
2. orients the triangles counter-clockwise seen from outside (the nose tip's normal must
   point to +z; barycentric landmark weights follow a flip);
3. paints the face region with :func:`landmark_face_mask` — the landmark crop of
   :mod:`ifn.facemodel.regions` (jaw + brows, mouth interior out);
4. crops the mesh to that region plus two rings of triangles (normals and the renderer's
   clip ring need them), so files stay small and nothing outside the face is evaluated;
5. re-orthonormalises each part on the kept vertices with :func:`orthonormal_basis` (an
   uncentred SVD of the σ-scaled fields restricted to them). Any source layout — unit
   PCA columns with standard deviations, with variances, or already σ-scaled columns —
   gives the same covariance, and a cropped basis, which is no longer orthonormal, becomes
   one again with the covariance of the crop;
6. fills in a painted reflectance prior (:mod:`ifn.facemodel.albedo_prior`) when the
   source has no colour model.

Convention:
    Model space: millimetres, +y up, +z out of the face (BFM's and FLAME's own axes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ifn.facemodel.albedo_prior import build_reflectance_prior, in_range_fraction, landmark_region_weights
from ifn.facemodel.basis import orthonormal_basis
from ifn.facemodel.geometry import distance_to_polyline, triangle_normals
from ifn.facemodel.model import ExpressionPrior, FaceModel, FaceModelMetadata
from ifn.facemodel.regions import FACE_OUTLINE, MOUTH_INTERIOR, NUM_LANDMARKS, points_in_polygon

__all__ = [
    "Landmarks",
    "SourceModel",
    "build_face_model_from_source",
    "landmark_face_mask",
    "landmarks_from_mapping",
    "mesh_components",
    "read_landmarks",
]

#: Plausible distance (mm) between the jaw's ends (landmarks 0 and 16): a human face.
_FACE_WIDTH_MM = (60.0, 300.0)
#: Triangle rings kept around the face region when cropping.
_CROP_RINGS = 2
#: Vertices inside the inner-lip polygon lying this far (mm) behind the inner-lip landmarks
#: are the mouth interior, not face.
_MOUTH_DEPTH_MM = 2.0
#: Modes whose σ is below this fraction of the largest are numerically zero and dropped.
_RTOL = 1e-7


@dataclass(frozen=True)
class Landmarks:
    """The 68 iBUG landmarks of a mesh: vertex indices or barycentric points on triangles.

    Attributes:
        vertices: ``(68,)`` vertex indices, or ``None``.
        triangles: ``(68,)`` triangle indices (into the mesh's triangle array), or ``None``.
        weights: ``(68, 3)`` barycentric weights of those triangles' corners, or ``None``.
    """

    vertices: np.ndarray | None = None
    triangles: np.ndarray | None = None
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.vertices is None) == (self.triangles is None):
            raise ValueError("landmarks are either vertex indices or (triangle, weights) pairs")
        if self.triangles is not None and self.weights is None:
            raise ValueError("barycentric landmarks need weights")

    @property
    def barycentric(self) -> bool:
        return self.triangles is not None

    def check(self, n_vertices: int, n_triangles: int, label: str) -> None:
        """Raise ``ValueError`` naming ``label`` if an index is out of range or weights are invalid."""
        if self.vertices is not None:
            v = self.vertices
            if v.shape != (NUM_LANDMARKS,) or v.min() < 0 or v.max() >= n_vertices:
                raise ValueError(f"{label}: need {NUM_LANDMARKS} vertex indices in [0, {n_vertices}), got shape "
                                 f"{v.shape}, range [{v.min()}, {v.max()}] (0- or 1-based?)")
            return
        t, w = self.triangles, self.weights
        if t.shape != (NUM_LANDMARKS,) or w.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"{label}: need {NUM_LANDMARKS} triangles and ({NUM_LANDMARKS}, 3) weights, "
                             f"got {t.shape} and {w.shape}")
        if t.min() < 0 or t.max() >= n_triangles:
            raise ValueError(f"{label}: landmark triangle indices must lie in [0, {n_triangles}), "
                             f"got [{t.min()}, {t.max()}]")
        if (w < -1e-6).any() or (np.abs(w.sum(axis=1) - 1.0) > 1e-4).any():
            raise ValueError(f"{label}: barycentric weights must be >= 0 and sum to 1 per landmark")

    def points(self, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """``(68, 3)`` landmark positions on a mesh with these vertices and triangles."""
        if self.vertices is not None:
            return vertices[self.vertices]
        return (vertices[triangles[self.triangles]] * self.weights[:, :, None]).sum(axis=1)

    def anchors(self, triangles: np.ndarray) -> np.ndarray:
        """``(68,)`` a vertex per landmark: itself, or its triangle's heaviest corner."""
        if self.vertices is not None:
            return self.vertices
        return triangles[self.triangles, self.weights.argmax(axis=1)]


@dataclass
class SourceModel:
    """A morphable model as read from its files, before the common conversion steps.

    Attributes:
        label: the source files, for messages.
        mean: ``(V, 3)`` mean shape in millimetres.
        shape_fields: ``(K_s, V, 3)`` σ-scaled identity modes (mm).
        expression_fields: ``(K_e, V, 3)`` σ-scaled expression modes (mm).
        triangles: ``(F, 3)`` 0-based vertex indices.
        landmarks: the 68 landmarks.
        reflectance_mean: ``(V, 3)`` mean albedo in [0, 1], or ``None`` (a painted prior is used).
        reflectance_fields: ``(K_r, V, 3)`` σ-scaled colour modes, or ``None``.
        name, source, license, description: metadata.
        expression_prior: the documented prior of θe.
        extra: conversion facts kept in the metadata (how the source stored things).
    """

    label: str
    mean: np.ndarray
    shape_fields: np.ndarray
    expression_fields: np.ndarray
    triangles: np.ndarray
    landmarks: Landmarks
    name: str
    source: str
    license: str
    description: str
    expression_prior: ExpressionPrior
    reflectance_mean: np.ndarray | None = None
    reflectance_fields: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- landmarks
def landmarks_from_mapping(data: Mapping[str, Any], label: str) -> Landmarks:
    """Landmarks from a dict of arrays, as the landmark files of the field store them.

    Recognised (in this order):

    * ``full_lmk_faces_idx`` / ``full_lmk_bary_coords`` (DECA's ``landmark_embedding.npy``):
      all 68, barycentric;
    * ``lmk_face_idx`` / ``lmk_b_coords`` with 68 entries (``flame_static_embedding_68*.npz``);
    * ``static_lmk_faces_idx`` / ``static_lmk_bary_coords`` (51: brows, nose, eyes, mouth)
      with ``dynamic_lmk_faces_idx`` / ``dynamic_lmk_bary_coords`` (one 17-point jaw contour
      per yaw angle): the 17 contour points of the middle (frontal) row + the 51;
    * ``lmk_face_idx`` / ``lmk_b_coords`` with 51 entries + the same dynamic arrays;
    * ``landmark_indices`` / ``keypoints``: 68 vertex indices (0-based).

    Raises:
        ValueError: naming ``label`` and the keys found, if none of these fit.
    """

    def arr(key: str) -> np.ndarray:
        return np.asarray(data[key])

    def tri_pair(t_key: str, w_key: str) -> tuple[np.ndarray, np.ndarray]:
        return arr(t_key).reshape(-1).astype(np.int64), arr(w_key).reshape(-1, 3).astype(np.float64)

    pairs = (("full_lmk_faces_idx", "full_lmk_bary_coords"), ("lmk_face_idx", "lmk_b_coords"),
             ("static_lmk_faces_idx", "static_lmk_bary_coords"))
    for t_key, w_key in pairs:
        if t_key not in data or w_key not in data:
            continue
        tris, weights = tri_pair(t_key, w_key)
        if len(tris) == NUM_LANDMARKS:
            return Landmarks(triangles=tris, weights=weights)
        if len(tris) == NUM_LANDMARKS - 17 and "dynamic_lmk_faces_idx" in data and "dynamic_lmk_bary_coords" in data:
            dyn_t = arr("dynamic_lmk_faces_idx")
            dyn_w = arr("dynamic_lmk_bary_coords")
            if dyn_t.ndim != 2 or dyn_t.shape[1] != 17 or dyn_w.shape != (*dyn_t.shape, 3):
                raise ValueError(f"{label}: dynamic contour arrays must be (N, 17) and (N, 17, 3), "
                                 f"got {dyn_t.shape} and {dyn_w.shape}")
            middle = dyn_t.shape[0] // 2  # rows run over yaw angles symmetric about 0: the middle is frontal
            return Landmarks(triangles=np.concatenate([dyn_t[middle], tris]).astype(np.int64),
                             weights=np.concatenate([dyn_w[middle], weights]).astype(np.float64))
        raise ValueError(f"{label}: {t_key} holds {len(tris)} landmarks; need {NUM_LANDMARKS}, or "
                         f"{NUM_LANDMARKS - 17} with a dynamic jaw contour (dynamic_lmk_faces_idx)")
    for key in ("landmark_indices", "keypoints"):
        if key in data:
            return Landmarks(vertices=arr(key).reshape(-1).astype(np.int64))
    raise ValueError(f"{label}: no landmarks found (keys: {sorted(map(str, data))}); expected "
                     "full_lmk_faces_idx/full_lmk_bary_coords, lmk_face_idx/lmk_b_coords or landmark_indices")


def read_landmarks(path: str | os.PathLike[str], *, one_based: bool = False) -> Landmarks:
    """Read 68 landmarks from a file.

    Formats: a text file (``.txt``/``.csv``/anything else) of 68 integers (vertex indices) or
    68 rows ``triangle w0 w1 w2``; a ``.npy`` array of shape ``(68,)`` or ``(68, 4)`` (an
    object ``.npy`` holding a dict goes through the restricted unpickler); a plain ``.npz``
    or a ``.pkl`` with the keys of :func:`landmarks_from_mapping`.

    Args:
        path: the file.
        one_based: the integers count from 1 (MATLAB-style); subtracted before use.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if it holds none of these.
    """
    from ifn.facemodel.safe_pickle import load_npy, load_pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: landmark file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            found = landmarks_from_mapping({k: npz[k] for k in npz.files}, str(path))
    elif suffix == ".pkl":
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a pickled dict of landmark arrays, got {type(data).__name__}")
        found = landmarks_from_mapping(data, str(path))
    else:
        if suffix == ".npy":
            data = load_npy(path)
            if isinstance(data, dict):
                found = landmarks_from_mapping(data, str(path))
                return _shift(found, one_based)
            table = np.asarray(data, dtype=np.float64)
        else:
            try:
                table = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=1)
            except ValueError as err:
                raise ValueError(f"{path}: not a table of numbers ({err})") from err
        found = _landmarks_from_table(table, str(path))
    return _shift(found, one_based)


def _landmarks_from_table(table: np.ndarray, label: str) -> Landmarks:
    if table.size == NUM_LANDMARKS:
        ints = table.reshape(-1)
        if not np.all(ints == np.round(ints)):
            raise ValueError(f"{label}: vertex indices must be integers")
        return Landmarks(vertices=ints.astype(np.int64))
    if table.shape == (NUM_LANDMARKS, 4):
        return Landmarks(triangles=table[:, 0].astype(np.int64), weights=table[:, 1:].astype(np.float64))
    raise ValueError(f"{label}: expected {NUM_LANDMARKS} vertex indices or {NUM_LANDMARKS} rows "
                     f"'triangle w0 w1 w2', got {table.size} values of shape {table.shape}")


def _shift(landmarks: Landmarks, one_based: bool) -> Landmarks:
    if not one_based:
        return landmarks
    if landmarks.vertices is not None:
        return Landmarks(vertices=landmarks.vertices - 1)
    return Landmarks(triangles=landmarks.triangles - 1, weights=landmarks.weights)


# -------------------------------------------------------------------------- face region
def mesh_components(n_vertices: int, triangles: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest vertex index) of every vertex.

    Example:
        >>> mesh_components(5, np.array([[0, 1, 2], [3, 4, 3]])).tolist()
        [0, 0, 0, 3, 3]
    """
    labels = np.arange(n_vertices)
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    while True:
        low = np.minimum(labels[edges[:, 0]], labels[edges[:, 1]])
        new = labels.copy()
        np.minimum.at(new, edges[:, 0], low)
        np.minimum.at(new, edges[:, 1], low)
        new = new[new]  # pointer jumping
        if np.array_equal(new, labels):
            return labels
        labels = new


def landmark_face_mask(
    vertices: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray, nose_vertex: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The face region of a neutral mesh: what the landmark crop of a photo covers.

    A vertex is a candidate if its frontal (x, y) projection lies inside or on the
    ``FACE_OUTLINE`` polygon (jaw + brows) of the landmarks and it is not mouth interior
    (inside the inner-lip polygon and more than 2 mm behind the inner-lip landmarks). Of
    the candidates, the part connected to the nose tip is kept — pieces of ears or neck that
    project inside the outline but are cut off from the face would float beside a turned
    head — plus any whole separate component of the mesh inside the outline (eyeballs).

    Args:
        vertices: ``(V, 3)`` neutral mesh, millimetres.
        triangles: ``(F, 3)``.
        landmarks: ``(68, 3)`` landmark positions.
        nose_vertex: a vertex at the nose tip (landmark 30), seed of the face component.

    Returns:
        ``(V,)`` bool mask, ``(V,)`` bool "separate component" (the eyeballs among the mask)
        and a report (counts) for the metadata.
    """
    polygon = landmarks[list(FACE_OUTLINE), :2]
    inside = points_in_polygon(torch.from_numpy(vertices[:, :2]), torch.from_numpy(polygon)).numpy()
    border = distance_to_polyline(vertices[:, :2], polygon, closed=True) < 1e-3
    lips = landmarks[list(MOUTH_INTERIOR)]
    in_mouth = points_in_polygon(torch.from_numpy(vertices[:, :2]), torch.from_numpy(lips[:, :2])).numpy()
    mouth_interior = in_mouth & (vertices[:, 2] < lips[:, 2].min() - _MOUTH_DEPTH_MM)
    candidate = (inside | border) & ~mouth_interior
    drawn = triangles[candidate[triangles].all(axis=1)]
    labels = mesh_components(len(vertices), drawn)
    main = labels == labels[nose_vertex]
    whole = mesh_components(len(vertices), triangles)
    whole_size = np.bincount(whole, minlength=len(vertices))
    candidate_size = np.bincount(whole, weights=candidate.astype(np.float64), minlength=len(vertices))
    separate = (whole != whole[nose_vertex]) & (candidate_size[whole] == whole_size[whole])
    isolated = np.bincount(labels, minlength=len(vertices))[labels] == 1
    touches_main = np.zeros(len(vertices), bool)
    touches_main[triangles[main[triangles].any(axis=1)].reshape(-1)] = True
    mask = candidate & (main | separate | (isolated & touches_main))
    report = {
        "vertices": int(mask.sum()),
        "triangles_drawn": int(mask[triangles].all(axis=1).sum()),
        "separate_components_kept_vertices": int((mask & separate).sum()),
        "mouth_interior_vertices": int(mouth_interior.sum()),
        "dropped_disconnected_vertices": int((candidate & ~mask).sum()),
    }
    return mask, mask & separate, report


# ------------------------------------------------------------------------------ builder
def _eye_weights(vertices: np.ndarray, eyes: np.ndarray) -> dict[str, np.ndarray]:
    """Sclera / iris / pupil weights on the separate components kept in the face (eyeballs).

    Per connected group of ``eyes`` vertices (split left/right of the face's centre line):
    the iris is the cap within :data:`~ifn.facemodel.ict.LIMBUS_DEG` of the +z axis through
    the group's centroid, the pupil the cap within a third of that angle.
    """
    from ifn.facemodel.ict import LIMBUS_DEG

    out = {name: np.zeros(len(vertices)) for name in ("sclera", "iris", "pupil")}
    if not eyes.any():
        return {}
    middle = float(np.median(vertices[:, 0]))
    for side in (vertices[:, 0] < middle, vertices[:, 0] >= middle):
        group = eyes & side
        if not group.any():
            continue
        rel = vertices[group] - vertices[group].mean(axis=0)
        cos = rel[:, 2] / np.maximum(np.linalg.norm(rel, axis=1), 1e-12)
        out["sclera"][group] = 1.0
        out["iris"][group] = (cos > np.cos(np.radians(LIMBUS_DEG))).astype(np.float64)
        out["pupil"][group] = (cos > np.cos(np.radians(LIMBUS_DEG / 3.0))).astype(np.float64)
    return out


def build_face_model_from_source(src: SourceModel, *, crop: bool = True) -> FaceModel:
    """Turn a :class:`SourceModel` into a :class:`FaceModel` (steps in the module docstring).

    Args:
        src: what a reader produced.
        crop: keep only the face region and two rings of triangles around it.

    Raises:
        ValueError: naming ``src.label``, for inconsistent sizes, landmarks out of range, a
            face of implausible size (wrong unit), or a region with no triangle.
    """
    label = src.label
    mean = np.asarray(src.mean, dtype=np.float64)
    n_vertices = len(mean)
    triangles = np.asarray(src.triangles, dtype=np.int64)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"{label}: mean shape must be (V, 3), got {mean.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
        raise ValueError(f"{label}: triangles must be (F, 3), got {triangles.shape}")
    if triangles.min() < 0 or triangles.max() >= n_vertices:
        raise ValueError(f"{label}: triangle indices [{triangles.min()}, {triangles.max()}] do not fit "
                         f"{n_vertices} vertices (0- or 1-based?)")
    parts = {"shape": src.shape_fields, "expression": src.expression_fields}
    if src.reflectance_fields is not None:
        parts["reflectance"] = src.reflectance_fields
    for group, fields in parts.items():
        if fields.ndim != 3 or fields.shape[1:] != (n_vertices, 3):
            raise ValueError(f"{label}: {group} modes must be (K, {n_vertices}, 3), got {fields.shape}")
    landmarks = src.landmarks
    landmarks.check(n_vertices, len(triangles), label)
    points = landmarks.points(mean, triangles)
    width = float(np.linalg.norm(points[16] - points[0]))
    if not _FACE_WIDTH_MM[0] <= width <= _FACE_WIDTH_MM[1]:
        raise ValueError(f"{label}: the face is {width:.4g} mm wide between landmarks 0 and 16 after unit "
                         f"conversion; expected {_FACE_WIDTH_MM[0]:g}–{_FACE_WIDTH_MM[1]:g} mm (wrong unit? "
                         "pass --scale, millimetres per source unit)")

    # Winding: the vertex normal at the nose tip must point out of the face (+z).
    anchors = landmarks.anchors(triangles)
    normals = np.zeros_like(mean)
    np.add.at(normals, triangles.reshape(-1), np.repeat(triangle_normals(mean, triangles), 3, axis=0))
    flipped = bool(normals[anchors[30], 2] < 0)
    if flipped:
        triangles = triangles[:, ::-1].copy()
        if landmarks.barycentric:
            landmarks = Landmarks(triangles=landmarks.triangles, weights=landmarks.weights[:, ::-1].copy())

    mask, separate, mask_report = landmark_face_mask(mean, triangles, points, int(anchors[30]))
    # A barycentric jaw landmark lies on the outline, its heaviest corner just outside or inside:
    # the landmark vertices are part of the face either way.
    mask_report["landmark_vertices_added"] = int((~mask[anchors]).sum())
    mask[anchors] = True
    if not mask[triangles].all(axis=1).any():
        raise ValueError(f"{label}: no triangle lies inside the landmark face outline")
    keep = np.arange(n_vertices)
    tri_keep = np.arange(len(triangles))
    if crop:
        kept = mask.copy()
        for _ in range(_CROP_RINGS):
            kept[triangles[kept[triangles].any(axis=1)].reshape(-1)] = True
        if landmarks.barycentric:
            kept[triangles[landmarks.triangles].reshape(-1)] = True
        else:
            kept[landmarks.vertices] = True
        keep = np.flatnonzero(kept)
        tri_keep = np.flatnonzero(kept[triangles].all(axis=1))
    remap = np.full(n_vertices, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    tri_remap = np.full(len(triangles), -1, dtype=np.int64)
    tri_remap[tri_keep] = np.arange(len(tri_keep))
    new_triangles = remap[triangles[tri_keep]]
    neutral = mean[keep]

    bases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group, fields in parts.items():
        sub = np.asarray(fields[:, keep], dtype=np.float64)
        bases[group] = orthonormal_basis(sub, method="gram", rtol=_RTOL) if len(sub) else (sub, np.zeros(0))
    landmark_kwargs: dict[str, Any] = {"landmark_indices": torch.from_numpy(remap[anchors])}
    if landmarks.barycentric:
        landmark_kwargs["landmark_triangles"] = torch.from_numpy(tri_remap[landmarks.triangles])
        landmark_kwargs["landmark_barycentrics"] = torch.from_numpy(landmarks.weights)
    extra = dict(src.extra)
    extra.update({
        "source_vertices": n_vertices, "source_triangles": len(triangles), "kept_vertices": len(keep),
        "kept_triangles": len(tri_keep), "triangles_flipped": flipped, "face_mask": mask_report,
        "landmarks": "barycentric" if landmarks.barycentric else "vertices",
        "face_width_mm": round(width, 2),
        **{f"{g}_modes_source": len(f) for g, f in parts.items()},
    })
    face_mask = mask[keep]
    if "reflectance" in bases:
        refl_mean = np.asarray(src.reflectance_mean, dtype=np.float64)[keep]
        refl_basis, refl_std = bases["reflectance"]
        reflectance_kind = "measured"
    else:
        eyes = separate[keep]
        weights = landmark_region_weights(neutral, points, candidates=~eyes)
        weights.update(_eye_weights(neutral, eyes))
        prior = build_reflectance_prior(neutral, weights, spatial_region=face_mask & ~eyes)
        refl_mean, refl_basis, refl_std = prior.mean, prior.basis, prior.std
        reflectance_kind = "prior"
        extra["reflectance_in_range_fraction"] = in_range_fraction(prior)
    metadata = FaceModelMetadata(
        name=src.name, source=src.source, license=src.license, reflectance=reflectance_kind,
        description=src.description, expression_prior=src.expression_prior, extra=extra,
    )
    shape_basis, shape_std = bases["shape"]
    expr_basis, expr_std = bases["expression"]
    k = len(keep)
    return FaceModel(
        mean_shape=torch.from_numpy(neutral),
        shape_basis=torch.from_numpy(shape_basis.reshape(-1, k, 3)),
        shape_std=torch.from_numpy(shape_std),
        expression_basis=torch.from_numpy(expr_basis.reshape(-1, k, 3)),
        expression_std=torch.from_numpy(expr_std),
        reflectance_mean=torch.from_numpy(refl_mean),
        reflectance_basis=torch.from_numpy(np.asarray(refl_basis).reshape(-1, k, 3)),
        reflectance_std=torch.from_numpy(np.asarray(refl_std)),
        triangles=torch.from_numpy(new_triangles),
        face_mask=torch.from_numpy(face_mask),
        metadata=metadata,
        **landmark_kwargs,
    )
