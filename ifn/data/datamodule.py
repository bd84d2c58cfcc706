"""``SyntheticFaceDataModule``: faces rendered on the fly on the training device, and photos.

The DataLoaders yield *parameter* batches θ only — cheap to make and to move. Rendering
happens after the batch reaches the device, in :meth:`on_after_batch_transfer`
(nvdiffrast on CUDA, the PyTorch rasterizer elsewhere), so data generation scales with
the accelerators rather than with CPU workers. Real photos (breeding, real-photo test,
predict) come from :class:`~ifn.data.photo_folders.PhotoFolders`. Every batch that leaves
the DataModule is a :class:`~ifn.data.batch.FaceBatch`.

Streams never repeat: training batch ``k`` of rank ``r`` is drawn from a generator seeded
by ``(seed, stream, r, k)``, and the number of batches consumed is part of the
checkpoint, so a resumed run continues the stream where it stopped. Validation and test
sets are fixed θ drawn once from their own seeds (the same θ every run). Where training
θ come from is a swappable :class:`~ifn.data.sources.ParameterSource` (the prior by
default; breeding installs a bred bank).

The DataModule owns the :class:`~ifn.render.renderer.FaceRenderer` (built from its
``render`` settings); the LightningModule is handed the same object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

from ifn.data.batch import FaceBatch, to_network_input
from ifn.data.photo_folders import PhotoFolders, PhotoSettings
from ifn.data.priors import ParameterPrior
from ifn.data.sources import STREAM_TEST, STREAM_VAL, ParameterSource, PriorSource
from ifn.render.renderer import FaceRenderer
from ifn.render.settings import RenderSettings

__all__ = ["SyntheticFaceDataModule"]


class _ParameterStream(IterableDataset):
    """``batches_per_epoch`` batches per epoch, continuing a global batch counter."""

    def __init__(self, datamodule: SyntheticFaceDataModule) -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        return self.datamodule.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        dm = self.datamodule
        start, rank = dm.batches_consumed, dm.rank
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Workers take interleaved indices, which the DataLoader returns in index order.
        for i in range(worker, dm.batches_per_epoch, workers):
            yield {"theta": dm.source.batch(start + i, rank, dm.batch_size)}


class _FixedParameters(TensorDataset):
    def __getitem__(self, index: int) -> dict[str, Tensor]:  # type: ignore[override]
        return {"theta": self.tensors[0][index]}


class SyntheticFaceDataModule(L.LightningDataModule):
    """Parameter batches in, rendered masked faces out; real photos beside them.

    Args:
        render: the face model and render settings (one node, ``data.render``).
        batch_size: θ per batch and device (paper: 32).
        batches_per_epoch: training batches per epoch and device; epochs only pace
            validation and logging, the stream itself never repeats.
        val_size: fixed synthetic validation faces.
        test_size: fixed synthetic test faces.
        prior: the synthetic prior (its expression range defaults to the face model's).
        seed: base seed of every stream.
        augment: photometric augmentation of the training input with kornia.
        num_workers: DataLoader workers (θ are cheap: 0 keeps source swaps immediate).
        photos: real-photo folders and detection settings (``data.photos``).

    Attributes:
        renderer: the renderer every part of a run uses (hand it to the LightningModule).
        prior_source: the prior as a parameter source (the default training source).
        source: where training θ come from now.
        photos: the photo folders and their corpora.
    """

    def __init__(
        self,
        render: RenderSettings = RenderSettings(),  # noqa: B008 - frozen
        batch_size: int = 32,
        batches_per_epoch: int = 1000,
        val_size: int = 256,
        test_size: int = 512,
        prior: ParameterPrior | None = None,
        seed: int = 0,
        augment: bool = False,
        num_workers: int = 0,
        photos: PhotoSettings = PhotoSettings(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["render", "prior", "photos"])
        for name, value, least in (("batch_size", batch_size, 1), ("batches_per_epoch", batches_per_epoch, 1),
                                   ("val_size", val_size, 0), ("test_size", test_size, 0)):
            if value < least:
                # Named as the option is, for the one-line CLI error.
                raise ValueError(f"data.{name}: must be {'> 0' if least else '>= 0'}, got {value}")
        self.renderer: FaceRenderer = render.build_renderer()
        self.layout = self.renderer.layout
        self.prior = prior if prior is not None else ParameterPrior()
        self.prior_source = PriorSource(
            self.prior, self.layout, self.renderer.face_model.metadata.expression_prior, seed
        )
        self.source: ParameterSource = self.prior_source
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.num_workers = num_workers
        self.batches_consumed = 0
        self.photos = PhotoFolders(photos, self.renderer.image_size, self.renderer.margin)
        self._augment = _build_augmentation() if augment else None
        self._fixed: dict[int, Tensor] = {}
        # As plain values: checkpoints are read with weights_only, which refuses class instances.
        self.hparams.update(render=render.to_dict(), prior=asdict(self.prior), photos=asdict(photos))

    # --------------------------------------------------------------- sources
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def set_source(self, source: ParameterSource) -> None:
        """Swap where training θ come from (takes effect with the next batch made)."""
        self.source = source

    def fixed_parameters(self, stream: int) -> Tensor:
        """The fixed validation (``STREAM_VAL``) or test (``STREAM_TEST``) θ, ``(N, m)``."""
        if stream not in self._fixed:
            size = self.val_size if stream == STREAM_VAL else self.test_size
            self._fixed[stream] = self.prior_source.fixed_set(stream, size)
        return self._fixed[stream]

    # ------------------------------------------------------------ real faces
    def prepare_data(self) -> None:
        # Runs on one process per node before the others start: detect faces once, so
        # every rank's setup() reads the cache instead of detecting concurrently.
        for role in ("train", "test", "predict"):
            self.photos.corpus(role, progress=self.rank == 0)

    def _photo_loader(self, role: str) -> DataLoader:
        corpus = self.photos.nonempty_corpus(role, progress=self.rank == 0)  # type: ignore[arg-type]
        return DataLoader(corpus, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        stream = _ParameterStream(self)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, persistent_workers=False)

    def _fixed_loader(self, stream: int) -> DataLoader:
        return DataLoader(_FixedParameters(self.fixed_parameters(stream)), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(STREAM_VAL)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.photos.configured("test"):
            return self._fixed_loader(STREAM_TEST)
        return [self._fixed_loader(STREAM_TEST), self._photo_loader("test")]

    def predict_dataloader(self) -> DataLoader:
        if self.photos.configured("predict"):
            return self._photo_loader("predict")
        return self._fixed_loader(STREAM_TEST)

    # ------------------------------------------------------------- rendering
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Loader output (``{"theta"}`` to render, or a collated photo batch) → :class:`FaceBatch`."""
        if not isinstance(batch, dict):
            return batch
        if "image" in batch:  # real faces: already cropped and masked
            return FaceBatch.from_photos(batch)
        training = self.trainer is not None and self.trainer.training
        if training:
            self.batches_consumed += 1
        return self.render_batch(batch["theta"], augment=training)

    @torch.no_grad()
    def render_batch(self, theta: Tensor, augment: bool = False) -> FaceBatch:
        """Render θ on its device and build the network input."""
        if self.renderer.device != theta.device:
            # Only when used without a LightningModule: in a run, the module that holds the
            # same renderer has already moved it with itself.
            self.renderer.to(theta.device)
        out = self.renderer(theta)
        image = out.image
        if augment and self._augment is not None:
            image = self._augment(image) * out.mask
        return FaceBatch(
            input=to_network_input(image), image=out.image, mask=out.mask, landmarks=out.landmarks, theta=theta
        )

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed, "source": self.source.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_consumed = int(state_dict.get("batches_consumed", 0))
        self.source.load_state_dict(state_dict.get("source", {}))


def _build_augmentation() -> torch.nn.Module:
    import kornia.augmentation as K

    return torch.nn.Sequential(
        K.ColorJiggle(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.0), p=0.2),
        K.RandomGaussianNoise(std=0.02, p=0.3),
    )
