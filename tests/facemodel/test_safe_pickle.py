"""The restricted unpickler: arrays, chumpy and SciPy stand-ins load; anything that could run code is refused."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from ifn.facemodel.model import FaceModel
from ifn.facemodel.safe_pickle import UnsafePickleError, load_npy, load_pickle, safe_loads

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Would create ``marker`` when unpickled by a plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_os_system_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "evil": _Payload(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    message = str(info.value)
    assert str(path) in message and re.search(r"refused to unpickle (posix|os|nt)\.system", message)
    assert not marker.exists()


@pytest.mark.parametrize("callable_", [eval, exec, getattr, __import__])
def test_builtins_that_run_code_are_refused(callable_):
    class Evil:
        def __reduce__(self):
            return (callable_, ("1",))

    with pytest.raises(UnsafePickleError, match=f"builtins.{callable_.__name__}"):
        safe_loads(pickle.dumps(Evil(), protocol=2), "x.pkl")


def test_copyreg_reconstructor_only_for_stand_ins():
    # A protocol-0 pickle (as Python 2 wrote them) rebuilding some other class through copy_reg.
    data = b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR."
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_loads(data)
    # Even with an allowed class, _reconstructor accepts only the array stand-ins on object.
    data = b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR."
    with pytest.raises(UnsafePickleError, match="only for array stand-ins"):
        safe_loads(data)


def test_numpy_arrays_scalars_and_python2_strings_load():
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5), "i": [1, (2, 3)]}
    for protocol in (0, 2, 4):
        out = safe_loads(pickle.dumps(values, protocol=protocol))
        np.testing.assert_array_equal(out["a"], values["a"])
        assert out["a"].dtype == np.float32 and out["s"] == 2.5 and out["i"] == [1, (2, 3)]
    # A Python 2 pickle: {'key': 1} with the key as a 2.x str (SHORT_BINSTRING), read as latin1.
    assert safe_loads(b"\x80\x02}q\x00U\x03k\xe9yK\x01s.") == {"k\xe9y": 1}


def test_python2_array_pickle_loads_with_latin1(fake_chumpy_pickle_fn):
    # As Python 2 wrote it: the array's bytes and the keys are 2.x str (BINSTRING), no _codecs.
    x = np.arange(300, dtype=np.float64).reshape(100, 3)
    data = fake_chumpy_pickle_fn.py2({"v_template": x, "bs_style": "lbs"})
    assert b"_codecs" not in data and pickle.BINSTRING in data
    out = safe_loads(data)
    np.testing.assert_array_equal(out["v_template"], x)
    assert out["bs_style"] == "lbs"


def test_chumpy_ch_becomes_its_array_without_chumpy(fake_chumpy_pickle_fn):
    x = np.arange(12.0).reshape(4, 3)
    for protocol, py2 in ((0, False), (2, False), (2, True)):
        data = fake_chumpy_pickle_fn({"v": fake_chumpy_pickle_fn.Ch(x)}, protocol=protocol, py2=py2)
        assert b"chumpy" in data
        out = safe_loads(data)
        assert type(out["v"]) is np.ndarray
        np.testing.assert_array_equal(out["v"], x)
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401  (the point: it is not installed)


def test_scipy_sparse_is_densified_without_running_scipy():
    dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    for matrix in (scipy.sparse.csc_matrix(dense), scipy.sparse.csr_matrix(dense)):
        out = safe_loads(pickle.dumps({"J": matrix}, protocol=2))["J"]
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, dense)


def test_object_npy_goes_through_the_restricted_unpickler(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.array({"lmk_face_idx": np.arange(3)}, dtype=object), allow_pickle=True)
    assert load_npy(path)["lmk_face_idx"].tolist() == [0, 1, 2]
    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(4))
    assert load_npy(plain).tolist() == [0, 1, 2, 3]
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"x": _Payload(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="evil.npy"):
        load_npy(evil)
    assert not marker.exists()


def test_truncated_pickle_is_a_one_line_value_error(tmp_path):
    data = pickle.dumps({"a": np.arange(100)}, protocol=2)
    with pytest.raises(ValueError, match="x.pkl: not a readable pickle"):
        safe_loads(data[: len(data) // 2], "x.pkl")


def test_npz_with_object_arrays_is_refused_and_does_not_run(tmp_path, toy_face_model):
    marker = tmp_path / "marker"
    good = toy_face_model.save(tmp_path / "good.npz")
    with np.load(good) as npz:
        contents = {k: npz[k] for k in npz.files}
    contents["metadata"] = np.array([_Payload(marker)], dtype=object)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **contents)
    with pytest.raises(ValueError, match=r"bad\.npz: holds object arrays"):
        FaceModel.load(bad)
    assert not marker.exists()
    assert FaceModel.load(good).sha256 == toy_face_model.sha256


def test_no_unrestricted_unpickling_in_the_package():
    """Audit: nothing in ifn/ unpickles user files outside safe_pickle.py."""
    offending = []
    patterns = re.compile(r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|\bpickle\.loads?\(|\bdill\b|"
                          r"\bjoblib\.load")
    for path in (REPO / "ifn").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            torch_load = "torch.load(" in line and "weights_only=True" not in line
            if patterns.search(line) or torch_load:
                offending.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offending, offending
    # The one unpickler in the package is the restricted one.
    text = (REPO / "ifn" / "facemodel" / "safe_pickle.py").read_text()
    assert "class RestrictedUnpickler(pickle.Unpickler)" in text and "RestrictedUnpickler(io.BytesIO(data)" in text
