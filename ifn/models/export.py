"""Export the trained regressor (face crop → θ) to ONNX or TorchScript, and run the exported files.

The exported graph holds the whole regressor: the input normalisation (8-bit to [0, 1] when
the model takes ``uint8``, then :func:`ifn.data.batch.to_network_input`) and the backbone,
so a caller hands it crops exactly as :func:`ifn.data.photos.crop_face` makes them and gets
θ back. The batch axis is dynamic; height and width are the training crop size.

Every export carries its metadata (:class:`ExportMetadata`, JSON, schema
``ifn-export/1``): the θ layout (group names, offsets, sizes, units, in order), the input
(image size, ``NCHW`` RGB, dtype, value range), the face model's identity (name, content
SHA-256, mode counts), the render settings θ is to be rendered with, the backbone and the
``ifn`` version. ONNX files hold it in ``metadata_props["ifn"]``, TorchScript files as the
extra file ``ifn.json``; a sidecar ``<file>.json`` beside the export holds the same.

Convention:
    Input ``crop``: ``(B, 3, H, W)``, ``NCHW``, RGB, ``float32`` in [0, 1] (or ``uint8`` in
    [0, 255] for ``--input-dtype uint8``), black outside the face region as ifn's crops are.
    Output ``theta``: ``(B, m)`` ``float32`` in :mod:`ifn.params` order.

Security:
    ONNX files and metadata are data. A TorchScript file is a program: loading it runs its
    graph, so load only TorchScript files you exported yourself (:func:`read_metadata`
    reads a TorchScript file's metadata without loading its graph).

Example:
    On the command line::

        ifn export --ckpt_path runs/quickstart/.../last.ckpt --format onnx -o ifn.onnx

    and from Python, with only ``onnxruntime`` and ``numpy`` needed to run it::

        from ifn.models.export import OnnxRegressor

        regressor = OnnxRegressor("ifn.onnx", threads=2)
        theta = regressor(crops)  # (B, 3, 240, 240) float32 in [0, 1] → (B, m) numpy
        groups = regressor.metadata.split(theta)  # {"rotation": (B, 3), ..., "illumination": (B, 27)}
        regressor.metadata.face_model.sha256  # the face model θ indexes
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

import ifn
from ifn.data.batch import to_network_input
from ifn.errors import UsageError, one_line
from ifn.facemodel.model import FaceModelIdentity
from ifn.io import atomic_write, write_json_atomic
from ifn.params import GROUPS, ParamLayout

if TYPE_CHECKING:
    from ifn.models.inverse_face_net import InverseFaceNet

__all__ = [
    "EXPORT_FORMATS",
    "INPUT_DTYPES",
    "METADATA_KEY",
    "SCHEMA",
    "CropRegressor",
    "ExportError",
    "ExportMetadata",
    "OnnxRegressor",
    "TorchScriptRegressor",
    "export_checkpoint",
    "export_model",
    "load_torchscript",
    "main",
    "read_metadata",
    "sidecar_path",
]

#: What the metadata's ``schema`` says; a reader refuses other schemas.
SCHEMA = "ifn-export/1"
#: The ONNX ``metadata_props`` key and (with ``.json``) the TorchScript extra file holding the metadata.
METADATA_KEY = "ifn"
_TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"
#: Each format and the file suffixes it is written with (the first is the default).
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
#: Input dtypes an export can take, with the value range of its crops.
INPUT_DTYPES: dict[str, tuple[float, float]] = {"float32": (0.0, 1.0), "uint8": (0.0, 255.0)}
_INPUT_NAME, _OUTPUT_NAME = "crop", "theta"
#: ONNX opset of the torch.export-based exporter (its default in torch 2.14; onnxruntime ≥ 1.17 runs it).
_OPSET = 20
#: An export whose outputs differ from the network's by more than this is refused before it is
#: written. Exporters fold BatchNorm and reorder float operations, which changes outputs only
#: by float32 rounding, orders of magnitude below this; a wrong graph differs by far more.
_VERIFY_TOLERANCE = 1e-3
_UNITS = {
    "rotation": "radians, Euler angles (alpha, beta, gamma)",
    "shape": "shape standard deviations (sigma_s)",
    "expression": "expression standard deviations (sigma_e)",
    "reflectance": "reflectance standard deviations (sigma_r)",
    "illumination": "9 SH coefficients x RGB, coefficient-major: index 3*k + c",
}


class ExportError(UsageError, ValueError):
    """An export that cannot be written or read (wrong file, not an ifn export, bad input)."""


# ----------------------------------------------------------------------------- metadata
@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """What an exported regressor takes and returns, and which face model its θ indexes.

    Attributes:
        format: ``"onnx"`` or ``"torchscript"``.
        exporter: the tool that wrote the graph (``torch.onnx.export(dynamo=True)``, ...).
        backbone: timm model name.
        image_size: crop height and width ``S`` the network was trained at.
        input_dtype: ``"float32"`` (crops in [0, 1]) or ``"uint8"`` (crops in [0, 255]).
        layout: θ's group sizes.
        face_model: identity of the face model θ indexes.
        render: the render settings of training (camera distance, margin, ...), as a dict.
        checkpoint: the checkpoint's file name and weights SHA-256.
        ifn_version: version of ifn that exported it.
        torch_version: version of torch that exported it.
    """

    format: str
    exporter: str
    backbone: str
    image_size: int
    input_dtype: str
    layout: ParamLayout
    face_model: FaceModelIdentity
    render: dict[str, Any]
    checkpoint: dict[str, Any]
    ifn_version: str = ifn.__version__
    torch_version: str = torch.__version__

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, S, S)``: one crop's shape."""
        return (3, self.image_size, self.image_size)

    def split(self, theta: np.ndarray | Tensor) -> dict[str, np.ndarray | Tensor]:
        """``(B, m)`` θ → its groups by name, in θ order (views, flat: illumination is ``(B, 27)``)."""
        if theta.ndim != 2 or theta.shape[1] != self.layout.size:
            raise ValueError(f"θ must have shape (B, {self.layout.size}), got {tuple(theta.shape)}")
        return {name: theta[:, s] for name, s in self.layout.slices.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema :data:`SCHEMA`)."""
        low, high = INPUT_DTYPES[self.input_dtype]
        groups = [
            {"name": name, "offset": s.start, "size": s.stop - s.start, "units": _UNITS[name]}
            for name, s in self.layout.slices.items()
        ]
        return {
            "schema": SCHEMA,
            "format": self.format,
            "exporter": self.exporter,
            "ifn_version": self.ifn_version,
            "torch_version": self.torch_version,
            "backbone": self.backbone,
            "input": {
                "name": _INPUT_NAME,
                "shape": ["batch", *self.input_shape],
                "layout": "NCHW",
                "channels": "RGB",
                "dtype": self.input_dtype,
                "range": [low, high],
                "image_size": self.image_size,
                "normalisation": "inside the graph: x / 255 for uint8, then x - 0.5",
                "crop": "ifn.data.photos.crop_face: landmark box framed into the crop, 0 outside the face region",
            },
            "output": {"name": _OUTPUT_NAME, "shape": ["batch", self.layout.size], "dtype": "float32",
                       "groups": groups},
            "face_model": self.face_model.to_dict(),
            "render": dict(self.render),
            "checkpoint": dict(self.checkpoint),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "metadata") -> ExportMetadata:
        """Parse :meth:`to_dict`'s form.

        Raises:
            ExportError: naming ``source``, for another schema or missing or inconsistent fields.
        """
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise ExportError(f"{source}: not ifn export metadata (schema {found!r}, expected {SCHEMA!r})")
        try:
            groups = data["output"]["groups"]
            names = tuple(g["name"] for g in groups)
            if names != GROUPS:
                raise ValueError(f"θ groups {names}, expected {GROUPS}")
            sizes = {g["name"]: int(g["size"]) for g in groups}
            layout = ParamLayout(sizes["shape"], sizes["expression"], sizes["reflectance"],
                                 sizes["rotation"], sizes["illumination"])
            offsets = [int(g["offset"]) for g in groups]
            if offsets != [s.start for s in layout.slices.values()]:
                raise ValueError(f"θ group offsets {offsets} do not follow from the sizes")
            dtype = str(data["input"]["dtype"])
            if dtype not in INPUT_DTYPES:
                raise ValueError(f"input dtype {dtype!r}, expected one of {sorted(INPUT_DTYPES)}")
            return cls(
                format=str(data["format"]),
                exporter=str(data["exporter"]),
                backbone=str(data["backbone"]),
                image_size=int(data["input"]["image_size"]),
                input_dtype=dtype,
                layout=layout,
                face_model=FaceModelIdentity.from_dict(data["face_model"]),
                render=dict(data["render"]),
                checkpoint=dict(data["checkpoint"]),
                ifn_version=str(data["ifn_version"]),
                torch_version=str(data["torch_version"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ExportError(f"{source}: invalid ifn export metadata ({type(err).__name__}: {one_line(err)})") from err

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> ExportMetadata:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise ExportError(f"{source}: ifn export metadata is not JSON ({one_line(err)})") from err
        return cls.from_dict(data, source)


def read_metadata(path: str | os.PathLike[str]) -> ExportMetadata:
    """The metadata of an exported file (``.onnx``, TorchScript, or a ``.json`` sidecar).

    Nothing is executed: an ONNX file is parsed as data, a TorchScript file opened as the
    zip archive it is and only its ``ifn.json`` read.

    Raises:
        ExportError: the file is missing, unreadable, or holds no ifn metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: exported model not found")
    if path.suffix == ".json":
        return ExportMetadata.from_json(path.read_bytes(), str(path))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.split("/")[-2:] == ["extra", _TORCHSCRIPT_EXTRA]]
                if not names:
                    raise ExportError(f"{path}: a TorchScript file without ifn metadata (not exported by ifn export)")
                return ExportMetadata.from_json(archive.read(names[0]), str(path))
        except (zipfile.BadZipFile, OSError) as err:
            raise ExportError(f"{path}: unreadable TorchScript file ({one_line(err)})") from err
    return _onnx_metadata(_load_onnx(path), str(path))


