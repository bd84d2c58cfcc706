"""The ``ifn`` LightningCLI: every config parses, the W&B sweep's parameters are accepted, and
scaled-down ``fit`` → ``test`` / resume / W&B-offline runs (``-m slow``).

Configs are parsed in-process through :func:`ifn.cli.main` (``--print_config`` exits before
anything is instantiated, so ``configs/paper.yaml``'s ``models/ict.npz`` need not exist).
Runs use the quickstart config scaled down to 32×32 faces, batch 4, a 0.6 M-parameter
backbone and a few steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ifn.cli import main
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.lightning_cli import run_lightning_cli
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
PAPER = CONFIGS / "paper.yaml"
#: Overlays on one main config (used as ``--config MAIN --config OVERLAY``).
OVERLAY_BASES = {"breeding.yaml": (PAPER,), "quickstart_breeding.yaml": (QUICKSTART,)}
SWEEP = CONFIGS / "sweeps" / "loss_weights.yaml"
OVERLAY_DIRS = ("experiment", "logger")  # applied on top of a main config

#: The quickstart pipeline, shrunk to seconds on one CPU thread.
SMALL_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--model.backbone=mobilenetv3_small_050",
    "--data.render.face_model=procedural",
    "--data.render.image_size=32",
    "--data.render.n_shape=3",
    "--data.render.n_expression=2",
    "--data.render.n_reflectance=3",
    "--data.batch_size=4",
    "--data.batches_per_epoch=2",
    "--data.val_size=8",
    "--data.test_size=8",
    "--data.render.backend=torch",
]

#: Everything ``ifn test`` must report (the paper's metrics, for the network and the mean-face reference).
REQUIRED_TEST_METRICS = [
    f"test/{name}{suffix}"
    for name in ("geometric_error_mm", "photometric_error", "iou")
    for suffix in ("", "_mean_face")
]



@pytest.fixture(autouse=True)
def _argv_and_cwd(monkeypatch, tmp_path):
    # LightningCLI warns when given args while sys.argv (pytest's) has arguments too. An empty
    # working directory: relative paths in configs (models/ict.npz, runs/) resolve to nothing.
    monkeypatch.setattr(sys, "argv", ["ifn"])
    monkeypatch.chdir(tmp_path)


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def print_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """``ifn fit <args> --print_config`` in-process → the printed config as a dict."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["fit", *args, "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "${" not in printed, "unresolved interpolation in the printed config"
    return yaml.safe_load(printed)


def _config_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.relative_to(CONFIGS).parts)


