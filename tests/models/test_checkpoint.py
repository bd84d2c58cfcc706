"""Checkpoints carry the face model's identity; loading refuses another face model."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch

from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.facemodel.model import FaceModel
from ifn.models.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    check_face_model,
    read_checkpoint,
)
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


def _independent_weights_hash(state_dict) -> str:
    """The documented rule, written out again: name, dtype, shape and bytes of every tensor, in order."""
    digest = hashlib.sha256(b"ifn-weights/1")
    for key, value in state_dict.items():
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _tester(tmp_path):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False)


SMALL = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")


def test_weights_hash_is_recorded_and_a_changed_weight_is_refused(tmp_path):
    model, path = _fit_one_step(tmp_path, SMALL)
    saved = torch.load(path, weights_only=True)
    assert saved["ifn"]["weights_sha256"] == _independent_weights_hash(saved["state_dict"])
    assert saved["ifn"]["weights_sha256"] == _independent_weights_hash(model.state_dict())

    # One bit of one weight changed, everything else (the recorded hash too) as saved.
    key = "net.conv_stem.weight"
    saved["state_dict"][key].view(torch.int32).reshape(-1)[7] ^= 1 << 3
    flipped = tmp_path / "flipped.ckpt"
    torch.save(saved, flipped)
    dm = SyntheticFaceDataModule(render=SMALL, batch_size=2, val_size=0, test_size=2)
    with pytest.raises(CheckpointError) as info:
        _tester(tmp_path).test(InverseFaceNet(dm.renderer, backbone=BACKBONE), datamodule=dm, ckpt_path=flipped)
    message = str(info.value)
    assert message.startswith(f"{flipped}: weights do not match their recorded hash: the file is corrupt")
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="weights do not match their recorded hash"):
        InverseFaceNet.from_checkpoint(flipped)


def test_checkpoints_without_a_weights_hash_load_as_before(tmp_path):
    model, path = _fit_one_step(tmp_path, SMALL)
    old = torch.load(path, weights_only=True)
    del old["ifn"]["weights_sha256"]
    old["ifn"]["version"] = 1
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    restored = InverseFaceNet.from_checkpoint(old_path)
    x = torch.rand(2, 3, 32, 32) - 0.5
    assert torch.equal(restored(x), model.eval()(x))
    dm = SyntheticFaceDataModule(render=SMALL, batch_size=2, val_size=0, test_size=2)
    results = _tester(tmp_path).test(InverseFaceNet(dm.renderer, backbone=BACKBONE), datamodule=dm, ckpt_path=old_path)
    assert results and "test/iou" in results[0]


def test_unreadable_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.ckpt: checkpoint file not found"):
        read_checkpoint(tmp_path / "nope.ckpt")
    _, path = _fit_one_step(tmp_path, SMALL)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "random.ckpt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    not_a_checkpoint = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), not_a_checkpoint)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(bad)
        assert str(info.value).startswith(f"{bad}: not a readable checkpoint, the file is truncated or damaged")
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="tensor.ckpt: not a Lightning checkpoint"):
        read_checkpoint(not_a_checkpoint)


def test_weights_of_another_backbone_are_one_line_errors(tmp_path):
    _, path = _fit_one_step(tmp_path, SMALL)
    dm = SyntheticFaceDataModule(render=SMALL, batch_size=2, val_size=0, test_size=2)
    other = InverseFaceNet(dm.renderer, backbone="mobilenetv3_small_075")
    with pytest.raises(CheckpointMismatchError) as info:
        _tester(tmp_path).test(other, datamodule=dm, ckpt_path=path)
    message = str(info.value)
    assert message.startswith(f"{path}: its weights do not fit this network (trained with model.backbone='{BACKBONE}')")
    assert "of another shape, e.g. net." in message and "\n" not in message
