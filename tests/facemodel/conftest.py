"""Schema-exact, tiny BFM and FLAME files written by the tests (never the real models).

All fixtures share one made-up face (the toy dome of ``tests/conftest.py``, 41 × 41 grid,
millimetres) and one set of made-up modes with known standard deviations, so a converted
model can be checked against values computed here by hand:

* modes are orthonormal columns (x, y, z interleaved per vertex), zero on the four grid
  corners (which the BFM 2009 expression basis leaves out), each with its largest
  component positive (the sign the converter's SVD keeps), with distinct σ's;
* each file stores them the way its format does (unit columns + σ, + variance, or
  σ-scaled columns; micrometres, decimetres, millimetres or metres; colour 0..255 or 0..1;
  1-based or 0-based indices; BGR textures).
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

N_GRID = 41
SHAPE_SD = np.array([400.0, 300.0, 200.0, 100.0, 50.0])  # mm
EXPR_SD = np.array([250.0, 150.0, 80.0])  # mm
TEX_SD = np.array([3.0, 2.0, 1.0])  # colour units of [0, 1]


@dataclass
class FakeFace:
    """The face every fixture stores (arrays in mm, colour in [0, 1], 0-based indices)."""

    mean: np.ndarray  # (V, 3)
    triangles: np.ndarray  # (F, 3)
    landmarks: np.ndarray  # (68,) vertex indices
    shape_u: np.ndarray  # (3V, K_s) orthonormal columns
    expr_u: np.ndarray  # (3V, K_e)
    tex_mean: np.ndarray  # (V, 3)
    tex_u: np.ndarray  # (3V, K_r)
    corners: np.ndarray  # the 4 grid-corner vertices

    @property
    def n(self) -> int:
        return len(self.mean)


def _modes(k: int, n_vertices: int, corners: np.ndarray, grid: tuple[np.ndarray, np.ndarray], seed: int) -> np.ndarray:
    gx, gy = grid
    rng = np.random.default_rng(seed)
    cols = []
    for j in range(k):
        w = np.cos((j % 3 + 1) * math.pi * gx / 150.0) * np.cos((j // 3 + 1) * math.pi * gy / 130.0)
        field = w.reshape(-1, 1) * rng.standard_normal(3)
        field[corners] = 0.0
        cols.append(field.reshape(-1))
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    largest = q[np.abs(q).argmax(axis=0), np.arange(k)]
    return q * np.sign(largest)


def _toy_builder():
    """The root conftest's toy-model builder (conftest files are not importable by name
    under --import-mode=importlib)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_toy_face_model


@pytest.fixture(scope="session")
def fake_face() -> FakeFace:
    toy = _toy_builder()(N_GRID)
    mean = toy.mean_shape.double().numpy()
    n = len(mean)
    xs = np.linspace(-75.0, 75.0, N_GRID)
    ys = np.linspace(-75.0, 55.0, N_GRID)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    corners = np.array([0, N_GRID - 1, n - N_GRID, n - 1])
    wave = np.stack([np.sin(gx / 20), np.cos(gy / 25), np.sin((gx + gy) / 30)], -1).reshape(-1, 3)
    return FakeFace(
        mean=mean,
        triangles=toy.triangles.numpy(),
        landmarks=toy.landmark_indices.numpy(),
        shape_u=_modes(len(SHAPE_SD), n, corners, (gx, gy), 1),
        expr_u=_modes(len(EXPR_SD), n, corners, (gx, gy), 2),
        tex_mean=np.clip(np.array([0.6, 0.42, 0.33]) + 0.1 * wave, 0.0, 1.0),
        tex_u=_modes(len(TEX_SD), n, corners, (gx, gy), 3),
        corners=corners,
    )


def _interleave(v: np.ndarray) -> np.ndarray:
    return v.reshape(-1)


# -------------------------------------------------------------------------------- BFM 2009
@pytest.fixture(scope="session")
def bfm2009_front_file(fake_face: FakeFace, tmp_path_factory) -> Path:
    """Deep3DFaceRecon's BFM_model_front.mat: σ-scaled bases in decimetres, 1-based indices."""
    import scipy.io

    f = fake_face
    path = tmp_path_factory.mktemp("bfm09front") / "BFM_model_front.mat"
    scipy.io.savemat(str(path), {
        "meanshape": (_interleave(f.mean) / 100.0)[None, :].astype(np.float32),
        "idBase": (f.shape_u * SHAPE_SD / 100.0).astype(np.float32),
        "exBase": (f.expr_u * EXPR_SD / 100.0).astype(np.float32),
        "meantex": (_interleave(f.tex_mean) * 255.0)[None, :].astype(np.float32),
        "texBase": (f.tex_u * TEX_SD * 255.0).astype(np.float32),
        "tri": (f.triangles + 1).astype(np.float64),
        "keypoints": (f.landmarks + 1)[None, :].astype(np.float64),
        "point_buf": np.ones((f.n, 8), np.float64),  # present in the real file, unused
    }, format="5")
    return path


