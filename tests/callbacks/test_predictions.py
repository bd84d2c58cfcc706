"""θ per face as JSON: the payload, file names that never collide, paths that are not UTF-8."""

from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.parse
from types import SimpleNamespace

import torch

from ifn.callbacks.predictions import ThetaJSONWriter, prediction_file_name, theta_to_dict
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


def _sha16(relative: bytes) -> str:
    return hashlib.sha256(relative).hexdigest()[:16]


#: Photos whose cleaned-up names collide: (path below the folder, the expected readable part).
COLLIDING = [
    ("a b.jpg", "a__b.jpg"),
    ("a+b.jpg", "a__b.jpg"),
    ("a__b.jpg", "a__b.jpg"),
    ("sub/a.jpg", "sub__a.jpg"),
    ("sub__a.jpg", "sub__a.jpg"),
    (".hidden.jpg", "hidden.jpg"),
    ("_hidden.jpg", "hidden.jpg"),
]


def test_file_names_never_collide_and_are_stable(tmp_path):
    root = tmp_path / "photos"
    names = [prediction_file_name(str(root / rel), str(root), 0) for rel, _ in COLLIDING]
    assert names == [f"{clean}.{_sha16(rel.encode())}.face0.json" for rel, clean in COLLIDING]
    assert len(set(names)) == len(COLLIDING)
    assert not any(name.startswith((".", "_")) for name in names)
    # Stable: the same photo gives the same name; another face of it another name.
    assert prediction_file_name(str(root / "a b.jpg"), str(root), 0) == names[0]
    assert prediction_file_name(str(root / "a b.jpg"), str(root), 1) == names[0].replace(".face0.", ".face1.")
    # Outside the folder (or without one) the path is used as given, cleaned the same way.
    assert prediction_file_name("../x/../y.png", None, 0) == f"x__..__y.png.{_sha16(b'../x/../y.png')}.face0.json"


def test_file_names_of_paths_that_are_not_utf8_or_long(tmp_path):
    root = tmp_path / "photos"
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    name = prediction_file_name(str(root / latin1), str(root), 0)
    assert name == f"caf__.jpg.{_sha16(b'caf' + bytes([0xE9]) + b'.jpg')}.face0.json"
    name.encode("ascii")  # no surrogate left: any file system can hold it
    deep = "/".join(["folder"] * 60) + "/photo.jpg"
    long_name = prediction_file_name(str(root / deep), str(root), 3)
    assert len(long_name) < 160 and long_name.endswith(f"__photo.jpg.{_sha16(deep.encode())}.face3.json")


def _module():
    identity = FaceModelIdentity("procedural", "ab" * 32, LAYOUT.n_shape, LAYOUT.n_expression, LAYOUT.n_reflectance)
    return SimpleNamespace(face_model=SimpleNamespace(identity=lambda: identity), layout=LAYOUT)


def _trainer(predict_dir):
    return SimpleNamespace(datamodule=SimpleNamespace(photos=SimpleNamespace(settings=PhotoSettings(predict_dir=str(predict_dir)))))


def test_writer_keeps_every_colliding_photo(tmp_path):
    writer = ThetaJSONWriter(output_dir=str(tmp_path / "out"))
    root = tmp_path / "photos"
    paths = [str(root / rel) for rel, _ in COLLIDING]
    theta = torch.arange(len(paths), dtype=torch.float32)[:, None].expand(len(paths), LAYOUT.size).contiguous()
    prediction = {"theta": theta, "path": paths, "face_index": torch.zeros(len(paths), dtype=torch.long)}
    writer.write_on_batch_end(_trainer(root), _module(), prediction, None, None, 0, 0)
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == len(COLLIDING) == writer.written
    by_image = {json.loads(f.read_text())["image"]: json.loads(f.read_text()) for f in files}
    assert sorted(by_image) == sorted(paths)
    for i, path in enumerate(paths):
        assert by_image[path]["theta"] == [float(i)] * LAYOUT.size  # each photo's own θ survived


def test_writer_writes_valid_utf8_json_for_a_name_that_is_not_utf8(tmp_path):
    raw = os.fsencode(tmp_path / "photos") + b"/caf\xe9 100%.jpg"
    writer = ThetaJSONWriter(output_dir=str(tmp_path / "out"))
    prediction = {"theta": torch.zeros(1, LAYOUT.size), "path": [os.fsdecode(raw)], "face_index": torch.tensor([0])}
    writer.write_on_batch_end(_trainer(tmp_path / "photos"), _module(), prediction, None, None, 0, 0)
    (file,) = (tmp_path / "out").iterdir()
    text = file.read_bytes().decode("utf-8")  # strict: fails on any lone surrogate
    assert "\\ud" not in text.lower()  # nor one escaped by json
    payload = json.loads(text)
    assert payload["image"].endswith("/caf%E9 100%25.jpg")
    assert urllib.parse.unquote_to_bytes(payload["image"]) == raw
    assert "unquote_to_bytes" in payload["image_path_encoding"]


def test_writer_writes_one_json_per_face(tmp_path):
    writer = ThetaJSONWriter(output_dir=str(tmp_path / "out"))
    trainer, module = _trainer(tmp_path), _module()
    prediction = {
        "theta": torch.zeros(2, LAYOUT.size),
        "path": [str(tmp_path / "a.jpg"), str(tmp_path / "a.jpg")],
        "face_index": torch.tensor([0, 1]),
    }
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0, 0)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"a.jpg.{_sha16(b'a.jpg')}.face0.json", f"a.jpg.{_sha16(b'a.jpg')}.face1.json"]
    payload = json.loads((tmp_path / "out" / files[1]).read_text())
    assert payload["face_index"] == 1 and payload["face_model"] == "procedural"
    assert payload["image"] == str(tmp_path / "a.jpg")
    assert payload["face_model_sha256"] == "ab" * 32
