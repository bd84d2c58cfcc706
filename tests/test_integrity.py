"""Nothing lost: results of photos whose names are not UTF-8 or collide when cleaned, and
checkpoints whose bytes are damaged, through ``ifn test`` / ``ifn predict`` (in-process).

The photos are random images with ``.pts`` landmark files beside them (the ``annotation``
detector), so no detector model runs; the network is untrained (no ``--ckpt_path``), which
does not matter for what is checked: that every photo's result is written, under a distinct
name, in valid UTF-8, and that its path can be recovered byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import urllib.parse
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from ifn.cli import main
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.errors import UsageError
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
BACKBONE = "mobilenetv3_small_050"
#: The quickstart pipeline at test scale (as tests/test_cli.py's SMALL_RUN).
SMALL_RUN = [
    "--config", str(QUICKSTART),
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    f"--model.backbone={BACKBONE}",
    "--data.render.face_model=procedural",
    "--data.render.image_size=32",
    "--data.render.n_shape=3",
    "--data.render.n_expression=2",
    "--data.render.n_reflectance=3",
    "--data.batch_size=4",
    "--data.batches_per_epoch=2",
    "--data.val_size=4",
    "--data.test_size=4",
    "--data.render.backend=torch",
]
RENDER = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")

#: Photos (as bytes below the folder) whose cleaned names collide, and one that is not UTF-8.
PHOTOS = [b"a b.jpg", b"a+b.jpg", b"a__b.jpg", b"sub/a.jpg", b"sub__a.jpg", b".hidden.jpg", b"_hidden.jpg",
          b"caf\xe9.jpg"]


@pytest.fixture(autouse=True)
def _argv_and_cwd(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["ifn"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IFN_DEBUG", raising=False)


def _write_pts(path: bytes, landmarks: np.ndarray) -> None:
    # .pts is 1-based at the pixel centre: continuous + 0.5
    body = "\n".join(f"{x + 0.5:.3f} {y + 0.5:.3f}" for x, y in landmarks)
    Path(os.fsdecode(path)).write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")


def _photo_folder(root: Path) -> Path:
    """One face per photo of :data:`PHOTOS` (names given as bytes, so Latin-1 stays Latin-1)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 2.0 * np.pi, 68, endpoint=False)
    landmarks = np.stack([48 + 30 * np.cos(t), 48 + 36 * np.sin(t)], axis=1)
    for name in PHOTOS:
        path = os.fsencode(root) + b"/" + name
        Path(os.fsdecode(path)).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(os.fsdecode(path), format="PNG")
        _write_pts(path[: -len(b".jpg")] + b".pts", landmarks)
    return root


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_test_and_predict_keep_every_photo(tmp_path, capsys):
    photos = _photo_folder(tmp_path / "photos")
    common = [*SMALL_RUN, f"--trainer.default_root_dir={tmp_path / 'run'}", "--data.photos.detector=annotation",
              f"--data.photos.cache_dir={tmp_path / 'cache'}"]
    expected = {os.fsencode(photos) + b"/" + name for name in PHOTOS}

    capsys.readouterr()
    assert main(["test", *common, f"--data.photos.test_dir={photos}"]) == 0
    metrics_path = Path(_last_line(capsys.readouterr().out))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["test/real_iou"] is not None and math.isfinite(metrics["test/real_iou"])
    text = (metrics_path.parent / "test_real_per_image.csv").read_bytes().decode("utf-8")  # strict UTF-8
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {urllib.parse.unquote_to_bytes(row["path"]) for row in rows} == expected
    assert len(rows) == len(PHOTOS)
    assert any(row["path"].endswith("/caf%E9.jpg") for row in rows)

    out = tmp_path / "predictions"
    assert main(["predict", *common, f"--data.photos.predict_dir={photos}", f"--predictions.output_dir={out}"]) == 0
    assert f"wrote {len(PHOTOS)} prediction(s)" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert len(files) == len(PHOTOS)  # seven cleaned names collide in pairs and triples
    images = set()
    for file in files:
        file.name.encode("ascii")
        text = file.read_bytes().decode("utf-8")
        assert "\\ud" not in text.lower()  # no lone surrogate, not even escaped
        images.add(urllib.parse.unquote_to_bytes(json.loads(text)["image"]))
    assert images == expected


