"""The hand-made reflectance prior: regions, mean colours, orthonormal modes, in-range samples."""

from __future__ import annotations

import numpy as np
import pytest

from ifn.facemodel.model import FaceModel
from ifn.facemodel.albedo_prior import (
    REGION_COLORS,
    REGIONS,
    build_reflectance_prior,
    in_range_fraction,
    landmark_region_weights,
    region_coverage,
)


@pytest.fixture()
def toy(toy_face_model: FaceModel) -> tuple[np.ndarray, np.ndarray]:
    vertices = toy_face_model.mean_shape.double().numpy()
    return vertices, vertices[toy_face_model.landmark_indices.numpy()]


@pytest.fixture()
def weights(toy: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    vertices, landmarks = toy
    out = landmark_region_weights(vertices, landmarks)
    # Two "eyes": discs around the eye landmarks, iris in the middle.
    for side in (slice(36, 42), slice(42, 48)):
        d = np.linalg.norm(vertices[:, :2] - landmarks[side, :2].mean(axis=0), axis=1)
        out["sclera"] = np.maximum(out.get("sclera", 0 * d), (d < 9.0).astype(float))
        out["iris"] = np.maximum(out.get("iris", 0 * d), (d < 4.0).astype(float))
    return out


def test_region_coverage_is_a_partition_of_unity() -> None:
    rng = np.random.default_rng(0)
    w = {name: rng.uniform(0, 1, 50) for name in REGIONS if name != "skin"}
    cov = region_coverage(w, 50)
    np.testing.assert_allclose(sum(cov.values()), 1.0)
    # The top layer keeps its own weight; the base keeps what every layer above leaves.
    np.testing.assert_allclose(cov[REGIONS[-1]], w[REGIONS[-1]])
    np.testing.assert_allclose(cov["skin"], np.prod([1 - w[n] for n in REGIONS[1:]], axis=0))


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"hair": np.zeros(4)}, "unknown regions"),
        ({"lips": np.zeros(3)}, "shape"),
        ({"lips": np.full(4, 1.5)}, r"\[0, 1\]"),
        ({"skin": np.zeros(4)}, "covered by no region"),
    ],
)
def test_region_coverage_rejects_bad_weights(weights: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        region_coverage(weights, 4)


def test_landmark_regions_are_where_they_belong(toy: tuple[np.ndarray, np.ndarray]) -> None:
    vertices, landmarks = toy
    w = landmark_region_weights(vertices, landmarks)
    for name, value in w.items():
        assert value.min() >= 0 and value.max() <= 1 and value.max() > 0.5, name
    nearest = lambda p: int(np.argmin(np.linalg.norm(vertices[:, :2] - p[:2], axis=1)))
    lip_centre = nearest(0.5 * (landmarks[51] + landmarks[57]))
    assert w["lips"][lip_centre] > 0.9 and w["lips"][nearest(landmarks[30])] == 0
    assert w["nose"][nearest(landmarks[30])] > 0.9 and w["nose"][nearest(landmarks[0])] == 0
    assert w["brows"][nearest(landmarks[19])] > 0.5 and w["brows"][lip_centre] == 0
    with pytest.raises(ValueError, match="landmarks"):
        landmark_region_weights(vertices, landmarks[:60])
    none = landmark_region_weights(vertices, landmarks, candidates=np.zeros(len(vertices), bool))
    assert all(v.max() == 0 for v in none.values())


def test_mean_albedo_and_region_order(toy: tuple[np.ndarray, np.ndarray], weights: dict[str, np.ndarray]) -> None:
    vertices, _ = toy
    prior = build_reflectance_prior(vertices, weights)
    mean = prior.mean
    assert mean.shape == vertices.shape and mean.min() >= 0 and mean.max() <= 1
    skin = prior.coverage["skin"] > 0.99
    lips = prior.coverage["lips"] > 0.9
    brows = prior.coverage["brows"] > 0.9
    iris = prior.coverage["iris"] > 0.9
    sclera = prior.coverage["sclera"] > 0.9
    assert skin.any() and lips.any() and brows.any() and iris.any() and sclera.any()
    redness = lambda m: (m[:, 0] / m[:, 1]).mean()
    assert redness(mean[lips]) > redness(mean[skin]) + 0.3  # lips redder
    assert mean[lips].sum(1).mean() < mean[skin].sum(1).mean()  # and darker
    assert mean[brows].sum(1).mean() < 0.7 * mean[skin].sum(1).mean()
    assert mean[sclera].sum(1).mean() > mean[skin].sum(1).mean() > mean[iris].sum(1).mean()
    np.testing.assert_allclose(mean[skin].mean(0), REGION_COLORS["skin"], atol=0.01)


def test_basis_is_orthonormal_with_decreasing_std(
    toy: tuple[np.ndarray, np.ndarray], weights: dict[str, np.ndarray]
) -> None:
    prior = build_reflectance_prior(toy[0], weights)
    flat = prior.basis.reshape(len(prior.std), -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(len(prior.std)), atol=1e-10)
    assert (prior.std > 0).all() and (np.diff(prior.std) <= 0).all()
    assert len(prior.std) == len(prior.mode_names)  # every hand-made mode is independent here
    # Deterministic: the same inputs give the same prior, signs included.
    again = build_reflectance_prior(toy[0], weights)
    np.testing.assert_array_equal(again.basis, prior.basis)


def test_samples_stay_in_range(toy: tuple[np.ndarray, np.ndarray], weights: dict[str, np.ndarray]) -> None:
    prior = build_reflectance_prior(toy[0], weights)
    assert in_range_fraction(prior, n_samples=512, seed=1) >= 0.99
    # The prior varies: skin tone across samples spans a visible range.
    theta = np.random.default_rng(2).standard_normal((256, len(prior.std)))
    albedo = prior.mean.reshape(1, -1) + (theta * prior.std) @ prior.basis.reshape(len(prior.std), -1)
    skin_red = albedo.reshape(256, -1, 3)[:, prior.coverage["skin"] > 0.99, 0].mean(axis=1)
    assert skin_red.std() > 0.05


def test_build_rejects_bad_vertices() -> None:
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        build_reflectance_prior(np.zeros((5, 2)), {})