def _assert_overlay_applied(overlay: Any, parsed: Any, where: str) -> None:
    """Every value a config file sets is in the parsed config (interpolations: resolved)."""
    if isinstance(overlay, dict):
        assert isinstance(parsed, dict), where
        for key, value in overlay.items():
            assert key in parsed, f"{where}.{key} missing"
            _assert_overlay_applied(value, parsed[key], f"{where}.{key}")
    elif isinstance(overlay, list) and overlay and isinstance(overlay[0], dict) and "class_path" in overlay[0]:
        parsed_list = parsed if isinstance(parsed, list) else [parsed]
        for item in overlay:
            matches = [p for p in parsed_list if p["class_path"] == item["class_path"]]
            assert matches, f"{where}: {item['class_path']} missing"
            _assert_overlay_applied(item.get("init_args", {}), matches[0].get("init_args", {}), where)
    elif isinstance(overlay, str) and "${" in overlay:
        assert parsed is not None and "${" not in str(parsed), where
    else:
        assert parsed == overlay, f"{where}: {parsed!r} != {overlay!r}"


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("config", _config_files(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(capsys, config: Path):
    files = [PAPER, config] if config.parent.name in OVERLAY_DIRS else [*OVERLAY_BASES.get(config.name, ()), config]
    args = [a for f in files for a in ("--config", str(f))]
    parsed = print_config(capsys, *args)
    _assert_overlay_applied(yaml.safe_load(config.read_text()), parsed, config.name)  # the last file wins
    # Render settings exist once, under data.render: the model is handed the DataModule's renderer.
    for key in ("face_model", "image_size", "backend", "render"):
        assert key not in (yaml.safe_load(config.read_text()).get("model") or {}), key
        assert key == "render" or key not in (yaml.safe_load(config.read_text()).get("data") or {}), key
    assert parsed["model"]["backbone"]


def test_interpolations_follow_command_line_overrides(capsys, tmp_path):
    root = str(tmp_path / "elsewhere")
    parsed = print_config(
        capsys, "--config", str(QUICKSTART), "--config", str(CONFIGS / "logger" / "wandb.yaml"),
        f"--trainer.default_root_dir={root}", "--data.batches_per_epoch=7",
    )
    checkpoint = next(c for c in parsed["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert checkpoint["init_args"]["dirpath"] == f"{root}/checkpoints"
    assert parsed["trainer"]["logger"][0]["init_args"]["save_dir"] == root
    paper = print_config(capsys, "--config", str(PAPER), "--data.batches_per_epoch=7")
    paper_checkpoint = next(c for c in paper["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert paper_checkpoint["init_args"]["every_n_train_steps"] == 7


def test_every_sweep_parameter_is_accepted_by_fit(capsys):
    sweep = yaml.safe_load(SWEEP.read_text())
    command = sweep["command"]
    assert command[0] == "${program}" and sweep["program"] == "ifn" and command[1] == "fit"
    assert command[-1] == "${args}"
    base = [str(REPO / a) if a.endswith(".yaml") else a for a in command[2:-1]]
    assert base.count("--config") >= 1
    assert sweep["metric"]["name"].startswith("val/")
    for bound in ("min", "max"):
        # wandb agents pass ``--name=value`` per parameter (``${args}``).
        values = {name: spec[bound] for name, spec in sweep["parameters"].items()}
        overrides = [f"--{name}={value}" for name, value in values.items()]
        parsed = print_config(capsys, *base, *overrides)
        for name, value in values.items():
            node: Any = parsed
            for part in name.split("."):
                node = node[part]
            assert node == pytest.approx(value), name


def test_sweep_metric_is_logged_by_validation():
    # The sweep minimises a metric by name: it must be one that InverseFaceNet logs.
    sweep = yaml.safe_load(SWEEP.read_text())
    stage = sweep["metric"]["name"].split("/")[0]
    render = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")
    dm = SyntheticFaceDataModule(render=render, val_size=4, test_size=4)
    model = InverseFaceNet(dm.renderer, backbone="mobilenetv3_small_050")
    batch = dm.render_batch(dm.fixed_parameters(1))
    model.evaluators["val"].update(model(batch.input), batch)
    assert stage == "val" and sweep["metric"]["name"] in model.evaluators["val"].compute()
    # With the balanced loss the sweep's weights are shares: the command must turn it on.
    assert "--model.balanced_loss" in sweep["command"]


# --------------------------------------------------------------------------------- fit / test


class _Recorder:
    """(global_step, θ) of every trained batch."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.thetas: list[torch.Tensor] = []


@pytest.mark.slow
def test_fit_then_test_writes_metrics_json(tmp_path, capsys):
    root = tmp_path / "run"
    common = ["--config", str(QUICKSTART), *SMALL_RUN, f"--trainer.default_root_dir={root}"]
    assert main(["fit", *common, "--trainer.max_steps=2"]) == 0
    checkpoint = root / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert sorted((root / "lightning_logs").glob("version_*/images/val_step*.png"))  # ImageGridLogger

    capsys.readouterr()
    assert main(["test", *common, f"--ckpt_path={checkpoint}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    path = Path(lines[-1])
    assert path.name == "test_metrics.json" and path.is_file()
    assert path.resolve().is_relative_to(root.resolve())
    metrics = json.loads(path.read_text())
    for key in REQUIRED_TEST_METRICS:
        assert key in metrics, key
        assert metrics[key] is not None and math.isfinite(metrics[key]), (key, metrics[key])
    assert all(key.startswith("test/") for key in metrics)
    for suffix in ("", "_mean_face"):
        assert 0 <= metrics[f"test/photometric_error{suffix}"] <= 255 * math.sqrt(3)
        assert 0 <= metrics[f"test/iou{suffix}"] <= 100
        assert metrics[f"test/geometric_error_mm{suffix}"] >= 0
    # The mean face differs from random faces: its geometric error is positive.
    assert metrics["test/geometric_error_mm_mean_face"] > 0
    # The checkpoint knows its face model; testing it with another one is a one-line error.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(saved["ifn"]["face_model"]["sha256"]) == 64
    capsys.readouterr()
    assert main(["test", *common, "--data.render.n_shape=4", f"--ckpt_path={checkpoint}"]) == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("ifn: error: ") and "3/2/3 modes" in error and "4/2/3 modes" in error
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_fit_resumes_step_and_theta_stream(tmp_path, monkeypatch):
    """An uninterrupted 5-step run, and a run resumed from its step-3 checkpoint (mid-epoch:
    2 batches per epoch), must train on the same θ at steps 3 and 4, none seen before."""
    every_step = json.dumps({
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(tmp_path / "steps"), "every_n_train_steps": 1, "save_top_k": -1,
                      "filename": "{step}"},
    })
    common = ["--config", str(QUICKSTART), *SMALL_RUN, "--trainer.max_steps=5"]

    full, resumed = _Recorder(), _Recorder()
    active = full
    original = InverseFaceNet.training_step

    def training_step(self, batch, batch_idx):
        active.steps.append(int(self.global_step))
        active.thetas.append(batch.theta.detach().cpu().clone())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(InverseFaceNet, "training_step", training_step)
    cli = run_lightning_cli(["fit", *common, f"--trainer.default_root_dir={tmp_path / 'full'}",
                             f"--trainer.callbacks+={every_step}"])
    assert full.steps == [0, 1, 2, 3, 4]
    assert cli.trainer.global_step == 5 and cli.datamodule.batches_consumed == 5
    checkpoint = tmp_path / "steps" / "step=3.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    assert saved["SyntheticFaceDataModule"]["batches_consumed"] == 3

    active = resumed  # the wrapper reads `active` at call time
    cli = run_lightning_cli(["fit", *common, f"--trainer.default_root_dir={tmp_path / 'resumed'}",
                             f"--ckpt_path={checkpoint}"])
    assert resumed.steps == [3, 4]
    assert cli.trainer.global_step == 5 and cli.datamodule.batches_consumed == 5
    for got, expected in zip(resumed.thetas, full.thetas[3:], strict=False):
        assert torch.equal(got, expected)
    earlier = torch.cat(full.thetas[:3])
    for theta in resumed.thetas:
        assert not (theta[:, None, :] == earlier[None, :, :]).all(dim=-1).any()


@pytest.mark.slow
def test_fit_with_wandb_offline_writes_a_run(tmp_path, run):
    root = tmp_path / "run"
    env = _subprocess_env(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb-dir"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        WANDB_SILENT="true",
    )
    command = [
        sys.executable, "-m", "ifn.cli", "fit",
        "--config", str(QUICKSTART), "--config", str(CONFIGS / "logger" / "wandb.yaml"),
        *SMALL_RUN, "--trainer.max_steps=2", f"--trainer.default_root_dir={root}",
    ]
    result = run(command, tmp_path, env, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    # The logger's save_dir follows trainer.default_root_dir (an interpolation in wandb.yaml).
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in tmp_path.rglob("*run-*"))
    data = list(runs[0].glob("run-*.wandb"))
    assert data and data[0].stat().st_size > 0
    # ImageGridLogger sends its validation grid to W&B.
    assert list(runs[0].glob("files/media/images/val/reconstructions_*.png"))
    assert (root / "checkpoints" / "last.ckpt").is_file()
