"""A corpus of real, unlabelled face photographs as masked 240×240 crops, one item per face.

:class:`RealFaceCorpus` walks a folder tree once, detects the faces of every image (cached
on disk by :func:`ifn.data.photos.preprocess_file`, so later constructions do not run
the detector), and serves one item per face. Nothing in the folder stops it: unreadable,
truncated or mislabelled files and images without a (large enough) face are skipped,
counted with their reason and listed by :meth:`RealFaceCorpus.write_report`, whose
``entries`` hold one line per path found in the folder (:func:`ifn.data.listing.find_images`):
``"used"`` with its faces, ``"skipped"`` with the reason (unreadable, no face, broken link...)
or ``"ignored"`` by type (``.txt``, a folder named ``x.jpg``, a second link to a file).
An animated image (GIF, WebP, APNG) is read as its first frame, and its entry says so.

It feeds the breeding step (infer θ for every real face) and real-image evaluation.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ifn.data.landmarks import Detection, LandmarkDetector, make_detector
from ifn.data.listing import IMAGE_EXTENSIONS, FoundPath, count_statuses, display_path, find_images
from ifn.data.photos import ImageReadError, ProcessedImage, load_crop, preprocess_file, resolve_cache_dir
from ifn.io import PATH_ENCODING, atomic_write, path_text, writable

__all__ = ["IMAGE_EXTENSIONS", "RealFaceCorpus", "list_images", "split_files"]

def _sorted_unique(files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Distinct paths in a platform-independent order, so splits and item order are reproducible."""
    return sorted({Path(f) for f in files}, key=lambda p: p.as_posix())


