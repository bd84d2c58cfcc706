"""Real photographs → masked 240×240 face crops, the network's input pre-processing.

For each face: the bounding box of its 68 landmarks is scaled uniformly into the crop and
centred (:func:`ifn.render.camera.framing_transform`, the same rule the renderer frames
synthetic faces with, so real and rendered crops match), the image is warped accordingly
(bilinear, Gaussian pre-filter when downscaling), and everything outside
:func:`ifn.facemodel.regions.face_region_mask` (jaw + brows outline minus the inner-lip
polygon) is set to exactly 0. The network's input shift
``x − 0.5`` is *not* applied here.

Per image, the detections and crops are cached on disk (``.npz``, written atomically) under
a key made of the SHA-256 of the file's *content* and every setting that changes the result
(detector name and options, crop size, margin), so a corpus is detected once.

Convention:
    Continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``; a crop
    point is ``p_crop = scale · p_image + offset``. Images are read by content (not by
    extension), EXIF orientation applied, converted to ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ifn.data.landmarks import Face, LandmarkDetector, check_rgb_image
from ifn.facemodel.regions import NUM_LANDMARKS, face_region_mask
from ifn.io import atomic_write
from ifn.render.camera import apply_framing, framing_transform

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FaceCrop",
    "ImageReadError",
    "ProcessedImage",
    "cache_key",
    "check_image_file",
    "crop_face",
    "default_cache_dir",
    "load_crop",
    "preprocess_file",
    "read_image",
    "resolve_cache_dir",
]

#: Bump when the crop or cache layout changes: old cache files are then ignored.
CACHE_VERSION = 1
#: Images with more pixels are refused by :func:`read_image` (≈ 3 GB as float32 RGB).
DEFAULT_MAX_PIXELS = 250_000_000
#: Files larger than this are refused by :func:`read_image` before any byte is read: a photo
#: is far smaller, and a multi-GB file named ``.jpg`` would otherwise be read into memory whole.
DEFAULT_MAX_BYTES = 1 << 30
_CACHE_ENV = "IFN_CACHE_DIR"
#: What reading a damaged or foreign ``.npz`` can raise: such a cache file counts as absent.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError)


class ImageReadError(OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large).

    Attributes:
        path: the file (or ``"<bytes>"``).
        reason: a short human-readable cause.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _read_bytes(path: str | os.PathLike[str], label: str | os.PathLike[str] | None = None) -> bytes:
    """The file's content; an :class:`ImageReadError` naming ``label`` (default the path) if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(
            label if label is not None else path, f"cannot read file ({exc.strerror or exc})"
        ) from None


