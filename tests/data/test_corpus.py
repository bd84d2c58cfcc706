"""RealFaceCorpus: a folder of real photos → one masked crop per face, robust and cached."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ifn.data.corpus import RealFaceCorpus, list_images, split_files
from ifn.data.landmarks import MediapipeLandmarks
from ifn.data.photos import load_crop

MULTI_FACE = {"annotated68/breakingbad.jpg": 2, "misc/emma.jpg": 3, "misc/trump_hillary.jpg": 2}


@pytest.fixture(scope="module")
def corpus(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RealFaceCorpus:
    return RealFaceCorpus(faces_dir, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_list_images_is_recursive_case_insensitive_and_sorted(tmp_path: Path) -> None:
    for name in ["b/z.PNG", "a.jpg", "b/a.JpEg", "c/d/e.webp", "notes.txt", "x.pts", "y.TIFF", "b/w.pgm"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b/a.JpEg", "b/w.pgm", "b/z.PNG", "c/d/e.webp", "y.TIFF"]
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "a.jpg")


def test_shared_photos_detection_rate_and_multi_face(corpus: RealFaceCorpus, tmp_path: Path) -> None:
    summary = corpus.summary()
    assert summary["found_images"] == 41
    assert summary["images_with_faces"] >= 0.9 * summary["found_images"]
    assert summary["images_with_faces"] + summary["skipped_images"] == summary["found_images"]
    per_image = corpus.report()["faces_per_image"]
    for name, count in MULTI_FACE.items():
        assert per_image[name]["kept"] == count, name
    assert len(corpus) == summary["faces"] >= 41 - summary["skipped_images"] + 4
    report = json.loads(corpus.write_report(tmp_path / "report.json").read_text())
    assert report["summary"] == summary
    assert len(report["skipped"]) == summary["skipped_images"]  # everything else is in the report
    assert all(s["reason"] for s in report["skipped"])


def test_items_are_masked_framed_crops(corpus: RealFaceCorpus) -> None:
    for index in (0, len(corpus) // 2, len(corpus) - 1):
        item = corpus[index]
        image, mask, lm = item["image"], item["mask"], item["landmarks"]
        assert image.shape == (3, 240, 240) and image.dtype == torch.float32
        assert mask.shape == (1, 240, 240) and lm.shape == (68, 2)
        assert Path(item["path"]).is_file() and isinstance(item["face_index"], int)
        assert (image[:, mask[0] == 0] == 0).all()
        assert 0.2 < mask.mean() < 0.95
        assert lm.min() >= 0 and lm.max() <= 240
        lo, hi = lm.min(0).values, lm.max(0).values
        assert any(lo[a] < 1e-3 and hi[a] > 240 - 1e-3 for a in (0, 1))
    batch = next(iter(DataLoader(corpus, batch_size=4)))
    assert batch["image"].shape == (4, 3, 240, 240) and len(batch["path"]) == 4
    assert batch["face_index"].dtype == torch.int64
    clone = pickle.loads(pickle.dumps(corpus))  # what DataLoader workers receive
    assert torch.equal(clone[1]["image"], corpus[1]["image"])


def test_second_construction_hits_the_cache(corpus: RealFaceCorpus, faces_dir: Path) -> None:
    detector = MediapipeLandmarks()
    again = RealFaceCorpus(faces_dir, detector=detector, cache_dir=corpus.cache_dir, progress=False)
    assert detector.calls == 0 and detector._graphs == {}  # MediaPipe was not even started
    assert again.summary()["cache_hits"] == again.summary()["found_images"] - again.summary()["unreadable"]
    assert len(again) == len(corpus) and again.paths == corpus.paths
    assert torch.equal(again[3]["image"], corpus[3]["image"])
    cache_files = [p for p in corpus.cache_dir.rglob("*") if p.is_file()]
    assert len(cache_files) == 41 and all(p.suffix == ".npz" for p in cache_files)
    for path in cache_files:  # complete archives
        with np.load(path) as data:
            assert {"crops", "masks", "landmarks", "crop_landmarks", "reason"} <= set(data.files)
            assert data["crops"].shape[1:] == (3, 240, 240)


def test_filters_and_splits(corpus: RealFaceCorpus, faces_dir: Path) -> None:
    largest = RealFaceCorpus(faces_dir, cache_dir=corpus.cache_dir, largest_only=True, progress=False)
    s = largest.summary()
    assert len(largest) == s["images_with_faces"] and s["dropped_extra_faces"] == 4
    assert all(item.face_index == 0 for item in largest._items)
    huge = RealFaceCorpus(faces_dir / "misc", cache_dir=corpus.cache_dir, min_face_size=5000, progress=False)
    assert len(huge) == 0 and huge.summary()["too_small"] == 3
    assert {s["kind"] for s in huge.skipped()} == {"too_small"}
    # split by file: disjoint, complete, deterministic
    train, held = corpus.split(0.75, seed=3)
    assert set(train.files).isdisjoint(held.files) and sorted(train.files + held.files) == sorted(corpus.files)
    assert len(train) + len(held) == len(corpus)
    assert corpus.split(0.75, seed=3)[0].files == train.files
    assert corpus.split(0.75, seed=4)[0].files != train.files
    # an explicit list of files gives the same corpus, from the cache
    a, _ = split_files(list_images(faces_dir), 0.75, seed=3)
    explicit = RealFaceCorpus(files=a, cache_dir=corpus.cache_dir, progress=False)
    assert explicit.paths == train.paths and explicit.summary()["cache_misses"] == 0


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_bad_files_never_stop_the_corpus(faces_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    face = Image.open(faces_dir / "celeba-style" / "000002.jpg").convert("RGB")
    shutil.copy(faces_dir / "celeba-style" / "000006.jpg", root / "good.jpg")
    (root / "corrupt.jpg").write_bytes(bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8)))
    (root / "truncated.jpg").write_bytes(_jpeg(face)[:2000])
    (root / "text.jpg").write_text("not an image\n")
    face.convert("L").save(root / "nested" / "gray.png")
    buf = io.BytesIO()
    face.save(buf, format="PNG")
    (root / "nested" / "deeper" / "really_png.JPG").write_bytes(buf.getvalue())
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(root / "blank.bmp")
    (root / "notes.txt").write_text("ignored")
    corpus = RealFaceCorpus(root, cache_dir=tmp_path / "cache", progress=False)
    s = corpus.summary()
    assert s["found_images"] == 7 and s["ignored_files"] == 1
    assert s["images_with_faces"] == 3 and len(corpus) == 3  # good, gray, really_png
    skipped = {item["path"]: item for item in corpus.skipped()}
    assert set(skipped) == {"corrupt.jpg", "truncated.jpg", "text.jpg", "blank.bmp"}
    assert skipped["truncated.jpg"]["kind"] == "unreadable" and "truncated" in skipped["truncated.jpg"]["reason"]
    assert skipped["text.jpg"]["kind"] == "unreadable" and "not an image" in skipped["text.jpg"]["reason"]
    assert skipped["corrupt.jpg"]["kind"] == "unreadable"
    assert skipped["blank.bmp"] == {"path": "blank.bmp", "kind": "no_face", "reason": "no face detected"}
    gray = corpus[next(i for i, p in enumerate(corpus.paths) if p.endswith("gray.png"))]["image"]
    assert torch.equal(gray[0], gray[1])  # grayscale stays gray, as 3 channels
    report = json.loads(corpus.write_report(tmp_path / "r.json").read_text())
    assert report["skipped_by_kind"] == {"unreadable": 3, "no_face": 1}
    # the second construction detects nothing again (failures to read are simply re-checked)
    detector = MediapipeLandmarks()
    RealFaceCorpus(root, detector=detector, cache_dir=tmp_path / "cache", progress=False)
    assert detector.calls == 0


def test_constructor_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root folder or a list"):
        RealFaceCorpus()
    with pytest.raises(ValueError, match="min_face_size"):
        RealFaceCorpus(tmp_path, min_face_size=-1)
    empty = RealFaceCorpus(tmp_path, cache_dir=tmp_path / "c", progress=False)
    assert len(empty) == 0 and empty.summary()["found_images"] == 0


# ----------------------------------------------------------------------------- face selection


SIZES = (40.0, 120.0, 80.0, 30.0)  # out of order on purpose


@pytest.fixture()
def sized_photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "b").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for name in ("a.png", "b/c.png"):
        Image.fromarray(rng.integers(0, 255, (300, 320, 3), dtype=np.uint8)).save(root / name)
    return root


def _kept_sizes(corpus: RealFaceCorpus) -> list[tuple[str, int, float]]:
    """(file, face_index, face size) of every item; the size is read back from the crop's scale."""
    return [
        (Path(item.path).name, item.face_index, round(240.0 / load_crop(item.cache_file, item.face_index).scale, 6))
        for item in corpus._items
    ]