@pytest.fixture(scope="session")
def bfm2009_full_files(fake_face: FakeFace, tmp_path_factory) -> dict[str, Path]:
    """01_MorphableModel.mat (µm, unit PCs + EV σ's), Guo's Exp_Pca.bin/std_exp.txt over all
    vertices but the 4 grid corners, BFM_exp_idx.mat, and a 0-based landmark file."""
    import scipy.io

    f = fake_face
    folder = tmp_path_factory.mktemp("bfm09")
    paths = {name: folder / name for name in
             ("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt", "BFM_exp_idx.mat", "landmarks.txt")}
    scipy.io.savemat(str(paths["01_MorphableModel.mat"]), {
        "shapeMU": (_interleave(f.mean) * 1000.0)[:, None].astype(np.float32),
        "shapePC": f.shape_u.astype(np.float32),
        "shapeEV": (SHAPE_SD * 1000.0)[:, None].astype(np.float32),
        "texMU": (_interleave(f.tex_mean) * 255.0)[:, None].astype(np.float32),
        "texPC": f.tex_u.astype(np.float32),
        "texEV": (TEX_SD * 255.0)[:, None].astype(np.float32),
        "tl": (f.triangles + 1).astype(np.float64),
        "segbin": np.zeros((f.n, 4), np.float64),
    }, format="5")
    keep = np.setdiff1d(np.arange(f.n), f.corners)
    expr = f.expr_u.reshape(f.n, 3, -1)[keep]  # (M, 3, K)
    k = expr.shape[-1]
    with paths["Exp_Pca.bin"].open("wb") as handle:
        handle.write(np.array([k], "<i4").tobytes())
        handle.write(np.full(3 * len(keep), 7.0, "<f4").tobytes())  # expMU: unused by the converter
        handle.write(np.moveaxis(expr, -1, 0).reshape(k, -1).astype("<f4").tobytes())
    np.savetxt(paths["std_exp.txt"], EXPR_SD * 1000.0)
    scipy.io.savemat(str(paths["BFM_exp_idx.mat"]), {"trimIndex": (keep + 1)[:, None].astype(np.float64)},
                     format="5")
    position = np.searchsorted(keep, f.landmarks)
    np.savetxt(paths["landmarks.txt"], position, fmt="%d")
    return paths


# ------------------------------------------------------------------------------- BFM 2017
@pytest.fixture(scope="session")
def bfm2017_files(fake_face: FakeFace, tmp_path_factory) -> dict[str, Path]:
    """A statismo .h5 (mm, unit pcaBasis + pcaVariance, (3, F) 0-based cells) and 1-based landmarks."""
    import h5py

    f = fake_face
    folder = tmp_path_factory.mktemp("bfm17")
    path = folder / "model2017-1_face12_nomouth.h5"
    with h5py.File(path, "w") as h5:
        for part, mean, u, sd in (("shape", f.mean, f.shape_u, SHAPE_SD), ("color", f.tex_mean, f.tex_u, TEX_SD),
                                  ("expression", np.zeros_like(f.mean), f.expr_u, EXPR_SD)):
            group = h5.create_group(f"{part}/model")
            group["mean"] = _interleave(mean).astype(np.float32)
            group["pcaBasis"] = u.astype(np.float32)
            group["pcaVariance"] = (sd**2).astype(np.float32)
            group["noiseVariance"] = np.float32(0.0)
            rep = h5.create_group(f"{part}/representer")
            rep["points"] = f.mean.T.astype(np.float32)
            rep["cells"] = f.triangles.T.astype(np.uint32)
        h5["catalog/MorphableModel/modelPath"] = "/"
    landmarks = folder / "landmarks68.txt"
    np.savetxt(landmarks, f.landmarks + 1, fmt="%d")
    return {"h5": path, "landmarks": landmarks}


