"""Landmark sources: annotation files, MediaPipe FaceMesh → 68, face-alignment (stand-in FAN)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ifn.data.landmarks import (
    MEDIAPIPE_IBUG_INDICES,
    NUM_LANDMARKS,
    AnnotationLandmarks,
    Detection,
    Face,
    FaceAlignmentLandmarks,
    MediapipeLandmarks,
    MissingWeightsError,
    landmark_nme,
    make_detector,
    mediapipe_to_ibug68,
    read_ljson,
    read_pts,
)
from ifn.data.landmarks import face_alignment as fa_module
from ifn.data.photos import read_image
from ifn.facemodel import regions

# ----------------------------------------------------------------------------- annotations


def _parse_pts_text(path: Path) -> np.ndarray:
    """Independent parse: the numeric lines between the braces, as written in the file."""
    lines = path.read_text().splitlines()
    start, end = lines.index("{"), lines.index("}")
    return np.array([[float(v) for v in line.split()] for line in lines[start + 1 : end]])


@pytest.mark.parametrize("name", ["breakingbad", "einstein", "takeo"])
def test_pts_load_exactly_with_half_pixel_shift(faces_dir: Path, name: str) -> None:
    pts_file = faces_dir / "annotated68" / f"{name}.pts"
    raw = _parse_pts_text(pts_file)
    assert raw.shape == (68, 2)
    np.testing.assert_array_equal(read_pts(pts_file), raw - 0.5)
    image = next(p for p in (faces_dir / "annotated68").iterdir() if p.stem == name and p.suffix != ".pts")
    det = AnnotationLandmarks()(None, image)
    assert len(det.faces) == 1 and det.reason is None
    np.testing.assert_array_equal(det.faces[0].landmarks, raw - 0.5)
    # a few values spelled out (first point of breakingbad.pts is "1283.598566 276.387616")
    if name == "breakingbad":
        assert det.faces[0].landmarks[0, 0] == pytest.approx(1283.598566 - 0.5)
        assert det.faces[0].landmarks[0, 1] == pytest.approx(276.387616 - 0.5)


def test_tongue_pts_is_not_a_face(faces_dir: Path) -> None:
    assert read_pts(faces_dir / "annotated68" / "tongue.pts").shape == (19, 2)
    det = AnnotationLandmarks()(None, faces_dir / "annotated68" / "tongue.jpg")
    assert det.faces == []
    assert "19 points" in det.reason and "68" in det.reason


def test_ljson_is_y_x_and_zero_based(faces_dir: Path) -> None:
    file = faces_dir / "annotated68" / "lenna.ljson"
    raw = np.array(json.loads(file.read_text())["groups"]["LJSON"]["landmarks"]["points"])
    pts = read_ljson(file)
    np.testing.assert_allclose(pts[:, 0], raw[:, 1] + 0.5)
    np.testing.assert_allclose(pts[:, 1], raw[:, 0] + 0.5)
    # geometry sanity in (x, y): jaw runs left to right, the chin is below the eyes
    assert pts[0, 0] < pts[8, 0] < pts[16, 0]
    assert pts[8, 1] > pts[36:48, 1].max()
    det = AnnotationLandmarks()(None, faces_dir / "annotated68" / "lenna.png")
    assert det.faces[0].source == "ljson"


def test_annotation_missing_and_malformed(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    assert "no annotation" in AnnotationLandmarks()(None, img).reason
    (tmp_path / "a.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match=r"a\.pts.*n_points=3"):
        read_pts(tmp_path / "a.pts")
    assert "unreadable annotation" in AnnotationLandmarks()(None, img).reason
    (tmp_path / "b.pts").write_text("no braces")
    with pytest.raises(ValueError, match=r"b\.pts"):
        read_pts(tmp_path / "b.pts")


# ----------------------------------------------------------------------------- base class


def _face(size: float, x: float = 0.0) -> Face:
    lm = np.stack([np.linspace(x, x + size, 68), np.linspace(0, size, 68)], 1)
    return Face(lm, np.array([x, 0, x + size, size], dtype=float), 1.0, "test")


def test_select_largest_only_and_min_face_size() -> None:
    raw = Detection(faces=[_face(30), _face(100, 200), _face(60, 400)])
    det = make_detector("annotation", largest_only=True, min_face_size=40)
    out = det.select(raw)
    assert [f.size for f in out.faces] == [100.0]
    assert (out.dropped_small, out.dropped_extra) == (1, 1)
    out = make_detector("annotation", min_face_size=500).select(raw)
    assert out.faces == [] and out.dropped_small == 3 and "min_face_size" in out.reason


def test_select_orders_largest_first_and_keeps_the_face_objects() -> None:
    small, big, mid, tie = _face(30), _face(100, 200), _face(60, 400), _face(60, 600)
    out = make_detector("annotation").select(Detection(faces=[small, mid, big, tie]))
    assert [f.size for f in out.faces] == [100.0, 60.0, 60.0, 30.0]
    assert out.faces[0] is big and out.faces[1] is mid and out.faces[2] is tie  # ties keep their order
    assert (out.dropped_small, out.dropped_extra, out.reason) == (0, 0, None)
    # a face exactly at min_face_size is kept
    out = make_detector("annotation", min_face_size=60).select(Detection(faces=[small, mid, big, tie]))
    assert [f.size for f in out.faces] == [100.0, 60.0, 60.0] and out.dropped_small == 1


def test_select_arguments_override_the_detector_settings() -> None:
    raw = Detection(faces=[_face(30), _face(100, 200), _face(60, 400)])
    det = make_detector("annotation", largest_only=True, min_face_size=500)
    out = det.select(raw, largest_only=False, min_face_size=40)
    assert [f.size for f in out.faces] == [100.0, 60.0] and (out.dropped_small, out.dropped_extra) == (1, 0)
    out = det.select(raw, min_face_size=0)  # largest_only from the detector
    assert [f.size for f in out.faces] == [100.0] and (out.dropped_small, out.dropped_extra) == (0, 2)
    assert det.select(Detection(reason="no face detected")).reason == "no face detected"


def test_num_landmarks_has_one_definition() -> None:
    assert NUM_LANDMARKS is regions.NUM_LANDMARKS == 68


def test_importing_the_package_loads_no_detector_backend() -> None:
    """The heavy detector dependencies load only with their own module, on first use."""
    code = (
        "import sys\n"
        "import ifn.data.landmarks as lmk, ifn.data.photos, ifn.data.corpus\n"
        "heavy = ('mediapipe', 'face_alignment', 'cv2', 'ifn.data.landmarks.mediapipe',"
        " 'ifn.data.landmarks.face_alignment')\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "det = lmk.make_detector('mediapipe')\n"
        "assert type(det).__module__ == 'ifn.data.landmarks.mediapipe'\n"
        "assert 'mediapipe' not in sys.modules and 'face_alignment' not in sys.modules\n"
        "assert 'ifn.data.landmarks.face_alignment' not in sys.modules\n"
        "from ifn.data.landmarks import FaceAlignmentLandmarks, mediapipe_to_ibug68\n"
        "assert 'face_alignment' not in sys.modules\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]  # import this checkout's ifn, wherever pytest was started
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_public_names_are_importable_from_the_package() -> None:
    import ifn.data.landmarks as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.MediapipeLandmarks is MediapipeLandmarks and package.FaceAlignmentLandmarks is FaceAlignmentLandmarks
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018


def test_make_detector_errors() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("nope")
    det = AnnotationLandmarks()
    assert make_detector(det) is det
    assert type(make_detector("mediapipe", max_faces=2)) is MediapipeLandmarks
    assert make_detector("annotation", largest_only=True).largest_only
    with pytest.raises(ValueError, match="instance"):
        make_detector(det, largest_only=True)
    with pytest.raises(ValueError, match="min_face_size"):
        AnnotationLandmarks(min_face_size=-1)


def test_large_images_are_detected_downscaled_and_mapped_back(stub_cls: type) -> None:
    det = stub_cls(max_side=256)
    image = np.random.default_rng(0).integers(0, 255, (600, 1000, 3), dtype=np.uint8)
    full = stub_cls(max_side=4096)(image).faces[0].landmarks
    small = det(image).faces[0].landmarks
    assert det.seen_shapes == [(154, 256, 3)]
    # the stub places its face relative to the image size: mapped back, both agree
    np.testing.assert_allclose(small, full, atol=1000 / 256)


def test_landmark_nme() -> None:
    gt = np.zeros((68, 2))
    gt[36], gt[45] = (0, 0), (10, 0)
    assert landmark_nme(gt + np.array([1.0, 0.0]), gt) == pytest.approx(0.1)
    assert landmark_nme(gt, gt, slice(0, 17)) == 0.0
    with pytest.raises(ValueError, match="68"):
        landmark_nme(gt[:5], gt[:5])


# ----------------------------------------------------------------------------- MediaPipe


@pytest.fixture(scope="module")
def mediapipe_detector() -> MediapipeLandmarks:
    det = MediapipeLandmarks()
    yield det
    det.close()


def test_mediapipe_rejects_non_rgb_uint8(mediapipe_detector: MediapipeLandmarks) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8.*\(40, 50\)"):
        mediapipe_detector(np.zeros((40, 50), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        mediapipe_detector(np.zeros((40, 50, 3), np.float32))


def test_mediapipe_mapping_shape_check() -> None:
    with pytest.raises(ValueError, match="468"):
        mediapipe_to_ibug68(np.zeros((68, 2)))


def test_mediapipe_nme_against_annotated68(faces_dir: Path, mediapipe_detector: MediapipeLandmarks) -> None:
    """68-point NME (inter-ocular) of FaceMesh → iBUG on the 4 annotated faces, and the re-fitted
    jaw beats FaceMesh's usual jaw vertices (in-sample: the jaw mapping was fitted on these faces)."""
    ann = AnnotationLandmarks()
    rows, usual_jaw = [], []
    for image_path in sorted((faces_dir / "annotated68").iterdir()):
        if image_path.suffix in (".pts", ".ljson"):
            continue
        truth = ann(None, image_path)
        if not truth.faces:
            continue  # tongue.pts
        gt = truth.faces[0].landmarks
        image = read_image(image_path)
        found = mediapipe_detector(image, image_path).faces
        assert found, image_path.name
        best = min(found, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - gt.mean(0)))
        rows.append([landmark_nme(best.landmarks, gt, p) for p in (None, slice(17, 68), slice(0, 17))])
        if best.source == "facemesh":  # compare the jaw with the usual vertex mapping
            meshes = mediapipe_detector._mesh_faces(image, "mesh")
            mesh = min(meshes, key=lambda m: np.linalg.norm(mediapipe_to_ibug68(m) - best.landmarks))
            usual = mesh[list(MEDIAPIPE_IBUG_INDICES)]
            usual_jaw.append((landmark_nme(usual, gt, slice(0, 17)), rows[-1][2]))
    assert len(rows) == 4
    nme_all, nme_nojaw, nme_jaw = np.mean(rows, axis=0)
    assert nme_nojaw < 0.07, rows
    assert nme_jaw < 0.13, rows
    assert nme_all < 0.08, rows
    assert np.mean([u for u, _ in usual_jaw]) > np.mean([f for _, f in usual_jaw]) + 0.03


