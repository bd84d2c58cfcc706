"""Checkpoints carry the face model's identity; loading refuses another face model."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.facemodel.model import FaceModel
from ifn.models.checkpoint import CheckpointMismatchError, check_face_model
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

BACKBONE = "mobilenetv3_small_050"


def _fit_one_step(tmp_path, render: RenderSettings):
    dm = SyntheticFaceDataModule(render=render, batch_size=2, batches_per_epoch=1, val_size=0, test_size=2)
    model = InverseFaceNet(dm.renderer, backbone=BACKBONE)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return model, path


@pytest.fixture()
def face_file(tmp_path, toy_face_model):
    return toy_face_model.save(tmp_path / "toy.npz")


def test_checkpoint_records_identity_and_render_settings(tmp_path, face_file, toy_face_model):
    render = RenderSettings(face_model=str(face_file), image_size=32, backend="torch", camera_distance=700.0)
    _model, path = _fit_one_step(tmp_path, render)
    saved = torch.load(path, weights_only=True)
    record = saved["ifn"]
    assert record["face_model"] == {"name": "toy", "sha256": toy_face_model.sha256, "n_shape": 6,
                                    "n_expression": 4, "n_reflectance": 5}
    assert record["render"] == {**render.to_dict()}
    # The face model's arrays are not in the weights.
    assert not any(key.startswith("renderer.") for key in saved["state_dict"])


def test_from_checkpoint_finds_a_moved_face_model_and_refuses_another(tmp_path, face_file, toy_face_model):
    render = RenderSettings(face_model=str(face_file), image_size=32, backend="torch")
    model, path = _fit_one_step(tmp_path, render)
    moved = tmp_path / "moved" / "same.npz"
    moved.parent.mkdir()
    face_file.rename(moved)
    restored = InverseFaceNet.from_checkpoint(path, face_model=str(moved))
    x = torch.rand(2, 3, 32, 32) - 0.5
    model.eval()
    assert torch.equal(restored(x), model(x))
    assert restored.renderer.image_size == 32 and restored.face_model.sha256 == toy_face_model.sha256

    arrays = toy_face_model.arrays()
    arrays["reflectance_mean"] = arrays["reflectance_mean"] * 0.9
    other = FaceModel(**arrays, metadata=toy_face_model.metadata).save(tmp_path / "other.npz")
    with pytest.raises(CheckpointMismatchError) as info:
        InverseFaceNet.from_checkpoint(path, face_model=str(other))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert toy_face_model.sha256[:12] in message and FaceModel.load(other).sha256[:12] in message


def test_trainer_test_refuses_a_checkpoint_of_another_face_model(tmp_path):
    render = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")
    _, path = _fit_one_step(tmp_path, render)
    dm = SyntheticFaceDataModule(render=render.replace(n_shape=4), batch_size=2, val_size=0, test_size=2)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(CheckpointMismatchError, match="3/2/3 modes.*4/2/3 modes"):
        trainer.test(InverseFaceNet(dm.renderer, backbone=BACKBONE), datamodule=dm, ckpt_path=path)


def test_checkpoints_from_before_identities_load_or_fail_clearly(tmp_path):
    render = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")
    model, path = _fit_one_step(tmp_path, render)
    old = torch.load(path, weights_only=True)
    del old["ifn"]
    with pytest.warns(UserWarning, match="cannot verify"):
        check_face_model(old, model.renderer, "old.ckpt")
    bigger = render.replace(n_shape=5).build_renderer()
    with pytest.raises(CheckpointMismatchError, match="old.ckpt predicts 38 θ values"):
        check_face_model(old, bigger, "old.ckpt")
