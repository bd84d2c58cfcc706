"""ifn export: ONNX and TorchScript files reproduce the network (normalisation included) on
random crops, carry their θ layout and face-model identity, and the CLI's mistakes are one line."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from ifn.cli import main
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.models import export as export_module
from ifn.models.export import (
    SCHEMA,
    ExportError,
    ExportMetadata,
    OnnxRegressor,
    export_model,
    load_torchscript,
    read_metadata,
)
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.params import GROUPS
from ifn.render.settings import RenderSettings

N_SHAPE, N_EXPRESSION, N_REFLECTANCE = 3, 2, 3
M = 3 + N_SHAPE + N_EXPRESSION + N_REFLECTANCE + 27
SIZE = 64
RENDER = RenderSettings(n_shape=N_SHAPE, n_expression=N_EXPRESSION, n_reflectance=N_REFLECTANCE, image_size=SIZE,
                        backend="torch")
#: The acceptance tolerance of issue 10: max abs difference from torch eager.
TOLERANCE = 1e-4
BACKBONES = ["resnet18", "mobilenetv3_small_100"]
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: The quickstart pipeline shrunk to seconds (as in tests/test_cli.py), for a checkpoint written by `ifn fit`.
SMALL_RUN = [
    "--config", str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"),
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.backbone=test_efficientnet",
    "--data.render.face_model=procedural", "--data.render.image_size=32", "--data.render.n_shape=3",
    "--data.render.n_expression=2", "--data.render.n_reflectance=3", "--data.batch_size=4",
    "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4", "--data.render.backend=torch",
    "--trainer.max_steps=1",
]


def _scrambled(model: InverseFaceNet, seed: int = 0) -> InverseFaceNet:
    """Weights far from their initialisation: a head of std 0.01 predicts θ ≈ 1e-3, which any
    graph matches to 1e-4; random BatchNorm statistics exercise the exporters' folding."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))
        head = model.net.get_classifier()
        head.weight.normal_(0.0, 1.0 / head.in_features**0.5, generator=gen)
        head.bias.normal_(0.0, 1.0, generator=gen)
    return model.eval()


def _reference(model: InverseFaceNet, crops: torch.Tensor) -> np.ndarray:
    """θ from torch eager, with the paper's normalisation written out here (x − 0.5 of [0, 1] crops)."""
    floats = crops.double().div(255.0).float() if crops.dtype == torch.uint8 else crops
    with torch.no_grad():
        return model(floats - 0.5).numpy()


def _crops(batch: int, seed: int, dtype: str = "float32") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == "uint8":
        return torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    return torch.rand(batch, 3, SIZE, SIZE, generator=gen)


@pytest.fixture(scope="module")
def renderer():
    return RENDER.build_renderer()


