"""The painted albedo prior shared by every face model without a measured reflectance model.

The paper's F_r = a_r + Σ b_r,i σ_r,i θ_r,i needs a mean albedo and modes; the procedural
model and ICT-FaceKit have none, so both get this *prior*, not a measurement: a painted
mean plus hand-chosen modes of variation, orthonormalised exactly like a PCA basis so that
θr ~ N(0, 1) gives plausible albedos.

Defined here once, for every model:

* **Colours.** One linear-RGB colour per painted region (:data:`REGION_COLORS`, regions
  listed bottom to top in :data:`REGIONS`).
* **Modes.** Each named mode of :data:`MODES` is an albedo change at +1σ (a ``(V, 3)``
  field): global skin tone (brightness, redness, yellowness, saturation), regional
  variation (lip colour and darkness, brow darkness, cheek and nose redness, beard shadow,
  under-eye darkness, iris and sclera) and smooth low-frequency spatial modes over the
  face (left/right, up/down, centre/periphery, chin/forehead tint). Apart from the small
  fixed iris and sclera tints, colour changes are relative to the local mean colour
  (mean ⊙ direction), so dark regions keep their hue and stay non-negative.
  :func:`mode_fields` evaluates them from per-vertex mode weights.
* **Orthonormalisation.** The σ-scaled modes are the rows of ``M`` (``n × 3V``) and
  ``M = U S Vᵀ`` gives basis = rows of ``Vᵀ`` and σ = ``S``
  (:func:`~ifn.facemodel.basis.orthonormal_basis`): the covariance ``MᵀM`` of the
  hand-made modes is reproduced exactly, as for the shape modes of a σ-scaled model.

What differs by model is only *where* the regions are. :func:`build_reflectance_prior`
builds the whole prior from soft region weights, e.g. those of
:func:`landmark_region_weights` (any mesh with the 68 iBUG landmarks) plus the model's own
eye regions: the weights are composited bottom to top into a partition of unity
(:func:`region_coverage`) and the mean is the coverage-weighted blend of the colours. The
procedural model paints its finer regions itself (nostrils, lashes, under-eyes, a beard
area) with these colours and builds the same modes with :func:`mode_fields` and
:func:`face_coordinates`.

Convention:
    Albedo is linear RGB (not sRGB) in ``[0, 1]``; positions are model-space millimetres,
    +y up, +z out of the face; landmarks are 0-based iBUG / Multi-PIE indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ifn.facemodel.basis import orthonormal_basis
from ifn.facemodel.geometry import distance_to_polyline, signed_distance, smoothstep

__all__ = [
    "MELANIN",
    "MODES",
    "REDDEN",
    "REGIONS",
    "REGION_COLORS",
    "YELLOW",
    "AlbedoMode",
    "ReflectancePrior",
    "build_reflectance_prior",
    "face_coordinates",
    "in_range_fraction",
    "landmark_region_weights",
    "mode_fields",
    "region_coverage",
]

#: Painted regions in compositing order, bottom (base) to top. A model paints the ones it has.
REGIONS: tuple[str, ...] = (
    "skin", "cheeks", "nose", "under_eyes", "nostrils", "lips", "brows", "lashes", "sclera", "iris", "pupil",
)  # fmt: skip

_SKIN = (0.60, 0.42, 0.33)


def _scaled(colour: tuple[float, float, float], factors: tuple[float, float, float]) -> tuple[float, float, float]:
    return (colour[0] * factors[0], colour[1] * factors[1], colour[2] * factors[2])


#: Mean linear-RGB albedo of each region: a light skin tone (variation comes from the modes).
#: The nose is the skin a little redder, the under-eyes the skin a little darker.
REGION_COLORS: dict[str, tuple[float, float, float]] = {
    "skin": _SKIN,
    "cheeks": (0.63, 0.40, 0.32),
    "nose": _scaled(_SKIN, (1.03, 0.98, 0.97)),
    "under_eyes": _scaled(_SKIN, (0.9, 0.9, 0.9)),
    "nostrils": (0.20, 0.11, 0.09),
    "lips": (0.48, 0.24, 0.21),
    "brows": (0.16, 0.11, 0.08),
    "lashes": (0.10, 0.07, 0.05),
    "sclera": (0.66, 0.62, 0.58),
    "iris": (0.16, 0.10, 0.07),
    "pupil": (0.02, 0.02, 0.02),
}

#: Relative colour change of reddening: more red, a little less green and blue.
REDDEN: tuple[float, float, float] = (1.0, -0.25, -0.25)
#: Relative colour change of yellowing: less blue.
YELLOW: tuple[float, float, float] = (0.3, 0.3, -1.0)
#: Relative brightness change per channel: darker skin absorbs relatively more at short
#: wavelengths, so blue varies the most.
MELANIN: tuple[float, float, float] = (0.85, 1.0, 1.15)
#: Rec. 709 luminance of linear RGB (the grey a saturation change moves towards or away from).
_LUMINANCE = (0.2126, 0.7152, 0.0722)
#: Lips and brows follow the skin-tone modes only partly: the "tone" weight is
#: skin × (1 - 0.7 lips) × (1 - 0.7 brows).
_TONE_DAMPING = 0.7
#: Regions of the eyeballs, where no skin mode acts.
_EYE_REGIONS = ("sclera", "iris", "pupil")
#: Mode weights a model may supply to :func:`mode_fields` ("skin" is required).
_MODE_WEIGHTS = ("skin", "lips", "brows", "cheeks", "nose", "beard", "under_eyes", "iris", "sclera")


@dataclass(frozen=True)
class AlbedoMode:
    """One hand-made mode of albedo variation.

    Its change at θ = +1 is, per vertex and evaluated left to right,
    ``sigma · weight [· coordinate] · colour``, where colour is the local mean colour
    (times ``direction`` if given) for ``colour="mean"``, the mean minus its luminance for
    ``"chroma"``, or ``direction`` itself for ``"fixed"``.

    Attributes:
        sigma: the mode's size at θ = 1 before orthonormalisation (its sign only orients
            the hand-made mode: basis signs are fixed afterwards).
        weight: where it acts: ``"skin"`` (everything but the eyeballs), ``"tone"`` (skin,
            lips and brows damped), ``"lips"``, ``"brows"``, ``"cheeks"``, ``"nose"``,
            ``"beard"`` and ``"under_eyes"`` (on skin only), ``"iris"``, ``"sclera"``.
        colour: ``"mean"``, ``"chroma"`` or ``"fixed"``.
        direction: linear-RGB direction (relative for ``"mean"``, absolute for ``"fixed"``).
        coordinate: ``"u"`` (left/right), ``"v"`` (up/down) or ``"radial"`` from
            :func:`face_coordinates`, for the spatial modes.
    """

    sigma: float
    weight: str
    colour: Literal["mean", "chroma", "fixed"] = "mean"
    direction: tuple[float, float, float] | None = None
    coordinate: Literal["u", "v", "radial"] | None = None


#: The hand-made modes, in the order they are stacked for the orthonormalisation.
MODES: dict[str, AlbedoMode] = {
    "skin_brightness": AlbedoMode(0.18, "skin", direction=MELANIN),
    "skin_redness": AlbedoMode(0.05, "tone", direction=REDDEN),
    "skin_yellowness": AlbedoMode(0.04, "tone", direction=YELLOW),
    "skin_saturation": AlbedoMode(0.15, "tone", colour="chroma"),
    "lip_redness": AlbedoMode(0.08, "lips", direction=REDDEN),
    "lip_darkness": AlbedoMode(0.15, "lips"),
    "brow_darkness": AlbedoMode(0.3, "brows"),
    "cheek_redness": AlbedoMode(0.05, "cheeks", direction=REDDEN),
    "nose_redness": AlbedoMode(0.04, "nose", direction=REDDEN),
    "beard_shadow": AlbedoMode(-0.10, "beard"),
    "under_eye_darkness": AlbedoMode(-0.08, "under_eyes"),
    "iris_lightness": AlbedoMode(0.35, "iris"),
    "iris_hue": AlbedoMode(0.025, "iris", colour="fixed", direction=(-0.6, 0.1, 1.0)),
    "sclera_tint": AlbedoMode(0.03, "sclera", colour="fixed", direction=(0.2, -0.3, -1.0)),
    "spatial_left_right": AlbedoMode(0.035, "skin", coordinate="u"),
    "spatial_up_down": AlbedoMode(0.035, "skin", coordinate="v"),
    "spatial_centre_periphery": AlbedoMode(0.035, "skin", coordinate="radial"),
    "spatial_chin_forehead_tint": AlbedoMode(0.03, "tone", direction=REDDEN, coordinate="v"),
}


@dataclass(frozen=True)
class ReflectancePrior:
    """A reflectance prior in the face-model layout.

    Attributes:
        mean: ``(V, 3)`` mean linear-RGB albedo a_r.
        basis: ``(K_r, V, 3)`` orthonormal modes b_r (each flattened mode has unit norm).
        std: ``(K_r,)`` σr, decreasing.
        mode_names: the hand-made modes that span the basis (the basis mixes them).
        coverage: ``{region: (V,)}`` the partition of unity the mean was painted with.
    """

    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    mode_names: tuple[str, ...]
    coverage: dict[str, np.ndarray]


def face_coordinates(vertices: np.ndarray, region: np.ndarray) -> dict[str, np.ndarray]:
    """Normalised frontal coordinates over a face region, for the spatial modes.

    ``u`` and ``v`` are x and y relative to the region's centroid, divided by the region's
    largest offset from it (so ±1 at its extremes) and clipped to ``[-1.5, 1.5]``;
    ``radial`` is ``u² + v²`` minus its mean over the region.

    Args:
        vertices: ``(V, 2 or 3)`` positions.
        region: ``(V,)`` bool; all vertices if it has fewer than 3.

    Returns:
        ``{"u", "v", "radial": (V, 1)}``.

    Example:
        >>> c = face_coordinates(np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -1.0]]), np.ones(3, bool))
        >>> c["u"].ravel().tolist(), c["v"].ravel().tolist()
        ([-1.0, 1.0, 0.0], [0.0, 1.0, -1.0])
    """
    region = np.asarray(region, bool)
    if region.sum() < 3:
        region = np.ones(len(vertices), bool)
    centre = vertices[region, :2].mean(axis=0)
    half = np.maximum(np.abs(vertices[region, :2] - centre).max(axis=0), 1e-9)
    uv = np.clip((vertices[:, :2] - centre) / half, -1.5, 1.5)
    u, v = uv[:, :1], uv[:, 1:]
    radial = u**2 + v**2
    radial = radial - radial[region].mean()
    return {"u": u, "v": v, "radial": radial}


def mode_fields(
    mean: np.ndarray, weights: Mapping[str, np.ndarray], coordinates: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The σ-scaled fields of the :data:`MODES` a model has the weights for.

    Args:
        mean: ``(V, 3)`` the model's mean albedo.
        weights: ``{name: (V,)}`` soft weights in ``[0, 1]``: ``"skin"`` (required:
            everything but the eyeballs), and any of ``"lips"``, ``"brows"``, ``"cheeks"``,
            ``"nose"``, ``"beard"``, ``"under_eyes"``, ``"iris"``, ``"sclera"``. A mode whose
            weight is missing is left out; ``"tone"`` is derived from skin, lips and brows.
        coordinates: :func:`face_coordinates` of the model.

    Returns:
        ``{mode: (V, 3)}`` changes at θ = +1, in :data:`MODES` order.

    Raises:
        ValueError: for an unknown or missing weight, or mismatched shapes.
    """
    unknown = sorted(set(weights) - set(_MODE_WEIGHTS))
    if unknown or "skin" not in weights:
        raise ValueError(f"mode weights must include 'skin' and be among {list(_MODE_WEIGHTS)}, got {sorted(weights)}")
    mean = np.asarray(mean, dtype=np.float64)
    n = len(mean)
    if mean.shape != (n, 3):
        raise ValueError(f"mean must have shape (V, 3), got {mean.shape}")
    w: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (n,):
            raise ValueError(f"mode weight {name!r} must have shape ({n},), got {value.shape}")
        w[name] = value[:, None]
    skin = w["skin"]
    lips, brows = w.get("lips", np.zeros((n, 1))), w.get("brows", np.zeros((n, 1)))
    w["tone"] = skin * (1.0 - _TONE_DAMPING * lips) * (1.0 - _TONE_DAMPING * brows)
    for name in ("beard", "under_eyes"):
        if name in w:
            w[name] = skin * w[name]
    lum = (mean * _LUMINANCE).sum(axis=1, keepdims=True)
    fields: dict[str, np.ndarray] = {}
    for name, mode in MODES.items():
        if mode.weight not in w:
            continue
        field = mode.sigma * w[mode.weight]
        if mode.coordinate is not None:
            field = field * coordinates[mode.coordinate]
        if mode.colour == "mean":
            field = field * mean
            if mode.direction is not None:
                field = field * mode.direction
        elif mode.colour == "chroma":
            field = field * (mean - lum)
        else:
            field = field * mode.direction
        fields[name] = field
    return fields


