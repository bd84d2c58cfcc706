"""Nothing lost, nothing silent: a folder of 28 kinds of bad input goes through the photo
corpus, ``ifn predict``, ``ifn test --data.photos.test_dir`` and a short breeding fit, and
every path in it is accounted for exactly once, every result is written under a distinct
name, and no run replaces an earlier run's outputs.

Faces come from ``.pts`` files beside the images (the ``annotation`` detector), so no
detector model runs; ``many_faces.jpg`` gets three faces from a patched annotation reader.
The expected outcome of every path is written down by hand in :func:`_bad_corpus`, not
derived from the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import sys
import urllib.parse
import zlib
from pathlib import Path

import lightning  # noqa: F401 - imported first: its log handler then writes to the real stderr
import numpy as np
import pytest
from PIL import Image

from ifn.callbacks.outputs import candidate_names, fresh_directory, write_new, write_new_json
from ifn.callbacks.test_metrics import TestMetricsWriter
from ifn.cli import main
from ifn.data.corpus import RealFaceCorpus
from ifn.data.landmarks import Face, landmark_box
from ifn.data.landmarks.annotation import AnnotationLandmarks

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
BREEDING = REPO / "configs" / "quickstart_breeding.yaml"
SMALL_RUN = [
    "--config", str(QUICKSTART),
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.backbone=mobilenetv3_small_050",
    "--data.render.face_model=procedural", "--data.render.image_size=32", "--data.render.n_shape=3",
    "--data.render.n_expression=2", "--data.render.n_reflectance=3", "--data.batch_size=4",
    "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4", "--data.render.backend=torch",
    "--data.photos.detector=annotation",
]  # fmt: skip
#: Every face: an ellipse of landmarks centred at (40, 40), 44 px across (min_face_size is 40).
_T = np.linspace(0.0, 2.0 * np.pi, 68, endpoint=False)
LANDMARKS = np.stack([40 + 22 * np.cos(_T), 40 + 22 * np.sin(_T)], axis=1)
MANY = 3


@pytest.fixture(autouse=True)
def _argv_and_cwd(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["ifn"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IFN_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _many_faces(monkeypatch):
    """``many_faces.*`` holds :data:`MANY` faces: the annotation's face, shifted sideways."""
    original = AnnotationLandmarks._detect

    def detect(self, image, path):
        detection = original(self, image, path)
        if path is None or not Path(path).name.startswith("many_faces") or not detection.faces:
            return detection
        face = detection.faces[0]
        shifted = [face.landmarks + np.array([6.0 * k, 0.0]) for k in range(1, MANY)]
        faces = [face] + [Face(lm, landmark_box(lm), face.score, face.source) for lm in shifted]
        return type(detection)(faces=faces, reason=None)

    monkeypatch.setattr(AnnotationLandmarks, "_detect", detect)


# ------------------------------------------------------------------------------ the corpus


def _pts(path: Path, landmarks: np.ndarray = LANDMARKS) -> None:
    body = "\n".join(f"{x + 0.5:.3f} {y + 0.5:.3f}" for x, y in landmarks)  # .pts: 1-based pixel centres
    path.write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")


def _noise(size: tuple[int, int] = (96, 96), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes | None) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    chunks = _png_chunk(b"IHDR", header) + (_png_chunk(b"IDAT", idat) if idat is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b"")