def check_image_file(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a file that is too large from its size and its header, before reading it whole.

    The size comes from ``stat`` and the dimensions from Pillow's lazy ``Image.open``, which
    reads the header only, so a multi-GB file or a small file whose header claims absurd
    dimensions (a decompression bomb) costs no memory. A file Pillow cannot identify passes:
    decoding it decides (and names the problem).

    Args:
        path: the image file.
        max_pixels: refuse more pixels than this.
        max_bytes: refuse a larger file.
        label: the name in error messages (default the path).

    Raises:
        ImageReadError: the file cannot be stat'ed, is larger than ``max_bytes`` or its
            header claims more than ``max_pixels`` pixels.
    """
    from PIL import Image

    label = label if label is not None else path
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ImageReadError(label, f"cannot read file ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise ImageReadError(label, f"file too large ({size} bytes > {max_bytes} bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Image.DecompressionBombError as exc:
            raise ImageReadError(label, f"too large ({exc})") from None
        except Exception:  # noqa: BLE001 - not identifiable from its header: decoding decides
            return
    if width * height > max_pixels:
        raise ImageReadError(label, f"too large ({width}x{height} > {max_pixels} pixels)")


def _to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any decoded array → (H, W, 3) uint8 RGB (16-bit/float scaled, alpha dropped)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.dtype == np.bool_:
            array = array.astype(np.uint8) * 255
        elif np.issubdtype(array.dtype, np.floating):
            finite = np.nan_to_num(array.astype(np.float64))
            scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
            array = np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
        else:  # 16/32-bit integers: 16-bit range unless the values are 8-bit already
            wide = array.astype(np.float64)
            scale = 1.0 if wide.max(initial=0.0) <= 255 else 255.0 / 65535.0
            array = np.clip(np.rint(wide * scale), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] >= 3:
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    else:
        raise ValueError(f"unsupported image array shape {array.shape}")
    return np.ascontiguousarray(array)


def _decode_pil(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError("<bytes>", f"too large ({im.width}x{im.height} > {max_pixels} pixels)")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("1", "L", "RGB", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                array = np.asarray(im)
            else:  # P, PA, LA, RGBA, CMYK, YCbCr, LAB, HSV, ...
                array = np.asarray(im.convert("RGB"))
    return _to_rgb_uint8(array)


def _decode_cv2(data: bytes, max_pixels: int) -> np.ndarray | None:
    import cv2

    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        return None
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ImageReadError("<bytes>", f"too large ({array.shape[1]}x{array.shape[0]} > {max_pixels} pixels)")
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[..., [2, 1, 0]]  # BGR(A) → RGB
    return _to_rgb_uint8(array)


def read_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode an image by its content (the extension is ignored).

    Grayscale, palette, RGBA, CMYK, 16-bit and float images become RGB uint8 (16-bit
    divided by 257, alpha dropped); the EXIF orientation is applied. Pillow decodes; OpenCV
    is the fallback for what Pillow cannot identify.

    Args:
        source: a path or the file's bytes.
        name: the name used in error messages when ``source`` is bytes.
        max_pixels: refuse larger images (decompression bombs); a file's header is checked
            before the file is read (:func:`check_image_file`).
        max_bytes: refuse larger files, before reading them.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageReadError: empty, not an image, truncated/corrupt or too large — the message
            names the file.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))
    if isinstance(source, (bytes, bytearray)):
        if len(source) > max_bytes:
            raise ImageReadError(label, f"file too large ({len(source)} bytes > {max_bytes} bytes)")
        data = bytes(source)
    else:
        check_image_file(source, max_pixels=max_pixels, max_bytes=max_bytes, label=label)
        data = _read_bytes(source, label)
    if not data:
        raise ImageReadError(label, "empty file")
    try:
        return _decode_pil(data, max_pixels)
    except ImageReadError as exc:
        raise ImageReadError(label, exc.reason) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(label, f"too large ({exc})") from None
    except UnidentifiedImageError:
        try:
            array = _decode_cv2(data, max_pixels)
        except ImageReadError as exc:
            raise ImageReadError(label, exc.reason) from None
        except Exception as exc:  # noqa: BLE001 - OpenCV raises cv2.error on corrupt data
            raise ImageReadError(label, f"not a decodable image ({exc})") from None
        if array is None:
            raise ImageReadError(label, "not an image (content not recognised)") from None
        return array
    except (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ImageReadError(label, f"corrupt or truncated image ({exc})") from None


# --------------------------------------------------------------------------------------
# Cropping
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Run small tensor ops on one thread: on busy cores, handing a 240×240 polygon test to
    OpenMP's thread pool costs far more than the test itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class FaceCrop:
    """A masked face crop, ready for the network (after its ``x − 0.5`` shift).

    Attributes:
        image: ``(3, S, S)`` float32 in ``[0, 1]``, exactly 0 where ``mask`` is 0.
        mask: ``(1, S, S)`` float32 in {0, 1}: face region and inside the source image.
        landmarks: ``(68, 2)`` float32, crop pixels (continuous).
        scale: ``p_crop = scale · p_image + offset``.
        offset: ``(2,)`` (x, y).
    """

    image: Tensor
    mask: Tensor
    landmarks: Tensor
    scale: float
    offset: tuple[float, float]

    def to_image(self, points: Tensor) -> Tensor:
        """``(*, 2)`` crop pixels → source-image pixels."""
        return (points - torch.tensor(self.offset, dtype=points.dtype)) / self.scale


def crop_face(
    image: np.ndarray, landmarks: np.ndarray | Tensor, image_size: int = 240, margin: float = 0.0
) -> FaceCrop:
    """Frame, warp and mask one face: the landmarks' box is scaled uniformly to touch two
    opposite sides of the ``S × S`` crop and centred (the renderer's framing rule), the image
    is warped into it, and pixels outside the face region (or the image) are set to 0.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        landmarks: ``(68, 2)`` continuous pixel coordinates of ``image``.
        image_size: crop side ``S``.
        margin: free pixels on each side of the landmarks' box (0 = the paper's rule).

    Returns:
        The :class:`FaceCrop`.

    Raises:
        TypeError: ``image`` is not a numpy array.
        ValueError: wrong image shape/dtype, landmarks not ``(68, 2)`` or not finite, or
            ``image_size < 8``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> img = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
        >>> t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        >>> lm = np.stack([150 + 80 * np.cos(t), 150 + 100 * np.sin(t)], 1)
        >>> crop = crop_face(img, lm)
        >>> tuple(crop.image.shape), float(crop.landmarks[:, 1].min()), float(crop.landmarks[:, 1].max())
        ((3, 240, 240), 0.0, 240.0)
    """
    import cv2

    check_rgb_image(image)
    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
    if lm.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {tuple(lm.shape)}")
    if not torch.isfinite(lm).all():
        raise ValueError("landmarks contain non-finite values")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    size = int(image_size)
    scale_t, offset_t = framing_transform(lm[None], (size, size), margin=margin)
    # the box touches two opposite sides exactly; clamp away the ±1e-14 rounding of the affine map
    crop_lm = apply_framing(lm[None], scale_t, offset_t)[0].clamp(0.0, float(image_size))
    s = float(scale_t[0])
    tx, ty = (float(v) for v in offset_t[0])

    height, width = image.shape[:2]
    sigma = max(0.0, (1.0 / s - 1.0) / 2.0)  # anti-aliasing pre-filter (skimage's rule)
    pad = math.ceil(3.0 * sigma) + 2
    # source window seen by the crop, plus the filter support
    x0 = max(0, math.floor(-tx / s) - pad)
    y0 = max(0, math.floor(-ty / s) - pad)
    x1 = min(width, math.ceil((size - tx) / s) + pad)
    y1 = min(height, math.ceil((size - ty) / s) + pad)
    warped = np.zeros((size, size, 3), dtype=np.float32)
    if x1 > x0 and y1 > y0:
        roi = image[y0:y1, x0:x1].astype(np.float32) / 255.0
        if sigma > 0.3:
            roi = cv2.GaussianBlur(roi, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        # index_out = s · index_roi + s · (0.5 + roi_origin) + offset − 0.5 (pixel centres at +0.5)
        matrix = np.array([[s, 0.0, s * (0.5 + x0) + tx - 0.5], [0.0, s, s * (0.5 + y0) + ty - 0.5]], dtype=np.float64)
        warped = cv2.warpAffine(roi, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        warped = np.clip(warped, 0.0, 1.0)
    # crop pixels whose centre falls inside the source image
    centres = np.arange(size, dtype=np.float64) + 0.5
    inside_x = ((centres - tx) / s >= 0) & ((centres - tx) / s <= width)
    inside_y = ((centres - ty) / s >= 0) & ((centres - ty) / s <= height)
    inside = torch.from_numpy(inside_y[:, None] & inside_x[None, :])
    with _single_torch_thread():
        face = face_region_mask(crop_lm[None], (size, size))[0, 0] > 0.5
    mask = (face & inside).to(torch.float32)[None]
    out = torch.from_numpy(np.ascontiguousarray(warped.transpose(2, 0, 1))) * mask
    return FaceCrop(image=out, mask=mask, landmarks=crop_lm.to(torch.float32), scale=s, offset=(tx, ty))


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$IFN_CACHE_DIR`` if set, else ``~/.cache/ifn/real_faces``."""
    env = os.environ.get(_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ifn" / "real_faces"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` (``~`` expanded), or :func:`default_cache_dir` when ``None``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_key(content: bytes, settings: Mapping[str, Any]) -> str:
    """SHA-256 hex key of a file's content plus the pre-processing settings (JSON, sorted)."""
    h = hashlib.sha256()
    h.update(b"ifn-real-faces\0")
    h.update(hashlib.sha256(content).digest())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ProcessedImage:
    """Detections of one image file and where its crops are cached.

    Attributes:
        path: the image file.
        faces: every face the detector found (largest first, before any size filter); the
            crop of ``faces[k]`` is ``load_crop(cache_file, k)``.
        reason: why ``faces`` is empty, else ``None``.
        cache_file: the ``.npz`` holding the crops.
        cached: True when it came from the cache (the detector did not run).
        image_shape: ``(H, W)`` of the decoded image.
    """

    path: Path
    faces: list[Face]
    reason: str | None
    cache_file: Path
    cached: bool
    image_shape: tuple[int, int]


_NPZ_KEYS = (
    "version",
    "image_shape",
    "reason",
    "landmarks",
    "boxes",
    "scores",
    "sources",
    "crops",
    "masks",
    "crop_landmarks",
    "scales",
    "offsets",
)


def _write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_write(path) as fh:
        np.savez_compressed(fh, **arrays)


def _read_npz(path: Path, image_size: int) -> dict[str, np.ndarray] | None:
    """The cache file's arrays, or ``None`` when absent, incomplete or from another version."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if any(k not in npz.files for k in _NPZ_KEYS):
                return None
            data = {k: npz[k] for k in _NPZ_KEYS}
    except _NPZ_ERRORS:
        return None
    n = len(data["landmarks"])
    if (
        int(data["version"]) != CACHE_VERSION
        or data["crops"].shape != (n, 3, image_size, image_size)
        or data["masks"].shape != (n, image_size, image_size)
        or data["landmarks"].shape != (n, NUM_LANDMARKS, 2)
    ):
        return None
    return data


def _faces_from_npz(data: Mapping[str, np.ndarray]) -> list[Face]:
    return [
        Face(
            landmarks=data["landmarks"][k].astype(np.float64),
            box=data["boxes"][k].astype(np.float64),
            score=float(data["scores"][k]),
            source=str(data["sources"][k]),
        )
        for k in range(len(data["landmarks"]))
    ]


def preprocess_file(
    path: str | os.PathLike[str],
    detector: LandmarkDetector,
    *,
    image_size: int = 240,
    margin: float = 0.0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ProcessedImage:
    """Detect the faces of one file and cache their crops (or read them from the cache).

    Args:
        path: the image file.
        detector: any :class:`~ifn.data.landmarks.LandmarkDetector`; its raw detections are
            cached (filters such as ``min_face_size`` are applied by the caller).
        image_size: crop side.
        margin: framing margin (see :func:`crop_face`).
        cache_dir: default :func:`default_cache_dir`.

    Returns:
        The :class:`ProcessedImage`.

    Raises:
        ImageReadError: unreadable or too large file (never cached, so a fixed file is
            picked up); the size is checked before the file is read.
    """
    path = Path(path)
    # Before the content is read for the cache key: a huge file must not be read at all.
    check_image_file(path)
    content = _read_bytes(path)
    settings = {
        "cache_version": CACHE_VERSION,
        "detector": detector.settings(),
        "detector_extra": hashlib.sha256(detector.cache_extra(path)).hexdigest(),
        "image_size": int(image_size),
        "margin": float(margin),
    }
    key = cache_key(content, settings)
    # two-character fan-out keeps folders small for large corpora
    cache_file = resolve_cache_dir(cache_dir) / key[:2] / f"{key}.npz"
    data = _read_npz(cache_file, image_size)
    if data is not None:
        reason = str(data["reason"]) or None
        shape = tuple(int(v) for v in data["image_shape"])
        return ProcessedImage(path, _faces_from_npz(data), reason, cache_file, True, (shape[0], shape[1]))

    image = read_image(content, name=str(path))
    detection = detector.detect_raw(image, path)
    faces = detection.faces
    crops = [crop_face(image, f.landmarks, image_size, margin) for f in faces]
    n, s = len(faces), int(image_size)
    arrays = {
        "version": np.array(CACHE_VERSION),
        "image_shape": np.array(image.shape[:2], dtype=np.int64),
        "reason": np.array(detection.reason or ""),
        "settings": np.array(json.dumps(settings, sort_keys=True, default=str)),
        "path": np.array(str(path)),
        "landmarks": np.array([f.landmarks for f in faces], dtype=np.float64).reshape(n, NUM_LANDMARKS, 2),
        "boxes": np.array([f.box for f in faces], dtype=np.float64).reshape(n, 4),
        "scores": np.array([f.score for f in faces], dtype=np.float64).reshape(n),
        "sources": np.array([f.source for f in faces], dtype=str).reshape(n),
        "crops": np.array([np.rint(c.image.numpy() * 255.0).astype(np.uint8) for c in crops], dtype=np.uint8).reshape(
            n, 3, s, s
        ),
        "masks": np.array([c.mask[0].numpy() > 0.5 for c in crops], dtype=bool).reshape(n, s, s),
        "crop_landmarks": np.array([c.landmarks.numpy() for c in crops], dtype=np.float32).reshape(n, NUM_LANDMARKS, 2),
        "scales": np.array([c.scale for c in crops], dtype=np.float64).reshape(n),
        "offsets": np.array([c.offset for c in crops], dtype=np.float64).reshape(n, 2),
    }
    _write_npz_atomic(cache_file, arrays)
    return ProcessedImage(path, faces, detection.reason, cache_file, False, (image.shape[0], image.shape[1]))


def load_crop(cache_file: str | os.PathLike[str], face_index: int) -> FaceCrop:
    """Face ``face_index`` of a :func:`preprocess_file` cache file as a :class:`FaceCrop`.

    The stored crop is 8-bit: ``image`` is ``uint8 / 255`` (masked, exactly 0 outside).

    Raises:
        FileNotFoundError: the cache file is gone or incomplete (re-run the pre-processing).
        IndexError: no such face.
    """
    path = Path(cache_file)
    try:
        with np.load(path, allow_pickle=False) as npz:
            n = len(npz["scales"])
            if not 0 <= face_index < n:
                raise IndexError(f"{path}: face {face_index} out of range ({n} faces)")
            crops = npz["crops"][face_index]
            mask = npz["masks"][face_index]
            lm = npz["crop_landmarks"][face_index]
            scale = float(npz["scales"][face_index])
            offset = npz["offsets"][face_index]
    except _NPZ_ERRORS as exc:
        raise FileNotFoundError(f"{path}: missing or incomplete face-crop cache file ({exc})") from None
    mask_t = torch.from_numpy(mask.astype(np.float32))[None]
    image_t = torch.from_numpy(crops.astype(np.float32) / 255.0) * mask_t
    return FaceCrop(
        image=image_t,
        mask=mask_t,
        landmarks=torch.from_numpy(lm.astype(np.float32)),
        scale=scale,
        offset=(float(offset[0]), float(offset[1])),
    )