def _load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    # onnx raises DecodeError, ValueError, OSError...: all mean the file is not an ONNX model.
    except Exception as err:
        raise ExportError(f"{path}: not a readable ONNX file ({type(err).__name__}: {one_line(err)})") from err


def _onnx_metadata(proto: Any, source: str) -> ExportMetadata:
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{source}: an ONNX file without ifn metadata (not exported by ifn export)")
    return ExportMetadata.from_json(props[METADATA_KEY], source)


# ------------------------------------------------------------------------------- export
class CropRegressor(nn.Module):
    """The exported computation: a crop as ifn makes it → θ, normalisation included.

    Args:
        net: the backbone (``InverseFaceNet.net``), which takes :func:`to_network_input` images.
        input_dtype: ``"float32"`` (crops in [0, 1]) or ``"uint8"`` (crops in [0, 255]).
    """

    def __init__(self, net: nn.Module, input_dtype: str = "float32") -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype must be one of {sorted(INPUT_DTYPES)}, got {input_dtype!r}")
        self.net = net
        self.input_dtype = input_dtype

    def forward(self, crop: Tensor) -> Tensor:
        """``(B, 3, S, S)`` crops → θ ``(B, m)``."""
        if self.input_dtype == "uint8":
            crop = crop.to(torch.float32) / 255.0
        return self.net(to_network_input(crop))