def _bomb(side: int = 16_000) -> bytes:
    """A valid PNG of ``side²`` black pixels (256 M at 16 000), a few hundred kB compressed."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    return _png(side, side, b"".join(parts) + compressor.flush())


def _save(path: Path, image: Image.Image, annotate: bool = True, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    if annotate:
        _pts(path.with_suffix(".pts"))
    return path


def _bad_corpus(root: Path, bomb: bytes) -> dict[bytes, tuple[str, int]]:
    """Build the folder; returns ``{path bytes below root: (status, faces)}`` for every path
    that must be in a report: ``used`` with its face count, ``skipped`` or ``ignored``."""
    rgb = Image.fromarray(_noise())
    expected: dict[bytes, tuple[str, int]] = {}

    def used(name: str, faces: int = 1) -> None:
        expected[name.encode()] = ("used", faces)
        expected[os.fsencode(Path(name).with_suffix(".pts").as_posix())] = ("ignored", 0)

    root.mkdir(parents=True)
    _save(root / "good.jpg", rgb, format="JPEG"); used("good.jpg")  # noqa: E702
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    _pts(root / "truncated.pts")
    expected[b"truncated.jpg"], expected[b"truncated.pts"] = ("skipped", 0), ("ignored", 0)
    (root / "zero.jpg").write_bytes(b"")
    expected[b"zero.jpg"] = ("skipped", 0)
    (root / "text.jpg").write_text("this is not an image\n")
    expected[b"text.jpg"] = ("skipped", 0)
    _save(root / "cmyk.jpg", rgb.convert("CMYK"), format="JPEG"); used("cmyk.jpg")  # noqa: E702
    deep = Image.fromarray(_noise()[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale
    _save(root / "deep16.png", deep, format="PNG"); used("deep16.png")  # noqa: E702
    rgba = Image.fromarray(np.dstack([_noise(), np.full((96, 96), 128, np.uint8)]))  # RGBA
    _save(root / "rgba.png", rgba, format="PNG"); used("rgba.png")  # noqa: E702
    _save(root / "palette.png", rgb.convert("P"), format="PNG"); used("palette.png")  # noqa: E702
    _save(root / "gray.pgm", rgb.convert("L"), format="PPM"); used("gray.pgm")  # noqa: E702
    _save(root / "one_pixel.png", Image.new("RGB", (1, 1)), annotate=False, format="PNG")
    expected[b"one_pixel.png"] = ("skipped", 0)  # no annotation: no face
    with open(root / "huge.jpg", "wb") as handle:  # 2 GiB declared, no bytes on disk (sparse)
        handle.truncate(2 << 30)
    expected[b"huge.jpg"] = ("skipped", 0)
    (root / "huge_header.png").write_bytes(_png(100_000, 100_000, None))  # claims 10^10 pixels
    expected[b"huge_header.png"] = ("skipped", 0)
    (root / "bomb.png").write_bytes(bomb)
    expected[b"bomb.png"] = ("skipped", 0)
    frames = [Image.fromarray(_noise(seed=k)) for k in range(3)]
    _save(root / "animated.gif", frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=100)
    used("animated.gif")
    _save(root / "photo.webp", rgb, format="WEBP"); used("photo.webp")  # noqa: E702
    _save(root / "photo.tiff", rgb, format="TIFF"); used("photo.tiff")  # noqa: E702
    _save(root / "no_face.jpg", rgb, annotate=False, format="JPEG")
    expected[b"no_face.jpg"] = ("skipped", 0)
    # Its own pixels: the cache is keyed by content, and good.jpg's cached detection has one face.
    _save(root / "many_faces.jpg", Image.fromarray(_noise(seed=5)), format="JPEG"); used("many_faces.jpg", MANY)  # noqa: E702
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    _save(root / "exif_rotated.jpg", Image.fromarray(_noise((96, 64))), format="JPEG", exif=exif.tobytes())
    used("exif_rotated.jpg")
    latin1 = os.fsencode(root) + b"/caf\xe9.jpg"
    _save(Path(os.fsdecode(latin1)), rgb, format="JPEG")
    expected[b"caf\xe9.jpg"], expected[b"caf\xe9.pts"] = ("used", 1), ("ignored", 0)
    for name in ("a b.jpg", "a+b.jpg", "a__b.jpg", "sub/a.jpg", "sub__a.jpg", ".hidden.jpg", "_hidden.jpg"):
        _save(root / name, rgb, format="JPEG")
        used(name)
    _save(root / "x.jpg" / "inside.png", rgb, format="PNG"); used("x.jpg/inside.png")  # noqa: E702
    expected[b"x.jpg"] = ("ignored", 0)  # a directory named like a photo
    os.symlink(root, root / "sub" / "loop")
    expected[b"sub/loop"] = ("skipped", 0)
    os.symlink("self.jpg", root / "self.jpg")
    expected[b"self.jpg"] = ("skipped", 0)
    os.symlink(root / "gone.jpg", root / "broken.jpg")
    expected[b"broken.jpg"] = ("skipped", 0)
    outside = root.parent / f"{root.name}_outside"
    for k in range(2):
        _save(outside / f"o{k}.jpg", Image.fromarray(_noise(seed=10 + k)), format="JPEG")
    os.symlink(outside, root / "linked")
    for k in range(2):
        used(f"linked/o{k}.jpg")
    os.symlink(root / "good.jpg", root / "z_again.jpg")
    expected[b"z_again.jpg"] = ("ignored", 0)  # a second path to good.jpg
    (root / "notes.txt").write_text("not a photo\n")
    expected[b"notes.txt"] = ("ignored", 0)
    return expected


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _bomb()


@pytest.fixture()
def bad(tmp_path, bomb) -> tuple[Path, dict[bytes, tuple[str, int]]]:
    root = tmp_path / "bad"
    return root, _bad_corpus(root, bomb)


def _kinds(expected: dict[bytes, tuple[str, int]]) -> int:
    return len([name for name in expected if not name.endswith(b".pts")])


def _entries(report: dict) -> dict[bytes, dict]:
    names = [urllib.parse.unquote_to_bytes(entry["path"]) for entry in report["entries"]]
    assert len(names) == len(set(names)), "a path is in the report twice"
    return dict(zip(names, report["entries"], strict=True))


def _check_report(report: dict, expected: dict[bytes, tuple[str, int]]) -> None:
    entries = _entries(report)
    assert set(entries) == set(expected)
    got = {name: (entry["status"], entry["faces"]) for name, entry in entries.items()}
    assert got == expected
    assert all(entry["reason"] for entry in entries.values() if entry["status"] != "used")


# ------------------------------------------------------------------------------ fast: the corpus


def test_bad_corpus_every_path_once_in_the_report(bad, tmp_path):
    root, expected = bad
    assert _kinds(expected) >= 20
    corpus = RealFaceCorpus(root, detector="annotation", cache_dir=tmp_path / "cache", image_size=32, progress=False)
    report = json.loads(corpus.write_report(tmp_path / "report.json").read_bytes().decode("utf-8"))
    _check_report(report, expected)
    entries = _entries(report)
    assert entries[b"animated.gif"]["reason"] == "animated GIF: first frame used"
    assert "too large" in entries[b"huge.jpg"]["reason"] and "too large" in entries[b"bomb.png"]["reason"]
    assert "too large" in entries[b"huge_header.png"]["reason"]
    assert "directory" in entries[b"x.jpg"]["reason"] and "loop" in entries[b"sub/loop"]["reason"]
    assert "broken symbolic link" in entries[b"broken.jpg"]["reason"]
    assert len(corpus) == sum(faces for _, faces in expected.values())
    line = corpus.summary_line()
    used = sum(1 for status, _ in expected.values() if status == "used")
    assert f"{len(expected)} path(s): {used} used ({len(corpus)} face(s))" in line


# ------------------------------------------------------------------------------ the commands


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def _report_of(out: str, role: str) -> Path:
    line = next(line for line in out.splitlines() if line.startswith(f"[ifn] photos ({role}): "))
    return Path(line.rsplit("(report: ", 1)[1].rstrip(")"))


def test_bad_corpus_through_predict_test_and_breeding(bad, tmp_path, capsys, tiny_breeding_run):
    root, expected = bad
    faces = sum(n for _, n in expected.values())
    common = [*SMALL_RUN, f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.photos.cache_dir={tmp_path / 'c'}"]

    capsys.readouterr()
    out_dir = tmp_path / "predictions"
    assert main(["predict", *common, f"--data.photos.predict_dir={root}", f"--predictions.output_dir={out_dir}"]) == 0
    out = capsys.readouterr().out
    _check_report(json.loads(_report_of(out, "predict").read_text()), expected)
    assert f"wrote {faces} prediction(s)" in out
    files = list(out_dir.iterdir())
    assert len(files) == faces == len({f.name for f in files})
    images = {(urllib.parse.unquote_to_bytes(json.loads(f.read_text())["image"]), json.loads(f.read_text())["face_index"])
              for f in files}
    assert len(images) == faces  # every (photo, face) once

    assert main(["test", *common, f"--data.photos.test_dir={root}"]) == 0
    out = capsys.readouterr().out
    _check_report(json.loads(_report_of(out, "test").read_text()), expected)
    metrics = Path(_last_line(out))
    assert metrics.name == "test_metrics.json" and math.isfinite(json.loads(metrics.read_text())["test/real_iou"])
    rows = list(csv.DictReader(io.StringIO((metrics.parent / "test_real_per_image.csv").read_text())))
    assert len(rows) == faces == len({(r["path"], r["face_index"]) for r in rows})

    breeding = ["fit", "--config", str(QUICKSTART), "--config", str(BREEDING), *tiny_breeding_run,
                "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'breed'}",
                f"--data.photos.train_dir={root}"]
    assert main(breeding) == 0
    out = capsys.readouterr().out
    _check_report(json.loads(_report_of(out, "train").read_text()), expected)
    assert (tmp_path / "breed" / "checkpoints" / "last.ckpt").is_file()


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_outputs(bad, tmp_path, capsys):
    """Without a logger every run writes into ``default_root_dir``: the second ``predict``
    and ``test`` take the next free names, and the first run's files stay as they were."""
    root, expected = bad
    faces = sum(n for _, n in expected.values())
    run = tmp_path / "run"
    common = [*SMALL_RUN, f"--trainer.default_root_dir={run}", f"--data.photos.cache_dir={tmp_path / 'c'}",
              "--trainer.logger=false"]
    capsys.readouterr()
    for k, suffix in enumerate(("", ".2")):
        assert main(["predict", *common, f"--data.photos.predict_dir={root}"]) == 0
        assert _report_of(capsys.readouterr().out, "predict") == run / f"photos_predict{suffix}.json"
        assert len(list((run / f"predictions{suffix}").iterdir())) == faces
        assert len(list(run.glob("predictions*"))) == k + 1
    first = (run / "predictions").stat().st_mtime_ns, sorted(p.name for p in (run / "predictions").iterdir())
    for suffix in ("", ".2"):
        assert main(["test", *common, f"--data.photos.test_dir={root}"]) == 0
        out = capsys.readouterr().out
        assert Path(_last_line(out)) == run / f"test_metrics{suffix}.json"
        assert (run / f"test_real_per_image{suffix}.csv").is_file()
        assert _report_of(out, "test") == run / f"photos_test{suffix}.json"
    assert first == ((run / "predictions").stat().st_mtime_ns, sorted(p.name for p in (run / "predictions").iterdir()))


