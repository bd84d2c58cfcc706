"""SyntheticFaceDataModule: θ streams per (rank, index), fixed val/test θ, rendering
after transfer, resumable streams and swappable sources.

Everything runs at 32×32 with a tiny θ (3 shape, 2 expression, 3 reflectance modes) on the
pure-PyTorch rasterizer. A ``_FakeTrainer`` stands in for the Lightning Trainer: the
DataModule only reads ``global_rank`` and ``training`` from it.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass

import pytest
import torch

from ifn.data.batch import FaceBatch
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.data.sources import STREAM_TEST, STREAM_VAL, ParameterSource
from ifn.render.settings import RenderSettings

SIZE = 32
N_SHAPE, N_EXPRESSION, N_REFLECTANCE = 3, 2, 3
#: |θ|: 3 rotation + θs + θe + θr + 9 SH × RGB.
M = 3 + N_SHAPE + N_EXPRESSION + N_REFLECTANCE + 27
BATCH = 4



@dataclass
class _FakeTrainer:
    global_rank: int = 0
    training: bool = True


def make_dm(**overrides) -> SyntheticFaceDataModule:
    kwargs = {
        "render": RenderSettings(
            face_model="procedural", n_shape=N_SHAPE, n_expression=N_EXPRESSION, n_reflectance=N_REFLECTANCE,
            image_size=SIZE, backend="torch",
        ),
        "batch_size": BATCH,
        "batches_per_epoch": 3,
        "val_size": 8,
        "test_size": 8,
        "seed": 0,
    }
    kwargs.update(overrides)
    return SyntheticFaceDataModule(**kwargs)


def train_epoch(dm: SyntheticFaceDataModule) -> list[torch.Tensor]:
    """One pass over the training DataLoader, as the Trainer sees it (θ only, no rendering)."""
    return [batch["theta"].clone() for batch in dm.train_dataloader()]


def consume(dm: SyntheticFaceDataModule, n: int | None = None) -> list[torch.Tensor]:
    """Iterate the training loader and hand each batch to ``on_after_batch_transfer`` as in fit."""
    seen = []
    for k, theta in enumerate(dm.train_dataloader()):
        if n is not None and k == n:
            break
        out = dm.on_after_batch_transfer(theta, 0)
        seen.append(out.theta.clone())
    return seen


def _rows(batches: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(batches)


def _shared_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many rows of ``a`` occur (exactly) in ``b``."""
    return int((a[:, None, :] == b[None, :, :]).all(dim=-1).any(dim=1).sum())


# ---------------------------------------------------------------------------- training stream


def test_training_batches_deterministic_and_distinct_per_index_and_rank():
    streams = {}
    for rank in (0, 1):
        dm = make_dm()
        dm.trainer = _FakeTrainer(global_rank=rank)
        streams[rank] = train_epoch(dm)
    for batches in streams.values():
        assert len(batches) == 3
        assert all(b.shape == (BATCH, M) and b.dtype == torch.float32 for b in batches)
    # Same (seed, rank, index) → the same θ, from a fresh instance.
    for rank in (0, 1):
        again = make_dm()
        again.trainer = _FakeTrainer(global_rank=rank)
        for a, b in zip(train_epoch(again), streams[rank], strict=False):
            assert torch.equal(a, b)
    # Continuous random θ: any repeated row, within a rank or across ranks, is a seeding bug.
    everything = torch.cat([_rows(streams[0]), _rows(streams[1])])
    assert torch.unique(everything, dim=0).shape[0] == everything.shape[0]
    # A different seed gives a different stream.
    other = make_dm(seed=1)
    assert _shared_rows(_rows(train_epoch(other)), _rows(streams[0])) == 0


def test_training_stream_follows_the_prior_ranges():
    theta = _rows(train_epoch(make_dm(batches_per_epoch=8)))  # 32 samples
    rotation = theta[:, :3]
    assert rotation[:, :2].abs().max() <= math.radians(40.0)
    assert rotation[:, 2].abs().max() <= math.radians(15.0)
    light = theta[:, -27:].reshape(-1, 9, 3)
    assert torch.equal(light[..., 0], light[..., 1]) and torch.equal(light[..., 0], light[..., 2])  # monochrome
    assert light[:, 0, 0].min() >= 0.6 and light[:, 0, 0].max() <= 1.2
    assert light[:, 1:].abs().max() <= 0.2