def _example_input(image_size: int, input_dtype: str, batch: int = 2, seed: int = 0) -> Tensor:
    # Batch 2, not 1: torch.export specialises a dimension seen as 1, which would fix the batch.
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, image_size, image_size)
    if input_dtype == "uint8":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator)


def _onnx_bytes(module: CropRegressor, example: Tensor) -> tuple[bytes, str]:
    """Serialise to ONNX, dynamic batch. torch.export-based exporter first (the maintained one,
    default since torch 2.9); the legacy TorchScript-based exporter, which torch says will be
    removed, only if it fails (a backbone torch.export cannot trace)."""
    try:
        return _onnx_bytes_dynamo(module, example), "torch.onnx.export(dynamo=True)"
    # torch.export raises many types (UserError, Unsupported, RuntimeError...) for code it cannot
    # trace; each means "try the other exporter", whose result is verified like any export.
    except Exception as err:  # noqa: BLE001
        warnings.warn(
            f"torch.export-based ONNX export failed ({type(err).__name__}: {one_line(err)[:200]}); "
            "using the legacy TorchScript-based exporter",
            RuntimeWarning,
            stacklevel=2,
        )
        return _onnx_bytes_legacy(module, example), "torch.onnx.export(dynamo=False)"


def _onnx_bytes_dynamo(module: CropRegressor, example: Tensor) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module, (example,), input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME], opset_version=_OPSET,
        dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False,
    )
    return program.model_proto.SerializeToString()