@pytest.mark.parametrize(
    ("largest_only", "min_face_size", "kept", "dropped"),
    [
        (False, 0.0, [0, 1, 2, 3], (0, 0)),
        (False, 50.0, [0, 1], (2, 0)),
        (False, 80.0, [0, 1], (2, 0)),  # a face exactly at the threshold is kept
        (True, 0.0, [0], (0, 3)),
        (True, 50.0, [0], (2, 1)),
    ],
)
def test_corpus_selects_faces_like_the_detector(
    sized_photos: Path,
    tmp_path: Path,
    stub_cls: type,
    largest_only: bool,
    min_face_size: float,
    kept: list[int],
    dropped: tuple[int, int],
) -> None:
    # the instance's own filters must not matter: the corpus's settings are applied
    detector = stub_cls(sizes=SIZES, largest_only=not largest_only, min_face_size=1000)
    corpus = RealFaceCorpus(
        sized_photos,
        detector=detector,
        cache_dir=tmp_path / "cache",
        largest_only=largest_only,
        min_face_size=min_face_size,
        progress=False,
    )
    by_size = sorted(SIZES, reverse=True)  # face_index numbers the faces largest first
    expected = [(name, k, by_size[k]) for name in ("a.png", "c.png") for k in kept]
    assert _kept_sizes(corpus) == expected
    assert [p.split("/")[-1] for p in corpus.paths] == [name for name, _, _ in expected]
    s = corpus.summary()
    assert (s["faces"], s["faces_detected"]) == (2 * len(kept), 2 * len(SIZES))
    assert (s["dropped_small_faces"], s["dropped_extra_faces"]) == (2 * dropped[0], 2 * dropped[1])
    assert corpus.report()["faces_per_image"]["b/c.png"] == {
        "kept": len(kept),
        "detected": len(SIZES),
        "dropped_small": dropped[0],
        "dropped_extra": dropped[1],
    }
    # one implementation: the same faces as the detector's own selection of a fresh detection
    image = np.asarray(Image.open(sized_photos / "a.png"))
    direct = detector.select(detector.detect_raw(image), largest_only=largest_only, min_face_size=min_face_size)
    assert [f.size for f in direct.faces] == pytest.approx([size for _, _, size in expected[: len(kept)]])