def test_worker_processes_yield_the_same_stream_in_order():
    reference = train_epoch(make_dm(batches_per_epoch=4))
    with_workers = train_epoch(make_dm(batches_per_epoch=4, num_workers=2))
    assert len(with_workers) == len(reference)
    for a, b in zip(with_workers, reference, strict=False):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------- fixed val/test θ


def test_fixed_validation_and_test_parameters():
    a, b = make_dm(), make_dm()
    b.trainer = _FakeTrainer(global_rank=1)  # every rank sees the same fixed sets
    val_a, test_a = a.fixed_parameters(STREAM_VAL), a.fixed_parameters(STREAM_TEST)
    assert val_a.shape == (8, M) and test_a.shape == (8, M)
    assert torch.equal(val_a, b.fixed_parameters(STREAM_VAL))
    assert torch.equal(test_a, b.fixed_parameters(STREAM_TEST))
    assert _shared_rows(val_a, test_a) == 0
    assert _shared_rows(val_a, _rows(train_epoch(a))) == 0
    # The loaders serve exactly these θ, in order, however often they are asked.
    for _ in range(2):
        served = torch.cat([batch["theta"] for batch in a.val_dataloader()])
        assert torch.equal(served, val_a)
    assert torch.equal(torch.cat([batch["theta"] for batch in a.test_dataloader()]), test_a)
    assert not torch.equal(make_dm(seed=1).fixed_parameters(STREAM_VAL), val_a)


# ---------------------------------------------------------------------------------- rendering