def _onnx_bytes_legacy(module: CropRegressor, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), buffer, input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME], opset_version=17,
            dynamic_axes={_INPUT_NAME: {0: "batch"}, _OUTPUT_NAME: {0: "batch"}}, dynamo=False,
        )
    return buffer.getvalue()


def _with_onnx_metadata(model_bytes: bytes, metadata: ExportMetadata) -> bytes:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    proto.producer_name, proto.producer_version = "ifn", metadata.ifn_version
    proto.doc_string = f"InverseFaceNet regressor ({metadata.backbone}): crop -> theta; metadata in '{METADATA_KEY}'"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.14 marks ``torch.jit`` trace/save/load deprecated; TorchScript is still what is
    asked for here (and still runs), so the warning says nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield


def _torchscript_bytes(module: CropRegressor, example: Tensor, metadata: ExportMetadata) -> bytes:
    buffer = io.BytesIO()
    with _quiet_jit():
        traced = torch.jit.trace(module, (example,))
        torch.jit.save(traced, buffer, _extra_files={_TORCHSCRIPT_EXTRA: metadata.to_json()})
    return buffer.getvalue()


def export_model(
    model: InverseFaceNet,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    input_dtype: str = "float32",
    checkpoint: Mapping[str, Any] | None = None,
) -> ExportMetadata:
    """Write ``model``'s regressor (crop → θ, normalisation inside) and its sidecar ``<path>.json``.

    The graph is checked against the network on random crops before anything is written;
    both files are written atomically.

    Args:
        model: a trained network (its backbone, face model and render settings are exported);
            it is moved to the CPU and put in eval mode.
        path: the file to write (``.onnx``; ``.pt`` or ``.ts`` for TorchScript).
        format: ``"onnx"`` or ``"torchscript"``.
        input_dtype: ``"float32"`` (crops in [0, 1]) or ``"uint8"`` (crops in [0, 255]).
        checkpoint: what to record about the checkpoint (file name, weights SHA-256).

    Returns:
        The metadata written.

    Raises:
        ExportError: an unknown format or input dtype, a suffix that does not fit the
            format, or an export whose outputs differ from the network's.
    """
    path = Path(path)
    _check_format_and_suffix(format, path)
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"--input-dtype: {input_dtype!r} is not one of {', '.join(INPUT_DTYPES)}")
    image_size = int(model.renderer.settings.image_size)
    module = CropRegressor(model.net, input_dtype).cpu().eval()
    example = _example_input(image_size, input_dtype)
    metadata = ExportMetadata(
        format=format,
        exporter="",
        backbone=str(model.hparams.get("backbone", type(model.net).__name__)),
        image_size=image_size,
        input_dtype=input_dtype,
        layout=model.layout,
        face_model=model.face_model.identity(),
        render=model.renderer.settings.to_dict(),
        checkpoint=dict(checkpoint or {}),
    )
    with torch.no_grad():
        if format == "onnx":
            raw, exporter = _onnx_bytes(module, example)
            metadata = dataclasses.replace(metadata, exporter=exporter)
            data = _with_onnx_metadata(raw, metadata)
        else:
            metadata = dataclasses.replace(metadata, exporter="torch.jit.trace")
            data = _torchscript_bytes(module, example, metadata)
        _verify(module, data, metadata, path)
    with atomic_write(path) as handle:
        handle.write(data)
    write_json_atomic(sidecar_path(path), metadata.to_dict())
    return metadata


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json``: the metadata written beside an export.

    Example:
        >>> sidecar_path("exports/ifn.onnx").as_posix()
        'exports/ifn.onnx.json'
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def _verify(module: CropRegressor, data: bytes, metadata: ExportMetadata, path: Path) -> None:
    """Run the serialised graph on random crops (batch 1 and 3) and compare with the module."""
    regressor = _OnnxSession(data, 1) if metadata.format == "onnx" else _load_torchscript_bytes(data)
    for batch in (1, 3):
        crops = _example_input(metadata.image_size, metadata.input_dtype, batch=batch, seed=batch)
        expected = module(crops)
        got = torch.as_tensor(regressor(crops.numpy()) if metadata.format == "onnx" else regressor(crops))
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=_VERIFY_TOLERANCE):
            diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
            raise ExportError(
                f"{path}: the {metadata.exporter} graph does not reproduce the network (batch {batch}: shape "
                f"{tuple(got.shape)}, max abs difference {diff:.3g}); nothing was written"
            )