# ---------------------------------------------------------------------------------- FLAME
class _FakeCh:
    """Pickles like chumpy's ``Ch``: ``chumpy.ch.Ch`` with its ``__dict__`` as state."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self._dirty_vars = set()
        self._itr = None
        self._depends_on_deps = {}
        self._make_dense = False
        self._make_sparse = False

    def __getstate__(self) -> dict:
        return dict(self.__dict__)


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ASCII ``str`` as Python 2 ``str`` opcodes (SHORT_BINSTRING /
    BINSTRING), as Python 2's pickle did: what a Python 2 FLAME pickle holds."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def _save_str(self, obj: str) -> None:
        if obj.isascii():
            self._save_py2_str(obj)
        else:
            pickle._Pickler.dispatch[str](self, obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2, fix_imports=True).dump(obj)
    return buffer.getvalue()


def fake_chumpy_pickle(obj: object, protocol: int = 2, py2: bool = True) -> bytes:
    """Pickle ``obj`` with :class:`_FakeCh` recorded as ``chumpy.ch.Ch`` (at protocol 2, as
    Python 2 wrote it unless ``py2=False``)."""
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    cls = type("Ch", (_FakeCh,), {"__module__": "chumpy.ch", "__qualname__": "Ch"})
    mod.Ch = cls
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
    try:
        def convert(value: object) -> object:
            if isinstance(value, _FakeCh):
                out = cls.__new__(cls)
                out.__dict__.update(value.__dict__)
                return out
            return value

        value = {k: convert(v) for k, v in obj.items()} if isinstance(obj, dict) else obj
        if protocol == 2 and py2:
            return py2_pickle(value)
        return pickle.dumps(value, protocol=protocol)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


@pytest.fixture(scope="session")
def fake_chumpy_pickle_fn():
    """:func:`fake_chumpy_pickle`, with the fake class as ``.Ch`` (to wrap arrays) and the
    Python 2 pickler as ``.py2``."""
    fake_chumpy_pickle.Ch = _FakeCh
    fake_chumpy_pickle.py2 = py2_pickle
    return fake_chumpy_pickle


#: Barycentric weights of every fixture landmark on its triangle (the landmark vertex weighs most).
LANDMARK_WEIGHTS = np.array([0.6, 0.3, 0.1])


def landmark_triangles(f: FakeFace) -> tuple[np.ndarray, np.ndarray]:
    """Per landmark vertex, a triangle with that vertex, ordered so it is the first corner's weight."""
    tris, weights = [], []
    for v in f.landmarks:
        t = int(np.flatnonzero((f.triangles == v).any(axis=1))[0])
        corner = int(np.flatnonzero(f.triangles[t] == v)[0])
        w = np.roll(LANDMARK_WEIGHTS, corner)
        tris.append(t)
        weights.append(w)
    return np.array(tris), np.array(weights)


@pytest.fixture(scope="session")
def flame_files(fake_face: FakeFace, tmp_path_factory) -> dict[str, Path]:
    """generic_model.pkl (Python 2 protocol 2, chumpy Ch, metres, scipy CSC J_regressor), DECA's
    landmark_embedding.npy (object array), FLAME_albedo_from_BFM.npz (BGR, [0, 1], per-texel
    UVs at the vertices)."""
    import scipy.sparse

    f = fake_face
    folder = tmp_path_factory.mktemp("flame")
    n = f.n
    shapedirs = np.concatenate([f.shape_u * SHAPE_SD, f.expr_u * EXPR_SD], axis=1).reshape(n, 3, -1) / 1000.0
    model = {
        "v_template": _FakeCh(f.mean / 1000.0),
        "shapedirs": _FakeCh(shapedirs),
        "f": f.triangles.astype(np.uint32),
        "posedirs": np.zeros((n, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(np.eye(5, n)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": np.full((n, 5), 0.2),
        "J": _FakeCh(np.zeros((5, 3))),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    (folder / "generic_model.pkl").write_bytes(fake_chumpy_pickle(model))
    tris, weights = landmark_triangles(f)
    embedding = {
        "full_lmk_faces_idx": tris[None, :].astype(np.int64),
        "full_lmk_bary_coords": weights[None, :, :],
        "static_lmk_faces_idx": tris[17:].astype(np.int64),
        "static_lmk_bary_coords": weights[17:],
        "dynamic_lmk_faces_idx": np.repeat(tris[None, :17], 79, axis=0),
        "dynamic_lmk_bary_coords": np.repeat(weights[None, :17], 79, axis=0),
    }
    np.save(folder / "landmark_embedding.npy", np.array(embedding, dtype=object), allow_pickle=True)
    # Texture: vertex (row r, column c) of the grid sits at the centre of texel (40 - r, c).
    r, c = np.divmod(np.arange(n), N_GRID)
    rows = N_GRID - 1 - r
    vt = np.stack([(c + 0.5) / N_GRID, 1.0 - (rows + 0.5) / N_GRID], axis=1)
    mu = np.zeros((N_GRID, N_GRID, 3))
    mu[rows, c] = f.tex_mean[:, ::-1]  # stored BGR
    pcs = np.zeros((N_GRID, N_GRID, 3, len(TEX_SD)))
    pcs[rows, c] = (f.tex_u * TEX_SD).reshape(n, 3, -1)[:, ::-1, :]
    np.savez(folder / "FLAME_albedo_from_BFM.npz", MU=mu, PC=pcs, vt=vt, ft=f.triangles.astype(np.int64),
             specMU=np.zeros_like(mu), specPC=np.zeros_like(pcs))
    return {"model": folder / "generic_model.pkl", "landmarks": folder / "landmark_embedding.npy",
            "albedo": folder / "FLAME_albedo_from_BFM.npz"}
