from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch

from ifn.callbacks.predictions import ThetaJSONWriter, _file_name, theta_to_dict
from ifn.data.photo_folders import PhotoSettings
from ifn.facemodel.model import FaceModelIdentity
from ifn.params import ParamLayout

LAYOUT = ParamLayout(n_shape=2, n_expression=1, n_reflectance=3)


def test_theta_to_dict_names_every_group():
    theta = torch.arange(LAYOUT.size, dtype=torch.float32) / 100
    d = theta_to_dict(theta, LAYOUT)
    assert d["rotation_rad"]["beta_yaw"] == theta[1].item()
    assert math.isclose(d["rotation_deg"]["beta_yaw"], math.degrees(theta[1].item()))
    assert d["shape"] == theta[3:5].tolist() and d["expression"] == theta[5:6].tolist()
    assert len(d["illumination_sh_rgb"]) == 9 and d["illumination_sh_rgb"][0] == theta[9:12].tolist()
    assert d["theta"] == theta.tolist()


def test_file_names_are_relative_and_visible(tmp_path):
    photo = tmp_path / "photos" / "sub dir" / "a.jpg"
    assert _file_name(str(photo), str(tmp_path / "photos")) == "sub__dir__a.jpg"
    assert not _file_name("../x/../y.png", None).startswith(".")


def test_writer_writes_one_json_per_face(tmp_path):
    writer = ThetaJSONWriter(output_dir=str(tmp_path / "out"))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(photos=SimpleNamespace(settings=PhotoSettings(predict_dir=str(tmp_path)))))
    identity = FaceModelIdentity("procedural", "ab" * 32, LAYOUT.n_shape, LAYOUT.n_expression, LAYOUT.n_reflectance)
    module = SimpleNamespace(face_model=SimpleNamespace(identity=lambda: identity), layout=LAYOUT)
    prediction = {
        "theta": torch.zeros(2, LAYOUT.size),
        "path": [str(tmp_path / "a.jpg"), str(tmp_path / "a.jpg")],
        "face_index": torch.tensor([0, 1]),
    }
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0, 0)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["a.jpg.face0.json", "a.jpg.face1.json"]
    payload = json.loads((tmp_path / "out" / "a.jpg.face1.json").read_text())
    assert payload["face_index"] == 1 and payload["face_model"] == "procedural"
    assert payload["face_model_sha256"] == "ab" * 32