def _check_format_and_suffix(format: str, path: Path | None) -> None:
    if format not in EXPORT_FORMATS:
        raise ExportError(f"--format: {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    suffixes = EXPORT_FORMATS[format]
    if path is not None and path.suffix not in suffixes:
        raise ExportError(
            f"{path}: {format} exports end in {' or '.join(suffixes)} (-o {path.with_suffix(suffixes[0]).name})"
        )


def _load_trained(path: Path, face_model: str | None) -> tuple[InverseFaceNet, dict[str, Any]]:
    """The trained network and what to record about its checkpoint.

    Never downloads: a checkpoint records ``pretrained``/``backbone_checkpoint``, which only
    chose the starting weights that the checkpoint's weights replace, so they are dropped.
    """
    from ifn.models.checkpoint import read_checkpoint, weights_sha256
    from ifn.models.inverse_face_net import InverseFaceNet

    checkpoint = read_checkpoint(path)
    record = checkpoint.get("ifn") or {}
    recorded_hash = record.get("weights_sha256") or weights_sha256(checkpoint["state_dict"])
    info = {"file": path.name, "weights_sha256": recorded_hash}
    try:
        # Never downloads: the starting weights are not rebuilt.
        return InverseFaceNet.from_checkpoint_data(checkpoint, str(path), face_model, backend="torch"), info
    except UsageError:
        raise
    except (OSError, ValueError) as err:  # the face model file is gone or damaged
        hint = "pass --face-model with the face model it was trained with"
        raise ExportError(f"{path}: {one_line(err)} ({hint})") from err


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    format: str = "onnx",
    output: str | os.PathLike[str] | None = None,
    *,
    input_dtype: str = "float32",
    face_model: str | None = None,
) -> tuple[Path, ExportMetadata]:
    """Export a checkpoint written by ``ifn fit`` (see :func:`export_model`).

    Args:
        ckpt_path: the checkpoint.
        format: ``"onnx"`` or ``"torchscript"``.
        output: the file to write; default the checkpoint's path with the format's suffix.
        input_dtype: ``"float32"`` or ``"uint8"``.
        face_model: where the face model is now, if it moved since training.

    Returns:
        The path written and its metadata.

    Raises:
        UsageError: (one line) unknown format, wrong suffix, missing, corrupt or mismatched
            checkpoint or face model; all checked before the network is built.
    """
    ckpt_path = Path(ckpt_path)
    _check_format_and_suffix(format, None if output is None else Path(output))
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"--input-dtype: {input_dtype!r} is not one of {', '.join(INPUT_DTYPES)}")
    out = Path(output) if output is not None else ckpt_path.with_suffix(EXPORT_FORMATS[format][0])
    if out.resolve() == ckpt_path.resolve():
        raise ExportError(f"{out}: would overwrite the checkpoint; pass another -o")
    model, info = _load_trained(ckpt_path, face_model)
    return out, export_model(model, out, format, input_dtype=input_dtype, checkpoint=info)


