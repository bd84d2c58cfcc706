"""``ifn facemodel convert / info / render`` on every converter's fixtures, a short ``ifn fit`` on
each converted model, the embedded ICT model by name, and barycentric landmarks in the renderer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ifn.cli import main
from ifn.facemodel.cli import render_sheet
from ifn.facemodel.model import FaceModel, build_face_model, embedded_model_path, load_face_model
from ifn.render import FaceRenderer

#: ``ifn fit`` shrunk to seconds (as in tests/test_cli.py).
TINY_FIT = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1", "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1", "--model.backbone=mobilenetv3_small_050", "--data.render.image_size=32",
    "--data.render.n_shape=3", "--data.render.n_expression=2", "--data.render.n_reflectance=3",
    "--data.batch_size=4", "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4",
    "--data.render.backend=torch",
]
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _convert(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(["facemodel", "convert", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def converted(capsys, tmp_path, bfm2009_front_file, bfm2009_full_files, bfm2017_files, flame_files) -> dict[str, Path]:
    """Every converter's fixtures through the CLI, one .npz each."""
    full = bfm2009_full_files
    out = {name: tmp_path / f"{name}.npz" for name in ("bfm2009_front", "bfm2009", "bfm2017", "flame")}
    _convert(capsys, ["bfm2009", str(bfm2009_front_file), "-o", str(out["bfm2009_front"])])
    _convert(capsys, ["bfm2009", *(str(full[n]) for n in ("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt",
                                                         "BFM_exp_idx.mat")),
                      "--landmarks", str(full["landmarks.txt"]), "-o", str(out["bfm2009"])])
    _convert(capsys, ["bfm2017", str(bfm2017_files["h5"]), str(bfm2017_files["landmarks"]), "--landmarks-one-based",
                      "-o", str(out["bfm2017"])])
    written = _convert(capsys, ["flame", str(flame_files["model"]), str(flame_files["landmarks"]),
                                str(flame_files["albedo"]), "-o", str(out["flame"])])
    assert written["landmark_kind"] == "barycentric" and written["reflectance"] == "measured"
    return out