def region_coverage(weights: Mapping[str, np.ndarray], n_vertices: int) -> dict[str, np.ndarray]:
    """Composite soft region weights into a partition of unity.

    Layers are painted in :data:`REGIONS` order over the base ``skin`` layer (weight 1 where
    not given): a layer with weight w keeps ``1 - w`` of what lies below it. The result is
    normalised to sum to 1 per vertex.

    Args:
        weights: ``{region: (V,)}`` soft weights in ``[0, 1]``; missing regions are 0.
        n_vertices: V.

    Returns:
        ``{region: (V,)}`` for every region of :data:`REGIONS`, summing to 1 per vertex.

    Raises:
        ValueError: for an unknown region, a wrong shape, values outside ``[0, 1]`` or a
            vertex that no region covers.

    Example:
        >>> cov = region_coverage({"lips": np.array([0.0, 0.5, 1.0])}, 3)
        >>> cov["lips"].tolist(), cov["skin"].tolist()
        ([0.0, 0.5, 1.0], [1.0, 0.5, 0.0])
    """
    unknown = sorted(set(weights) - set(REGIONS))
    if unknown:
        raise ValueError(f"unknown regions {unknown}; expected some of {list(REGIONS)}")
    layers: dict[str, np.ndarray] = {}
    for name in REGIONS:
        default = 1.0 if name == "skin" else 0.0
        w = np.asarray(weights.get(name, np.full(n_vertices, default)), dtype=np.float64)
        if w.shape != (n_vertices,):
            raise ValueError(f"region weight {name!r} must have shape ({n_vertices},), got {w.shape}")
        if not np.isfinite(w).all() or w.min() < 0.0 or w.max() > 1.0:
            raise ValueError(f"region weight {name!r} must lie in [0, 1]")
        layers[name] = w
    coverage: dict[str, np.ndarray] = {}
    above = np.ones(n_vertices)  # what the layers above leave visible
    for name in reversed(REGIONS):
        coverage[name] = layers[name] * above
        above = above * (1.0 - layers[name])
    total = sum(coverage.values())
    if (total <= 1e-9).any():
        raise ValueError(f"{int((total <= 1e-9).sum())} vertices are covered by no region (skin weight 0)")
    return {name: coverage[name] / total for name in REGIONS}


