"""Restricted unpickling of the arrays inside face-model files (FLAME's ``.pkl`` and ``.npy``).

FLAME's ``generic_model.pkl`` is a pickled dict of NumPy arrays, chumpy ``Ch`` objects and a
SciPy sparse matrix, often written by Python 2; its landmark embedding ``.npy`` is a pickled
dict inside an object array. Unrestricted unpickling (the ``pickle`` module's loaders, or
NumPy's loaders with pickles allowed) would run whatever callable the file names.
:class:`RestrictedUnpickler` resolves only the globals needed to rebuild arrays and refuses
every other one *before* anything is called:

* NumPy array and scalar reconstruction (``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray.scalar``; also under
  NumPy 2's ``numpy._core``);
* ``chumpy.ch.Ch``: replaced by a stand-in that keeps the pickled state, turned into the
  plain array it holds (its ``x``) — chumpy need not be installed and none of its code runs;
* ``scipy.sparse`` ``csc_matrix`` / ``csr_matrix`` (old and new module paths): a stand-in
  too, densified from its ``data`` / ``indices`` / ``indptr`` / ``shape`` by this module;
* ``set`` and ``frozenset`` (a pickled ``Ch`` holds a set of variable names);
* ``copyreg._reconstructor`` (``copy_reg`` in Python 2) only for those stand-ins on
  ``object``, and ``_codecs.encode`` only with the ``latin1`` codec (how Python 3 pickles
  ``bytes`` at protocol 2).

Python 2 pickles are read with ``encoding="latin1"`` (what NumPy needs for the bytes of a
Python 2 array).

Example:
    >>> import io, pickle
    >>> safe_loads(pickle.dumps({"v": np.arange(3)}, protocol=2))["v"].tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "load_npy", "load_pickle", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle names a global that is not on the allow-list (nothing from it was run)."""


class _Stub:
    """Base of the stand-ins: created without running any code of the pickled class."""

    def __init__(self) -> None:  # never called by the unpickler (NEWOBJ / _reconstructor skip it)
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def value(self, label: str) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class _ChumpyArray(_Stub):
    """Stand-in for ``chumpy.ch.Ch``: its pickled state is a dict whose ``x`` is the array."""

    def value(self, label: str) -> np.ndarray:
        state = self._state
        if isinstance(state, dict) and "x" in state:
            return np.asarray(_materialise(state["x"], label))
        raise UnsafePickleError(f"{label}: a chumpy Ch object without an 'x' array (its state: {type(state).__name__})")


class _SparseMatrix(_Stub):
    """Stand-in for a SciPy CSC/CSR matrix, densified here from its pickled fields."""

    compressed_axis = 1  # CSC: indptr runs over columns

    def value(self, label: str) -> np.ndarray:
        state = self._state
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{label}: sparse matrix without a state dict")
        try:
            data = np.asarray(_materialise(state["data"], label))
            indices = np.asarray(_materialise(state["indices"], label), dtype=np.int64)
            indptr = np.asarray(_materialise(state["indptr"], label), dtype=np.int64)
            shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
        except (KeyError, TypeError, ValueError) as err:
            raise UnsafePickleError(f"{label}: sparse matrix with missing or malformed fields ({err})") from err
        if len(shape) != 2 or len(indptr) != shape[self.compressed_axis] + 1 or len(indices) != len(data):
            raise UnsafePickleError(f"{label}: inconsistent sparse matrix (shape {shape}, {len(indptr)} indptr)")
        if len(indices) and (indices.min() < 0 or indices.max() >= shape[1 - self.compressed_axis]):
            raise UnsafePickleError(f"{label}: sparse matrix indices out of range for shape {shape}")
        dense = np.zeros(shape, dtype=data.dtype)
        major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        if self.compressed_axis == 1:
            np.add.at(dense, (indices, major), data)
        else:
            np.add.at(dense, (major, indices), data)
        return dense