def test_info_describes_each_converted_model(capsys, converted):
    for name, path in converted.items():
        capsys.readouterr()
        assert main(["facemodel", "info", str(path)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["landmarks"] == 68 and info["shape_modes"] == 5 and info["expression_modes"] == 3, name
        assert 100 < info["face_width_mm"] < 160 and info["reflectance"] == "measured", name
        assert len(info["sha256"]) == 64 and "licen" in info["license"].lower(), name


def test_each_converted_model_renders_faces_in_frame_with_landmarks_on_them(converted, tmp_path):
    for name, path in converted.items():
        sheet = tmp_path / f"{name}.png"
        report = render_sheet(FaceModel.load(path), sheet, rows=2, cols=4, size=64)
        assert sheet.is_file() and report["faces"] == 12, name
        assert report["landmarks_in_frame"] == 1.0, (name, report)
        assert report["landmarks_on_face"] >= 0.9, (name, report)
        assert report["face_coverage"] > 0.3, (name, report)


def test_each_converted_model_trains_a_few_steps(converted, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ifn"])
    monkeypatch.chdir(tmp_path)
    for name, path in converted.items():
        root = tmp_path / f"run_{name}"
        assert main(["fit", "--config", str(QUICKSTART), *TINY_FIT, f"--data.render.face_model={path}",
                     f"--trainer.default_root_dir={root}"]) == 0, name
        assert (root / "checkpoints" / "last.ckpt").is_file(), name


def test_render_command_writes_a_sheet(capsys, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["facemodel", "render", "procedural", "-o", str(out), "--rows", "1", "--cols", "2",
                 "--size", "48"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["faces"] == 4 and report["landmarks_in_frame"] == 1.0
    assert main(["facemodel", "render", "procedural", "-o", str(tmp_path / "sheet.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err


def test_refused_pickle_is_a_one_line_error_and_does_not_run(capsys, tmp_path, flame_files):
    import os
    import pickle

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "generic_model.pkl"
    evil.write_bytes(pickle.dumps({"v_template": Payload()}, protocol=2))
    capsys.readouterr()
    assert main(["facemodel", "convert", "flame", str(evil), str(flame_files["landmarks"]), "-o",
                 str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ifn: error: facemodel convert flame: ")
    assert "generic_model.pkl: refused to unpickle" in err[0] and "system" in err[0]
    assert not marker.exists() and not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- embedded ICT
def test_embedded_ict_loads_by_name_and_is_small(capsys):
    path = embedded_model_path("ict")
    assert path.stat().st_size <= 10 * 1024 * 1024
    notice = (path.parent / "ICT-FaceKit-LICENSE.txt").read_text()
    assert "MIT License" in notice and "Permission is hereby granted" in notice
    model = load_face_model("ict")
    assert model.metadata.name == "ict-facekit-embedded" and model.metadata.license.startswith("MIT")
    assert (model.n_shape, model.n_expression) == (100, 26) and model.n_reflectance > 0
    assert model.face_mask[model.landmark_indices].all()
    # float16 on disk, float32 in memory, orthonormal within float16 rounding.
    with np.load(path, allow_pickle=False) as npz:
        assert npz["shape_basis"].dtype == np.float16
    gram = model.shape_basis.flatten(1).double() @ model.shape_basis.flatten(1).double().T
    assert (gram - torch.eye(model.n_shape, dtype=torch.float64)).abs().max() < 1e-3
    assert main(["facemodel", "info", "ict"]) == 0
    assert json.loads(capsys.readouterr().out)["vertices"] == model.n_vertices
    assert build_face_model("ict", 5, 5, 10).n_shape == 5


def test_existing_names_and_hashes_are_unchanged():
    # The procedural model's content hash is what checkpoints already store (README: f4654d6cec48).
    assert build_face_model("procedural", 5, 5, 10).sha256.startswith("f4654d6cec48")
    with pytest.raises(FileNotFoundError, match="neither the built-in 'procedural' model, the embedded 'ict' model"):
        load_face_model("no-such-model")


# ------------------------------------------------------------------ barycentric landmarks
def _with_barycentric(model: FaceModel, weights: torch.Tensor) -> FaceModel:
    tri = model.triangles
    tris = torch.stack([torch.nonzero((tri == v).any(dim=1))[0, 0] for v in model.landmark_indices])
    corner = (tri[tris] == model.landmark_indices[:, None]).long().argmax(dim=1)
    w = torch.stack([torch.roll(weights, int(c)) for c in corner])
    arrays = model.arrays()
    return FaceModel(**arrays, landmark_triangles=tris, landmark_barycentrics=w, metadata=model.metadata)


def test_barycentric_landmark_on_a_vertex_projects_exactly_like_the_vertex(toy_face_model):
    exact = _with_barycentric(toy_face_model, torch.tensor([1.0, 0.0, 0.0]))
    theta = torch.randn(3, FaceRenderer(toy_face_model, image_size=48, backend="torch").layout.size,
                        generator=torch.Generator().manual_seed(0)) * 0.2
    a = FaceRenderer(toy_face_model, image_size=48, backend="torch")(theta)
    b = FaceRenderer(exact, image_size=48, backend="torch")(theta)
    assert torch.equal(a.landmarks, b.landmarks) and torch.equal(a.image, b.image)
    assert exact.sha256 != toy_face_model.sha256  # the extra arrays are part of the content


def test_barycentric_landmark_projects_the_3d_point(toy_face_model, tmp_path):
    model = _with_barycentric(toy_face_model, torch.tensor([0.5, 0.25, 0.25]))
    renderer = FaceRenderer(model, image_size=48, backend="torch")
    theta = torch.zeros(1, renderer.layout.size)
    theta[0, 1] = 0.4  # yaw: perspective differs from interpolating projected corners
    out = renderer(theta)
    posed = renderer.pose(renderer.layout.split(theta))
    corners = posed[0, model.triangles[model.landmark_triangles]]  # (68, 3, 3)
    point = (corners * model.landmark_barycentrics[:, :, None]).sum(dim=1)
    depth = renderer.camera_distance - point[:, 2]
    plane = torch.stack([point[:, 0] / depth, -point[:, 1] / depth], dim=-1)
    # Framing: the landmarks' bounding box scaled uniformly to fit 48 px and centred.
    lo, hi = plane.amin(0), plane.amax(0)
    s = torch.minimum(48.0 / (hi - lo)[0], 48.0 / (hi - lo)[1])
    expected = (plane - (lo + hi) / 2) * s + 24.0
    assert torch.allclose(out.landmarks[0], expected, atol=1e-3)
    # Saved and loaded, the barycentric arrays come back.
    loaded = FaceModel.load(model.save(tmp_path / "bary.npz"))
    assert loaded.has_barycentric_landmarks and loaded.sha256 == model.sha256


@pytest.mark.slow
def test_embedded_ict_draws_the_same_face_as_the_full_conversion(shared_data, load_script):
    """The embedded model is the full ICT conversion's face region: the same mean face and its
    render, the same covariance on the kept vertices (up to the bases' float16 rounding)."""
    from ifn.facemodel.ict import convert_ict

    full = convert_ict(shared_data / "ICT-FaceKit-master.zip", progress=False)
    embedded = load_face_model("ict")
    cropped, report = load_script("make_embedded_ict").crop(full)
    assert report["kept_vertices"] == embedded.n_vertices
    np.testing.assert_array_equal(embedded.mean_shape.numpy(), cropped.mean_shape.numpy())  # float32 mean
    layout = FaceRenderer(full, image_size=96, backend="torch").layout
    theta = torch.zeros(2, layout.size)
    light = layout.slices["illumination"].start
    theta[:, light : light + 3] = 0.9  # white ambient light (SH band 0)
    theta[1, 1] = 0.5  # yaw
    a = FaceRenderer(full, image_size=96, backend="torch")(theta)
    b = FaceRenderer(embedded, image_size=96, backend="torch")(theta)
    assert torch.equal(a.landmarks, b.landmarks)
    assert (a.mask != b.mask).float().mean() < 0.001
    assert (a.image - b.image).abs().max() < 0.01
    # Covariance of the first kept vertex's coordinates, full model vs embedded.
    v_full = int(torch.cdist(embedded.mean_shape[:1], full.mean_shape).argmin())
    cov_full = torch.einsum("k,ki,kj->ij", full.shape_std.double() ** 2, full.shape_basis[:, v_full].double(),
                            full.shape_basis[:, v_full].double())
    cov_emb = torch.einsum("k,ki,kj->ij", embedded.shape_std.double() ** 2, embedded.shape_basis[:, 0].double(),
                           embedded.shape_basis[:, 0].double())
    assert torch.allclose(cov_emb, cov_full, rtol=0.02, atol=1e-3 * float(cov_full.abs().max()))