def landmark_region_weights(
    vertices: np.ndarray, landmarks: np.ndarray, *, candidates: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Soft lips / brows / cheeks / nose weights from the 68 iBUG landmarks of a mesh.

    * lips: inside the outer-lip polygon (landmarks 48..59) in the frontal (x, y)
      projection, fading over ~1.5 mm across its border;
    * brows: within 3.5 mm (3D) of the brow polylines 17..21 and 22..26 moved down by 4 % of the
      outer-eye-corner distance (iBUG brow points follow the brow's upper edge), fading out by 6.5 mm;
    * cheeks: Gaussian patches (σ = 0.17 × eye-corner-to-mouth-corner distance) around the
      surface points between the outer eye corners (36, 45) and the mouth corners (48, 54);
    * nose: within 3 mm (3D) of the bridge 27..30 and the nostril line 31..35 (joined to
      the tip), fading out by 9 mm.

    Args:
        vertices: ``(V, 3)`` neutral positions in millimetres.
        landmarks: ``(68, 3)`` landmark positions in millimetres.
        candidates: ``(V,)`` bool, the skin vertices that may take these regions (e.g. not
            the eyeballs); all when ``None``.

    Returns:
        ``{"lips", "brows", "cheeks", "nose": (V,)}`` weights in ``[0, 1]``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {vertices.shape}")
    if landmarks.shape != (68, 3):
        raise ValueError(f"landmarks must have shape (68, 3), got {landmarks.shape}")
    allowed = np.ones(len(vertices), bool) if candidates is None else np.asarray(candidates, bool)
    lm = landmarks

    lips_poly = lm[48:60, :2]
    lips = smoothstep(-0.5, 1.0, signed_distance(vertices[:, :2], lips_poly))

    # iBUG brow points run along the brow's upper edge: centre the band 4 % of the eye-corner
    # distance (~3.5 mm) below them.
    drop = np.array([0.0, 0.04 * np.linalg.norm(lm[36] - lm[45]), 0.0])
    brow_dist = np.minimum(
        distance_to_polyline(vertices, lm[17:22] - drop), distance_to_polyline(vertices, lm[22:27] - drop)
    )
    brows = 1.0 - smoothstep(3.5, 6.5, brow_dist)

    cheeks = np.zeros(len(vertices))
    for eye, mouth in ((36, 48), (45, 54)):
        target = 0.5 * (lm[eye] + lm[mouth])
        # Snap the midpoint (inside the head) onto the front surface below it in (x, y).
        near = np.linalg.norm(vertices[:, :2] - target[:2], axis=1) < 3.0
        pool = np.flatnonzero(near & allowed)
        centre = vertices[pool[np.argmax(vertices[pool, 2])]] if len(pool) else target
        sigma = 0.17 * np.linalg.norm(lm[eye] - lm[mouth])
        d2 = ((vertices - centre) ** 2).sum(axis=1)
        cheeks = np.maximum(cheeks, np.exp(-0.5 * d2 / sigma**2))

    nose_dist = np.minimum(
        distance_to_polyline(vertices, lm[27:31]), distance_to_polyline(vertices, lm[[31, 32, 33, 30, 33, 34, 35]])
    )
    nose = 1.0 - smoothstep(3.0, 9.0, nose_dist)

    out = {"lips": lips, "brows": brows, "cheeks": cheeks, "nose": nose}
    return {name: np.clip(np.where(allowed, w, 0.0), 0.0, 1.0) for name, w in out.items()}


def build_reflectance_prior(
    vertices: np.ndarray,
    weights: Mapping[str, np.ndarray],
    *,
    spatial_region: np.ndarray | None = None,
) -> ReflectancePrior:
    """Build the mean albedo and an orthonormal basis with σ's from region weights.

    The mean is the coverage-weighted blend of :data:`REGION_COLORS`; the modes are
    :func:`mode_fields` with the coverages as mode weights ("skin" = everything but
    sclera, iris and pupil), leaving out modes that are zero everywhere (no such region);
    the basis is their SVD, numerically zero modes dropped, each mode's largest component
    positive.

    Args:
        vertices: ``(V, 3)`` neutral positions in millimetres (for the spatial modes).
        weights: ``{region: (V,)}`` soft weights (see :func:`region_coverage`).
        spatial_region: ``(V,)`` bool, the vertices whose extent normalises the spatial modes
            (e.g. the face mask); its skin vertices are used, all skin vertices when ``None``.

    Returns:
        The prior; θr ~ N(0, 1) is meant to keep ≥ 99 % of albedo values in ``[0, 1]``
        (see :func:`in_range_fraction`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> verts = rng.uniform(-50, 50, (200, 3))
        >>> prior = build_reflectance_prior(verts, {"lips": (verts[:, 1] < -30).astype(float)})
        >>> prior.mean.shape, prior.basis.shape[1:], bool((np.diff(prior.std) <= 0).all())
        ((200, 3), (200, 3), True)
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {vertices.shape}")
    n = len(vertices)
    cov = region_coverage(weights, n)
    mean = sum(cov[name][:, None] * np.asarray(REGION_COLORS[name]) for name in REGIONS)
    skin = sum(cov[name] for name in REGIONS if name not in _EYE_REGIONS)
    region = skin > 0.5
    if spatial_region is not None:
        region &= np.asarray(spatial_region, bool)
    mode_weights = {name: cov[name] for name in _MODE_WEIGHTS if name in cov}
    mode_weights["skin"] = skin
    fields = mode_fields(mean, mode_weights, face_coordinates(vertices, region))
    names = tuple(name for name, field in fields.items() if np.abs(field).max() > 0)
    stacked = np.stack([fields[name].reshape(-1) for name in names])
    basis, std = orthonormal_basis(stacked, rtol=1e-9)
    return ReflectancePrior(mean=mean, basis=basis.reshape(-1, n, 3), std=std, mode_names=names, coverage=cov)


def in_range_fraction(prior: ReflectancePrior, *, n_samples: int = 256, seed: int = 0) -> float:
    """Fraction of albedo values in ``[0, 1]`` for θr ~ N(0, 1) (all vertices and channels).

    Example:
        >>> verts = np.random.default_rng(0).uniform(-50, 50, (100, 3))
        >>> in_range_fraction(build_reflectance_prior(verts, {})) > 0.99
        True
    """
    theta = np.random.default_rng(seed).standard_normal((n_samples, len(prior.std)))
    albedo = prior.mean.reshape(1, -1) + (theta * prior.std) @ prior.basis.reshape(len(prior.std), -1)
    return float(((albedo >= 0.0) & (albedo <= 1.0)).mean())
