from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ifn.facemodel.model import FaceModel, load_face_model


def test_native_format_round_trips_exactly(toy_face_model, tmp_path):
    path = toy_face_model.save(tmp_path / "toy.npz")
    loaded = FaceModel.load(path)
    for key, value in toy_face_model.arrays().items():
        other = getattr(loaded, key)
        assert other.dtype == value.dtype and torch.equal(other, value), key
    assert loaded.metadata == toy_face_model.metadata
    assert torch.equal(loaded.face_triangles, toy_face_model.face_triangles)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file must be renamed away"


def test_geometry_and_reflectance_follow_equations_2_and_3(toy_face_model):
    fm = toy_face_model
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(3, fm.n_shape, generator=gen)
    e = torch.randn(3, fm.n_expression, generator=gen)
    r = torch.randn(3, fm.n_reflectance, generator=gen)
    expected = fm.mean_shape.clone().expand(3, -1, -1).clone()
    for i in range(fm.n_shape):
        expected += (s[:, i] * fm.shape_std[i])[:, None, None] * fm.shape_basis[i]
    for j in range(fm.n_expression):
        expected += (e[:, j] * fm.expression_std[j])[:, None, None] * fm.expression_basis[j]
    assert torch.allclose(fm.geometry(s, e), expected, atol=1e-4)
    albedo = fm.reflectance_mean + torch.einsum("bk,kvc->bvc", r * fm.reflectance_std, fm.reflectance_basis)
    assert torch.allclose(fm.reflectance(r), albedo, atol=1e-5)


def test_truncate_keeps_the_leading_modes(toy_face_model):
    small = toy_face_model.truncate(n_shape=2, n_expression=1)
    assert (small.n_shape, small.n_expression, small.n_reflectance) == (2, 1, toy_face_model.n_reflectance)
    assert torch.equal(small.shape_basis, toy_face_model.shape_basis[:2])
    s = torch.zeros(1, toy_face_model.n_shape)
    s[0, :2] = torch.tensor([1.0, -2.0])
    e = torch.zeros(1, toy_face_model.n_expression)
    assert torch.allclose(small.geometry(s[:, :2], e[:, :1]), toy_face_model.geometry(s, e), atol=1e-5)
    with pytest.raises(ValueError, match="has 6"):
        toy_face_model.truncate(n_shape=7)


def test_geometry_rejects_wrong_coefficient_count(toy_face_model):
    with pytest.raises(ValueError, match=r"shape coefficients must have shape \(B, 6\)"):
        toy_face_model.geometry(torch.zeros(1, 5), torch.zeros(1, 4))


def test_non_orthonormal_basis_is_rejected(toy_face_model):
    arrays = toy_face_model.arrays()
    arrays["shape_basis"] = arrays["shape_basis"] * 2.0
    with pytest.raises(ValueError, match="shape_basis is not orthonormal"):
        FaceModel(**arrays, metadata=toy_face_model.metadata)


def test_out_of_range_triangles_are_rejected(toy_face_model):
    arrays = toy_face_model.arrays()
    arrays["triangles"][0, 0] = toy_face_model.n_vertices
    with pytest.raises(ValueError, match="triangle indices"):
        FaceModel(**arrays, metadata=toy_face_model.metadata)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code from a face model file ran')",))


def test_loading_never_unpickles(toy_face_model, tmp_path):
    path = toy_face_model.save(tmp_path / "evil.npz")
    with np.load(path) as data:
        payload = {k: data[k] for k in data.files}
    payload["metadata"] = np.array([_Boom()], dtype=object)
    np.savez(path, **payload)
    assert b"exec" in pickle.dumps(_Boom())
    with pytest.raises(ValueError, match="evil.npz"):
        FaceModel.load(path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        FaceModel.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.npz"):
        FaceModel.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not an ifn face model"):
        FaceModel.load(other)


def test_save_requires_npz_suffix(toy_face_model, tmp_path):
    with pytest.raises(ValueError, match=".npz"):
        toy_face_model.save(tmp_path / "model.pkl")


def test_load_face_model_by_path_and_unknown_name(toy_face_model, tmp_path):
    path = toy_face_model.save(tmp_path / "toy.npz")
    assert load_face_model(str(path)).n_vertices == toy_face_model.n_vertices
    with pytest.raises(FileNotFoundError, match="procedural"):
        load_face_model("does-not-exist")


def test_module_moves_buffers_with_to(toy_face_model):
    fm = toy_face_model.to(torch.float64)
    assert fm.mean_shape.dtype == torch.float64 and fm.triangles.dtype == torch.int64


def test_saved_file_gets_normal_permissions(toy_face_model, tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = toy_face_model.save(tmp_path / "toy.npz")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("key", ["mean_shape", "reflectance_mean", "shape_basis", "expression_std"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_arrays_are_refused_at_load_naming_file_and_array(toy_face_model, tmp_path, key, bad):
    path = toy_face_model.save(tmp_path / "toy.npz")
    with np.load(path) as data:
        payload = {k: data[k] for k in data.files}
    payload[key] = payload[key].copy()
    payload[key].reshape(-1)[[0, 2]] = bad  # two values
    np.savez(path, **payload)
    with pytest.raises(ValueError) as info:
        FaceModel.load(path)
    message = str(info.value)
    assert message == f"{path}: invalid face model: {key} contains 2 non-finite value(s) (NaN or inf)"
    arrays = toy_face_model.arrays()
    arrays[key].reshape(-1)[0] = bad
    with pytest.raises(ValueError, match=f"^{key} contains 1 non-finite"):
        FaceModel(**arrays, metadata=toy_face_model.metadata)


def test_truncated_and_bit_flipped_files_are_one_line_errors_naming_the_file(toy_face_model, tmp_path):
    data = toy_face_model.save(tmp_path / "toy.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.npz"
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0x01  # inside an array: the zip member's CRC-32 no longer matches
    flipped.write_bytes(bytes(middle))
    for path in (truncated, flipped):
        with pytest.raises(ValueError) as info:
            FaceModel.load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable .npz face model") and "\n" not in message
    with pytest.raises(ValueError, match="Bad CRC-32"):
        FaceModel.load(flipped)
