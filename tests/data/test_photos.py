"""Reading photos by content, framing + masking a face crop, and the on-disk cache."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ifn.data.photos import (
    CACHE_VERSION,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    cache_key,
    crop_face,
    default_cache_dir,
    load_crop,
    preprocess_file,
    read_image,
    resolve_cache_dir,
)
from ifn.facemodel.regions import FACE_OUTLINE, MOUTH_INTERIOR, points_in_polygon


def _png_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _jpeg_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- reading


def test_png_named_jpg_is_read_by_content(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_png_bytes(rgb))
    np.testing.assert_array_equal(read_image(path), rgb)  # lossless: it really was decoded as PNG


def test_grayscale_rgba_and_16_bit_become_rgb_uint8(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[..., 0]
    out = read_image(_png_bytes(gray))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(_png_bytes(rgba)), rgb)
    wide = gray.astype(np.uint16) * 257
    np.testing.assert_array_equal(read_image(_png_bytes(wide)), np.repeat(gray[..., None], 3, axis=2))


def test_exif_orientation_is_applied(rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = read_image(_jpeg_bytes(rgb, exif=exif.tobytes()))
    assert out.shape == (64, 48, 3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda rgb: b"", "empty file"),
        (lambda rgb: b"this is a text file, not a picture\n" * 20, "not an image"),
        (lambda rgb: bytes(np.random.default_rng(1).integers(0, 255, 4000, dtype=np.uint8)), "not"),
        (lambda rgb: _jpeg_bytes(rgb)[:300], "truncated"),
        (lambda rgb: _png_bytes(rgb)[:200], "truncated|corrupt"),
        (lambda rgb: _jpeg_bytes(rgb)[:2] + b"\x00" * 500, "not|corrupt"),
    ],
    ids=["empty", "text", "random", "truncated-jpeg", "truncated-png", "corrupt-jpeg"],
)
def test_unreadable_files_raise_naming_the_file(
    tmp_path: Path, rgb: np.ndarray, make: Callable[[np.ndarray], bytes], match: str
) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(make(rgb))
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_missing_and_too_large(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(_png_bytes(rgb), max_pixels=1000)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header says ``width × height`` (8-bit RGB) and whose one
    IDAT chunk holds a single compressed row: a decompression bomb's header, no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_from_the_header_alone(tmp_path: Path) -> None:
    # 60 000 × 60 000 = 3.6e9 pixels, ten times the limit, in a file of 60 bytes.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_claiming(60_000, 60_000))
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageReadError, match="too large") as info:
        read_image(bomb)
    assert info.value.path == str(bomb)
    # Just above the limit given (not Pillow's own bomb limit): the header's numbers decide.
    small = tmp_path / "small.png"
    small.write_bytes(_png_header_claiming(1001, 1000))
    with pytest.raises(ImageReadError, match=r"1001x1000 > 1000000 pixels"):
        read_image(small, max_pixels=1_000_000)
    assert DEFAULT_MAX_PIXELS < 60_000 * 60_000


def test_dimensions_are_checked_before_the_file_is_read(tmp_path: Path) -> None:
    # The header claims too many pixels, and the file goes on (sparse, so nothing is written)
    # to 200 MB: reading it whole first would allocate those 200 MB.
    path = tmp_path / "bomb_with_tail.png"
    path.write_bytes(_png_header_claiming(60_000, 60_000))
    os.truncate(path, 200 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match="too large"):
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_a_file_above_the_byte_limit_is_refused_unread(tmp_path: Path, rgb: np.ndarray) -> None:
    # A sparse file one byte over the default limit: it takes no disk space and, if it were
    # read, a gigabyte of memory.
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(_jpeg_bytes(rgb))
    os.truncate(huge, DEFAULT_MAX_BYTES + 1)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=rf"file too large \({DEFAULT_MAX_BYTES + 1} bytes > {DEFAULT_MAX_BYTES} bytes\)"):
            read_image(huge)
        with pytest.raises(ImageReadError, match="file too large"):
            preprocess_file(huge, _NeverCalled(), cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak
    assert not (tmp_path / "cache").exists()
    # The limit is a parameter: the same photo passes under a larger one, fails under a smaller one.
    photo = tmp_path / "photo.png"
    photo.write_bytes(_png_bytes(rgb))
    np.testing.assert_array_equal(read_image(photo, max_bytes=photo.stat().st_size), rgb)
    with pytest.raises(ImageReadError, match="file too large"):
        read_image(photo, max_bytes=photo.stat().st_size - 1)
    with pytest.raises(ImageReadError, match="file too large"):
        read_image(_png_bytes(rgb), max_bytes=10)


class _NeverCalled:
    """A detector that fails the test if anything reaches it."""

    def settings(self) -> dict:
        raise AssertionError("the file was processed")

    def cache_extra(self, path: Path) -> bytes:
        raise AssertionError("the file was processed")


# ----------------------------------------------------------------------------- cropping


def _face_image(height: int, width: int, template: Callable[..., np.ndarray], size: float) -> tuple:
    rng = np.random.default_rng(3)
    image = rng.integers(30, 226, (height, width, 3), dtype=np.uint8)
    return image, template(width * 0.45, height * 0.55, size)


@pytest.mark.parametrize("size", [60.0, 300.0, 1500.0], ids=["upscale", "about-1", "downscale"])
def test_crop_framing_mask_and_black_background(template: Callable[..., np.ndarray], size: float) -> None:
    image, lm = _face_image(int(size * 1.6) + 20, int(size * 1.8) + 20, template, size)
    crop = crop_face(image, lm)
    assert crop.image.shape == (3, 240, 240) and crop.image.dtype == torch.float32
    assert crop.mask.shape == (1, 240, 240) and crop.landmarks.shape == (68, 2)
    pts = crop.landmarks.double()
    # uniform scale, centred, box touching two opposite sides of [0, 240]²
    assert pts.min() >= 0 and pts.max() <= 240
    lo, hi = pts.min(0).values, pts.max(0).values
    touches = [
        (lo[a].item() == pytest.approx(0, abs=1e-4)) and (hi[a].item() == pytest.approx(240, abs=1e-4)) for a in (0, 1)
    ]
    assert any(touches)
    assert ((lo + hi) / 2).numpy() == pytest.approx([120, 120], abs=1e-4)
    np.testing.assert_allclose(pts.numpy(), lm * crop.scale + np.array(crop.offset), atol=1e-4)
    np.testing.assert_allclose(crop.to_image(pts).numpy(), lm, atol=1e-4)
    # mask: pixel centres inside the jaw+brows outline and outside the inner lips
    ys, xs = torch.meshgrid(torch.arange(240) + 0.5, torch.arange(240) + 0.5, indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2).double()
    outline = points_in_polygon(centres, pts[list(FACE_OUTLINE)]).reshape(240, 240)
    mouth = points_in_polygon(centres, pts[list(MOUTH_INTERIOR)]).reshape(240, 240)
    mask = crop.mask[0] > 0.5
    assert not mask[~outline].any()
    assert not mask[mouth].any()
    assert mouth.sum() > 20  # the template's mouth is open: the test means something
    assert (mask == (outline & ~mouth)).float().mean() > 0.999
    # background (and mouth interior) exactly 0, the face itself is not
    assert (crop.image[:, ~mask] == 0).all()
    assert (crop.image[:, mask] > 0).float().mean() > 0.99
    assert crop.image.min() >= 0 and crop.image.max() <= 1


def test_crop_samples_pixel_centres_exactly(template: Callable[..., np.ndarray]) -> None:
    """A horizontal ramp (value = column index) checks the half-pixel convention of the warp."""
    width = 256
    ramp = np.tile(np.arange(width, dtype=np.uint8)[None, :, None], (200, 1, 3))
    lm = template(128.0, 100.0, 80.0)
    crop = crop_face(ramp, lm)
    j = torch.arange(240, dtype=torch.float64) + 0.5
    x_src = (j - crop.offset[0]) / crop.scale  # continuous source x of each crop column centre
    expected = (x_src - 0.5) / 255.0  # the ramp's value at continuous x is x − 0.5
    row = crop.image[0, 120].double()
    inside = crop.mask[0, 120] > 0
    np.testing.assert_allclose(row[inside].numpy(), expected[inside].numpy(), atol=1e-4)


def test_strong_downscaling_is_antialiased(template: Callable[..., np.ndarray]) -> None:
    checker = ((np.indices((1400, 1400)).sum(0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    crop = crop_face(image, template(700.0, 700.0, 1200.0))
    assert crop.scale < 0.25
    values = crop.image[0][crop.mask[0] > 0]
    assert abs(values.mean().item() - 0.5) < 0.02 and values.std().item() < 0.05


def test_crop_out_of_image_parts_are_masked(template: Callable[..., np.ndarray]) -> None:
    image = np.full((200, 200, 3), 200, np.uint8)
    crop = crop_face(image, template(20.0, 100.0, 120.0))  # face half outside the left edge
    assert (crop.landmarks[:, 0] >= 0).all()
    left = crop.mask[0, :, : int(crop.offset[0])]
    assert left.sum() == 0  # columns left of the image's edge x = 0
    inside = crop.image[:, crop.mask[0] > 0]
    assert inside.numel() > 0
    np.testing.assert_allclose(inside.numpy(), 200 / 255, atol=1e-6)  # no dark border bleeding in


def test_crop_input_checks(template: Callable[..., np.ndarray]) -> None:
    lm = template(50.0, 50.0, 40.0)
    with pytest.raises(ValueError, match=r"\(100, 100\)"):
        crop_face(np.zeros((100, 100), np.uint8), lm)
    with pytest.raises(ValueError, match="float32"):
        crop_face(np.zeros((100, 100, 3), np.float32), lm)
    with pytest.raises(TypeError, match="numpy array"):
        crop_face(np.zeros((100, 100, 3), np.uint8).tolist(), lm)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        crop_face(np.zeros((100, 100, 3), np.uint8), lm[:5])
    bad = lm.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        crop_face(np.zeros((100, 100, 3), np.uint8), bad)


def test_custom_size_and_margin(template: Callable[..., np.ndarray]) -> None:
    image, lm = _face_image(300, 300, template, 150.0)
    crop = crop_face(image, lm, image_size=128, margin=8)
    assert crop.image.shape == (3, 128, 128)
    lo, hi = crop.landmarks.min(0).values, crop.landmarks.max(0).values
    assert min(lo.min().item(), 128 - hi.max().item()) == pytest.approx(8, abs=1e-3)


# ----------------------------------------------------------------------------- cache


def test_cache_is_content_keyed_complete_and_atomic(tmp_path: Path, stub_cls: type, rgb: np.ndarray) -> None:
    image = np.random.default_rng(5).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    first = tmp_path / "a.png"
    first.write_bytes(_png_bytes(image))
    cache = tmp_path / "cache"
    det = stub_cls(faces_per_image=2)
    miss = preprocess_file(first, det, cache_dir=cache)
    assert not miss.cached and det.calls == 1 and len(miss.faces) == 2
    hit = preprocess_file(first, det, cache_dir=cache)
    assert hit.cached and det.calls == 1 and hit.cache_file == miss.cache_file
    np.testing.assert_array_equal(hit.faces[1].landmarks, miss.faces[1].landmarks)
    # the same bytes under another name (and extension) hit the same entry
    twin = tmp_path / "sub" / "b.JPG"
    twin.parent.mkdir()
    twin.write_bytes(first.read_bytes())
    assert preprocess_file(twin, det, cache_dir=cache).cached and det.calls == 1
    # other settings are other entries
    assert not preprocess_file(first, det, cache_dir=cache, image_size=120).cached
    assert not preprocess_file(first, stub_cls(faces_per_image=1), cache_dir=cache).cached
    files = sorted(cache.rglob("*"))
    npz = [f for f in files if f.is_file()]
    assert len(npz) == 3 and all(f.suffix == ".npz" for f in npz)  # no temp files left
    with np.load(miss.cache_file) as data:
        assert int(data["version"]) == CACHE_VERSION
        assert data["crops"].shape == (2, 3, 240, 240) and data["crops"].dtype == np.uint8
        assert data["masks"].shape == (2, 240, 240) and data["landmarks"].shape == (2, 68, 2)
    crop = load_crop(miss.cache_file, 1)
    direct = crop_face(image, miss.faces[1].landmarks)
    assert (crop.mask == direct.mask).all()
    assert (crop.image - direct.image).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(IndexError):
        load_crop(miss.cache_file, 2)


def test_broken_cache_file_is_recomputed(tmp_path: Path, stub_cls: type) -> None:
    image = np.random.default_rng(6).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    path.write_bytes(_png_bytes(image))
    det = stub_cls()
    first = preprocess_file(path, det, cache_dir=tmp_path / "c")
    first.cache_file.write_bytes(first.cache_file.read_bytes()[:100])  # e.g. a killed writer of old
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_crop(first.cache_file, 0)
    again = preprocess_file(path, det, cache_dir=tmp_path / "c")
    assert not again.cached and det.calls == 2
    assert load_crop(again.cache_file, 0).image.shape == (3, 240, 240)


def test_no_face_is_cached_too_and_unreadable_is_not(tmp_path: Path, stub_cls: type) -> None:
    flat = tmp_path / "flat.png"
    flat.write_bytes(_png_bytes(np.full((100, 100, 3), 90, np.uint8)))
    det = stub_cls()
    result = preprocess_file(flat, det, cache_dir=tmp_path / "c")
    assert result.faces == [] and result.reason == "no face detected"
    assert preprocess_file(flat, det, cache_dir=tmp_path / "c").cached and det.calls == 1
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    with pytest.raises(ImageReadError, match="text.jpg"):
        preprocess_file(text, det, cache_dir=tmp_path / "c")
    assert not any(p.name.startswith("text") for p in (tmp_path / "c").rglob("*"))


def test_default_cache_dir_and_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IFN_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("IFN_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "ifn" / "real_faces"
    assert resolve_cache_dir() == resolve_cache_dir(None) == default_cache_dir()
    assert resolve_cache_dir("~/faces") == Path.home() / "faces"
    assert resolve_cache_dir(tmp_path) == tmp_path
    assert cache_key(b"a", {"s": 1}) == cache_key(b"a", {"s": 1})
    assert len({cache_key(b"a", {"s": 1}), cache_key(b"b", {"s": 1}), cache_key(b"a", {"s": 2})}) == 3
