"""A face model's content hash and identity: what checkpoints use to know they match."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ifn.facemodel.model import FaceModel, FaceModelIdentity


def _documented_hash(model: FaceModel) -> str:
    """SHA-256 of "ifn-face-model/1", then for each array in file order: "key:dtype:shape" and its bytes."""
    digest = hashlib.sha256(b"ifn-face-model/1")
    for key, value in model.arrays().items():
        array = value.numpy()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_hash_is_the_documented_digest_of_the_arrays(toy_face_model):
    assert toy_face_model.sha256 == _documented_hash(toy_face_model)
    assert len(toy_face_model.sha256) == 64


def test_hash_survives_a_move_and_ignores_metadata(toy_face_model, tmp_path):
    first = toy_face_model.save(tmp_path / "a.npz")
    moved = tmp_path / "elsewhere" / "renamed.npz"
    moved.parent.mkdir()
    first.rename(moved)
    assert FaceModel.load(moved).sha256 == toy_face_model.sha256
    relabelled = FaceModel(**toy_face_model.arrays(), metadata=toy_face_model.metadata.__class__(
        name="other-name", source="x", license="y", reflectance="prior"))
    assert relabelled.sha256 == toy_face_model.sha256


def test_any_change_of_content_changes_the_hash(toy_face_model):
    arrays = toy_face_model.arrays()
    arrays["mean_shape"] = arrays["mean_shape"].clone()
    arrays["mean_shape"][0, 0] += 1e-3
    changed = FaceModel(**arrays, metadata=toy_face_model.metadata)
    assert changed.sha256 != toy_face_model.sha256
    assert toy_face_model.truncate(n_shape=5).sha256 != toy_face_model.sha256


def test_identity_round_trips_and_describes_both_sides(toy_face_model):
    identity = toy_face_model.identity()
    assert identity == FaceModelIdentity(
        name=toy_face_model.name, sha256=toy_face_model.sha256, n_shape=6, n_expression=4, n_reflectance=5
    )
    assert FaceModelIdentity.from_dict(identity.to_dict()) == identity
    assert identity.describe() == f"'{toy_face_model.name}' (sha256 {toy_face_model.sha256[:12]}, 6/4/5 modes)"


def test_face_model_tensors_stay_out_of_module_state(toy_face_model):
    # A face model is data with its own format: a network holding one saves none of it.
    assert toy_face_model.state_dict() == {}
    holder = torch.nn.Module()
    holder.face = toy_face_model
    assert holder.state_dict() == {}