# ------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A one-step checkpoint of the network :data:`SMALL_RUN` describes."""
    root = tmp_path_factory.mktemp("fit")
    dm = SyntheticFaceDataModule(render=RENDER, batch_size=2, batches_per_epoch=1, val_size=0, test_size=2)
    model = InverseFaceNet(dm.renderer, backbone=BACKBONE)
    trainer = L.Trainer(default_root_dir=root, max_steps=1, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _refused(capsys, *args: str) -> str:
    """``ifn test`` with ``args`` must exit 2 with one ``ifn: error:`` line and no traceback."""
    capsys.readouterr()
    assert main(["test", *SMALL_RUN, *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ifn: error: ")]
    assert len(errors) == 1 and errors[0] == _last_line(err), err
    return errors[0].removeprefix("ifn: error: ")


def _weight_offset(data: bytes, checkpoint: Path) -> int:
    """Where the bytes of a weight tensor lie in the file (torch stores them uncompressed)."""
    weight = torch.load(checkpoint, weights_only=True)["state_dict"]["net.conv_stem.weight"]
    needle = weight.contiguous().numpy().tobytes()[:64]
    offset = data.find(needle)
    assert offset > 0 and data.count(needle) == 1
    return offset


def test_damaged_checkpoints_are_one_line_errors(checkpoint, tmp_path, capsys, monkeypatch):
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "random.ckpt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    flipped = tmp_path / "flipped.ckpt"
    damaged = bytearray(data)
    damaged[_weight_offset(data, checkpoint) + 21] ^= 0x04  # one bit of one weight
    flipped.write_bytes(bytes(damaged))

    assert _refused(capsys, f"--ckpt_path={tmp_path / 'nope.ckpt'}") == f"{tmp_path / 'nope.ckpt'}: checkpoint file not found"
    for bad in (truncated, garbage):
        message = _refused(capsys, f"--ckpt_path={bad}")
        assert message.startswith(f"{bad}: not a readable checkpoint, the file is truncated or damaged (")
    message = _refused(capsys, f"--ckpt_path={flipped}")
    assert message.startswith(f"{flipped}: weights do not match their recorded hash: the file is corrupt")
    # With the debug switch the same error is raised, with its traceback.
    monkeypatch.setenv("IFN_DEBUG", "1")
    with pytest.raises(UsageError, match="the file is corrupt"):
        main(["test", *SMALL_RUN, f"--ckpt_path={flipped}"])


def test_model_settings_that_differ_from_the_checkpoint_are_refused(checkpoint, capsys):
    # Lightning's CLI would load the checkpoint's hyperparameters over these and test a
    # mobilenet while the command line (and the saved config) said resnet18.
    message = _refused(capsys, f"--ckpt_path={checkpoint}", "--model.backbone=resnet18")
    assert message == (
        f"{checkpoint}: trained with model.backbone='{BACKBONE}' (this run: 'resnet18'); "
        "pass the checkpoint's values (or leave --ckpt_path out to start a new model)"
    )
    message = _refused(capsys, f"--ckpt_path={checkpoint}", "--model.rotation_weight=3", "--model.euclidean_loss=true")
    assert "model.rotation_weight=1.0 (this run: 3.0)" in message
    assert "model.euclidean_loss=False (this run: True)" in message
    # Settings that only choose the starting weights are not compared.
    capsys.readouterr()
    assert main(["validate", *SMALL_RUN, f"--ckpt_path={checkpoint}", "--model.pretrained=false",
                 "--trainer.logger=false"]) == 0
