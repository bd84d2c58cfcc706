"""Durable checkpoints: a save killed half-way leaves the previous checkpoint intact and the
run resumes to the same weights as an uninterrupted one, with its logs continuing the same
steps in the same folder; two fits started in one ``default_root_dir`` keep both runs'
checkpoints; every shipped config checkpoints periodically.

The kill and concurrency tests run ``ifn fit`` as processes (a kill -9 must hit a real
process); the rest is in-process.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from ifn.callbacks.durable import LOCK_NAME, AtomicCheckpointIO, claim_run_folder, release_run_folder
from ifn.models.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
FIT = [
    "fit", "--config", str(QUICKSTART),
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.backbone=mobilenetv3_small_050",
    "--data.render.face_model=procedural", "--data.render.image_size=32", "--data.render.n_shape=3",
    "--data.render.n_expression=2", "--data.render.n_reflectance=3", "--data.batch_size=4",
    "--data.batches_per_epoch=2", "--data.val_size=4", "--data.test_size=4", "--data.render.backend=torch",
    "--trainer.log_every_n_steps=1", "--trainer.max_steps=6",
]  # fmt: skip

#: Runs ``ifn`` with hooks for the tests: ``KILL_AT_SAVE=last.ckpt:2`` writes half of the
#: second save of ``last.ckpt`` and kills the process (SIGKILL) in the middle of that save;
#: ``HOLD_FOLDER_UNTIL=FILE`` keeps the fit's folder (its lock) until FILE exists, so that
#: a second fit finds it held.
WRAPPER = '''
import io, os, signal, sys, time
import torch
import ifn.callbacks.durable as durable
name, _, count = os.environ.get("KILL_AT_SAVE", "").partition(":")
real_save, real_io_save, state = torch.save, durable.AtomicCheckpointIO.save_checkpoint, {"target": "", "seen": 0}
def io_save(self, checkpoint, path, storage_options=None):
    state["target"] = os.path.basename(str(path))
    return real_io_save(self, checkpoint, path, storage_options)
def save(obj, f, *args, **kwargs):
    if name and state["target"] == name and not isinstance(f, io.BytesIO):
        state["seen"] += 1
        if state["seen"] == int(count):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
durable.AtomicCheckpointIO.save_checkpoint = io_save
hold_until = os.environ.get("HOLD_FOLDER_UNTIL")
if hold_until:
    import ifn.lightning_cli as cli
    release = cli.release_run_folder
    def held(folder):
        deadline = time.monotonic() + 240
        while not os.path.exists(hold_until) and time.monotonic() < deadline:
            time.sleep(0.1)
        release(folder)
    cli.release_run_folder = held
from ifn.cli import main
sys.exit(main())
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IFN_DEBUG", "IFN_RUN_FOLDER")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _ifn(tmp_path: Path, args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "ifn_wrapped.py"
    wrapper.write_text(WRAPPER)
    return subprocess.run([sys.executable, str(wrapper), *args], cwd=tmp_path, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _every_2_steps(tmp_path: Path, root: Path) -> str:
    """A config overlay whose only checkpoint is ``last.ckpt`` every 2 steps, in ``root``."""
    overlay = tmp_path / f"{root.name}_checkpoints.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "ifn.callbacks.durable.PeriodicLastCheckpoint",
        "init_args": {"dirpath": str(root / "checkpoints"), "every_n_train_steps": 2},
    }]}}))
    return f"--config={overlay}"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _logged(root: Path) -> dict[str, list[tuple[int, str]]]:
    """``{metric: [(step, value), ...]}`` of the run's only CSV log (version folders must be one)."""
    (log,) = sorted(root.glob("lightning_logs/*/metrics.csv"))
    rows = list(csv.DictReader(io.StringIO(log.read_text())))
    logged: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "epoch") and value != "":
                logged.setdefault(key, []).append((int(row["step"]), value))
    return logged


# ------------------------------------------------------------------------------ processes