def test_mediapipe_small_face_needs_the_full_range_fallback(
    faces_dir: Path, mediapipe_detector: MediapipeLandmarks
) -> None:
    image = read_image(faces_dir / "annotated68" / "einstein.jpg")  # grayscale JPEG, ~90 px face
    det = mediapipe_detector(image)
    assert len(det.faces) == 1 and det.faces[0].source == "facemesh-crop"
    assert 0.0 < det.faces[0].score <= 1.0
    gt = AnnotationLandmarks()(None, faces_dir / "annotated68" / "einstein.jpg").faces[0].landmarks
    assert landmark_nme(det.faces[0].landmarks, gt) < 0.15
    no_fallback = MediapipeLandmarks(crop_fallback=False)
    assert no_fallback(image).faces == []
    no_fallback.close()


def test_mediapipe_multi_face(faces_dir: Path, mediapipe_detector: MediapipeLandmarks) -> None:
    det = mediapipe_detector(read_image(faces_dir / "misc" / "trump_hillary.jpg"))
    assert len(det.faces) == 2
    assert det.faces[0].size >= det.faces[1].size
    assert abs(det.faces[0].landmarks[:, 0].mean() - det.faces[1].landmarks[:, 0].mean()) > 200


# ----------------------------------------------------------------------------- face-alignment


