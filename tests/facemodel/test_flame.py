"""FLAME on schema-exact fixtures: chumpy pickle, barycentric landmark embedding, UV albedo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifn.facemodel.convert import landmarks_from_mapping
from ifn.facemodel.flame import convert_flame

SHAPE_SD = np.array([400.0, 300.0, 200.0, 100.0, 50.0])
EXPR_SD = np.array([250.0, 150.0, 80.0])
TEX_SD = np.array([3.0, 2.0, 1.0])
WEIGHTS = np.array([0.6, 0.3, 0.1])


def _at(model, shape_k=None, expr_k=None) -> np.ndarray:
    s, e = torch.zeros(1, model.n_shape), torch.zeros(1, model.n_expression)
    if shape_k is not None:
        s[0, shape_k] = 1.0
    if expr_k is not None:
        e[0, expr_k] = 1.0
    return model.geometry(s, e)[0].double().numpy()


def test_flame_values_match_the_fixture(flame_files, fake_face):
    f = fake_face
    model = convert_flame(flame_files["model"], landmarks=flame_files["landmarks"], albedo=flame_files["albedo"],
                          crop=False)
    # The split of shapedirs is found from the column norms: 5 identity, 3 expression.
    assert (model.n_shape, model.n_expression, model.n_reflectance) == (5, 3, 3)
    np.testing.assert_allclose(model.shape_std.numpy(), SHAPE_SD, rtol=1e-5)  # metres → mm
    v = int(f.landmarks[33])
    for k, sd in enumerate(SHAPE_SD):
        np.testing.assert_allclose(_at(model, shape_k=k)[v], f.mean[v] + sd * f.shape_u[3 * v : 3 * v + 3, k],
                                   atol=1e-3)
    for k, sd in enumerate(EXPR_SD):
        np.testing.assert_allclose(_at(model, expr_k=k)[v], f.mean[v] + sd * f.expr_u[3 * v : 3 * v + 3, k],
                                   atol=1e-3)
    # Barycentric landmarks: landmark i = 0.6·(its vertex) + 0.3·(next corner) + 0.1·(the last), in mm.
    assert model.has_barycentric_landmarks
    for i in (0, 30, 48):
        tri = f.triangles[int(model.landmark_triangles[i])]
        corner = int(np.flatnonzero(tri == f.landmarks[i])[0])
        expected = sum(w * f.mean[tri[(corner + j) % 3]] for j, w in enumerate(WEIGHTS))
        got = model.landmark_points(model.mean_shape[None].double())[0, i].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert int(model.landmark_indices[i]) == f.landmarks[i]  # the heaviest corner
    # Albedo: the texel under each vertex, BGR in the file → RGB.
    for vertex in (v, 100, 900):
        np.testing.assert_allclose(model.reflectance_mean[vertex].double().numpy(), f.tex_mean[vertex], atol=1e-6)
    theta = torch.zeros(1, 3)
    theta[0, 1] = 1.0
    np.testing.assert_allclose(model.reflectance(theta)[0, v].double().numpy(),
                               f.tex_mean[v] + TEX_SD[1] * f.tex_u[3 * v : 3 * v + 3, 1], atol=1e-5)
    extra = model.metadata.extra
    assert extra["identity_blendshapes"] == 5 and extra["joints"] == 5 and "zero" in extra["pose"]
    assert extra["texture_size"] == [41, 41]


def test_flame_without_albedo_uses_the_prior_and_explicit_split(flame_files):
    model = convert_flame(flame_files["model"], landmarks=flame_files["landmarks"], n_shape=4)
    assert model.metadata.reflectance == "prior"
    assert (model.n_shape, model.n_expression) == (4, 4)
    assert model.face_mask[model.landmark_indices].all()


def test_static_landmarks_take_the_frontal_jaw_contour():
    rows = np.arange(5)[:, None] * 100 + np.arange(17)[None, :]  # 5 yaw angles
    data = {"lmk_face_idx": np.arange(1000, 1051), "lmk_b_coords": np.full((51, 3), 1 / 3),
            "dynamic_lmk_faces_idx": rows, "dynamic_lmk_bary_coords": np.full((5, 17, 3), 1 / 3)}
    lm = landmarks_from_mapping(data, "emb")
    assert lm.triangles[:17].tolist() == list(range(200, 217))  # the middle row: yaw 0
    assert lm.triangles[17:].tolist() == list(range(1000, 1051))
    with pytest.raises(ValueError, match="emb: lmk_face_idx holds 51 landmarks"):
        landmarks_from_mapping({"lmk_face_idx": data["lmk_face_idx"], "lmk_b_coords": data["lmk_b_coords"]}, "emb")


def test_flame_errors_name_the_file(flame_files, tmp_path, fake_chumpy_pickle_fn):
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(fake_chumpy_pickle_fn({"v_template": np.zeros((4, 3)), "f": np.zeros((1, 3), np.uint32)}))
    with pytest.raises(ValueError, match=r"generic_model\.pkl: missing 'shapedirs'"):
        convert_flame(bad, landmarks=flame_files["landmarks"])
    no_uv = tmp_path / "FLAME_texture.npz"
    np.savez(no_uv, mean=np.zeros((4, 4, 3)), tex_dir=np.zeros((4, 4, 3, 2)))
    with pytest.raises(ValueError, match=r"FLAME_texture\.npz: no UV layout"):
        convert_flame(flame_files["model"], landmarks=flame_files["landmarks"], albedo=no_uv)