def test_on_after_batch_transfer_renders_theta():
    dm = make_dm()
    dm.trainer = _FakeTrainer(training=False)
    raw = next(iter(dm.val_dataloader()))  # {"theta": θ}, to be rendered
    theta = raw["theta"].clone()
    batch = dm.on_after_batch_transfer(raw, 0)
    assert isinstance(batch, FaceBatch) and batch.is_synthetic
    assert torch.equal(batch.theta, theta)
    image, mask, landmarks = batch.image, batch.mask, batch.landmarks
    assert image.shape == (BATCH, 3, SIZE, SIZE)
    assert mask.shape == (BATCH, 1, SIZE, SIZE)
    assert landmarks.shape == (BATCH, 68, 2)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # Black background: no colour where the face region is not drawn; a lit face inside it.
    assert torch.all(image * (1 - mask) == 0)
    coverage = mask.mean(dim=(1, 2, 3))
    assert torch.all((coverage > 0.2) & (coverage < 0.95)), coverage
    inside = (image.sum(dim=1, keepdim=True) * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert torch.all(inside > 0.05)
    assert torch.equal(batch.input, image - 0.5)
    # Framing: the landmark bounding box is scaled uniformly to fill the image.
    low, high = landmarks.amin(dim=1), landmarks.amax(dim=1)
    assert torch.all(low >= -1e-3) and torch.all(high <= SIZE + 1e-3)
    assert torch.allclose((high - low).amax(dim=1), torch.full((BATCH,), float(SIZE)), atol=1e-3)
    assert torch.allclose((low + high) / 2, torch.full((BATCH, 2), SIZE / 2), atol=1e-3)
    # Validation batches are not training batches: the stream counter does not move.
    assert dm.batches_consumed == 0


def test_training_batch_is_rendered_and_counted():
    dm = make_dm()
    dm.trainer = _FakeTrainer(training=True)
    theta = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer(theta, 0)
    assert batch.image.shape == (BATCH, 3, SIZE, SIZE)
    assert dm.batches_consumed == 1


def test_real_face_batches_get_network_input():
    dm = make_dm()
    image = torch.rand(2, 3, SIZE, SIZE)
    photos = {"image": image, "mask": torch.ones(2, 1, SIZE, SIZE), "landmarks": torch.zeros(2, 68, 2),
              "path": ["a.jpg", "b.jpg"], "face_index": torch.tensor([0, 1])}
    batch = dm.on_after_batch_transfer(photos, 0)
    assert isinstance(batch, FaceBatch) and not batch.is_synthetic and batch.theta is None
    assert torch.equal(batch.input, image - 0.5)
    assert batch.path == ["a.jpg", "b.jpg"] and batch.face_index.tolist() == [0, 1]


def test_without_trainer_nothing_is_counted():
    dm = make_dm()
    dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert dm.batches_consumed == 0


# --------------------------------------------------------------------------------- resuming


def _checkpoint_round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("stop_after", [3, 5], ids=["epoch_boundary", "mid_epoch"])
def test_state_dict_continues_the_stream(stop_after: int):
    original = make_dm()
    original.trainer = _FakeTrainer()
    first = consume(original) + consume(original, stop_after - 3)  # 3 batches per epoch
    assert len(first) == stop_after and original.batches_consumed == stop_after
    state = _checkpoint_round_trip(copy.deepcopy(original.state_dict()))
    # What the original produces next, epoch after epoch (the last epoch cut short earlier
    # restarts from its counter, as Lightning restarts an unfinished epoch's iterator).
    following = consume(original) + consume(original)

    restored = make_dm()
    restored.trainer = _FakeTrainer()
    restored.load_state_dict(state)
    assert restored.batches_consumed == stop_after
    resumed = consume(restored) + consume(restored)
    assert len(resumed) == 6
    for a, b in zip(resumed, following, strict=False):
        assert torch.equal(a, b)
    assert _shared_rows(_rows(resumed), _rows(first)) == 0


def test_fresh_datamodule_without_state_repeats_the_start():
    # The control for the test above: without the state the stream starts over.
    a, b = make_dm(), make_dm()
    a.trainer = b.trainer = _FakeTrainer()
    consume(a)
    assert torch.equal(consume(b)[0], train_epoch(make_dm())[0])
    assert not torch.equal(consume(a)[0], train_epoch(make_dm())[0])


# -------------------------------------------------------------------------------- source swap


class _CountingSource(ParameterSource):
    """θ = 0 except the first entry, which holds the global batch index (and a saved offset)."""

    def __init__(self, m: int, offset: float = 0.0) -> None:
        self.m = m
        self.offset = offset
        self.calls: list[tuple[int, int, int]] = []

    def batch(self, index: int, rank: int, batch_size: int) -> torch.Tensor:
        self.calls.append((index, rank, batch_size))
        theta = torch.zeros(batch_size, self.m)
        theta[:, 0] = index + self.offset
        theta[:, -27:-24] = 1.0  # ambient light: a visible face
        return theta

    def state_dict(self) -> dict:
        return {"offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.offset = state["offset"]


def test_set_source_swaps_where_theta_come_from():
    dm = make_dm()
    dm.trainer = _FakeTrainer(global_rank=1)
    consume(dm)  # 3 batches from the prior
    source = _CountingSource(M, offset=0.25)
    dm.set_source(source)
    batches = consume(dm)
    assert source.calls == [(3, 1, BATCH), (4, 1, BATCH), (5, 1, BATCH)]
    for k, theta in zip((3, 4, 5), batches, strict=False):
        assert torch.all(theta[:, 0] == k + 0.25) and torch.all(theta[:, 1:3] == 0)
    # The source's own state travels with the DataModule's.
    state = dm.state_dict()
    restored = make_dm()
    restored.set_source(_CountingSource(M))
    restored.load_state_dict(state)
    assert restored.source.offset == 0.25 and restored.batches_consumed == 6


# ------------------------------------------------------------------------------ augmentation


def test_augmentation_is_off_by_default():
    dm = make_dm()
    dm.trainer = _FakeTrainer(training=True)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert torch.equal(batch.input, batch.image - 0.5)


def test_augmentation_changes_training_input_only():
    torch.manual_seed(0)
    dm = make_dm(augment=True)
    dm.trainer = _FakeTrainer(training=True)
    train = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert not torch.equal(train.input, train.image - 0.5)
    assert torch.all((train.input + 0.5) * (1 - train.mask) == 0)  # background stays black
    dm.trainer = _FakeTrainer(training=False)
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert torch.equal(val.input, val.image - 0.5)