class _StandInFAN(nn.Module):
    """Same call signature and output as face-alignment's FAN: a list of (B, 68, 64, 64) heatmaps.

    Landmark k peaks at a fixed heatmap cell, so the expected image position is known.
    """

    def __init__(self, num_modules: int = 4) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.register_buffer("peaks", torch.from_numpy(rng.integers(8, 56, (68, 2))))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        hm = torch.zeros(x.shape[0], 68, 64, 64, dtype=x.dtype)
        hm[:, torch.arange(68), self.peaks[:, 1], self.peaks[:, 0]] = 1.0
        return [hm]


@pytest.fixture()
def stand_in_fan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Put the stand-in where face-alignment builds its network; save 'weights' for it."""
    fa_api = pytest.importorskip("face_alignment.api")
    import face_alignment.utils as fa_utils

    monkeypatch.setattr(fa_api, "FAN", _StandInFAN)
    # numba's first compilation of the heatmap decoding dwarfs the test; run the same code as Python
    monkeypatch.setattr(fa_utils, "_get_preds_fromhm", fa_utils._get_preds_fromhm.py_func)
    monkeypatch.setattr(fa_utils, "transform_np", fa_utils.transform_np.py_func)
    path = tmp_path / "weights" / "2DFAN4-11f355bf06.pth.tar"
    path.parent.mkdir()
    torch.save(_StandInFAN().state_dict(), path)
    return path


def _expected_fan_points(box: np.ndarray) -> np.ndarray:
    """Where face-alignment maps the stand-in's heatmap peaks for a box (its documented rule)."""
    w, h = box[2] - box[0], box[3] - box[1]
    centre = np.array([box[0] + w / 2, box[1] + h / 2 - 0.12 * h])
    extent = 200.0 * (w + h) / 195.0
    peaks = _StandInFAN().peaks.numpy().astype(float)
    return (peaks + 0.5 - 32.0) * extent / 64.0 + centre