class _CsrMatrix(_SparseMatrix):
    compressed_axis = 0


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for the stand-ins only (protocol 0/1 pickles of objects)."""
    if not (isinstance(cls, type) and issubclass(cls, _Stub)) or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor is allowed only for array stand-ins, got {cls!r}, {base!r}")
    return object.__new__(cls)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol 2 (latin1 only)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode is allowed only as encode(str, 'latin1'), got codec {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # NumPy 2 (numpy.core is a deprecated alias there)
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray

    names: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "_reconstruct")] = multiarray._reconstruct
        names[(module, "scalar")] = multiarray.scalar
    return names


_STUBS: dict[tuple[str, str], type[_Stub]] = {
    ("chumpy.ch", "Ch"): _ChumpyArray,
    **{(module, "csc_matrix"): _SparseMatrix for module in ("scipy.sparse.csc", "scipy.sparse._csc")},
    **{(module, "csr_matrix"): _CsrMatrix for module in ("scipy.sparse.csr", "scipy.sparse._csr")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed globals (see the module docstring).

    Args:
        file: a binary file object positioned at the pickle.
        label: the file's name, for error messages.

    Raises:
        UnsafePickleError: from :meth:`load`, naming the file and the refused ``module.name``.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, label: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1", fix_imports=True)
        self.label = label
        self._allowed = {
            **_numpy_globals(),
            **_STUBS,
            ("copyreg", "_reconstructor"): _reconstructor,
            ("_codecs", "encode"): _latin1_encode,
            ("builtins", "object"): object,
            # A chumpy Ch's pickled state holds a set of dirty variable names.
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
        }

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__), mapped as pickle's own fix_imports does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.label}: refused to unpickle {module}.{name}: only NumPy arrays, chumpy Ch arrays and "
                "SciPy sparse matrices are allowed in a face-model file (nothing from the file was run)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.label}: refused a persistent id in the pickle ({pid!r})")


def _materialise(obj: Any, label: str) -> Any:
    """Replace stand-ins by arrays, recursively through dicts, lists, tuples and object arrays."""
    if isinstance(obj, _Stub):
        return obj.value(label)
    if isinstance(obj, dict):
        return {key: _materialise(value, label) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(value, label) for value in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        if obj.ndim == 0:
            return np.array(_materialise(obj.item(), label), dtype=object)
        flat = [_materialise(value, label) for value in obj.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(obj.shape)
    return obj


def safe_loads(data: bytes, label: str = "<pickle>") -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler`; stand-ins come back as arrays.

    Raises:
        UnsafePickleError: for a global outside the allow-list.
        ValueError: naming ``label``, for a truncated or malformed pickle.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), label).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{label}: not a readable pickle ({type(err).__name__}: {err})") from err
    return _materialise(obj, label)


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a ``.pkl`` file with :func:`safe_loads` (Python 2 and 3 pickles).

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafePickleError: for a global outside the allow-list.
        ValueError: for a damaged pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return safe_loads(path.read_bytes(), str(path))


def load_npy(path: str | os.PathLike[str]) -> Any:
    """Read a ``.npy`` file: plain arrays as ``np.load(allow_pickle=False)`` does, object
    arrays (a pickled dict, like FLAME's landmark embedding) through :func:`safe_loads`.

    A 0-d object array comes back as the object it holds (e.g. the dict).

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafePickleError: for a global outside the allow-list.
        ValueError: for a file that is not a ``.npy`` array.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            shape, _fortran, dtype = np.lib.format._read_array_header(handle, version)
        except ValueError as err:
            raise ValueError(f"{path}: not a .npy file ({err})") from err
        if not dtype.hasobject:
            handle.seek(0)
            return np.load(handle, allow_pickle=False)
        array = safe_loads(handle.read(), str(path))
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: the pickled payload of an object .npy is not an array ({type(array).__name__})")
    if array.shape != tuple(shape):
        raise ValueError(f"{path}: header shape {tuple(shape)} but the payload has shape {array.shape}")
    return array.item() if array.ndim == 0 else array
