"""ICT-FaceKit import, against a tiny synthetic archive in ICT's layout with known answers."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from ifn.facemodel.ict import LIMBUS_DEG, convert_ict
from ifn.facemodel.model import FaceModel
from ifn.facemodel.regions import FACE_OUTLINE, points_in_polygon

REAL_ZIP = Path(__file__).parents[2] / ".." / "shared" / "data" / "ICT-FaceKit-master.zip"
PREFIX = "ICT-FaceKit-master/FaceXModel/"
EXPRESSIONS = ["jawOpen", "browDown_L", "eyeBlink_R", "mouthSmile_L", "mouthPucker", "cheekPuff_R"]
#: Singular values (mm) of the synthetic blendshape matrix: energies 1600, 400, 64, 4, 0.16, 0.04,
#: cumulative 77.4 %, 96.7 %, 99.80 %, 99.990 %, 99.998 %, 100 %.
EXPRESSION_SPECTRUM = np.array([40.0, 20.0, 8.0, 2.0, 0.4, 0.2])
GRID = 21  # face area: GRID x GRID vertices
N_FACE = GRID * GRID
N_HEAD = 16  # a 4 x 4 patch behind the face, outside the face area


def _landmark_targets_mm() -> np.ndarray:
    """68 iBUG-ordered (x, y) targets in mm, image-left = -x."""
    pts: list[tuple[float, float]] = []
    for i in range(17):  # jaw
        t = math.pi * (1.0 - i / 16.0)
        pts.append((60.0 * math.cos(t), -10.0 - 50.0 * math.sin(t)))
    for i in range(10):  # brows
        pts.append((-50.0 + 10.0 * i + (10.0 if i >= 5 else 0.0), 35.0 + (3.0 if i in (2, 7) else 0.0)))
    pts += [(0.0, 25.0 - 10.0 * i) for i in range(4)]  # nose bridge
    pts += [(-10.0 + 5.0 * i, -8.0) for i in range(5)]  # nostrils
    for cx in (-30.0, 30.0):  # eyes
        pts += [(cx + dx, 15.0 + dy) for dx, dy in ((-10, 0), (-5, 3), (5, 3), (10, 0), (5, -3), (-5, -3))]
    pts += [(-25, -30), (-15, -25), (-5, -23), (0, -24), (5, -23), (15, -25), (25, -30), (15, -36), (5, -38)]
    pts += [(0, -38), (-5, -38), (-15, -36)]  # outer lips
    pts += [(-20, -30), (-8, -28), (0, -28), (8, -28), (20, -30), (8, -32), (0, -32), (-8, -32)]  # inner lips
    return np.asarray(pts, dtype=np.float64)


def _uv_sphere(n_lat: int, n_lon: int, radius) -> tuple[np.ndarray, list[list[int]]]:
    """A closed sphere with poles on ±z, outward CCW; ``radius(angle_from_+z)``."""
    angles = [0.0] + [math.pi * i / n_lat for i in range(1, n_lat)] + [math.pi]
    verts = [(0.0, 0.0, radius(0.0))]
    for a in angles[1:-1]:
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon
            r = radius(a)
            verts.append((r * math.sin(a) * math.cos(phi), r * math.sin(a) * math.sin(phi), r * math.cos(a)))
    verts.append((0.0, 0.0, -radius(math.pi)))
    def ring(i, j):
        return 1 + i * n_lon + (j % n_lon)
    back = len(verts) - 1
    faces = [[0, ring(0, j), ring(0, j + 1)] for j in range(n_lon)]
    for i in range(n_lat - 2):
        faces += [[ring(i, j), ring(i + 1, j), ring(i + 1, j + 1), ring(i, j + 1)] for j in range(n_lon)]
    faces += [[back, ring(n_lat - 2, j + 1), ring(n_lat - 2, j)] for j in range(n_lon)]
    return np.asarray(verts), faces


@dataclass
class Synthetic:
    """What was written, in the units written (cm) — the independent expectations."""

    root: Path  # the unzipped ICT-FaceKit-master folder
    neutral: np.ndarray  # (N, 3) cm
    identities: np.ndarray  # (n_id, N, 3) cm
    expressions: np.ndarray  # (n_ex, N, 3) cm
    landmarks: np.ndarray  # (68,)
    face_quads: int
    face_triangles: int
    eyes: tuple = ()
    eye_centre: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)


def _obj(vertices: np.ndarray, faces: list[list[int]] | None) -> str:
    lines = ["# synthetic ICT-FaceKit mesh", "mtllib ICTFaceModelMaterial.mtl"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += ["vt 0.5 0.5"]
    if faces:
        lines.append("usemtl M_Face")
        lines += ["f " + " ".join(f"{i + 1}/1" for i in face) for face in faces]
    return "\n".join(lines) + "\n"


def build_synthetic(tmp_path: Path, *, with_eye: bool = False, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    xs = np.linspace(-7.5, 7.5, GRID)
    ys = np.linspace(-7.5, 5.5, GRID)
    gx, gy = np.meshgrid(xs, ys)  # rows go up in y
    dome = 6.0 * np.sqrt(np.clip(1 - (gx / 9.5) ** 2 - (gy / 10.0) ** 2, 0.05, None))
    nose = 2.2 * np.exp(-((gx / 0.9) ** 2) - ((gy - 0.2) / 1.4) ** 2)
    face = np.stack([gx, gy, dome + nose], -1).reshape(-1, 3)
    idx = np.arange(N_FACE).reshape(GRID, GRID)
    faces: list[list[int]] = []
    for r in range(GRID - 1):
        for c in range(GRID - 1):
            a, b, cc, d = idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]
            if (r, c) == (0, 0):  # ICT has a few triangles among its quads
                faces += [[a, b, cc], [a, cc, d]]
            else:
                faces.append([a, b, cc, d])  # counter-clockwise seen from +z
    face_quads = (GRID - 1) ** 2 - 1
    face_tris = 2
    hx, hy = np.meshgrid(np.linspace(-3, 3, 4), np.linspace(-3, 3, 4))
    head = np.stack([hx, hy, np.full_like(hx, -4.0)], -1).reshape(-1, 3)
    hidx = N_FACE + np.arange(N_HEAD).reshape(4, 4)
    faces += [[hidx[r, c], hidx[r + 1, c], hidx[r + 1, c + 1], hidx[r, c + 1]] for r in range(3) for c in range(3)]
    parts = [face, head]
    eyes: tuple = ()
    centre = None
    if with_eye:
        centre = np.array([-3.0, 1.5, 4.0])
        limbus = math.radians(30.0)
        def bulge(a):
            return 1.2 * (1 + 0.08 * max(0.0, (math.cos(a) - math.cos(limbus)) / (1 - math.cos(limbus))))
        sclera, sclera_faces = _uv_sphere(18, 24, bulge)
        iris, iris_faces = _uv_sphere(18, 24, lambda a: 1.1)
        start = N_FACE + N_HEAD
        # The sclera is written inward-wound on purpose: the converter must orient it.
        faces += [[start + i for i in reversed(f)] for f in sclera_faces]
        faces += [[start + len(sclera) + i for i in f] for f in iris_faces]
        parts += [sclera + centre, iris + centre]
        eyes = (((start, start + len(sclera)), (start + len(sclera), start + len(sclera) + len(iris))),)
    neutral = np.round(np.concatenate(parts), 6)
    n = len(neutral)

    targets = _landmark_targets_mm() / 10.0
    landmarks = np.argmin(((face[None, :, :2] - targets[:, None]) ** 2).sum(-1), axis=1)

    smooth = np.stack([np.cos(k * gx / 4.0) * np.sin((k + 1) * gy / 5.0) for k in range(1, 6)]).reshape(5, -1)
    identities = []
    for i in range(4):
        delta = np.zeros((n, 3))
        delta[:N_FACE] = 0.1 * smooth[i][:, None] * rng.normal(size=3)
        delta[N_FACE:] = 0.3 * rng.normal(size=(n - N_FACE, 3))  # ignored outside the face area
        if with_eye:
            delta[N_FACE + N_HEAD :] = 0.02 * rng.normal(size=3)  # eyeballs move rigidly
        identities.append(np.round(neutral + delta, 6))
    n_ex = len(EXPRESSIONS)
    u, _ = np.linalg.qr(rng.normal(size=(n_ex, n_ex)))
    vt, _ = np.linalg.qr(rng.normal(size=(3 * N_FACE, n_ex)))
    e_mm = (u * EXPRESSION_SPECTRUM) @ vt.T  # (n_ex, 3 N_FACE), singular values = the spectrum
    expressions = []
    for k in range(n_ex):
        delta = np.zeros((n, 3))
        delta[:N_FACE] = e_mm[k].reshape(-1, 3) / 10.0
        expressions.append(np.round(neutral + delta, 6))

    fx = tmp_path / "ICT-FaceKit-master" / "FaceXModel"
    fx.mkdir(parents=True)
    (fx / "generic_neutral_mesh.obj").write_text(_obj(neutral, faces))
    for i, verts in enumerate(identities):
        (fx / f"identity{i:03d}.obj").write_text(_obj(verts, faces))
    for name, verts in zip(EXPRESSIONS, expressions, strict=False):
        (fx / f"{name}.obj").write_text(_obj(verts, faces))
    info = {"expressions": EXPRESSIONS, "fitting_expressions": EXPRESSIONS, "idx_to_landmark_verts": landmarks.tolist()}
    (fx / "vertex_indices.json").write_text(json.dumps(info))
    readme = "# ICT-FaceKit\n\nMulti-PIE 68 point facial landmarks indices:\n\n    " + ", ".join(map(str, landmarks))
    (fx.parent / "README.md").write_text(readme + "\n\nRight jawline:\n\n    1, 2, 3\n")
    return Synthetic(
        root=fx.parent,
        neutral=neutral,
        identities=np.stack(identities),
        expressions=np.stack(expressions),
        landmarks=landmarks,
        face_quads=face_quads,
        face_triangles=face_tris,
        eyes=eyes,
        eye_centre=None if centre is None else centre * 10.0,
    )


def make_zip(root: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ICT-FaceKit-master/", b"")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"ICT-FaceKit-master/{path.relative_to(root).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return out


def convert(syn: Synthetic, source: Path | None = None, **kwargs) -> FaceModel:
    return convert_ict(source or syn.root, progress=False, face_range=(0, N_FACE), eyes=syn.eyes, **kwargs)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return build_synthetic(tmp_path_factory.mktemp("ict"))


@pytest.fixture(scope="module")
def model(synthetic: Synthetic) -> FaceModel:
    return convert(synthetic)


# ---------------------------------------------------------------------------- geometry
def test_units_and_kept_vertices(synthetic: Synthetic, model: FaceModel) -> None:
    assert model.n_vertices == N_FACE  # the head patch is dropped
    expected = torch.from_numpy(synthetic.neutral[:N_FACE] * 10.0).float()
    torch.testing.assert_close(model.mean_shape, expected)  # cm -> mm


def test_quads_split_into_two_ccw_triangles(synthetic: Synthetic, model: FaceModel) -> None:
    tris = model.triangles.numpy()
    assert len(tris) == 2 * synthetic.face_quads + synthetic.face_triangles
    v = model.mean_shape.double().numpy()
    normals = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    assert (normals[:, 2] > 0).all()  # counter-clockwise seen from the front (+z)
    # Each quad (a, b, c, d) of the grid becomes (a, b, c) + (a, c, d), in either diagonal order.
    def canon(t):
        return tuple(np.roll(t, -int(np.argmin(t))))
    got = {canon(t) for t in tris}
    idx = np.arange(N_FACE).reshape(GRID, GRID)
    for r in range(GRID - 1):
        for c in range(GRID - 1):
            a, b, cc, d = idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]
            assert {canon((a, b, cc)), canon((a, cc, d))} <= got or {canon((a, b, d)), canon((b, cc, d))} <= got


def test_flipped_winding_is_corrected(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    fx = syn.root / "FaceXModel"
    lines = (fx / "generic_neutral_mesh.obj").read_text().splitlines()
    flipped = [("f " + " ".join(reversed(l.split()[1:]))) if l.startswith("f ") else l for l in lines]
    (fx / "generic_neutral_mesh.obj").write_text("\n".join(flipped) + "\n")
    model = convert(syn)
    v = model.mean_shape.double().numpy()
    t = model.triangles.numpy()
    assert (np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])[:, 2] > 0).all()
    assert model.metadata.extra["orientation"]["face_flipped"] is True


def test_landmarks_and_face_mask(synthetic: Synthetic, model: FaceModel) -> None:
    np.testing.assert_array_equal(model.landmark_indices.numpy(), synthetic.landmarks)
    v = model.mean_shape.double()
    polygon = v[model.landmark_indices[list(FACE_OUTLINE)], :2]
    inside = points_in_polygon(v[:, :2], polygon)
    assert (model.face_mask >= inside).all()  # everything strictly inside is in the mask
    assert model.face_mask[model.landmark_indices].all()  # landmarks inside or on the border
    extra = model.metadata.extra["face_mask"]
    assert extra["landmarks_outside"] == [] and extra["inner_landmarks_not_strictly_inside"] == []
    assert model.face_triangles.shape[0] > 0


# ------------------------------------------------------------------------------- bases
def test_bases_are_orthonormal(model: FaceModel) -> None:
    for group in ("shape", "expression", "reflectance"):
        basis = getattr(model, f"{group}_basis").double().flatten(1)
        torch.testing.assert_close(basis @ basis.T, torch.eye(basis.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
        std = getattr(model, f"{group}_std")
        assert (std[:-1] >= std[1:]).all() and (std > 0).all()


def test_identity_covariance_is_reproduced(synthetic: Synthetic, model: FaceModel) -> None:
    d = (synthetic.identities[:, :N_FACE] - synthetic.neutral[:N_FACE]).reshape(len(synthetic.identities), -1) * 10
    basis = model.shape_basis.double().flatten(1).numpy()
    sigma = model.shape_std.double().numpy()
    assert model.n_shape == len(synthetic.identities)
    np.testing.assert_allclose(basis.T @ np.diag(sigma**2) @ basis, d.T @ d, atol=1e-4 * np.abs(d.T @ d).max())


@pytest.mark.parametrize(("variance", "k"), [(0.9, 2), (0.99, 3), (0.999, 4), (1.0, 6)])
def test_expression_pca_keeps_the_right_modes(tmp_path: Path, synthetic: Synthetic, variance: float, k: int) -> None:
    model = convert(synthetic, expression_variance=variance)
    assert model.n_expression == k
    n_ex = len(EXPRESSIONS)
    energy = EXPRESSION_SPECTRUM**2
    assert model.metadata.extra["expression_variance_kept"] == pytest.approx(energy[:k].sum() / energy.sum(), abs=1e-6)
    assert model.metadata.extra["expression_variance_kept"] >= variance - 1e-9
    np.testing.assert_allclose(model.expression_std.numpy(), EXPRESSION_SPECTRUM[:k] / np.sqrt(n_ex), rtol=2e-3)
    assert model.metadata.expression_names == tuple(EXPRESSIONS)


def test_expression_basis_spans_the_blendshapes(synthetic: Synthetic, model: FaceModel) -> None:
    e = (synthetic.expressions[:, :N_FACE] - synthetic.neutral[:N_FACE]).reshape(len(EXPRESSIONS), -1) * 10
    basis = model.expression_basis.double().flatten(1).numpy()
    residual = e - (e @ basis.T) @ basis
    kept = (np.linalg.norm(e) ** 2 - np.linalg.norm(residual) ** 2) / np.linalg.norm(e) ** 2
    assert kept >= 0.99
    # Positive θe,1 opens the mouth: the first mode correlates positively with jawOpen.
    assert basis[0] @ e[EXPRESSIONS.index("jawOpen")] > 0


def test_metadata(model: FaceModel) -> None:
    meta = model.metadata
    assert meta.name == "ict-facekit" and meta.reflectance == "prior"
    assert "https://github.com/ICT-VGL/ICT-FaceKit" in meta.source and "ICT-FaceKit-master" in meta.source
    assert meta.license.startswith("MIT (ICT-FaceKit, Copyright (c) 2020 USC Institute for Creative Technologies)")
    assert "prior" in meta.description.lower() and "not a measurement" in meta.description
    assert meta.expression_prior.low < 0 < meta.expression_prior.high and meta.expression_prior.note
    assert meta.extra["expression_modes"] == model.n_expression


def test_save_load_round_trip(tmp_path: Path, model: FaceModel) -> None:
    loaded = FaceModel.load(model.save(tmp_path / "ict.npz"))
    for key, value in model.arrays().items():
        assert torch.equal(value, getattr(loaded, key)), key
    assert loaded.metadata == model.metadata


# ---------------------------------------------------------------------------- sources
def test_zip_and_folders_give_identical_models(tmp_path: Path, synthetic: Synthetic, model: FaceModel) -> None:
    archive = make_zip(synthetic.root, tmp_path / "ICT-FaceKit-master.zip")
    sources = [archive, synthetic.root / "FaceXModel", synthetic.root.parent]
    for source in sources:
        other = convert(synthetic, source)
        for key, value in model.arrays().items():
            assert torch.equal(value, getattr(other, key)), (source, key)
    assert not (tmp_path / "ICT-FaceKit-master").exists()  # nothing was extracted


@pytest.mark.parametrize("entry", ["../x", "ICT-FaceKit-master/../../evil.obj", "/abs/x", "C:/windows/x"])
def test_unsafe_zip_entries_are_refused(tmp_path: Path, synthetic: Synthetic, entry: str) -> None:
    archive = make_zip(synthetic.root, tmp_path / "evil.zip", extra={entry: b"boom"})
    with pytest.raises(ValueError, match="unsafe zip entry") as info:
        convert(synthetic, archive)
    assert repr(entry) in str(info.value)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_missing_expression_obj_names_the_file(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    (syn.root / "FaceXModel" / "mouthSmile_L.obj").unlink()
    with pytest.raises(FileNotFoundError, match="mouthSmile_L.obj"):
        convert(syn)
    archive = make_zip(syn.root, tmp_path / "a.zip")
    with pytest.raises(FileNotFoundError, match="mouthSmile_L.obj"):
        convert(syn, archive)


def test_truncated_obj_names_the_file(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    path = syn.root / "FaceXModel" / "identity002.obj"
    text = path.read_text()
    path.write_text(text[: len(text) // 3])
    with pytest.raises(ValueError, match=r"identity002\.obj: expected \d+ vertices"):
        convert(syn)


def test_malformed_obj_names_the_file(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    path = syn.root / "FaceXModel" / "eyeBlink_R.obj"
    path.write_text(path.read_text().replace("v ", "v nan_or_garbage ", 1))
    with pytest.raises(ValueError, match=r"eyeBlink_R\.obj"):
        convert(syn)


def test_source_errors(tmp_path: Path, synthetic: Synthetic) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_ict(tmp_path / "nope.zip", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="generic_neutral_mesh.obj"):
        convert_ict(tmp_path / "empty", progress=False)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.zip"):
        convert_ict(tmp_path / "junk.zip", progress=False)
    with pytest.raises(ValueError, match="expression_variance"):
        convert(synthetic, expression_variance=0.0)


def test_readme_landmarks_must_agree(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    readme = syn.root / "README.md"
    readme.write_text(readme.read_text().replace(f"    {syn.landmarks[0]}, ", f"    {syn.landmarks[0] + 1}, ", 1))
    with pytest.raises(ValueError, match="disagrees"):
        convert(syn)


def test_landmarks_from_readme_when_json_lacks_them(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path)
    path = syn.root / "FaceXModel" / "vertex_indices.json"
    info = json.loads(path.read_text())
    del info["idx_to_landmark_verts"]
    path.write_text(json.dumps(info))
    np.testing.assert_array_equal(convert(syn).landmark_indices.numpy(), syn.landmarks)


# -------------------------------------------------------------------------------- eyes
def test_eyeball_front_is_kept_with_a_visible_iris(tmp_path: Path) -> None:
    syn = build_synthetic(tmp_path, with_eye=True)
    model = convert(syn)
    (s0, s1), (i0, i1) = syn.eyes[0]
    n_eye = model.n_vertices - N_FACE
    assert 0 < n_eye < (s1 - s0) + (i1 - i0)
    v = model.mean_shape.double().numpy()
    eye_tris = model.triangles.numpy()
    eye_tris = eye_tris[(eye_tris >= N_FACE).all(axis=1)]
    normals = np.cross(v[eye_tris[:, 1]] - v[eye_tris[:, 0]], v[eye_tris[:, 2]] - v[eye_tris[:, 0]])
    centroids = v[eye_tris].mean(axis=1)
    assert (normals[:, 2] > 0).all()  # only forward-facing triangles
    assert ((normals * (centroids - syn.eye_centre)).sum(axis=1) > 0).all()  # wound outward (sclera was flipped)
    # The sclera is kept outside the cornea cap, the inner (iris) shell only inside it.
    rel = v[eye_tris] - syn.eye_centre
    angle = np.degrees(np.arccos(rel[..., 2] / np.linalg.norm(rel, axis=-1)))
    radius = np.linalg.norm(rel, axis=-1)
    is_iris = np.isclose(radius, 11.0, atol=1e-3).all(axis=1)
    assert is_iris.any() and (~is_iris).any()
    assert (angle[is_iris].min(axis=1) < LIMBUS_DEG).all()
    assert (angle[~is_iris].max(axis=1) >= LIMBUS_DEG).all()
    assert model.face_mask[N_FACE:].all()
    albedo = model.reflectance_mean.numpy()
    iris_v = np.unique(eye_tris[is_iris])
    sclera_v = np.setdiff1d(np.unique(eye_tris[~is_iris]), iris_v)
    assert albedo[iris_v].mean() < albedo[sclera_v].mean() - 0.3
    # Identities move the eyes too; expressions leave them alone.
    assert model.shape_basis[:, N_FACE:].abs().max() > 0
    assert model.expression_basis[:, N_FACE:].abs().max() == 0


# ------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_real_ict_facekit(tmp_path: Path) -> None:
    if not REAL_ZIP.is_file():
        pytest.skip(f"ICT-FaceKit zip not found at {REAL_ZIP}")
    model = convert_ict(REAL_ZIP, progress=False)
    assert model.n_shape == 100
    assert model.landmark_indices.shape == (68,)
    face = model.mean_shape[model.face_mask]
    width = float(face[:, 0].max() - face[:, 0].min())
    assert 100.0 <= width <= 200.0
    assert model.metadata.extra["expression_variance_kept"] >= 0.99
    assert model.metadata.extra["face_mask"]["landmarks_outside"] == []
    assert model.metadata.extra["reflectance_in_range_fraction"] >= 0.99
    # The nose tip points out of the face, and positive θe,1 opens the mouth.
    lm = model.landmark_indices
    theta_e = torch.zeros(1, model.n_expression)
    theta_e[0, 0] = 3.0
    opened = model.geometry(torch.zeros(1, model.n_shape), theta_e)[0]
    def gap(g):
        return float(g[lm[62], 1] - g[lm[66], 1])
    assert gap(opened) > gap(model.mean_shape) + 5.0
    loaded = FaceModel.load(model.save(tmp_path / "ict.npz"))
    for key, value in model.arrays().items():
        assert torch.equal(value, getattr(loaded, key)), key
    assert loaded.metadata == model.metadata
    # The frontal mean face, framed by its landmarks, covers a face-sized part of the crop.
    from ifn.render import FaceRenderer

    renderer = FaceRenderer(model, image_size=240, backend="torch")
    theta = torch.zeros(1, renderer.layout.size)
    light = renderer.layout.slices["illumination"].start
    theta[:, light : light + 3] = 1.0
    coverage = renderer(theta).mask.mean().item()
    assert 0.40 <= coverage <= 0.90, coverage
    # One rule for renders and photos: over faces from the prior, a render's region is the
    # landmark mask of its own projected landmarks (what a real crop is masked with).
    from ifn.data.priors import ParameterPrior
    from ifn.facemodel.regions import face_region_mask

    thetas = ParameterPrior().sample(renderer.layout, 48, expression_prior=model.metadata.expression_prior,
                                     generator=torch.Generator().manual_seed(0))
    out = renderer(thetas)
    rendered, own = out.mask > 0.5, face_region_mask(out.landmarks, (240, 240)) > 0.5
    iou = 100 * (rendered & own).sum((1, 2, 3)).double() / (rendered | own).sum((1, 2, 3)).double()
    assert iou.mean() >= 99.5 and iou.min() >= 97.0, (iou.mean(), iou.min())
    shutil.rmtree(tmp_path, ignore_errors=True)
