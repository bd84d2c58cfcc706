"""Misuse of ``ifn`` is one line on stderr (``ifn: error: …``, exit 2, no traceback), and
``IFN_DEBUG=1`` re-raises it with its traceback instead.

In-process through :func:`ifn.cli.main`; every case here fails before any training, so the
module runs in seconds. Damaged checkpoints and photo folders: ``tests/test_integrity.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning  # noqa: F401 - imported before the tests: its log handler then writes to the real stderr, not to a closed capture
import numpy as np
import pytest

from ifn.cli import main
from ifn.errors import UsageError
from ifn.facemodel.procedural import procedural_face_model

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL_RUN = [
    "--config", str(QUICKSTART),
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--model.backbone=mobilenetv3_small_050",
    "--data.render.face_model=procedural",
    "--data.render.image_size=32",
    "--data.render.n_shape=3",
    "--data.render.n_expression=2",
    "--data.render.n_reflectance=3",
    "--data.batch_size=4",
    "--data.render.backend=torch",
    "--trainer.max_steps=1",
]


@pytest.fixture(autouse=True)
def _argv_and_cwd(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["ifn"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IFN_DEBUG", raising=False)


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run ``ifn argv``: exit 2, stderr ending in exactly one ``ifn: error:`` line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("ifn: error: ") and sum(line.startswith("ifn: error") for line in lines) == 1, err
    assert len(lines) <= 3, err  # at most Lightning's "Seed set" line before it
    return lines[-1].removeprefix("ifn: error: ")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--data.batch_size=-4", "data.batch_size: must be > 0, got -4"),
        ("--model.backbone=resnet19", "model.backbone: unknown timm model 'resnet19'; did you mean 'resnet18'"),
        ("--data.render.face_model=nope.npz", "face model 'nope.npz' is neither the built-in 'procedural' model"),
        ("--data.batch_size=four", 'Parser key "data.batch_size": Expected a <class \'int\'>. Got value: four'),
    ],
    ids=["negative-batch-size", "unknown-backbone", "missing-face-model", "not-an-int"],
)
def test_wrong_values_are_one_line(capsys, option, expected):
    assert _one_line_error(capsys, ["fit", *SMALL_RUN, option]).startswith(expected)


@pytest.mark.parametrize(
    ("typo", "suggested"),
    [
        (["--data.batchsize", "4"], "--data.batchsize (did you mean '--data.batch_size'?)"),
        (["--trainer.max_step=5"], "--trainer.max_step (did you mean '--trainer.max_steps'?)"),
        (["--model.backbon", "resnet18"], "--model.backbon (did you mean '--model.backbone'?)"),
    ],
    ids=["batchsize", "max_step-is-no-abbreviation", "backbon"],
)
def test_a_typo_in_a_key_suggests_the_closest_key(capsys, typo, suggested):
    message = _one_line_error(capsys, ["fit", *SMALL_RUN, *typo])
    assert message == f"unknown option {suggested}; --help lists them"


def test_a_typo_in_a_config_file_suggests_the_closest_key(capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("data:\n  batchsize: 4\n")
    message = _one_line_error(capsys, ["fit", *SMALL_RUN, "--config", str(config)])
    assert "'data.batchsize'" in message and "(did you mean '--data.batch_size'?)" in message


def test_debug_switch_reraises(monkeypatch, capsys):
    monkeypatch.setenv("IFN_DEBUG", "1")
    with pytest.raises(UsageError, match="data.batch_size: must be > 0, got -4") as info:
        main(["fit", *SMALL_RUN, "--data.batch_size=-4"])
    assert isinstance(info.value.__cause__, ValueError)  # the original error, with its traceback
    with pytest.raises(UsageError, match="unrecognized arguments: --data.batchsize"):
        main(["fit", *SMALL_RUN, "--data.batchsize=4"])
    monkeypatch.setenv("IFN_DEBUG", "0")  # 0 is off
    assert main(["fit", *SMALL_RUN, "--data.batch_size=-4"]) == 2


def test_missing_and_unreadable_checkpoint_files(capsys, tmp_path):
    missing = tmp_path / "nope.ckpt"
    assert _one_line_error(capsys, ["test", *SMALL_RUN, f"--ckpt_path={missing}"]) == f"{missing}: checkpoint file not found"
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    message = _one_line_error(capsys, ["test", *SMALL_RUN, f"--ckpt_path={text}"])
    assert message.startswith(f"{text}: not a readable checkpoint, the file is truncated or damaged (")


# ------------------------------------------------------------------------------ face models


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return procedural_face_model().save(tmp_path_factory.mktemp("fm") / "procedural.npz")


def test_facemodel_info_of_damaged_or_invalid_files(capsys, tmp_path, model_file):
    capsys.readouterr()
    assert main(["facemodel", "info", str(model_file)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "procedural"

    data = model_file.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.npz"
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(damaged))
    nan = tmp_path / "nan.npz"
    with np.load(model_file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["mean_shape"] = arrays["mean_shape"].copy()
    arrays["mean_shape"][3, 1] = np.nan
    np.savez(nan, **arrays)

    for path in (truncated, flipped):
        message = _one_line_error(capsys, ["facemodel", "info", str(path)])
        assert message.startswith(f"{path}: not a readable .npz face model: damaged, truncated")
    message = _one_line_error(capsys, ["facemodel", "info", str(nan)])
    assert message == f"{nan}: invalid face model: mean_shape contains 1 non-finite value(s) (NaN or inf)"
    # The same file given to a run.
    message = _one_line_error(capsys, ["fit", *SMALL_RUN, f"--data.render.face_model={nan}"])
    assert message == f"{nan}: invalid face model: mean_shape contains 1 non-finite value(s) (NaN or inf)"


def test_convert_refuses_an_output_that_is_not_npz_before_converting(capsys, tmp_path, monkeypatch):
    import ifn.facemodel.ict as ict

    def never(*args, **kwargs):
        raise AssertionError("converted before checking the output name")

    real = ict.convert_ict
    monkeypatch.setattr(ict, "convert_ict", never)
    source = tmp_path / "ICT-FaceKit-master.zip"
    source.write_bytes(b"")
    message = _one_line_error(capsys, ["facemodel", "convert", "ict", str(source), "-o", "x.txt"])
    assert message == "x.txt: face model files end in .npz (-o x.npz)"
    monkeypatch.setattr(ict, "convert_ict", real)  # the real converter: a missing source is one line too
    message = _one_line_error(capsys, ["facemodel", "convert", "ict", str(tmp_path / "missing.zip"), "-o", "x.npz"])
    assert "missing.zip" in message


@pytest.mark.slow
def test_as_a_process_stderr_is_one_line_and_debug_gives_the_traceback(tmp_path, run):
    env = {k: v for k, v in os.environ.items() if k != "IFN_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "ifn.cli", "test", *SMALL_RUN, f"--ckpt_path={tmp_path / 'nope.ckpt'}"]
    result = run(command, tmp_path, env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"ifn: error: {tmp_path / 'nope.ckpt'}: checkpoint file not found"
    result = run(command, tmp_path, {**env, "IFN_DEBUG": "1"}, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CheckpointNotFoundError" in result.stderr


# ------------------------------------------------------------------------------ photo folders and resuming


@pytest.mark.parametrize(
    ("command", "option"),
    [("test", "test_dir"), ("predict", "predict_dir"), ("fit", "train_dir")],
)
def test_a_missing_photo_folder_is_one_line_naming_the_option_and_folder(capsys, tmp_path, command, option):
    missing = tmp_path / "no_photos"
    extra = ["--breeding.rounds=1", "--breeding.start_step=1", "--breeding.every_n_steps=1"] if command == "fit" else []
    message = _one_line_error(capsys, [command, *SMALL_RUN, *extra, "--data.photos.detector=annotation",
                                       f"--data.photos.{option}={missing}"])
    assert message == f"data.photos.{option}: folder not found: {missing}"
    a_file = tmp_path / "photo.jpg"
    a_file.write_bytes(b"")
    message = _one_line_error(capsys, [command, *SMALL_RUN, *extra, "--data.photos.detector=annotation",
                                       f"--data.photos.{option}={a_file}"])
    assert message == f"data.photos.{option}: not a folder: {a_file}"


def test_a_photo_folder_without_faces_is_one_line(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here\n")
    message = _one_line_error(capsys, ["test", *SMALL_RUN, "--data.photos.detector=annotation",
                                       f"--data.photos.test_dir={empty}", f"--data.photos.cache_dir={tmp_path / 'c'}"])
    assert message.startswith(f"data.photos.test_dir: no face kept in {empty}: 1 path(s): 0 used")


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resuming_from_an_empty_or_truncated_checkpoint_is_one_line(capsys, tmp_path, damage):
    from ifn.callbacks.durable import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": np.zeros(1000)}, "global_step": 3}, path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    message = _one_line_error(capsys, ["fit", *SMALL_RUN, f"--ckpt_path={path}"])
    assert message.startswith(f"{path}: not a readable checkpoint, the file is truncated or damaged (")
    # `--ckpt_path last` finds that file in the run's checkpoint folder: the same error.
    message = _one_line_error(capsys, ["fit", *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last"])
    assert message.startswith(f"{path}: not a readable checkpoint")