# ------------------------------------------------------------------------------ outputs


def test_outputs_take_the_next_free_name(tmp_path):
    assert [p.name for p, _ in zip(candidate_names(tmp_path / "m.json"), range(3), strict=False)] == [
        "m.json", "m.2.json", "m.3.json"]
    first = write_new_json(tmp_path / "m.json", {"a": 1})
    second = write_new_json(tmp_path / "m.json", {"a": 2})
    assert (first.name, second.name) == ("m.json", "m.2.json")
    assert json.loads(first.read_text()) == {"a": 1} and json.loads(second.read_text()) == {"a": 2}
    assert write_new(tmp_path / "m.json", b"x", overwrite=True) == tmp_path / "m.json"
    assert (tmp_path / "m.json").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.2.json", "m.json"]  # no temporary file left
    out = fresh_directory(tmp_path / "p")
    (out / "f").write_text("earlier run")
    assert fresh_directory(tmp_path / "p") == tmp_path / "p.2"
    assert fresh_directory(tmp_path / "p", overwrite=True) == tmp_path / "p"
    assert fresh_directory(tmp_path / "p.2") == tmp_path / "p.2"  # empty: nothing to keep


def test_test_metrics_of_a_second_run_do_not_replace_the_first(tmp_path):
    from types import SimpleNamespace

    import torch

    def trainer(value):
        return SimpleNamespace(callback_metrics={"test/iou": torch.tensor(value)}, log_dir=str(tmp_path),
                               default_root_dir=str(tmp_path), is_global_zero=True, world_size=1)

    rows = [{"path": "a.jpg", "face_index": 0, "photometric_error": 1.0, "iou": 2.0}]
    module = SimpleNamespace(evaluators={"test": SimpleNamespace(real_rows=rows)})
    first, second = TestMetricsWriter(), TestMetricsWriter()
    first.on_test_end(trainer(1.0), module)
    second.on_test_end(trainer(2.0), module)
    assert (first.path.name, second.path.name) == ("test_metrics.json", "test_metrics.2.json")
    assert json.loads(first.path.read_text()) == {"test/iou": 1.0}
    assert json.loads(second.path.read_text()) == {"test/iou": 2.0}
    assert second.per_image_path.name == "test_real_per_image.2.csv"
