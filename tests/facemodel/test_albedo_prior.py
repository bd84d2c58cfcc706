"""The hand-made reflectance prior: regions, mean colours, orthonormal modes, in-range samples."""

from __future__ import annotations

import numpy as np
import pytest

from ifn.facemodel.albedo_prior import (
    MODES,
    REGION_COLORS,
    REGIONS,
    build_reflectance_prior,
    face_coordinates,
    in_range_fraction,
    landmark_region_weights,
    mode_fields,
    region_coverage,
)
from ifn.facemodel.model import FaceModel


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
    def nearest(p):
        return int(np.argmin(np.linalg.norm(vertices[:, :2] - p[:2], axis=1)))
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
    def redness(m):
        return (m[:, 0] / m[:, 1]).mean()
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


def test_region_colours_are_one_table() -> None:
    assert set(REGION_COLORS) == set(REGIONS) and REGIONS[0] == "skin"
    skin = np.array(REGION_COLORS["skin"])
    np.testing.assert_allclose(REGION_COLORS["nose"], skin * [1.03, 0.98, 0.97], rtol=1e-15)
    np.testing.assert_allclose(REGION_COLORS["under_eyes"], 0.9 * skin, rtol=1e-15)
    for name, rgb in REGION_COLORS.items():
        assert len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb), name


def test_face_coordinates_by_hand() -> None:
    points = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -1.0], [10.0, 0.0]])
    c = face_coordinates(points, np.array([True, True, True, False]))
    # Centroid (0, 0) and largest offsets (2, 1) of the first three points; the fourth is clipped.
    np.testing.assert_allclose(c["u"].ravel(), [-1.0, 1.0, 0.0, 1.5])
    np.testing.assert_allclose(c["v"].ravel(), [0.0, 1.0, -1.0, 0.0])
    np.testing.assert_allclose(c["radial"].ravel(), np.array([1.0, 2.0, 1.0, 2.25]) - 4.0 / 3.0)


def test_mode_fields_by_hand() -> None:
    mean = np.array([[0.5, 0.4, 0.3]])
    weights = {"skin": [1.0], "lips": [1.0], "brows": [0.0], "cheeks": [0.5], "beard": [0.5], "iris": [0.4]}
    coords = {"u": np.array([[0.2]]), "v": np.array([[0.5]]), "radial": np.array([[-0.1]])}
    f = {
        name: value[0]
        for name, value in mode_fields(mean, {k: np.array(v) for k, v in weights.items()}, coords).items()
    }
    assert list(f) == [name for name in MODES if name in f]  # in table order
    assert "nose_redness" not in f and "sclera_tint" not in f and "under_eye_darkness" not in f  # no weight given
    # tone = skin (1 - 0.7 lips)(1 - 0.7 brows) = 0.3; luminance of the mean = 0.41404 (Rec. 709).
    expected = {
        "skin_brightness": [0.0765, 0.072, 0.0621],  # 0.18 · mean · (0.85, 1, 1.15)
        "skin_redness": [0.0075, -0.0015, -0.001125],  # 0.05 · 0.3 · mean · (1, -0.25, -0.25)
        "skin_yellowness": [0.0018, 0.00144, -0.0036],  # 0.04 · 0.3 · mean · (0.3, 0.3, -1)
        "skin_saturation": [0.0038682, -0.0006318, -0.0051318],  # 0.15 · 0.3 · (mean - 0.41404)
        "lip_redness": [0.04, -0.008, -0.006],  # 0.08 · mean · (1, -0.25, -0.25)
        "lip_darkness": [0.075, 0.06, 0.045],  # 0.15 · mean
        "brow_darkness": [0.0, 0.0, 0.0],
        "cheek_redness": [0.0125, -0.0025, -0.001875],  # 0.05 · 0.5 · mean · (1, -0.25, -0.25)
        "beard_shadow": [-0.025, -0.02, -0.015],  # -0.1 · 0.5 · mean
        "iris_lightness": [0.07, 0.056, 0.042],  # 0.35 · 0.4 · mean
        "iris_hue": [-0.006, 0.001, 0.01],  # 0.025 · 0.4 · (-0.6, 0.1, 1)
        "spatial_left_right": [0.0035, 0.0028, 0.0021],  # 0.035 · 0.2 · mean
        "spatial_up_down": [0.00875, 0.007, 0.00525],  # 0.035 · 0.5 · mean
        "spatial_centre_periphery": [-0.00175, -0.0014, -0.00105],  # 0.035 · -0.1 · mean
        "spatial_chin_forehead_tint": [0.00225, -0.00045, -0.0003375],  # 0.03 · 0.3 · 0.5 · mean · redden
    }
    assert set(f) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(f[name], value, rtol=1e-12, atol=1e-15, err_msg=name)
    # Beard shadow and under-eye darkness act on skin only: -0.1 · (0.5 skin · 0.5 beard) · mean.
    half = mode_fields(mean, {"skin": np.array([0.5]), "beard": np.array([0.5]), "under_eyes": np.ones(1)}, coords)
    np.testing.assert_allclose(half["beard_shadow"][0], [-0.0125, -0.01, -0.0075], rtol=1e-12)
    np.testing.assert_allclose(half["under_eye_darkness"][0], [-0.02, -0.016, -0.012], rtol=1e-12)
    with pytest.raises(ValueError, match="skin"):
        mode_fields(mean, {"lips": np.ones(1)}, coords)
    with pytest.raises(ValueError, match="among"):
        mode_fields(mean, {"skin": np.ones(1), "hair": np.ones(1)}, coords)


def test_prior_modes_come_from_the_shared_table(
    toy: tuple[np.ndarray, np.ndarray], weights: dict[str, np.ndarray]
) -> None:
    prior = build_reflectance_prior(toy[0], weights)
    assert list(prior.mode_names) == [name for name in MODES if name in prior.mode_names]
    # No beard and no under-eye region here: those modes are left out, all others are present.
    assert set(MODES) - set(prior.mode_names) == {"beard_shadow", "under_eye_darkness"}
    under = dict(weights, under_eyes=np.exp(-0.5 * (toy[0][:, 1] / 5.0) ** 2))
    assert "under_eye_darkness" in build_reflectance_prior(toy[0], under).mode_names
