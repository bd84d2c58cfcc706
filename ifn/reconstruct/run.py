"""``ifn reconstruct`` on files: every photo accounted for, every face's files written.

For each face, in ``OUT/<name>/`` (``<name>`` is the photo's stem, ``_<k>`` appended when
the photo has several faces; see :func:`output_names`):

* ``theta.json`` — θ by named group with units, the face model's identity, the crop
  transform, the detected landmarks, metrics (and the network's, before refinement);
* ``face_albedo.{ply,obj}``, ``face_shaded.{ply,obj}``, ``neutral.{ply,obj}`` — meshes in
  millimetres with per-vertex colours (:mod:`ifn.reconstruct.meshes`);
* ``overlay.png`` — the photo, its size, with the render pasted back and the outlines of
  the photo's face mask (red) and the render's (green);
* ``sheet.png`` — crop | render | albedo | shading | overlay, in crop pixels;
* edits when asked: ``relit_<light>.png``, ``albedo_from_<photo>.png``,
  ``expression_from_<photo>.png`` (composited into the photo).

The run writes ``OUT/index.json`` (settings, one entry per path found — reconstructed,
skipped with its reason, or ignored by type — and one row per face), ``OUT/index.csv`` (a
row per face, then a row per photo without one) and ``OUT/index.html``. ``index.json`` is
written first (status ``"running"``) so a later run into the same folder is refused unless
asked to overwrite, even after a crash.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ifn.callbacks.predictions import theta_to_dict
from ifn.data.listing import FoundPath, count_statuses, display_path, find_images
from ifn.data.photos import ImageReadError, read_image
from ifn.errors import UsageError
from ifn.io import PATH_ENCODING, path_text, write_bytes_atomic, write_csv_atomic, write_json_atomic
from ifn.reconstruct.compose import (
    INPUT_CONTOUR,
    OURS_CONTOUR,
    composite,
    draw_contours,
    to_uint8,
)
from ifn.reconstruct.editing import LIGHT_PRESETS, load_light
from ifn.reconstruct.meshes import write_mesh
from ifn.reconstruct.reconstructor import FaceReconstruction, Reconstructor

__all__ = [
    "VIDEO_EXTENSIONS",
    "Edits",
    "face_of_photo",
    "group_edit",
    "light_edits",
    "output_names",
    "reconstruct_paths",
    "theta_record",
    "write_face",
]

#: Files read frame by frame (``--every N``) instead of as one photo.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MESHES = {"face_albedo": "albedo", "face_shaded": "shaded", "neutral": "neutral"}


@dataclass
class Edits:
    """What to re-render each face with.

    Attributes:
        lights: ``{name: (9, 3) SH light}``; each gives ``relit_<name>.png``.
        reflectance: ``(name, θr)`` of another photo's face, or ``None``.
        expression: ``(name, θe)`` of another photo's face, or ``None``.
    """

    lights: dict[str, Tensor] = field(default_factory=dict)
    reflectance: tuple[str, Tensor] | None = None
    expression: tuple[str, Tensor] | None = None


def _clean(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "image"


def output_names(paths: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """A folder-name stem per photo, unique within the run and stable for the same inputs.

    The stem is the photo's file stem when it is plain ASCII (``A–Z a–z 0–9 . _ -``) and no
    other photo of the run has it; otherwise the cleaned stem plus ``-`` and 8 hex digits of
    the SHA-256 of the photo's path bytes (so ``a/x.jpg`` and ``b/x.jpg`` both stay readable).

    Example:
        >>> names = output_names(["a/x.jpg", "b/x.jpg", "y.png"])
        >>> names["y.png"], names["a/x.jpg"] != names["b/x.jpg"], names["a/x.jpg"].startswith("x-")
        ('y', True, True)
    """
    texts = [os.fspath(p) for p in paths]
    stems = [Path(t).stem for t in texts]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[_clean(stem)] = counts.get(_clean(stem), 0) + 1
    out = {}
    for text, stem in zip(texts, stems, strict=True):
        clean = _clean(stem)
        if clean != stem or counts[clean] > 1:
            clean = f"{clean}-{hashlib.sha256(os.fsencode(text)).hexdigest()[:8]}"
        out[text] = clean
    return out


def theta_record(face: FaceReconstruction) -> dict[str, Any]:
    """θ of one face by named group, with units and layout (``theta.json``'s ``"theta"``).

    The groups are those ``ifn predict`` writes (:func:`ifn.callbacks.predictions.theta_to_dict`).
    """
    record = theta_to_dict(face.theta, face.layout)
    record["layout"] = {
        "shape": face.layout.n_shape,
        "expression": face.layout.n_expression,
        "reflectance": face.layout.n_reflectance,
    }
    record["units"] = {
        "rotation": "radians (and degrees), R = Rz(γ)·Ry(β)·Rx(α) about the face centre",
        "shape/expression/reflectance": "coefficients in units of each mode's standard deviation σ",
        "illumination_sh_rgb": "9 second-order SH irradiance coefficients (rows) × RGB (columns)",
        "meshes": "millimetres, +y up, +z towards the camera",
    }
    return record


def _png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    # Level 3: the default 6 costs several times more for photo-sized overlays, for a few % of size.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=3)
    write_bytes_atomic(path, buffer.getvalue())


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(tile.copy())
    scale = max(0.3, tile.shape[0] / 400)
    cv2.putText(out, text, (4, int(14 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _sheet(face: FaceReconstruction) -> np.ndarray:
    """crop | render | albedo | shading | overlay (crop pixels), labelled."""
    crop = to_uint8(face.crop.image)
    overlay_crop = to_uint8(face.crop.image * (1 - face.mask) + face.image * face.mask)
    overlay_crop = draw_contours(
        overlay_crop, [(face.crop.mask, INPUT_CONTOUR), (face.mask, OURS_CONTOUR)], 1.0, (0.0, 0.0), thickness=1
    )
    tiles = [
        ("crop", crop),
        ("render", to_uint8(face.image)),
        ("albedo", to_uint8(face.albedo)),
        ("shading", to_uint8(face.shading)),
        ("overlay", overlay_crop),
    ]
    gap = np.full((crop.shape[0], 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for title, tile in tiles:
        parts.extend([_label(tile, title), gap])
    return np.concatenate(parts[:-1], axis=1)


def _overlay(photo: np.ndarray, face: FaceReconstruction, image: Tensor, mask: Tensor) -> np.ndarray:
    crop = face.crop
    pasted = composite(photo, image, mask, crop.scale, crop.offset)
    return draw_contours(pasted, [(crop.mask, INPUT_CONTOUR), (mask, OURS_CONTOUR)], crop.scale, crop.offset)


def _face_entry(face: FaceReconstruction, name: str, source: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "photo": source,
        "face_index": face.face_index,
        "photometric_error": round(face.photometric_error, 4),
        "iou": round(face.iou, 4),
    }
    if face.network is not None:
        row["network_photometric_error"] = round(face.network["photometric_error"], 4)
        row["network_iou"] = round(face.network["iou"], 4)
    return row


def write_face(
    reconstructor: Reconstructor,
    face: FaceReconstruction,
    photo: np.ndarray,
    folder: Path,
    source: str,
    edits: Edits,
    mesh_formats: Sequence[str] = (".ply", ".obj"),
) -> list[str]:
    """Write every output file of one face into ``folder``; returns the names written."""
    written = []
    model = reconstructor.renderer.face_model
    identity = model.identity()
    crop = face.crop
    record = {
        "photo": source,
        "photo_path_encoding": PATH_ENCODING,
        "photo_size": {"height": int(photo.shape[0]), "width": int(photo.shape[1])},
        "face_index": face.face_index,
        "face_model": {"name": identity.name, "sha256": identity.sha256},
        "theta": theta_record(face),
        "crop": {
            "size": reconstructor.image_size,
            "scale": crop.scale,
            "offset_xy": list(crop.offset),
            "convention": (
                "p_crop = scale * p_photo + offset; continuous pixels, pixel (i, j) covers [j, j+1) x [i, i+1)"
            ),
        },
        "landmarks_photo_xy": np.asarray(face.face.landmarks, dtype=float).round(3).tolist(),
        "detector": {"source": face.face.source, "score": None if math.isnan(face.face.score) else face.face.score},
        "metrics": {
            "photometric_error": face.photometric_error,
            "iou": face.iou,
            "definition": "RMSE (0-255) inside the photo's face mask, and mask IoU (%), in crop pixels",
        },
    }
    if face.network is not None:
        record["network"] = {
            "photometric_error": face.network["photometric_error"],
            "iou": face.network["iou"],
            "kept_step": face.network["best_step"],
            "theta_flat": face.network["theta"].tolist(),
        }
    write_json_atomic(folder / "theta.json", record)
    written.append("theta.json")
    for stem, kind in _MESHES.items():
        vertices, colours = reconstructor.mesh(face, kind)
        for suffix in mesh_formats:
            write_mesh(folder / f"{stem}{suffix}", vertices, model.triangles, colours)
            written.append(f"{stem}{suffix}")
    _png(folder / "overlay.png", _overlay(photo, face, face.image, face.mask))
    _png(folder / "sheet.png", _sheet(face))
    written += ["overlay.png", "sheet.png"]
    for light_name, light in edits.lights.items():
        image, mask = reconstructor.render_edit(face, "illumination", light)
        _png(folder / f"relit_{light_name}.png", composite(photo, image, mask, crop.scale, crop.offset))
        written.append(f"relit_{light_name}.png")
    for group, edit in (("reflectance", edits.reflectance), ("expression", edits.expression)):
        if edit is None:
            continue
        name, values = edit
        image, mask = reconstructor.render_edit(face, group, values)
        file = f"{'albedo' if group == 'reflectance' else group}_from_{name}.png"
        _png(folder / file, composite(photo, image, mask, crop.scale, crop.offset))
        written.append(file)
    return written


# --------------------------------------------------------------------------------------
# Sources: photos and video frames
# --------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One photo (or video frame) to reconstruct."""

    key: str  # the path as found (or path#frame)
    display: str  # for reports
    name: str  # output-name stem
    path: Path
    frame: int | None = None


def _video_frames(path: Path, every: int) -> tuple[list[int], str | None]:
    import cv2

    capture = cv2.VideoCapture(os.fspath(path))
    try:
        if not capture.isOpened():
            return [], "not a readable video"
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if count <= 0:
        return [], "video with no frames"
    return list(range(0, count, every)), None


def _read_frame(path: Path, frame: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(os.fspath(path))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, bgr = capture.read()
    finally:
        capture.release()
    if not ok or bgr is None:
        raise ImageReadError(path, f"cannot decode frame {frame}")
    return np.ascontiguousarray(bgr[..., ::-1])


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _html(faces: list[dict[str, Any]], paths: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    esc = html.escape
    refined = any("network_photometric_error" in f for f in faces)
    head = "<tr><th>face</th><th>sheet</th><th>photo</th><th>photometric</th><th>IoU %</th>"
    head += "<th>network photometric</th><th>network IoU %</th>" if refined else ""
    head += "<th>files</th></tr>"
    rows = []
    for f in faces:
        name = esc(f["name"])
        cells = [
            f"<td>{name}</td>",
            f'<td><a href="{name}/overlay.png"><img src="{name}/sheet.png" height="96"></a></td>',
            f"<td>{esc(f['photo'])}</td>",
            f"<td>{f['photometric_error']:.2f}</td>",
            f"<td>{f['iou']:.2f}</td>",
        ]
        if refined:
            cells += [
                f"<td>{f.get('network_photometric_error', float('nan')):.2f}</td>",
                f"<td>{f.get('network_iou', float('nan')):.2f}</td>",
            ]
        links = " ".join(f'<a href="{name}/{esc(file)}">{esc(file)}</a>' for file in f["files"])
        cells.append(f"<td>{links}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    others = [
        f"<tr><td>{esc(p['path'])}</td><td>{esc(p['status'])}</td><td>{esc(p['reason'] or '')}</td></tr>"
        for p in paths
        if p["status"] != "reconstructed"
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ifn reconstruct</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}</style>"
        f"</head><body><h1>ifn reconstruct</h1><p>{esc(summary['line'])}</p>"
        f"<table>{head}{''.join(rows)}</table>"
        "<h2>Not reconstructed</h2><table><tr><th>path</th><th>status</th><th>reason</th></tr>"
        f"{''.join(others)}</table>"
        "</body></html>\n"
    )


def _kind(found: FoundPath) -> str | None:
    """``"image"``, ``"video"`` (the listing ignores videos by type; they are read here) or ``None``."""
    if found.status == "image":
        return "image"
    if found.status == "ignored" and found.path.suffix.lower() in VIDEO_EXTENSIONS and found.path.is_file():
        return "video"
    return None


def _sources(found: list[FoundPath], every: int) -> tuple[list[_Source], list[dict[str, Any]]]:
    """Photos and video frames to read, and entries for what is not read."""
    entries: list[dict[str, Any]] = []
    sources: list[_Source] = []
    kinds = [_kind(f) for f in found]
    names = output_names([os.fspath(f.path) for f, kind in zip(found, kinds, strict=True) if kind])
    for f, kind in zip(found, kinds, strict=True):
        text = os.fspath(f.path)
        if kind == "image":
            sources.append(_Source(text, display_path(f.path), names[text], f.path))
        elif kind == "video":
            frames, reason = _video_frames(f.path, every)
            if reason:
                entries.append({"path": display_path(f.path), "status": "skipped", "reason": reason, "faces": []})
            for k in frames:
                sources.append(
                    _Source(f"{text}#{k}", f"{display_path(f.path)}#frame{k}", f"{names[text]}_f{k:06d}", f.path, k)
                )
        else:
            entries.append({"path": display_path(f.path), "status": f.status, "reason": f.reason, "faces": []})
    return sources, entries


def reconstruct_paths(
    reconstructor: Reconstructor,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    edits: Edits | None = None,
    overwrite: bool = False,
    every: int = 1,
    mesh_formats: Sequence[str] = (".ply", ".obj"),
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reconstruct every face of every photo (and video frame) under ``inputs`` into ``out``.

    Args:
        reconstructor: the model.
        inputs: files, folders, glob patterns (:func:`ifn.data.listing.find_images`) and video files.
        out: the output folder.
        edits: re-renders to write per face.
        overwrite: allow writing into a folder that holds an earlier run.
        every: take every N-th frame of a video.
        mesh_formats: mesh file suffixes to write.
        progress: show a progress bar.
        settings: recorded in ``index.json`` (e.g. the command line).

    Returns:
        The index (what ``index.json`` holds).

    Raises:
        UsageError: ``out`` holds an earlier run and ``overwrite`` is off.
    """
    from tqdm.auto import tqdm

    if every < 1:
        raise UsageError(f"--every must be >= 1, got {every}")
    out = Path(out)
    index_file = out / "index.json"
    if index_file.exists() and not overwrite:
        raise UsageError(f"{out}: holds an earlier run (index.json); pass --overwrite or choose another --out")
    edits = edits or Edits()
    started = time.perf_counter()
    write_json_atomic(index_file, {"status": "running", "settings": settings or {}})
    found = find_images(inputs)
    sources, entries = _sources(found, every)
    faces: list[dict[str, Any]] = []
    used: set[str] = set()
    timing = {"read_and_detect": 0.0, "network_and_refine": 0.0, "write": 0.0}
    bar = tqdm(sources, desc="reconstruct", unit="photo", disable=not progress, dynamic_ncols=True)
    for source in bar:
        entry: dict[str, Any] = {"path": source.display, "status": "reconstructed", "reason": None, "faces": []}
        try:
            tic = time.perf_counter()
            photo = read_image(source.path) if source.frame is None else _read_frame(source.path, source.frame)
            detection = reconstructor.detect(photo)
            timing["read_and_detect"] += time.perf_counter() - tic
            if not detection.faces:
                raise _Skip(detection.reason or "no face detected")
            tic = time.perf_counter()
            recs = reconstructor.reconstruct_crops(
                reconstructor.crops(photo, detection.faces), detection.faces, list(range(len(detection.faces)))
            )
            timing["network_and_refine"] += time.perf_counter() - tic
            tic = time.perf_counter()
            for face in recs:
                name = source.name if len(recs) == 1 else f"{source.name}_{face.face_index}"
                if name in used:  # e.g. a photo named "a_1" beside the second face of "a"
                    key = os.fsencode(f"{source.key}#{face.face_index}")
                    name = f"{name}-{hashlib.sha256(key).hexdigest()[:8]}"
                used.add(name)
                files = write_face(reconstructor, face, photo, out / name, source.display, edits, mesh_formats)
                faces.append({**_face_entry(face, name, source.display), "files": files})
                entry["faces"].append(name)
            timing["write"] += time.perf_counter() - tic
        except _Skip as skip:
            entry.update(status="skipped", reason=str(skip))
        except ImageReadError as err:
            entry.update(status="skipped", reason=err.reason)
        except (OSError, ValueError, RuntimeError) as err:  # one bad photo never ends the run
            entry.update(status="skipped", reason=f"{type(err).__name__}: {path_text(str(err))[:300]}")
        entries.append(entry)
        bar.set_postfix(faces=len(faces))
    entries.sort(key=lambda e: e["path"])
    counts = {status: sum(e["status"] == status for e in entries) for status in ("reconstructed", "skipped", "ignored")}
    listed = count_statuses(found)
    summary = {
        **counts,
        "faces": len(faces),
        "paths_found": len(found),
        "listing": listed,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_by_stage": {k: round(v, 2) for k, v in timing.items()},
    }
    if faces:
        summary["mean_photometric_error"] = float(np.mean([f["photometric_error"] for f in faces]))
        summary["mean_iou"] = float(np.mean([f["iou"] for f in faces]))
        if "network_photometric_error" in faces[0]:
            summary["mean_network_photometric_error"] = float(np.mean([f["network_photometric_error"] for f in faces]))
            summary["mean_network_iou"] = float(np.mean([f["network_iou"] for f in faces]))
    summary["line"] = (
        f"{len(faces)} face(s) from {counts['reconstructed']} photo(s); {counts['skipped']} skipped, "
        f"{counts['ignored']} ignored; {summary['seconds']:.1f} s"
    )
    index = {
        "status": "done",
        "settings": settings or {},
        "summary": summary,
        "paths": entries,
        "faces": faces,
        "path_encoding": PATH_ENCODING,
    }
    columns = [
        "name",
        "photo",
        "face_index",
        "photometric_error",
        "iou",
        "network_photometric_error",
        "network_iou",
        "status",
        "reason",
    ]
    rows = [{**{k: f.get(k, "") for k in columns}, "status": "reconstructed", "reason": ""} for f in faces]
    rows += [
        {"photo": e["path"], "status": e["status"], "reason": e["reason"] or ""}
        for e in entries
        if e["status"] != "reconstructed"
    ]
    write_csv_atomic(out / "index.csv", [{k: r.get(k, "") for k in columns} for r in rows], columns)
    write_bytes_atomic(out / "index.html", _html(faces, entries, summary).encode("utf-8"))
    write_json_atomic(index_file, index)
    return index


class _Skip(Exception):
    """A photo with nothing to reconstruct (its reason is the message)."""


def light_edits(specs: Sequence[str], reconstructor: Reconstructor) -> dict[str, Tensor]:
    """``--relight`` values → ``{name: light}``: presets, JSON files, or photos (their estimated light)."""
    lights: dict[str, Tensor] = {}
    for spec in specs:
        path = Path(spec)
        if spec in LIGHT_PRESETS or path.suffix.lower() == ".json":
            lights[_clean(path.stem if path.suffix else spec)] = load_light(spec)
        elif not path.exists():
            raise UsageError(
                f"--relight {spec}: not a preset ({', '.join(LIGHT_PRESETS)}) nor an existing .json light file or photo"
            )
        else:
            name, params = face_of_photo(reconstructor, spec)
            lights[f"from_{name}"] = params.illumination[0]
    return lights


def face_of_photo(reconstructor: Reconstructor, spec: str | os.PathLike[str]) -> tuple[str, Any]:
    """The largest face of a photo given on the command line: its name and θ groups.

    Raises:
        UsageError: unreadable photo or no face in it.
    """
    path = Path(spec)
    try:
        faces = reconstructor(read_image(path))
    except ImageReadError as err:
        raise UsageError(f"{path}: {err.reason}") from err
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such file") from err
    if not faces:
        raise UsageError(f"{path}: no face found to take the edit from")
    return _clean(path.stem), faces[0].params


def group_edit(reconstructor: Reconstructor, spec: str | None, group: str) -> tuple[str, Tensor] | None:
    """``--albedo-from`` / ``--expression-from`` → ``(name, values)`` or ``None``."""
    if spec is None:
        return None
    name, params = face_of_photo(reconstructor, spec)
    return name, getattr(params, group)[0]