@pytest.mark.slow
def test_a_kill_during_a_save_keeps_the_previous_checkpoint_and_the_resume_matches(tmp_path):
    shm = Path("/dev/shm")
    tmpdir = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    full, killed = tmp_path / "full", tmp_path / "killed"
    result = _ifn(tmp_path, [*FIT, _every_2_steps(tmp_path, full), f"--trainer.default_root_dir={full}"],
                  TMPDIR=str(tmpdir))
    assert result.returncode == 0, result.stderr[-3000:]

    # last.ckpt is saved after steps 2, 4 and 6: killed during the save of step 4's.
    killed_run = [*FIT, _every_2_steps(tmp_path, killed), f"--trainer.default_root_dir={killed}"]
    result = _ifn(tmp_path, killed_run, KILL_AT_SAVE="last.ckpt:2", TMPDIR=str(tmpdir))
    assert result.returncode == -9, result.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 2  # the previous checkpoint, intact
    assert list((killed / "checkpoints").glob(".ifn-saving-*.partial"))  # the half-written save

    result = _ifn(tmp_path, [*killed_run, "--ckpt_path=last"], TMPDIR=str(tmpdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 2: logging into" in result.stdout
    resumed, uninterrupted = _weights(last), _weights(full / "checkpoints" / "last.ckpt")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    # One log folder, the same steps (and values) as the uninterrupted run's.
    assert _logged(killed) == _logged(full)
    assert [step for step, _ in _logged(full)["train/loss"]] == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_two_fits_in_one_folder_keep_both_runs_checkpoints(tmp_path):
    root = tmp_path / "shared"
    wrapper = tmp_path / "ifn_wrapped.py"
    wrapper.write_text(WRAPPER)
    first = subprocess.Popen([sys.executable, str(wrapper), *FIT, f"--trainer.default_root_dir={root}",
                              "--seed_everything=1"], cwd=tmp_path, env=_env(HOLD_FOLDER_UNTIL=str(tmp_path / "done")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / LOCK_NAME).exists():  # the first fit holds the folder
            assert first.poll() is None and time.monotonic() < deadline, "the first fit never took the folder"
            time.sleep(0.2)
        second = _ifn(tmp_path, [*FIT, f"--trainer.default_root_dir={root}", "--seed_everything=2"])
        (tmp_path / "done").touch()
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"this run writes to {root}.2" in second.stdout
    a = read_checkpoint(root / "checkpoints" / "last.ckpt")
    b = read_checkpoint(Path(f"{root}.2") / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    assert not torch.equal(a["state_dict"]["net.conv_stem.weight"], b["state_dict"]["net.conv_stem.weight"])
    assert not (root / LOCK_NAME).exists() and not (Path(f"{root}.2") / LOCK_NAME).exists()  # released


# ------------------------------------------------------------------------------ in-process


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save
    seen: list[list[str]] = []

    def half_then_fail(obj, f, *args, **kwargs):
        seen.append(sorted(os.listdir(path.parent)))
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:10])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io_plugin.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]  # the temporary file is gone
    (temporary,) = set(seen[0]) - {"last.ckpt"}
    assert "last" not in temporary  # `--ckpt_path last` never picks a half-written file


def test_a_live_lock_sends_the_fit_to_the_next_folder_and_a_stale_one_is_taken(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("IFN_RUN_FOLDER", raising=False)
    root = tmp_path / "run"
    root.mkdir()
    (root / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive
    folder = claim_run_folder(root)
    assert folder == Path(f"{root}.2") and (folder / LOCK_NAME).is_file()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert claim_run_folder(root) == folder  # a process this fit starts (DDP rank) gets the same folder
    release_run_folder(folder)
    assert not (folder / LOCK_NAME).exists() and "IFN_RUN_FOLDER" not in os.environ

    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert claim_run_folder(root) == root  # the holder is gone: the lock is taken over
    assert json.loads((root / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_run_folder(root)
    assert not (root / LOCK_NAME).exists()


def _merged(*files: Path) -> dict:
    merged: dict = {}
    for file in files:
        for key, value in (yaml.safe_load(file.read_text()) or {}).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


@pytest.mark.parametrize(
    "files",
    [("quickstart.yaml",), ("quickstart.yaml", "quickstart_breeding.yaml"), ("paper.yaml",), ("paper.yaml", "breeding.yaml")],
    ids=["quickstart", "quickstart_breeding", "paper", "breeding"],
)
def test_every_shipped_config_checkpoints_periodically(files):
    config = _merged(*(CONFIGS / name for name in files))
    callbacks = config["trainer"]["callbacks"]
    # last.ckpt every N steps, whatever the metrics do: a ModelCheckpoint that monitors a
    # metric would write it only with a new best.
    periodic = [c["init_args"] for c in callbacks if c["class_path"].endswith("PeriodicLastCheckpoint")] + [
        c["init_args"] for c in callbacks
        if c["class_path"].endswith("ModelCheckpoint") and c["init_args"].get("save_last")
        and c["init_args"].get("every_n_train_steps") and not c["init_args"].get("monitor")
    ]
    assert len(periodic) == 1, callbacks
    savers_of_last = [c for c in callbacks if c["init_args"].get("save_last") or c["class_path"].endswith("LastCheckpoint")]
    assert len(savers_of_last) == 1  # two would name theirs last-v1.ckpt in turn