def test_face_alignment_with_stand_in_network(stand_in_fan: Path) -> None:
    box = np.array([150.0, 160.0, 250.0, 270.0])  # all points land at positive coordinates
    det = FaceAlignmentLandmarks(
        fan_weights=stand_in_fan, face_detector=lambda image: [[*box, 0.9]], flip_input=False, download=False
    )
    image = np.random.default_rng(1).integers(0, 255, (400, 420, 3), dtype=np.uint8)
    out = det(image)
    assert len(out.faces) == 1
    face = out.faces[0]
    assert face.landmarks.shape == (68, 2) and face.source == "fan"
    # face-alignment truncates to the integer pixel index; +0.5 is that pixel's centre
    assert (face.landmarks > 0).all()
    np.testing.assert_allclose(face.landmarks, _expected_fan_points(box), atol=0.5 + 1e-6)
    assert face.score == pytest.approx(1.0)
    assert det.settings()["name"] == "face_alignment"


def test_face_alignment_uses_the_hub_cache_and_mediapipe_boxes(
    stand_in_fan: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, faces_dir: Path
) -> None:
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    stand_in_fan.rename(hub / "checkpoints" / stand_in_fan.name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    det = FaceAlignmentLandmarks(flip_input=False)  # default: boxes from MediaPipe's 68 points
    assert det.fan_path == hub / "checkpoints" / "2DFAN4-11f355bf06.pth.tar"
    out = det(read_image(faces_dir / "misc" / "trump_hillary.jpg"))
    assert len(out.faces) == 2
    for face in out.faces:  # each stand-in face lies at the documented place of its box
        np.testing.assert_allclose(face.landmarks, _expected_fan_points(face.box), atol=1.5)
    det.close()


def test_face_alignment_offline_without_weights_names_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))

    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(fa_module, "_download", offline)
    with pytest.raises(MissingWeightsError, match="2DFAN4-11f355bf06.pth.tar") as info:
        FaceAlignmentLandmarks(face_detector="sfd")
    message = str(info.value)
    assert "s3fd-619a316812.pth" in message
    assert "fan_weights=" in message and str(tmp_path / "empty_hub" / "checkpoints") in message
    with pytest.raises(MissingWeightsError, match=r"fan_weights='/nonexistent/fan.pth'"):
        FaceAlignmentLandmarks(fan_weights="/nonexistent/fan.pth")
    for name in ("face_alignment", "fan"):  # both names reach the same class
        with pytest.raises(MissingWeightsError, match="download disabled"):
            make_detector(name, download=False)
    with pytest.raises(ValueError, match="face_detector"):
        FaceAlignmentLandmarks(face_detector="dlib")
