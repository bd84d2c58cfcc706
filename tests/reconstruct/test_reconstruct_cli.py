"""``ifn reconstruct`` end to end on a tiny checkpoint: every photo accounted for, every file written.

The corpus mixes real development photos (one face, two faces side by side) with bad inputs:
truncated, zero-byte, text named .jpg, CMYK, 16-bit, a PNG declaring a huge size, no face,
a folder named like an image, a broken symlink and a non-image file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageOps

from ifn.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL_RUN = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.backbone=mobilenetv3_small_050",
    "--data.render.face_model=procedural", "--data.render.image_size=32", "--data.render.n_shape=3",
    "--data.render.n_expression=2", "--data.render.n_reflectance=3", "--data.batch_size=4",
    "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4", "--data.render.backend=torch",
]  # fmt: skip
FACE_FILES = ["theta.json", "face_albedo.ply", "face_albedo.obj", "face_shaded.ply", "face_shaded.obj",
              "neutral.ply", "neutral.obj", "overlay.png", "sheet.png", "relit_left.png", "albedo_from_lenna.png"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    assert main(["fit", "--config", str(QUICKSTART), *SMALL_RUN, f"--trainer.default_root_dir={root}",
                 "--trainer.max_steps=2"]) == 0  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


def _corpus(folder: Path, faces: Path) -> dict[str, str]:
    """Write the corpus; returns ``{relative path: expected status}``."""
    folder.mkdir()
    lenna = Image.open(faces / "annotated68" / "lenna.png").convert("RGB")
    lenna.save(folder / "one_face.png")
    pair = Image.new("RGB", (lenna.width * 2, lenna.height))
    pair.paste(lenna, (0, 0))
    pair.paste(ImageOps.mirror(lenna), (lenna.width, 0))
    pair.save(folder / "two_faces.jpg", quality=92)
    lenna.convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = (np.asarray(lenna.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen_bit.png")
    data = (folder / "two_faces.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    # A valid PNG signature and header declaring 60000 × 60000 pixels (no pixel data).
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(folder / "noise.png")
    (folder / "folder.jpg").mkdir()
    os.symlink(folder / "missing.jpg", folder / "broken_link.jpg")
    (folder / "notes.txt").write_text("not a photo")
    return {
        "one_face.png": "reconstructed", "two_faces.jpg": "reconstructed", "cmyk.jpg": "reconstructed",
        "sixteen_bit.png": "reconstructed", "truncated.jpg": "skipped", "zero.jpg": "skipped", "text.jpg": "skipped",
        "huge.png": "skipped", "noise.png": "skipped", "folder.jpg": "ignored", "broken_link.jpg": "skipped",
        "notes.txt": "ignored",
    }  # fmt: skip


def test_reconstruct_accounts_for_every_path_and_writes_every_file(tmp_path, checkpoint, shared_data, capsys):
    expected = _corpus(tmp_path / "photos", shared_data / "faces")
    out = tmp_path / "out"
    args = ["reconstruct", str(tmp_path / "photos"), "--ckpt_path", str(checkpoint), "--out", str(out),
            "--refine", "2", "--relight", "left", "--albedo-from", str(shared_data / "faces" / "annotated68" / "lenna.png"),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["status"] == "done"
    listed = {Path(e["path"]).relative_to(tmp_path / "photos").as_posix(): e for e in index["paths"]}
    assert len(listed) == len(index["paths"])  # each path exactly once
    assert {k: e["status"] for k, e in listed.items()} == expected
    assert all(e["reason"] for e in listed.values() if e["status"] != "reconstructed")
    assert len(listed["two_faces.jpg"]["faces"]) == 2
    names = [f["name"] for f in index["faces"]]
    assert len(names) == len(set(names)) == sum(len(e["faces"]) for e in listed.values())
    vertices = None
    for face in index["faces"]:
        folder = out / face["name"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(FACE_FILES), face["name"]
        photo = Image.open(tmp_path / "photos" / Path(face["photo"]).name)
        assert Image.open(folder / "overlay.png").size == photo.size
        for mesh_file in ("face_albedo.ply", "face_shaded.obj", "neutral.obj"):
            # maintain_order: trimesh's OBJ reader otherwise drops vertices no triangle uses
            mesh = trimesh.load(folder / mesh_file, process=False, maintain_order=True)
            vertices = vertices or len(mesh.vertices)
            assert len(mesh.vertices) == vertices == 7444  # the procedural model's vertex count
        assert face["photometric_error"] <= face["network_photometric_error"] + 1e-6
        assert face["iou"] >= face["network_iou"] - 1e-6
        theta = json.loads((folder / "theta.json").read_text())
        assert theta["face_model"]["name"] == "procedural" and len(theta["theta"]["illumination_sh_rgb"]) == 9
    csv_rows = (out / "index.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(names) + sum(e["status"] != "reconstructed" for e in listed.values())
    assert "<table>" in (out / "index.html").read_text()
    # A second run into the same folder is refused before any work; --overwrite allows it.
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifn: error:") and "earlier run" in err and len(err.splitlines()) == 1


def test_reconstruct_misuse_is_a_one_line_error(tmp_path, checkpoint, capsys):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    for extra, needle in (
        (["--ckpt_path", str(tmp_path / "missing.ckpt")], "missing.ckpt"),
        (["--ckpt_path", str(checkpoint), "--relight", "sunsett"], "not a preset"),
        (["--ckpt_path", str(checkpoint), "--albedo-from", str(tmp_path / "nope.jpg")], "nope.jpg"),
        (["--ckpt_path", str(checkpoint), "--refine", "-1"], "--refine"),
    ):
        capsys.readouterr()
        assert main(["reconstruct", str(photo), "--out", str(tmp_path / "o"), "--no-progress", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_reconstruct_reads_every_nth_frame_of_a_video(tmp_path, checkpoint, shared_data):
    import cv2

    frame = np.asarray(Image.open(shared_data / "faces" / "annotated68" / "lenna.png").convert("RGB"))[..., ::-1]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for _ in range(5):
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    out = tmp_path / "out"
    assert main(["reconstruct", str(video), "--ckpt_path", str(checkpoint), "--out", str(out), "--every", "2",
                 "--mesh-format", "ply", "--no-progress"]) == 0  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert [e["path"].rsplit("#", 1)[1] for e in index["paths"]] == ["frame0", "frame2", "frame4"]
    assert all(e["status"] == "reconstructed" for e in index["paths"])
    assert sorted(f["name"] for f in index["faces"]) == ["clip_f000000", "clip_f000002", "clip_f000004"]
    assert (out / "clip_f000002" / "face_albedo.ply").is_file() and not (out / "clip_f000002" / "neutral.obj").exists()
