"""A hand-made per-vertex albedo prior for face models that come without one (SPEC §2).

ICT-FaceKit (and any geometry-only model) has no reflectance PCA, but the paper's
F_r = a_r + Σ b_r,i σ_r,i θ_r,i needs one. This module builds a *prior*, not a
measurement: a painted mean albedo plus hand-chosen modes of variation, orthonormalised
exactly like a PCA basis so that θr ~ N(0, 1) gives plausible albedos.

Construction:

1. **Regions.** Soft per-vertex weights in ``[0, 1]`` for the layers of :data:`REGIONS`,
   composited bottom to top (skin is the base; later layers paint over earlier ones),
   which turns them into a partition of unity (:func:`region_coverage`).
   :func:`landmark_region_weights` derives lips, brows, cheeks and nose from the 68 iBUG
   landmarks of any face model; eye regions come from the model itself.
2. **Mean.** The coverage-weighted blend of one linear-RGB colour per region
   (:data:`REGION_COLORS`): soft weights give smooth transitions.
3. **Modes.** Each named mode is an albedo change at +1σ (a ``(V, 3)`` field): global skin
   tone (brightness, redness, yellowness), regional variation (lip colour and darkness,
   brow darkness, cheek and nose redness, iris and sclera) and a few smooth low-frequency
   spatial modes over the face (left/right, up/down, centre/periphery, chin/forehead tint).
   Brightness-like modes are relative to the local mean colour, so dark regions stay
   non-negative.
4. **Orthonormalise.** The σ-scaled modes are stacked as rows of ``M`` (``n × 3V``) and
   ``M = U S Vᵀ`` gives basis = rows of ``Vᵀ`` and σ = ``S`` — the covariance ``MᵀM`` of
   the hand-made modes is reproduced exactly, as for the shape modes of a σ-scaled model.

Convention:
    Albedo is linear RGB (not sRGB) in ``[0, 1]``; positions are model-space millimetres,
    +y up, +z out of the face; landmarks are 0-based iBUG / Multi-PIE indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ifn.facemodel.regions import points_in_polygon

__all__ = [
    "MODE_SIGMAS",
    "REGIONS",
    "REGION_COLORS",
    "ReflectancePrior",
    "build_reflectance_prior",
    "in_range_fraction",
    "landmark_region_weights",
    "region_coverage",
]

#: Region layers in compositing order, bottom (base) to top.
REGIONS: tuple[str, ...] = ("skin", "cheeks", "nose", "lips", "brows", "sclera", "iris", "pupil")

#: Mean linear-RGB albedo of each region (a light skin tone; variation comes from the modes).
REGION_COLORS: dict[str, tuple[float, float, float]] = {
    "skin": (0.60, 0.42, 0.33),
    "cheeks": (0.62, 0.40, 0.32),
    "nose": (0.62, 0.41, 0.32),
    "lips": (0.48, 0.24, 0.21),
    "brows": (0.22, 0.15, 0.11),
    "sclera": (0.78, 0.74, 0.70),
    "iris": (0.17, 0.11, 0.08),
    "pupil": (0.02, 0.02, 0.02),
}

#: How strongly each region follows the global skin-tone modes.
_TONE_PARTICIPATION: dict[str, float] = {
    "skin": 1.0,
    "cheeks": 1.0,
    "nose": 1.0,
    "lips": 0.7,
    "brows": 0.3,
    "sclera": 0.0,
    "iris": 0.0,
    "pupil": 0.0,
}

#: The hand-chosen standard deviation of each mode (its size at θ = 1, before orthonormalisation).
MODE_SIGMAS: dict[str, float] = {
    "skin_brightness": 0.18,  # relative: x (1 ± 0.18) of the local mean colour (a bit more in G, B)
    "skin_redness": 0.04,  # relative
    "skin_yellowness": 0.05,  # relative
    "lip_redness": 0.040,
    "lip_darkness": 0.15,  # relative
    "brow_darkness": 0.30,  # relative
    "cheek_redness": 0.025,
    "nose_redness": 0.020,
    "iris_lightness": 0.30,  # relative
    "iris_hue": 0.025,
    "sclera_tint": 0.030,
    "spatial_left_right": 0.035,  # relative, at the edge of the face
    "spatial_up_down": 0.035,
    "spatial_centre_periphery": 0.035,
    "spatial_chin_forehead_tint": 0.015,
}

_REDDEN = np.array([1.0, -0.2, -0.15])
# Darker skin absorbs relatively more at short wavelengths: brightness varies G and B a bit more.
_MELANIN = np.array([1.0, 1.1, 1.2])
_REDDEN_RELATIVE = np.array([1.0, -0.3, -0.3])
_YELLOW_RELATIVE = np.array([0.3, 0.3, -1.0])


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
    inside = points_in_polygon(torch.from_numpy(vertices[:, :2]), torch.from_numpy(lips_poly)).numpy()
    dist = _distance_to_polyline(vertices[:, :2], np.vstack([lips_poly, lips_poly[:1]]))
    signed = np.where(inside, dist, -dist)
    lips = _smoothstep(-0.5, 1.0, signed)

    # iBUG brow points run along the brow's upper edge: centre the band 4 % of the eye-corner
    # distance (~3.5 mm) below them.
    drop = np.array([0.0, 0.04 * np.linalg.norm(lm[36] - lm[45]), 0.0])
    brow_dist = np.minimum(
        _distance_to_polyline(vertices, lm[17:22] - drop), _distance_to_polyline(vertices, lm[22:27] - drop)
    )
    brows = 1.0 - _smoothstep(3.5, 6.5, brow_dist)

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
        _distance_to_polyline(vertices, lm[27:31]), _distance_to_polyline(vertices, lm[[31, 32, 33, 30, 33, 34, 35]])
    )
    nose = 1.0 - _smoothstep(3.0, 9.0, nose_dist)

    out = {"lips": lips, "brows": brows, "cheeks": cheeks, "nose": nose}
    return {name: np.clip(np.where(allowed, w, 0.0), 0.0, 1.0) for name, w in out.items()}


def build_reflectance_prior(
    vertices: np.ndarray,
    weights: Mapping[str, np.ndarray],
    *,
    spatial_region: np.ndarray | None = None,
) -> ReflectancePrior:
    """Build the mean albedo and an orthonormal basis with σ's from region weights.

    Args:
        vertices: ``(V, 3)`` neutral positions in millimetres (for the spatial modes).
        weights: ``{region: (V,)}`` soft weights (see :func:`region_coverage`).
        spatial_region: ``(V,)`` bool, the vertices whose extent normalises the spatial modes
            (e.g. the face mask); all skin-toned vertices when ``None``.

    Returns:
        The prior; θr ~ N(0, 1) keeps ≥ 99 % of albedo values in ``[0, 1]`` for the default
        colours and σ's (see :func:`in_range_fraction`).

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
    colors = {name: np.asarray(REGION_COLORS[name]) for name in REGIONS}
    mean = sum(cov[name][:, None] * colors[name] for name in REGIONS)
    tone = sum(_TONE_PARTICIPATION[name] * cov[name] for name in REGIONS)[:, None]

    # Normalised face coordinates for the spatial modes: u, v in about [-1, 1].
    region = (tone[:, 0] > 0.5) if spatial_region is None else np.asarray(spatial_region, bool) & (tone[:, 0] > 0.5)
    if region.sum() < 3:
        region = np.ones(n, bool)
    centre = vertices[region, :2].mean(axis=0)
    half = np.maximum(np.abs(vertices[region, :2] - centre).max(axis=0), 1e-9)
    uv = np.clip((vertices[:, :2] - centre) / half, -1.5, 1.5)
    u, v = uv[:, :1], uv[:, 1:]
    radial = u**2 + v**2
    radial = radial - radial[region].mean()

    directions: dict[str, np.ndarray] = {
        "skin_brightness": tone * mean * _MELANIN,
        "skin_redness": tone * mean * _REDDEN_RELATIVE,
        "skin_yellowness": tone * mean * _YELLOW_RELATIVE,
        "lip_redness": cov["lips"][:, None] * _REDDEN,
        "lip_darkness": cov["lips"][:, None] * colors["lips"],
        "brow_darkness": cov["brows"][:, None] * colors["brows"],
        "cheek_redness": cov["cheeks"][:, None] * _REDDEN,
        "nose_redness": cov["nose"][:, None] * _REDDEN,
        "iris_lightness": cov["iris"][:, None] * colors["iris"],
        "iris_hue": cov["iris"][:, None] * np.array([-0.6, 0.1, 1.0]),
        "sclera_tint": cov["sclera"][:, None] * np.array([0.2, -0.3, -1.0]),
        "spatial_left_right": tone * u * mean,
        "spatial_up_down": tone * v * mean,
        "spatial_centre_periphery": tone * radial * mean,
        "spatial_chin_forehead_tint": tone * v * _REDDEN,
    }
    names = tuple(name for name in MODE_SIGMAS if np.abs(directions[name]).max() > 0)
    stacked = np.stack([MODE_SIGMAS[name] * directions[name].reshape(-1) for name in names])
    _, s, vt = np.linalg.svd(stacked, full_matrices=False)
    keep = s > 1e-9 * max(s[0], 1e-300)
    basis, std = _fix_signs(vt[keep]), s[keep]
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


def _fix_signs(basis: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude component of every row positive (a deterministic sign)."""
    idx = np.abs(basis).argmax(axis=1)
    signs = np.sign(basis[np.arange(len(basis)), idx])
    signs[signs == 0] = 1.0
    return basis * signs[:, None]


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance of each point ``(N, D)`` to an open polyline ``(P, D)`` (P ≥ 2)."""
    a, b = polyline[:-1][None], polyline[1:][None]  # (1, P-1, D)
    p = points[:, None]  # (N, 1, D)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1).min(axis=1)