@pytest.fixture(scope="module", params=BACKBONES)
def model(request, renderer):
    return _scrambled(InverseFaceNet(renderer, backbone=request.param))


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """The model exported once to each format: ``{format: (path, metadata)}``."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for fmt, suffix in FORMATS.items():
        path = root / f"model{suffix}"
        out[fmt] = path, export_model(model, path, fmt, checkpoint={"file": "x.ckpt", "weights_sha256": "0" * 64})
    return out


def _run(fmt: str, path: Path, crops: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        return OnnxRegressor(path, threads=1)(crops.numpy())
    return load_torchscript(path)(crops).numpy()


# ------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("batch", [1, 4])
def test_export_matches_eager_on_random_crops(exports, model, fmt, batch):
    path, _ = exports[fmt]
    crops = _crops(batch, seed=10 + batch)
    expected = _reference(model, crops)
    assert np.abs(expected).max() > 0.1  # outputs large enough for the tolerance to mean something
    got = _run(fmt, path, crops)
    assert got.shape == (batch, M) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOLERANCE


def test_onnx_file_runs_in_a_plain_onnxruntime_session(exports, model):
    """What a user without ifn does: onnxruntime alone, input named 'crop', any batch size."""
    session = ort.InferenceSession(str(exports["onnx"][0]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("crop", "theta")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]  # dynamic batch, fixed crop
    for batch in (2, 7):
        crops = _crops(batch, seed=batch)
        (theta,) = session.run(None, {"crop": crops.numpy()})
        assert np.abs(theta - _reference(model, crops)).max() <= TOLERANCE


def test_a_float_export_accepts_uint8_crops_and_refuses_wrong_shapes(exports, model):
    crops = _crops(2, seed=7, dtype="uint8")
    onnx_regressor, script = OnnxRegressor(exports["onnx"][0], threads=1), load_torchscript(exports["torchscript"][0])
    sleeping = OnnxRegressor(exports["onnx"][0], threads=2, spinning=False)
    for theta in (onnx_regressor(crops.numpy()), script(crops).numpy(), onnx_regressor(crops).numpy(),
                  script(crops.numpy()).numpy(), sleeping(crops.numpy())):
        assert np.abs(theta - _reference(model, crops)).max() <= TOLERANCE
    assert isinstance(onnx_regressor(crops), torch.Tensor)  # a tensor in, a tensor out
    for regressor in (onnx_regressor, script):
        with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*got \(2, 64, 64, 3\)"):
            regressor(np.zeros((2, SIZE, SIZE, 3), np.float32))  # NHWC
        with pytest.raises(ValueError, match=r"got \(3, 64, 64\)"):
            regressor(np.zeros((3, SIZE, SIZE), np.float32))  # no batch axis
        with pytest.raises(TypeError, match="int64"):
            regressor(np.zeros((1, 3, SIZE, SIZE), np.int64))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        OnnxRegressor(exports["onnx"][0], threads=0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_uint8_input_is_scaled_inside_the_graph(tmp_path, renderer, fmt):
    model = _scrambled(InverseFaceNet(renderer, backbone="test_efficientnet"), seed=1)
    path = tmp_path / f"m{FORMATS[fmt]}"
    metadata = export_model(model, path, fmt, input_dtype="uint8")
    assert metadata.input_dtype == "uint8" and read_metadata(path).input_dtype == "uint8"
    crops = _crops(3, seed=5, dtype="uint8")
    expected = _reference(model, crops)
    assert np.abs(expected).max() > 0.1
    assert np.abs(_run(fmt, path, crops) - expected).max() <= TOLERANCE
    with pytest.raises(TypeError, match="uint8"):
        _run(fmt, path, crops.float() / 255.0)


def test_a_graph_that_does_not_reproduce_the_network_is_not_written(tmp_path, renderer, monkeypatch):
    model = _scrambled(InverseFaceNet(renderer, backbone="test_efficientnet"))
    other = _scrambled(InverseFaceNet(renderer, backbone="test_efficientnet"), seed=9)
    real = export_module._torchscript_bytes
    monkeypatch.setattr(export_module, "_torchscript_bytes", lambda module, example, metadata: real(
        export_module.CropRegressor(other.net), example, metadata))
    with pytest.raises(ExportError, match="does not reproduce the network.*nothing was written"):
        export_model(model, tmp_path / "m.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_legacy_exporter_is_the_fallback_and_is_recorded(tmp_path, renderer, monkeypatch):
    model = _scrambled(InverseFaceNet(renderer, backbone="mobilenetv3_small_100"), seed=4)

    def fail(module, example):
        raise RuntimeError("cannot trace this backbone")

    monkeypatch.setattr(export_module, "_onnx_bytes_dynamo", fail)
    with pytest.warns(RuntimeWarning, match="cannot trace this backbone.*legacy"):
        metadata = export_model(model, tmp_path / "m.onnx", "onnx")
    assert metadata.exporter == "torch.onnx.export(dynamo=False)"
    assert read_metadata(tmp_path / "m.onnx").exporter == metadata.exporter
    crops = _crops(2, seed=8)
    assert np.abs(_run("onnx", tmp_path / "m.onnx", crops) - _reference(model, crops)).max() <= TOLERANCE


# ------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_metadata_describes_the_layout_and_round_trips(exports, model, fmt):
    path, metadata = exports[fmt]
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    # Read independently of ifn's reader: ONNX metadata_props, the TorchScript archive's extra file.
    if fmt == "onnx":
        embedded = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["ifn"])
    else:
        with zipfile.ZipFile(path) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith("/extra/ifn.json")]
            embedded = json.loads(archive.read(name))
    assert embedded == sidecar
    assert sidecar["schema"] == SCHEMA and sidecar["format"] == fmt
    groups = sidecar["output"]["groups"]
    assert [g["name"] for g in groups] == list(GROUPS)
    assert [g["size"] for g in groups] == [3, N_SHAPE, N_EXPRESSION, N_REFLECTANCE, 27]
    assert [g["offset"] for g in groups] == [0, 3, 3 + N_SHAPE, 3 + N_SHAPE + N_EXPRESSION,
                                             3 + N_SHAPE + N_EXPRESSION + N_REFLECTANCE]
    assert sidecar["output"]["shape"] == ["batch", M]
    assert sidecar["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert (sidecar["input"]["layout"], sidecar["input"]["channels"]) == ("NCHW", "RGB")
    assert sidecar["input"]["range"] == [0.0, 1.0] and sidecar["input"]["dtype"] == "float32"
    identity = model.face_model.identity()
    assert sidecar["face_model"]["sha256"] == identity.sha256 and len(identity.sha256) == 64
    assert sidecar["face_model"]["name"] == identity.name
    assert sidecar["render"]["image_size"] == SIZE
    assert sidecar["backbone"] == model.hparams["backbone"]
    import ifn

    assert sidecar["ifn_version"] == ifn.__version__
    # ifn's reader, on the file and on the sidecar, gives back what was written.
    assert read_metadata(path) == metadata == read_metadata(path.with_name(path.name + ".json"))
    assert ExportMetadata.from_dict(metadata.to_dict()) == metadata


def test_split_gives_the_groups_of_theta(exports):
    _, metadata = exports["onnx"]
    theta = np.arange(2 * M, dtype=np.float32).reshape(2, M)
    parts = metadata.split(theta)
    assert list(parts) == list(GROUPS)
    assert np.array_equal(np.concatenate(list(parts.values()), axis=1), theta)
    assert parts["rotation"].shape == (2, 3) and parts["illumination"].shape == (2, 27)
    with pytest.raises(ValueError, match=f"\\(B, {M}\\)"):
        metadata.split(theta[:, :-1])


def test_bad_metadata_and_foreign_files_are_refused(tmp_path, exports):
    _, metadata = exports["onnx"]
    data = metadata.to_dict()
    with pytest.raises(ExportError, match="schema 'ifn-export/0'"):
        ExportMetadata.from_dict({**data, "schema": "ifn-export/0"})
    swapped = json.loads(json.dumps(data))
    swapped["output"]["groups"][1], swapped["output"]["groups"][2] = swapped["output"]["groups"][2], swapped["output"]["groups"][1]
    with pytest.raises(ExportError, match="θ groups"):
        ExportMetadata.from_dict(swapped)
    bad_offset = json.loads(json.dumps(data))
    bad_offset["output"]["groups"][4]["offset"] += 1
    with pytest.raises(ExportError, match="offsets"):
        ExportMetadata.from_dict(bad_offset)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that ifn did not write
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), foreign)
    script = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Identity()), script)
    with pytest.raises(ExportError, match="foreign.onnx: an ONNX file without ifn metadata"):
        OnnxRegressor(foreign)
    with pytest.raises(ExportError, match="garbage.onnx: not a readable ONNX file"):
        OnnxRegressor(garbage)
    with pytest.raises(ExportError, match="missing.onnx: exported model not found"):
        OnnxRegressor(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="plain.pt: a TorchScript file without ifn metadata"):
        load_torchscript(script)
    with pytest.raises(ExportError, match="not a readable ONNX"):
        load_torchscript(garbage)


# ------------------------------------------------------------------------- checkpoints and the CLI
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A checkpoint written by `ifn fit` (LightningCLI records its own keys among the hyper-parameters)."""
    root = tmp_path_factory.mktemp("fit")
    assert main(["fit", *SMALL_RUN, f"--trainer.default_root_dir={root}"]) == 0
    path = root / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    # LightningCLI would read pytest's own arguments from sys.argv.
    monkeypatch.setattr("sys.argv", ["ifn"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cli_exports_a_fitted_checkpoint(fitted, tmp_path, capsys, fmt):
    out = tmp_path / f"ifn{FORMATS[fmt]}"
    capsys.readouterr()
    assert main(["export", "--ckpt_path", str(fitted), "--format", fmt, "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["written"] == str(out) and printed["theta_size"] == 38
    assert Path(printed["metadata"]).is_file()
    saved = torch.load(fitted, map_location="cpu", weights_only=True)
    metadata = read_metadata(out)
    assert metadata.checkpoint == {"file": "last.ckpt", "weights_sha256": saved["ifn"]["weights_sha256"]}
    assert metadata.face_model.sha256 == saved["ifn"]["face_model"]["sha256"]
    model = InverseFaceNet.from_checkpoint(fitted)
    crops = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert np.abs(_run(fmt, out, crops) - _reference(model, crops)).max() <= TOLERANCE


def test_cli_writes_beside_the_checkpoint_by_default(fitted, tmp_path, capsys):
    ckpt = tmp_path / "trained.ckpt"
    ckpt.write_bytes(fitted.read_bytes())
    assert main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript"]) == 0
    assert (tmp_path / "trained.pt").is_file() and (tmp_path / "trained.pt.json").is_file()


def test_checkpoint_of_a_pretrained_backbone_exports_without_downloading(fitted, tmp_path, monkeypatch):
    """`pretrained`/`backbone_checkpoint` only chose starting weights: neither is fetched again."""
    saved = torch.load(fitted, map_location="cpu", weights_only=True)
    saved["hyper_parameters"].update(pretrained=True, backbone_checkpoint=str(tmp_path / "gone.safetensors"))
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save(saved, ckpt)
    import timm

    calls = []
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        assert not pretrained, "tried to load pretrained weights"
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr("ifn.models.backbone.timm.create_model", spy)
    path, metadata = export_module.export_checkpoint(ckpt, "torchscript", tmp_path / "m.pt")
    assert calls == [False] and path.is_file() and metadata.backbone == "test_efficientnet"


def _error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ifn: error: ")
    return lines[0]


def test_cli_mistakes_are_one_line_errors(fitted, tmp_path, capsys, monkeypatch):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(fitted.read_bytes()[:50_000])
    assert "missing.ckpt: checkpoint file not found" in _error(
        capsys, "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "onnx")
    assert "truncated.ckpt: not a readable checkpoint" in _error(capsys, "--ckpt_path", str(truncated), "--format", "onnx")
    # Format and suffix are checked before the checkpoint is even opened.
    monkeypatch.setattr(export_module, "_load_trained", lambda *a: pytest.fail("loaded the checkpoint"))
    assert "--format: 'tflite' is not one of onnx, torchscript" in _error(
        capsys, "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "tflite")
    line = _error(capsys, "--ckpt_path", str(fitted), "--format", "onnx", "-o", str(tmp_path / "m.pt"))
    assert "m.pt: onnx exports end in .onnx (-o m.onnx)" in line
    line = _error(capsys, "--ckpt_path", str(fitted), "--format", "torchscript", "-o", str(tmp_path / "m.onnx"))
    assert "m.onnx: torchscript exports end in .pt or .ts" in line
    assert "--input-dtype: 'int8'" in _error(capsys, "--ckpt_path", str(fitted), "--format", "onnx",
                                              "--input-dtype", "int8")
    assert "required: --ckpt_path" in _error(capsys, "--format", "onnx")
    assert "unrecognized arguments: --bogus" in _error(capsys, "--ckpt_path", str(fitted), "--format", "onnx", "--bogus")
    assert list(tmp_path.glob("m.*")) == []


def test_a_moved_face_model_is_named_and_can_be_passed(tmp_path, toy_face_model, capsys):
    face_file = toy_face_model.save(tmp_path / "toy.npz")
    render = RenderSettings(face_model=str(face_file), n_shape=3, n_expression=2, n_reflectance=3, image_size=32,
                            backend="torch")
    dm = SyntheticFaceDataModule(render=render, batch_size=2, batches_per_epoch=1, val_size=0, test_size=2)
    model = InverseFaceNet(dm.renderer, backbone="mobilenetv3_small_050")
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(ckpt)
    moved = face_file.rename(tmp_path / "moved.npz")
    line = _error(capsys, "--ckpt_path", str(ckpt), "--format", "torchscript")
    assert "toy.ckpt" in line and "toy.npz" in line and "--face-model" in line
    assert main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--face-model", str(moved)]) == 0
    recorded = torch.load(ckpt, map_location="cpu", weights_only=True)["ifn"]["face_model"]["sha256"]
    assert read_metadata(tmp_path / "toy.pt").face_model.sha256 == recorded