def list_images(root: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``root``, recursively, in sorted (deterministic) order.

    The images of :func:`ifn.data.listing.find_images` (symlinked folders followed once,
    each file once); what it ignores or skips is not returned here.

    Args:
        root: a folder.
        extensions: accepted suffixes, compared case-insensitively.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    return [found.path for found in find_images([root], extensions) if found.status == "image"]


def split_files(
    files: Sequence[str | os.PathLike[str]], fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split files (not faces: all faces of a photo stay together) into two sorted lists.

    Args:
        files: the files.
        fraction: share of the first list, in ``[0, 1]``.
        seed: shuffling seed (the split is a function of the sorted files and the seed).

    Returns:
        ``(first, second)`` with ``round(fraction · len(files))`` files in ``first``.

    Example:
        >>> a, b = split_files([f"{i}.jpg" for i in range(10)], 0.8, seed=1)
        >>> len(a), len(b), sorted(a + b) == sorted(Path(f"{i}.jpg") for i in range(10))
        (8, 2, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ordered = _sorted_unique(files)
    rng = random.Random(seed)
    shuffled = ordered[:]
    rng.shuffle(shuffled)
    n_first = round(fraction * len(shuffled))
    first = set(shuffled[:n_first])
    return [p for p in ordered if p in first], [p for p in ordered if p not in first]


@dataclass(frozen=True)
class _FileRecord:
    """What happened to one file."""

    path: Path
    reason: str | None = None  # why no face was kept (None when some were)
    kind: str | None = None  # "unreadable" | "no_face" | "too_small" | "error"
    cache_file: Path | None = None
    faces: tuple[int, ...] = ()  # kept face indices (into the cached faces)
    detected: int = 0
    dropped_small: int = 0
    dropped_extra: int = 0
    cached: bool = False
    note: str | None = None  # e.g. that an animated image was read as its first frame


@dataclass(frozen=True)
class _Item:
    path: Path
    cache_file: Path
    face_index: int


class RealFaceCorpus(Dataset):
    """Masked face crops of every face in a folder tree, one item per face.

    Args:
        root: folder scanned recursively for :data:`IMAGE_EXTENSIONS` (any case). May be
            ``None`` when ``files`` is given.
        detector: ``"mediapipe"`` (default, offline), ``"annotation"``, ``"face_alignment"``,
            or a :class:`~ifn.data.landmarks.LandmarkDetector`. Its raw detections are
            cached, then selected by its :meth:`~ifn.data.landmarks.LandmarkDetector.select`
            with the corpus's ``largest_only`` / ``min_face_size`` (an instance's own filter
            settings are not used).
        cache_dir: cache folder; default ``$IFN_CACHE_DIR`` or ``~/.cache/ifn/real_faces``.
        image_size: crop side (the network input, 240 in the paper).
        largest_only: one face per image, the largest.
        min_face_size: drop faces whose landmark box is smaller (longer side, pixels).
        progress: show a tqdm progress bar while scanning.
        files: an explicit list of image files (e.g. a split); they need not be under ``root``.
        margin: framing margin in crop pixels (0 = the paper's rule).
        detector_options: constructor options for a detector given by name.

    Items:
        ``{"image": (3, S, S) float32 in [0, 1] (0 outside the mask), "mask": (1, S, S)
        float32, "landmarks": (68, 2) float32 crop pixels, "path": str, "face_index": int}``.
        ``face_index`` numbers the faces of one photo, largest first.

    Example:
        >>> corpus = RealFaceCorpus("photos/", min_face_size=40)  # doctest: +SKIP
        >>> train, held_out = corpus.split(0.9, seed=0)  # doctest: +SKIP
        >>> corpus.write_report("photos_report.json")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        detector: str | LandmarkDetector = "mediapipe",
        cache_dir: str | os.PathLike[str] | None = None,
        image_size: int = 240,
        largest_only: bool = False,
        min_face_size: float = 40.0,
        progress: bool = True,
        *,
        files: Sequence[str | os.PathLike[str]] | None = None,
        margin: float = 0.0,
        detector_options: dict[str, Any] | None = None,
    ) -> None:
        if root is None and files is None:
            raise ValueError("give a root folder or a list of files")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be >= 0, got {min_face_size}")
        self.root = Path(root) if root is not None else None
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.largest_only = bool(largest_only)
        self.min_face_size = float(min_face_size)
        self.cache_dir = resolve_cache_dir(cache_dir)
        owns_detector = not isinstance(detector, LandmarkDetector)
        self.detector = make_detector(detector, **(detector_options or {}))
        self.ignored_files = 0
        # Paths of the folder that are not read (ignored by type, or unreadable as paths):
        # kept for the report, so that every path found is accounted for.
        self._unread: list[FoundPath] = []
        if files is None:
            assert self.root is not None
            if not self.root.is_dir():
                raise NotADirectoryError(f"{self.root} is not a folder")
            found = find_images([self.root])
            paths = [f.path for f in found if f.status == "image"]
            self._unread = [f for f in found if f.status != "image"]
            self.ignored_files = count_statuses(found)["ignored"]
        else:
            paths = _sorted_unique(files)
        self._records = self._scan(paths, progress)
        if owns_detector:
            self.detector.close()
        self._items = self._index(self._records)

    # -- construction ----------------------------------------------------------------------
    def _select(self, result: ProcessedImage) -> tuple[tuple[int, ...], Detection]:
        """The corpus's ``largest_only`` / ``min_face_size`` applied by the detector's own
        :meth:`~ifn.data.landmarks.LandmarkDetector.select`, with the kept faces as indices
        into the cached faces (what :func:`~ifn.data.photos.load_crop` takes)."""
        selected = self.detector.select(
            Detection(faces=result.faces, reason=result.reason),
            largest_only=self.largest_only,
            min_face_size=self.min_face_size,
        )
        index = {id(face): k for k, face in enumerate(result.faces)}  # select returns the same objects
        return tuple(index[id(face)] for face in selected.faces), selected

    def _scan(self, paths: list[Path], progress: bool) -> list[_FileRecord]:
        from tqdm.auto import tqdm

        records = []
        bar = tqdm(paths, desc="detecting faces", unit="img", disable=not progress or not paths)
        for path in bar:
            try:
                result = preprocess_file(
                    path, self.detector, image_size=self.image_size, margin=self.margin, cache_dir=self.cache_dir
                )
            except ImageReadError as exc:
                records.append(_FileRecord(path, reason=exc.reason, kind="unreadable"))
                continue
            except MemoryError:
                records.append(_FileRecord(path, reason="out of memory while decoding", kind="unreadable"))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop a corpus
                records.append(_FileRecord(path, reason=f"{type(exc).__name__}: {exc}", kind="error"))
                continue
            kept, selected = self._select(result)
            record = _FileRecord(
                path,
                note=_animation_note(path),
                cache_file=result.cache_file,
                faces=kept,
                detected=len(result.faces),
                dropped_small=selected.dropped_small,
                dropped_extra=selected.dropped_extra,
                cached=result.cached,
            )
            if not result.faces:
                record = replace(record, reason=result.reason or "no face detected", kind="no_face")
            elif not kept:
                record = replace(
                    record,
                    reason=f"{selected.dropped_small} face(s) smaller than min_face_size={self.min_face_size:g} px",
                    kind="too_small",
                )
            records.append(record)
        return records

    @staticmethod
    def _index(records: Iterable[_FileRecord]) -> list[_Item]:
        return [_Item(r.path, r.cache_file, k) for r in records if r.cache_file is not None for k in r.faces]

    # -- Dataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._items[index]
        crop = load_crop(item.cache_file, item.face_index)
        return {
            "image": crop.image,
            "mask": crop.mask,
            "landmarks": crop.landmarks,
            "path": str(item.path),
            "face_index": item.face_index,
        }

    # -- views -----------------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        """Every scanned file, in order."""
        return [r.path for r in self._records]

    @property
    def paths(self) -> list[str]:
        """The source file of each item."""
        return [str(i.path) for i in self._items]

    def subset_files(self, files: Iterable[str | os.PathLike[str]]) -> RealFaceCorpus:
        """A corpus over some of this corpus's files, without detecting again."""
        wanted = {Path(f) for f in files}
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._records = [r for r in self._records if r.path in wanted]
        view._items = self._index(view._records)
        view.ignored_files = 0
        view._unread = []
        return view

    def split(self, fraction: float, seed: int = 0) -> tuple[RealFaceCorpus, RealFaceCorpus]:
        """Split by *file* (see :func:`split_files`) into two corpora, e.g. train / held-out."""
        first, second = split_files(self.files, fraction, seed)
        return self.subset_files(first), self.subset_files(second)

    # -- reporting -------------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """Counts: images found, with faces, faces (items), skipped, dropped faces, cache use."""
        records = self._records
        return {
            "found_images": len(records),
            "images_with_faces": sum(1 for r in records if r.faces),
            "faces": len(self._items),
            "faces_detected": sum(r.detected for r in records),
            "skipped_images": sum(1 for r in records if not r.faces),
            "unreadable": sum(1 for r in records if r.kind == "unreadable"),
            "no_face": sum(1 for r in records if r.kind == "no_face"),
            "too_small": sum(1 for r in records if r.kind == "too_small"),
            "errors": sum(1 for r in records if r.kind == "error"),
            "dropped_small_faces": sum(r.dropped_small for r in records),
            "dropped_extra_faces": sum(r.dropped_extra for r in records),
            "cache_hits": sum(1 for r in records if r.cached),
            "cache_misses": sum(1 for r in records if r.cache_file is not None and not r.cached),
            "ignored_files": self.ignored_files,
            "unreadable_paths": sum(1 for f in self._unread if f.status == "skipped"),
            "animated_first_frame": sum(1 for r in records if r.note is not None and r.faces),
        }

    def skipped(self) -> list[dict[str, str]]:
        """``[{"path", "kind", "reason"}]`` for every file that gave no item."""
        return [
            {"path": self._name(r.path), "kind": r.kind or "", "reason": r.reason or ""}
            for r in self._records
            if not r.faces
        ]

    def _name(self, path: Path) -> str:
        """A file's name in reports: below the root, written by :func:`ifn.io.path_text`
        (names that are not UTF-8 stay recoverable, and the report stays valid UTF-8)."""
        return display_path(path, self.root)

    def entries(self) -> list[dict[str, Any]]:
        """One entry per path found, sorted by path: ``{"path", "status", "kind", "reason",
        "faces", "detected"}`` with ``status`` ``"used"`` (at least one face kept),
        ``"skipped"`` (unreadable, no or too small faces, or an unreadable path such as a
        broken link) or ``"ignored"`` (not an image by type, or a second path to one)."""
        rows = []
        for r in self._records:
            rows.append({
                "path": self._name(r.path),
                "status": "used" if r.faces else "skipped",
                "kind": r.kind if not r.faces else ("animated" if r.note else "image"),
                "reason": r.note if r.faces else r.reason,
                "faces": len(r.faces),
                "detected": r.detected,
            })
        for f in self._unread:
            rows.append({
                "path": self._name(f.path),
                "status": f.status,
                "kind": "not_an_image" if f.status == "ignored" else "unreadable_path",
                "reason": f.reason,
                "faces": 0,
                "detected": 0,
            })
        return sorted(rows, key=lambda row: row["path"])

    def summary_line(self, report: str | os.PathLike[str] | None = None) -> str:
        """One line for the console: how many paths were found and what became of them."""
        s = self.summary()
        entries = self.entries()
        used = sum(1 for e in entries if e["status"] == "used")
        skipped = sum(1 for e in entries if e["status"] == "skipped")
        ignored = sum(1 for e in entries if e["status"] == "ignored")
        where = f" (report: {path_text(report)})" if report is not None else ""
        root = path_text(self.root) if self.root is not None else "files"
        return (
            f"{root}: {len(entries)} path(s): {used} used ({s['faces']} face(s)), {skipped} skipped, "
            f"{ignored} ignored{where}"
        )

    def report(self) -> dict[str, Any]:
        """The JSON-able report written by :meth:`write_report` (paths by :func:`ifn.io.path_text`)."""
        return writable({
            "root": path_text(self.root) if self.root is not None else None,
            "path_encoding": PATH_ENCODING,
            "detector": self.detector.settings(),
            "image_size": self.image_size,
            "margin": self.margin,
            "largest_only": self.largest_only,
            "min_face_size": self.min_face_size,
            "cache_dir": path_text(self.cache_dir),
            "summary": self.summary(),
            "entries": self.entries(),
            "skipped_by_kind": dict(Counter(r.kind for r in self._records if not r.faces)),
            "skipped": self.skipped(),
            "faces_per_image": {
                self._name(r.path): {
                    "kept": len(r.faces),
                    "detected": r.detected,
                    "dropped_small": r.dropped_small,
                    "dropped_extra": r.dropped_extra,
                }
                for r in self._records
                if r.faces
            },
        })

    def write_report(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`report` as JSON (UTF-8, atomically, replacing ``path``); returns the path."""
        path = Path(path)
        with atomic_write(path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.report(), indent=2, default=str) + "\n")
        return path

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, faces={s['faces']}, images={s['found_images']}, "
            f"skipped={s['skipped_images']}, detector={self.detector.name!r})"
        )


def _animation_note(path: Path) -> str | None:
    """``"animated (…): first frame used"`` for an animated image, else ``None``.

    Pillow's ``is_animated`` reads headers only (for GIF it seeks to the second frame), and
    decoding (:func:`~ifn.data.photos.read_image`) uses the first frame.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            animated = bool(getattr(im, "is_animated", False))
            kind = im.format or "image"
    except Exception:  # noqa: BLE001 - only a note: the file was decoded already
        return None
    return f"animated {kind}: first frame used" if animated else None