def test_corpus_all_faces_too_small(sized_photos: Path, tmp_path: Path, stub_cls: type) -> None:
    detector = stub_cls(sizes=SIZES)
    corpus = RealFaceCorpus(
        sized_photos, detector=detector, cache_dir=tmp_path / "c", min_face_size=500, progress=False
    )
    assert len(corpus) == 0 and detector.calls == 2
    assert corpus.skipped() == [
        {"path": name, "kind": "too_small", "reason": "4 face(s) smaller than min_face_size=500 px"}
        for name in ("a.png", "b/c.png")
    ]
    # selected again from the cache, with other settings: no detection, same faces
    again = RealFaceCorpus(sized_photos, detector=detector, cache_dir=tmp_path / "c", min_face_size=35, progress=False)
    assert detector.calls == 2 and again.summary()["cache_hits"] == 2
    expected = [(name, k, size) for name in ("a.png", "c.png") for k, size in enumerate((120.0, 80.0, 40.0))]
    assert _kept_sizes(again) == expected


def test_report_of_names_that_are_not_utf8_is_valid_utf8(tmp_path: Path, stub_cls: type) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    face = os.fsencode(root) + b"/caf\xe9.png"  # Latin-1: not valid UTF-8
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.fsdecode(face), format="PNG")
    broken = os.fsencode(root) + b"/bad\xff.jpg"
    Path(os.fsdecode(broken)).write_bytes(b"not an image")
    corpus = RealFaceCorpus(root, detector=stub_cls(), cache_dir=tmp_path / "cache", min_face_size=0, progress=False)
    assert len(corpus) == 1
    text = corpus.write_report(tmp_path / "report.json").read_bytes().decode("utf-8")  # strict
    assert "\\ud" not in text.lower()  # no lone surrogate escaped by json either
    report = json.loads(text)
    assert list(report["faces_per_image"]) == ["caf%E9.png"]
    assert [s["path"] for s in report["skipped"]] == ["bad%FF.jpg"]
    assert urllib.parse.unquote_to_bytes(report["root"] + "/" + report["skipped"][0]["path"]) == broken
    assert "unquote_to_bytes" in report["path_encoding"]
