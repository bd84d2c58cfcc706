"""BreedingCallback: bank from real reconstructions, bred θ stream, checkpoint/resume, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from ifn.breeding.callback import BreedingCallback
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.data.photo_folders import PhotoSettings
from ifn.data.sources import BredSource, BreedingNoise, PriorSource
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.params import ParamLayout
from ifn.render.settings import RenderSettings

SMALL = RenderSettings(face_model="procedural", n_shape=3, n_expression=2, n_reflectance=3, image_size=32, backend="torch")


class FakeCorpus(Dataset):
    """Stand-in for a RealFaceCorpus: renders of known θ with the corpus item layout."""

    def __init__(self, dm: SyntheticFaceDataModule, n: int = 6) -> None:
        theta = dm.fixed_parameters(2)[:n]
        batch = dm.render_batch(theta)
        self.items = [
            {"image": batch.image[i], "mask": batch.mask[i], "landmarks": batch.landmarks[i],
             "path": f"face{i}.png", "face_index": 0}
            for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def summary(self) -> dict:
        return {"faces": len(self.items), "skipped_images": 1}


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.thetas: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.thetas.append((trainer.global_step, batch.theta.detach().cpu().clone()))


def _datamodule(**kwargs) -> SyntheticFaceDataModule:
    dm = SyntheticFaceDataModule(render=SMALL, batch_size=4, batches_per_epoch=4, val_size=4, test_size=8,
                                 photos=PhotoSettings(train_dir="unused"), **kwargs)
    corpus = FakeCorpus(dm)
    dm.photos.corpus = lambda role, progress=True: corpus  # type: ignore[method-assign]
    return dm


def _model(dm: SyntheticFaceDataModule) -> InverseFaceNet:
    return InverseFaceNet(dm.renderer, backbone="resnet18")


def _trainer(tmp_path: Path, callbacks: list, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", devices=1,
                     callbacks=callbacks, logger=False, enable_progress_bar=False, limit_val_batches=0,
                     enable_model_summary=False, **kwargs)


def _distance_to_nearest(theta: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    exact = torch.cdist(theta.double(), table.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return exact.min(dim=1).values


def _rows_in(theta: torch.Tensor, table: torch.Tensor) -> bool:
    return bool((_distance_to_nearest(theta, table) < 1e-5).all())


# ----------------------------------------------------------------------------- units
def test_noise_matches_the_paper_ranges():
    layout = ParamLayout(n_shape=4, n_expression=3, n_reflectance=5)
    base = torch.zeros(20000, layout.size)
    noisy = BreedingNoise().perturb(base, layout, torch.Generator().manual_seed(0))
    params = layout.split(noisy)
    assert params.rotation.abs().max() <= math.radians(5.0)
    assert abs(params.rotation.std().item() - math.radians(5.0) / math.sqrt(3)) < 1e-3
    for tensor, std in ((params.shape, 0.05), (params.expression, 0.1), (params.reflectance, 0.2),
                        (params.illumination, 0.02)):
        assert abs(tensor.std().item() / std - 1) < 0.03
    # Illumination noise is per colour channel: this is where coloured light enters.
    assert not torch.equal(params.illumination[..., 0], params.illumination[..., 1])


def test_bred_source_draws_fixed_copies_deterministically():
    layout = ParamLayout(n_shape=2, n_expression=2, n_reflectance=2)
    bank = torch.randn(5, layout.size)
    source = BredSource(bank, layout, BreedingNoise(), copies=2, round_index=1, seed=0)
    assert source.copies.shape == (10, layout.size)
    theta = source.batch(index=3, rank=0, batch_size=16)
    assert _rows_in(theta, source.copies)
    assert torch.equal(theta, source.batch(index=3, rank=0, batch_size=16))
    assert not torch.equal(theta, source.batch(index=3, rank=1, batch_size=16))
    # Copies stay near their real reconstruction: every copy is within the noise of a bank row.
    assert (_distance_to_nearest(source.copies, bank) < 1.0).all()


def test_bred_source_fresh_perturbations_and_prior_mix(toy_face_model):
    layout = ParamLayout.for_face_model(toy_face_model)
    bank = torch.randn(3, layout.size)
    fresh = BredSource(bank, layout, BreedingNoise(), copies=2, round_index=1, seed=0, fresh_perturbations=True)
    theta = fresh.batch(0, 0, 64)
    assert not _rows_in(theta, fresh.copies)
    rotation_offsets = (theta[:, None, :3] - bank[None, :, :3]).abs().amax(-1).min(-1).values
    assert (rotation_offsets <= math.radians(5.0) + 1e-6).all()
    from ifn.data.priors import ParameterPrior

    prior = PriorSource(ParameterPrior(), layout, toy_face_model.metadata.expression_prior, seed=0)
    mixed = BredSource(bank, layout, BreedingNoise(), copies=2, round_index=1, seed=0, prior_fraction=0.5,
                       prior_source=prior)
    theta = mixed.batch(0, 0, 400)
    from_bank = _distance_to_nearest(theta, mixed.copies) < 1e-5
    assert 0.4 < from_bank.float().mean().item() < 0.6


def test_crossover_recombines_groups_of_different_faces(toy_face_model):
    layout = ParamLayout.for_face_model(toy_face_model)
    bank = torch.randn(6, layout.size) * 3  # rows far apart: every group identifies its row
    source = BredSource(bank, layout, BreedingNoise(), copies=1, round_index=1, seed=0, crossover=True)
    theta = source.batch(0, 0, 200)
    whole_rows = 0
    for sample in theta:
        origins = []
        for group, cols in layout.slices.items():
            distance = (source.copies[:, cols] - sample[cols]).abs().amax(-1)
            assert distance.min() < 1e-6, f"{group} does not come from any bred copy"
            origins.append(int(distance.argmin()))
        whole_rows += len(set(origins)) == 1
    # 5 groups from 6 faces drawn independently: a whole original row is rare (6/6^5).
    assert whole_rows < 10


def test_groups_not_bred_come_from_the_prior(toy_face_model):
    from ifn.data.priors import ParameterPrior

    layout = ParamLayout.for_face_model(toy_face_model)
    bank = torch.randn(4, layout.size) * 3
    prior = PriorSource(ParameterPrior(), layout, toy_face_model.metadata.expression_prior, seed=0)
    source = BredSource(bank, layout, BreedingNoise(), copies=2, round_index=1, seed=0, prior_source=prior,
                        groups=("rotation", "shape", "expression"))
    theta = source.batch(5, 0, 32)
    expected_prior = prior.batch(5, 0, 32)
    for group in ("reflectance", "illumination"):
        assert torch.equal(theta[:, layout.slices[group]], expected_prior[:, layout.slices[group]])
    geometry = slice(0, layout.slices["reflectance"].start)
    assert _rows_in(theta[:, geometry], source.copies[:, geometry])
    with pytest.raises(ValueError, match="groups"):
        BredSource(bank, layout, BreedingNoise(), 2, 1, 0, prior_source=prior, groups=("pose",))
    with pytest.raises(ValueError, match="prior_source"):
        BredSource(bank, layout, BreedingNoise(), 2, 1, 0, groups=("shape",))
    with pytest.raises(ValueError, match="groups"):
        BreedingCallback(groups=[])


def test_bad_bank_and_schedule_rejected():
    layout = ParamLayout(n_shape=2, n_expression=2, n_reflectance=2)
    with pytest.raises(ValueError, match="bank must be"):
        BredSource(torch.zeros(0, layout.size), layout, BreedingNoise(), 2, 1, 0)
    with pytest.raises(ValueError, match="every_n_steps"):
        BreedingCallback(every_n_steps=0)


# ----------------------------------------------------------------------- integration
def test_after_a_round_training_theta_come_from_the_bred_bank(tmp_path):
    dm = _datamodule()
    breeding = BreedingCallback(start_step=3, every_n_steps=3, rounds=2, copies=2, plot=True)
    recorder = Recorder()
    trainer = _trainer(tmp_path, [breeding, recorder], max_steps=8)
    trainer.fit(_model(dm), datamodule=dm)
    assert breeding.round == 2 and breeding.bank.shape == (6, dm.layout.size)
    assert isinstance(dm.source, BredSource) and torch.equal(dm.source.bank, breeding.bank)
    before = [theta for step, theta in recorder.thetas if step < 3]
    after = [theta for step, theta in recorder.thetas if step >= 6]  # after round 2 at step 6
    assert before and after
    assert not any(_rows_in(theta, dm.source.copies) for theta in before)
    assert all(_rows_in(theta, dm.source.copies) for theta in after)
    assert (tmp_path / "breeding" / "round_01.png").is_file()


def test_resume_restores_round_and_bank(tmp_path):
    dm = _datamodule()
    breeding = BreedingCallback(start_step=2, every_n_steps=100, rounds=3, copies=2, plot=False)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    _trainer(tmp_path, [breeding, checkpoint], max_steps=4).fit(_model(dm), datamodule=dm)
    assert breeding.round == 1
    saved_bank = breeding.bank.clone()

    dm2 = _datamodule()
    resumed = BreedingCallback(start_step=2, every_n_steps=100, rounds=3, copies=2, plot=False)
    recorder = Recorder()
    trainer = _trainer(tmp_path, [resumed, recorder], max_steps=6)
    trainer.fit(_model(dm2), datamodule=dm2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.round == 1
    assert torch.equal(resumed.bank, saved_bank)
    assert isinstance(dm2.source, BredSource) and torch.equal(dm2.source.bank, saved_bank)
    assert recorder.thetas and recorder.thetas[0][0] == 4
    assert all(_rows_in(theta, dm2.source.copies) for _, theta in recorder.thetas)


def test_breeding_without_real_dir_fails_clearly(tmp_path):
    dm = SyntheticFaceDataModule(render=SMALL, batch_size=2, batches_per_epoch=2, val_size=2, test_size=2)
    trainer = _trainer(tmp_path, [BreedingCallback(start_step=1, rounds=1)], max_steps=2)
    with pytest.raises(ValueError, match="--data.photos.train_dir"):
        trainer.fit(_model(dm), datamodule=dm)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, lightning as L
    from torch.utils.data import Dataset
    from ifn.breeding.callback import BreedingCallback
    from ifn.data.datamodule import SyntheticFaceDataModule
    from ifn.data.photo_folders import PhotoSettings
    from ifn.models.inverse_face_net import InverseFaceNet
    from ifn.render.settings import RenderSettings

    SMALL = RenderSettings(face_model="procedural", n_shape=3, n_expression=2, n_reflectance=3, image_size=32,
                           backend="torch")
    out = sys.argv[1]

    class Corpus(Dataset):
        def __init__(self, dm):
            batch = dm.render_batch(dm.fixed_parameters(2)[:7])
            self.items = [{"image": batch.image[i], "mask": batch.mask[i]} for i in range(7)]
        def __len__(self): return len(self.items)
        def __getitem__(self, i): return self.items[i]
        def summary(self): return {"skipped_images": 0}

    class DM(SyntheticFaceDataModule):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            fake = Corpus(self)
            self.photos.corpus = lambda role, progress=True: fake

    class Dump(L.Callback):
        def on_train_end(self, trainer, pl_module):
            cb = next(c for c in trainer.callbacks if isinstance(c, BreedingCallback))
            torch.save({"bank": cb.bank, "round": cb.round}, f"{out}/bank_rank{trainer.global_rank}.pt")

    if __name__ == "__main__":
        torch.set_num_threads(1)
        dm = DM(render=SMALL, batch_size=2, batches_per_epoch=4, val_size=2, test_size=8,
                photos=PhotoSettings(train_dir="unused"))
        model = InverseFaceNet(dm.renderer, backbone="resnet18")
        trainer = L.Trainer(default_root_dir=out, max_steps=3, accelerator="cpu", devices=2, strategy="ddp",
                            callbacks=[BreedingCallback(start_step=2, every_n_steps=10, rounds=1, plot=False), Dump()],
                            logger=False, enable_progress_bar=False, limit_val_batches=0, enable_checkpointing=False)
        trainer.fit(model, datamodule=dm)
    """
)


