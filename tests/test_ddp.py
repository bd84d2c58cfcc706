"""Two-process CPU DDP ``ifn fit`` (gloo): it completes, checkpoints, and every rank renders
its own training batches while the fixed validation set is split between the ranks.

``ifn fit`` runs as a subprocess so Lightning launches the second process itself, exactly as
for a user. A probe callback (a module written to ``tmp_path`` and put on ``PYTHONPATH``, added
with ``--trainer.callbacks+=``) saves what each rank trained and validated on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, VAL_SIZE = 3, 4, 8

PROBE = '''
import os
import torch
import lightning as L


class ThetaProbe(L.Callback):
    """Saves each rank's training θ (per step) and validation θ to <out_dir>/rank<r>.pt."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.train, self.val = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append(batch.theta.detach().cpu().clone())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.append(batch.theta.detach().cpu().clone())

    def on_fit_end(self, trainer, pl_module):
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "batches_consumed": trainer.datamodule.batches_consumed,
                "train": self.train,
                "val": self.val,
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )
'''


def _rows_shared(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a[:, None, :] == b[None, :, :]).all(dim=-1).any(dim=1).sum())


SMALL = [
    "--config", str(REPO / "configs" / "quickstart.yaml"),
    "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--model.backbone=mobilenetv3_small_050",
    "--data.render.image_size=32", "--data.render.n_shape=3", "--data.render.n_expression=2", "--data.render.n_reflectance=3",
    f"--data.batch_size={BATCH}", f"--data.batches_per_epoch={STEPS}",
    f"--data.val_size={VAL_SIZE}", "--data.test_size=8", "--data.render.backend=torch",
]


def _env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")])),
        MASTER_ADDR="127.0.0.1",
    )
    env.pop("MASTER_PORT", None)  # let Lightning pick a free port
    return env


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory, run) -> Path:
    """A 2-process fit of STEPS steps; returns its folder (run/, probe/)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    (tmp_path / "ifn_test_probe.py").write_text(PROBE)
    probe = json.dumps({"class_path": "ifn_test_probe.ThetaProbe", "init_args": {"out_dir": str(tmp_path / "probe")}})
    command = [
        sys.executable, "-m", "ifn.cli", "fit", *SMALL,
        f"--trainer.max_steps={STEPS}", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path / 'run'}", f"--trainer.callbacks+={probe}",
    ]
    result = run(command, tmp_path, _env(tmp_path), timeout=150)
    assert result.returncode == 0, result.stderr[-6000:]
    return tmp_path


def test_two_process_cpu_ddp_fit(ddp_fit: Path):
    root, probe_out = ddp_fit / "run", ddp_fit / "probe"
    checkpoint = root / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == STEPS
    assert saved["SyntheticFaceDataModule"]["batches_consumed"] == STEPS
    assert list(root.glob("lightning_logs/version_*/images/val_step*.png"))  # rank 0's image grid

    ranks = [torch.load(probe_out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r, record in enumerate(ranks):
        assert record["rank"] == r and record["world_size"] == 2
        assert record["batches_consumed"] == STEPS
        assert len(record["train"]) == STEPS
        assert all(theta.shape[0] == BATCH for theta in record["train"])
    train0, train1 = (torch.cat(record["train"]) for record in ranks)
    # Each rank draws its own stream: no θ in common, and none repeated within a rank.
    assert _rows_shared(train0, train1) == 0
    for rows in (train0, train1):
        assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]
    # Validation: the ranks split the one fixed set between them (each face evaluated once).
    val0, val1 = (torch.cat(record["val"]) for record in ranks)
    assert val0.shape[0] + val1.shape[0] == VAL_SIZE
    assert _rows_shared(val0, val1) == 0
    from ifn.data.datamodule import SyntheticFaceDataModule
    from ifn.data.sources import STREAM_VAL
    from ifn.render.settings import RenderSettings

    reference = SyntheticFaceDataModule(
        render=RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch"),
        batch_size=BATCH, val_size=VAL_SIZE, test_size=8, seed=0,
    ).fixed_parameters(STREAM_VAL)
    assert _rows_shared(torch.cat([val0, val1]), reference) == VAL_SIZE


def test_two_process_cpu_ddp_test_with_real_photos(ddp_fit: Path, shared_data: Path, tmp_path: Path, run):
    """``ifn test`` under DDP: synthetic metrics synchronised, and the real-photo CSV gathered
    from both ranks (3 photos over 2 ranks: the sampler pads one rank with a repeat)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["breakingbad", "einstein", "takeo"]
    for name in names:
        for file in (shared_data / "faces" / "annotated68").glob(f"{name}.*"):
            shutil.copy(file, photos / file.name)
    command = [
        sys.executable, "-m", "ifn.cli", "test", *SMALL,
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--ckpt_path={ddp_fit / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"--data.photos.test_dir={photos}", "--data.photos.detector=annotation",
        f"--data.photos.cache_dir={tmp_path / 'cache'}",
    ]
    result = run(command, tmp_path, _env(tmp_path), timeout=150)
    assert result.returncode == 0, result.stderr[-6000:]
    path = Path([line for line in result.stdout.splitlines() if line.strip()][-1])
    assert path.name == "test_metrics.json" and path.is_file()
    metrics = json.loads(path.read_text())
    for key in ("test/geometric_error_mm", "test/geometric_error_mm_mean_face", "test/photometric_error",
                "test/iou", "test/real_photometric_error", "test/real_iou"):
        assert metrics.get(key) is not None, key
    rows = (path.parent / "test_real_per_image.csv").read_text().splitlines()
    assert rows[0] == "path,face_index,photometric_error,iou"
    assert sorted(Path(row.split(",")[0]).stem for row in rows[1:]) == names
