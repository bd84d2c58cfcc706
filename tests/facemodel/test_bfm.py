"""BFM 2009 (front .mat; full .mat + Exp_Pca.bin) and BFM 2017/2019 (.h5) on schema-exact fixtures.

Expected values are computed here from the fixture's own numbers (mean + σ_k·u_k, the colour
of a vertex, a landmark vertex), in millimetres and [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifn.facemodel.bfm import convert_bfm2009, convert_bfm2017

SHAPE_SD = np.array([400.0, 300.0, 200.0, 100.0, 50.0])
EXPR_SD = np.array([250.0, 150.0, 80.0])
TEX_SD = np.array([3.0, 2.0, 1.0])


def _unit(model, group: str, k: int) -> torch.Tensor:
    """The geometry (or albedo) of the model at θ_k = 1, all other coefficients 0."""
    zeros = {"shape": torch.zeros(1, model.n_shape), "expression": torch.zeros(1, model.n_expression)}
    if group == "reflectance":
        theta = torch.zeros(1, model.n_reflectance)
        theta[0, k] = 1.0
        return model.reflectance(theta)[0].double()
    zeros[group][0, k] = 1.0
    return model.geometry(zeros["shape"], zeros["expression"])[0].double()


def _check_modes(model, face, vertices_src: np.ndarray, vertex: int, expr_u: np.ndarray | None = None) -> None:
    """Vertex ``vertex`` of the converted model is source vertex ``vertices_src[vertex]``."""
    v = int(vertices_src[vertex])
    np.testing.assert_allclose(model.mean_shape[vertex].double().numpy(), face.mean[v], atol=2e-3)
    for k, sd in enumerate(SHAPE_SD):
        expected = face.mean[v] + sd * face.shape_u[3 * v : 3 * v + 3, k]
        np.testing.assert_allclose(_unit(model, "shape", k)[vertex].numpy(), expected, atol=2e-3)
    expr_u = face.expr_u if expr_u is None else expr_u
    for k, sd in enumerate(EXPR_SD):
        expected = face.mean[v] + sd * expr_u[3 * v : 3 * v + 3, k]
        np.testing.assert_allclose(_unit(model, "expression", k)[vertex].numpy(), expected, atol=2e-3)
    np.testing.assert_allclose(model.reflectance_mean[vertex].double().numpy(), face.tex_mean[v], atol=1e-5)
    for k, sd in enumerate(TEX_SD):
        expected = face.tex_mean[v] + sd * face.tex_u[3 * v : 3 * v + 3, k]
        np.testing.assert_allclose(_unit(model, "reflectance", k)[vertex].numpy(), expected, atol=1e-5)


def test_bfm2009_front_values_match_the_fixture(bfm2009_front_file, fake_face):
    model = convert_bfm2009([bfm2009_front_file], crop=False)
    assert (model.n_vertices, model.n_shape, model.n_expression, model.n_reflectance) == (fake_face.n, 5, 3, 3)
    np.testing.assert_allclose(model.shape_std.numpy(), SHAPE_SD, rtol=1e-5)
    np.testing.assert_allclose(model.expression_std.numpy(), EXPR_SD, rtol=1e-5)
    np.testing.assert_allclose(model.reflectance_std.numpy(), TEX_SD, rtol=1e-5)
    nose = int(fake_face.landmarks[30])
    _check_modes(model, fake_face, np.arange(fake_face.n), nose)
    _check_modes(model, fake_face, np.arange(fake_face.n), 5)
    # keypoints are 1-based in the file: landmark 30 is the fixture's nose vertex.
    np.testing.assert_array_equal(model.landmark_indices.numpy(), fake_face.landmarks)
    assert model.metadata.reflectance == "measured" and model.metadata.name == "bfm2009-front"
    assert not model.has_barycentric_landmarks


def test_bfm2009_full_with_guo_expressions_keeps_the_covered_vertices(bfm2009_full_files, fake_face):
    files = bfm2009_full_files
    sources = [files[n] for n in ("Exp_Pca.bin", "01_MorphableModel.mat", "BFM_exp_idx.mat", "std_exp.txt")]
    model = convert_bfm2009(sources, landmarks=files["landmarks.txt"], crop=False)
    keep = np.setdiff1d(np.arange(fake_face.n), fake_face.corners)
    assert model.n_vertices == len(keep) == fake_face.n - 4  # the vertex subset of Exp_Pca.bin
    np.testing.assert_allclose(model.expression_std.numpy(), EXPR_SD, rtol=1e-5)
    landmark30 = int(np.searchsorted(keep, fake_face.landmarks[30]))
    _check_modes(model, fake_face, keep, landmark30)
    np.testing.assert_array_equal(keep[model.landmark_indices.numpy()], fake_face.landmarks)
    assert model.metadata.extra["expression_vertices"] == len(keep)


def test_bfm2017_h5_values_match_the_fixture(bfm2017_files, fake_face):
    model = convert_bfm2017(bfm2017_files["h5"], landmarks=bfm2017_files["landmarks"], landmarks_one_based=True,
                            crop=False, name="bfm2019")
    np.testing.assert_allclose(model.shape_std.numpy(), SHAPE_SD, rtol=1e-5)  # √pcaVariance
    _check_modes(model, fake_face, np.arange(fake_face.n), int(fake_face.landmarks[8]))
    np.testing.assert_array_equal(model.landmark_indices.numpy(), fake_face.landmarks)
    assert model.metadata.name == "bfm2019"


def test_cropping_keeps_the_face_and_the_covariance_on_it(bfm2009_front_file, fake_face):
    full = convert_bfm2009([bfm2009_front_file], crop=False)
    model = convert_bfm2009([bfm2009_front_file])
    assert model.n_vertices < fake_face.n
    # The kept vertices are source vertices: find them by position (the mean is unchanged).
    src = torch.cdist(model.mean_shape.double(), torch.from_numpy(fake_face.mean)).argmin(dim=1).numpy()
    np.testing.assert_allclose(model.mean_shape.double().numpy(), fake_face.mean[src], atol=2e-3)
    np.testing.assert_array_equal(src[model.landmark_indices.numpy()], fake_face.landmarks)
    assert model.face_mask[model.landmark_indices].all()
    assert int(model.face_triangles.shape[0]) == int(full.face_triangles.shape[0])  # the same face is drawn
    # Covariance of a few coordinates: Σ_k σ_k² u_k uₖᵀ from the fixture vs. the cropped basis.
    coords = np.concatenate([3 * src[:6] + 0, 3 * src[:6] + 2])
    expected = (fake_face.shape_u[coords] * SHAPE_SD**2) @ fake_face.shape_u[coords].T
    b = model.shape_basis.double().reshape(model.n_shape, -1).numpy()
    local = np.concatenate([3 * np.arange(6) + 0, 3 * np.arange(6) + 2])
    got = (b[:, local].T * model.shape_std.double().numpy() ** 2) @ b[:, local]
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())


def test_bfm_errors_name_the_file(bfm2009_front_file, bfm2009_full_files, bfm2017_files, tmp_path):
    files = bfm2009_full_files
    with pytest.raises(ValueError, match=r"01_MorphableModel\.mat.*also give .*Exp_Pca\.bin"):
        convert_bfm2009([files["01_MorphableModel.mat"]], landmarks=files["landmarks.txt"])
    with pytest.raises(ValueError, match="holds no iBUG-68 landmarks; pass --landmarks"):
        convert_bfm2009([files[n] for n in ("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt",
                                             "BFM_exp_idx.mat")])
    truncated = tmp_path / "Exp_Pca.bin"
    truncated.write_bytes(files["Exp_Pca.bin"].read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"Exp_Pca\.bin: .* bytes do not fit"):
        convert_bfm2009([files["01_MorphableModel.mat"], truncated, files["std_exp.txt"], files["BFM_exp_idx.mat"]],
                        landmarks=files["landmarks.txt"])
    with pytest.raises(ValueError, match="wrong unit"):
        convert_bfm2009([bfm2009_front_file], scale=1.0)  # decimetres taken as mm: a 1.2 mm face
    short = tmp_path / "short.txt"
    np.savetxt(short, np.arange(67), fmt="%d")
    with pytest.raises(ValueError, match=r"short\.txt: expected 68"):
        convert_bfm2017(bfm2017_files["h5"], landmarks=short)
    import scipy.io

    other = tmp_path / "other.mat"
    scipy.io.savemat(str(other), {"foo": np.zeros(3)})
    with pytest.raises(ValueError, match=r"other\.mat: not a BFM 2009 file"):
        convert_bfm2009([other])