@pytest.mark.slow
def test_ddp_ranks_hold_the_same_bank(tmp_path):
    script = tmp_path / "ddp_breed.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    banks = [torch.load(tmp_path / f"bank_rank{r}.pt") for r in (0, 1)]
    assert banks[0]["round"] == banks[1]["round"] == 1
    assert banks[0]["bank"].shape[0] == 7  # all 7 faces, though each rank reconstructed about half
    assert torch.equal(banks[0]["bank"], banks[1]["bank"])


def test_refined_illumination_explains_the_photos_better(tmp_path):
    dm = _datamodule()
    model = _model(dm)
    trainer = _trainer(tmp_path, [], max_steps=2)
    trainer.fit(model, datamodule=dm)
    corpus = dm.photos.corpus("train")
    photos = torch.stack([item["image"] for item in corpus.items])
    inside = torch.stack([item["mask"] for item in corpus.items]) > 0.5
    raw = BreedingCallback(plot=False).reconstruct(trainer, model, corpus)
    refining = BreedingCallback(plot=False, refine_illumination=True)
    refined = refining.reconstruct(trainer, model, corpus)
    lighting = dm.layout.slices["illumination"]
    # Only the lighting changes; geometry, pose and albedo stay the network's.
    assert torch.equal(refined[:, : lighting.start], raw[:, : lighting.start])
    assert not torch.allclose(refined[:, lighting], raw[:, lighting])

    def error(theta: torch.Tensor) -> torch.Tensor:
        out = dm.renderer(theta)
        both = inside & (out.mask > 0.5)
        return (((out.image - photos) ** 2) * both).sum() / both.sum()

    # The "photos" are renders, so the fitted lighting must come much closer to them.
    assert error(refined) < 0.5 * error(raw)
    # ... and the round's log says so (RMSE in 0–255 inside the photo mask).
    assert refining.photometric_errors["bank"] < refining.photometric_errors["network"]