# ------------------------------------------------------------------------------ runtime
def _check_crops(crops: np.ndarray, metadata: ExportMetadata) -> np.ndarray:
    """``crops`` as the graph's input: shape checked, ``uint8`` scaled to [0, 1] for a float graph."""
    if crops.ndim != 4 or tuple(crops.shape[1:]) != metadata.input_shape:
        raise ValueError(
            f"crops must have shape (B, {', '.join(map(str, metadata.input_shape))}) (NCHW RGB), "
            f"got {tuple(crops.shape)}"
        )
    if metadata.input_dtype == "uint8":
        if crops.dtype != np.uint8:
            raise TypeError(f"this export takes uint8 crops in [0, 255], got {crops.dtype}")
        return np.ascontiguousarray(crops)
    if crops.dtype == np.uint8:
        return np.ascontiguousarray(crops, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(crops.dtype, np.floating):
        raise TypeError(f"this export takes float32 crops in [0, 1] (or uint8), got {crops.dtype}")
    return np.ascontiguousarray(crops, dtype=np.float32)


class _OnnxSession:
    """An onnxruntime session on a serialised model, fed numpy crops."""

    def __init__(self, model: bytes | str, threads: int | None, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not spinning:
            # Idle worker threads sleep instead of spinning: on a machine shared with other jobs
            # a spinning thread holds a core that the other thread of the same run is waiting for.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        # One crop batch is one graph run: parallelism inside operators, not across them.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.session.run([_OUTPUT_NAME], {_INPUT_NAME: crops})[0]


class OnnxRegressor:
    """Run an ONNX export with onnxruntime on the CPU: crops → θ.

    Args:
        path: a ``.onnx`` file written by ``ifn export``.
        threads: onnxruntime's intra-op threads (``None``: its default, one per core).
        spinning: let idle threads spin (onnxruntime's default, lowest latency on an idle
            machine); ``False`` makes them sleep, which is faster on a machine busy with other jobs.

    Attributes:
        metadata: the export's :class:`ExportMetadata`.

    Raises:
        ExportError: the file is missing, not ONNX, or not an ifn export.

    Example::

        regressor = OnnxRegressor("ifn.onnx", threads=2)
        theta = regressor(crops)  # (B, 3, S, S) float32 in [0, 1] → (B, m)
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, spinning: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: exported model not found")
        proto = _load_onnx(self.path)
        self.metadata = _onnx_metadata(proto, str(self.path))
        self._session = _OnnxSession(proto.SerializeToString(), threads, spinning)

    def __call__(self, crops: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """``(B, 3, S, S)`` crops (float in [0, 1], or uint8) → θ ``(B, m)`` float32.

        A tensor in gives a (CPU) tensor out, a numpy array a numpy array.
        """
        if isinstance(crops, Tensor):
            return torch.from_numpy(self(crops.detach().cpu().numpy()))
        return self._session(_check_crops(np.asarray(crops), self.metadata))


class TorchScriptRegressor:
    """A loaded TorchScript export: crops → θ, with its metadata.

    Attributes:
        module: the ``torch.jit.ScriptModule``.
        metadata: the export's :class:`ExportMetadata`.
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: ExportMetadata) -> None:
        self.module = module
        self.metadata = metadata

    def __call__(self, crops: Tensor | np.ndarray) -> Tensor:
        """``(B, 3, S, S)`` crops (float in [0, 1], or uint8) → θ ``(B, m)`` float32, on the crops' device."""
        if not isinstance(crops, Tensor):
            crops = torch.from_numpy(_check_crops(np.asarray(crops), self.metadata))
        if crops.ndim != 4 or tuple(crops.shape[1:]) != self.metadata.input_shape:
            raise ValueError(
                f"crops must have shape (B, {', '.join(map(str, self.metadata.input_shape))}) (NCHW RGB), "
                f"got {tuple(crops.shape)}"
            )
        if self.metadata.input_dtype == "uint8":
            if crops.dtype != torch.uint8:
                raise TypeError(f"this export takes uint8 crops in [0, 255], got {crops.dtype}")
        elif crops.dtype == torch.uint8:
            crops = crops.to(torch.float32) / 255.0
        elif crops.is_floating_point():
            crops = crops.to(torch.float32)
        else:
            raise TypeError(f"this export takes float32 crops in [0, 1] (or uint8), got {crops.dtype}")
        with torch.inference_mode():
            return self.module(crops)


def _load_torchscript_bytes(data: bytes) -> TorchScriptRegressor:
    extra = {_TORCHSCRIPT_EXTRA: ""}
    with _quiet_jit():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    return TorchScriptRegressor(module, ExportMetadata.from_json(extra[_TORCHSCRIPT_EXTRA], "TorchScript export"))


def load_torchscript(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> TorchScriptRegressor:
    """Load a TorchScript export and its metadata.

    Loading a TorchScript file runs its graph: load only files you exported yourself. The
    metadata is read, and checked, before the graph is loaded.

    Args:
        path: a ``.pt``/``.ts`` file written by ``ifn export --format torchscript``.
        map_location: where to put its tensors.

    Raises:
        ExportError: the file is missing, not TorchScript, or not an ifn export.
    """
    path = Path(path)
    metadata = read_metadata(path)  # data only: refuses a file without ifn metadata before loading it
    if metadata.format != "torchscript":
        raise ExportError(f"{path}: a {metadata.format} export, not TorchScript")
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=map_location)
    except RuntimeError as err:
        raise ExportError(f"{path}: unreadable TorchScript file ({one_line(err)[:300]})") from err
    return TorchScriptRegressor(module.eval(), metadata)


# ---------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (``ifn`` prints them as one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """``ifn export``: write a checkpoint's regressor as ONNX or TorchScript; print what was written (JSON)."""
    parser = _Parser(
        prog="ifn export",
        description="Export a trained InverseFaceNet (crop -> theta, input normalisation inside) to ONNX or "
        "TorchScript, with its theta layout and face model identity as metadata and in a sidecar <file>.json.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by ifn fit")
    parser.add_argument("--format", required=True, help=f"one of: {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("-o", "--output", default=None,
                        help="file to write (.onnx; .pt or .ts for torchscript); default: beside the checkpoint")
    parser.add_argument("--input-dtype", default="float32",
                        help="float32: crops in [0, 1] (default); uint8: crops in [0, 255]")
    parser.add_argument("--face-model", default=None, help="the face model's file, if it moved since training")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    out, metadata = export_checkpoint(
        args.ckpt_path, args.format, args.output, input_dtype=args.input_dtype, face_model=args.face_model
    )
    print(json.dumps({
        "written": str(out),
        "metadata": str(sidecar_path(out)),
        "format": metadata.format,
        "exporter": metadata.exporter,
        "backbone": metadata.backbone,
        "input": {"shape": ["batch", *metadata.input_shape], "dtype": metadata.input_dtype},
        "theta_size": metadata.layout.size,
        "face_model": metadata.face_model.describe(),
    }))
    return 0
