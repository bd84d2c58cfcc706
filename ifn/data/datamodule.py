"""SyntheticFaceDataModule: faces rendered on the fly on the training device (SPEC §3).

The DataLoaders yield *parameter* batches θ only — cheap to make and to move. Rendering
happens after the batch reaches the device, in :meth:`on_after_batch_transfer`
(nvdiffrast on CUDA, the PyTorch rasterizer elsewhere), so data generation scales with
the accelerators rather than with CPU workers.

Streams never repeat: training batch ``k`` of rank ``r`` is drawn with a generator seeded
by ``(seed, stream, r, k)``, and the number of batches consumed is part of the
checkpoint, so a resumed run continues the stream where it stopped. Validation and test
sets are fixed θ drawn once from their own seeds (the same θ every run).

Where the training θ come from is a swappable :class:`ParameterSource` (the prior by
default; breeding plugs in a bred bank — see :mod:`ifn.breeding.callback`).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

from ifn.data.priors import ParameterPrior
from ifn.data.corpus import RealFaceCorpus
from ifn.facemodel.model import FaceModel, build_face_model
from ifn.params import ParamLayout
from ifn.render.renderer import FaceRenderer

__all__ = [
    "ParameterSource",
    "PriorSource",
    "SyntheticFaceDataModule",
    "generator_for",
    "to_network_input",
]

STREAM_TRAIN, STREAM_VAL, STREAM_TEST = 0, 1, 2


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (stable across processes and runs)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def to_network_input(image: Tensor) -> Tensor:
    """Images in [0, 1] → the network's input range [−0.5, 0.5] (paper, Section 6.1)."""
    return image - 0.5


class ParameterSource(abc.ABC):
    """Where training θ come from. Implementations must be deterministic in (index, rank)."""

    @abc.abstractmethod
    def batch(self, index: int, rank: int, batch_size: int) -> Tensor:
        """The ``index``-th training batch of ``rank``: ``(batch_size, m)`` float32 on the CPU."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass


class PriorSource(ParameterSource):
    """Fresh samples of the SPEC §3 prior."""

    def __init__(self, prior: ParameterPrior, layout: ParamLayout, face_model: FaceModel, seed: int) -> None:
        self.prior = prior
        self.layout = layout
        self.expression_prior = face_model.metadata.expression_prior
        self.seed = seed

    def batch(self, index: int, rank: int, batch_size: int) -> Tensor:
        generator = generator_for(self.seed, STREAM_TRAIN, rank, index)
        return self.prior.sample(self.layout, batch_size, expression_prior=self.expression_prior, generator=generator)


class _ParameterStream(IterableDataset):
    """``batches_per_epoch`` batches per epoch, continuing a global batch counter."""

    def __init__(self, datamodule: SyntheticFaceDataModule) -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        return self.datamodule.batches_per_epoch

    def __iter__(self):  # noqa: ANN204
        dm = self.datamodule
        start, rank = dm.batches_consumed, dm.rank
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Workers take interleaved indices, which the DataLoader returns in index order.
        for i in range(worker, dm.batches_per_epoch, workers):
            yield dm.source.batch(start + i, rank, dm.batch_size)


class SyntheticFaceDataModule(L.LightningDataModule):
    """Parameter batches in, rendered masked faces out.

    Args:
        face_model: ``"procedural"`` or a native ``.npz`` face model file.
        n_shape: θs size (``None``: the paper's 128 or all the model has).
        n_expression: θe size (``None``: 64 or all).
        n_reflectance: θr size (``None``: 128 or all).
        image_size: rendered image size (paper: 240).
        camera_distance: camera distance in mm (perspective strength).
        backend: rasterizer: ``auto``, ``torch`` or ``nvdiffrast``.
        batch_size: θ per batch and device (paper: 32).
        batches_per_epoch: training batches per epoch and device; epochs only pace
            validation and logging, the stream itself never repeats.
        val_size: fixed synthetic validation faces.
        test_size: fixed synthetic test faces.
        prior: the SPEC §3 prior (its expression range defaults to the face model's).
        seed: base seed of every stream.
        augment: photometric augmentation of the training input with kornia.
        num_workers: DataLoader workers (θ are cheap: 0 keeps source swaps immediate).
        real_dir: folder of unlabelled real photos for breeding (see
            :class:`~ifn.breeding.callback.BreedingCallback`).
        real_test_dir: folder of real photos evaluated by ``test`` (photometric error and
            IoU: there is no geometric ground truth) as a second test dataloader.
        predict_dir: folder of photos for ``predict`` (default: the synthetic test set).
        real_detector: landmark detector for real photos: ``mediapipe`` (offline default),
            ``annotation`` (``.pts``/``.ljson`` beside each image) or ``face_alignment``.
        real_cache_dir: cache of detected, cropped faces (default ``$IFN_CACHE_DIR`` or
            ``~/.cache/ifn/real_faces``).
        real_largest_only: one face per photo, the largest.
        real_min_face_size: faces smaller than this (pixels, landmark box) are skipped.

    Batches after transfer are dicts with ``theta`` ``(B, m)``, ``image`` ``(B, 3, H, W)``
    in [0, 1], ``mask`` ``(B, 1, H, W)``, ``landmarks`` ``(B, 68, 2)`` and ``input``
    (the network input in [−0.5, 0.5]).
    """

    def __init__(
        self,
        face_model: str = "procedural",
        n_shape: int | None = None,
        n_expression: int | None = None,
        n_reflectance: int | None = None,
        image_size: int = 240,
        camera_distance: float = 600.0,
        backend: str = "auto",
        batch_size: int = 32,
        batches_per_epoch: int = 1000,
        val_size: int = 256,
        test_size: int = 512,
        prior: ParameterPrior | None = None,
        seed: int = 0,
        augment: bool = False,
        num_workers: int = 0,
        real_dir: str | None = None,
        real_test_dir: str | None = None,
        predict_dir: str | None = None,
        real_detector: str = "mediapipe",
        real_cache_dir: str | None = None,
        real_largest_only: bool = False,
        real_min_face_size: float = 40.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size <= 0 or batches_per_epoch <= 0 or val_size < 0 or test_size < 0:
            raise ValueError("batch_size and batches_per_epoch must be > 0, val_size and test_size >= 0")
        self.face_model = build_face_model(face_model, n_shape, n_expression, n_reflectance)
        self.layout = ParamLayout.for_face_model(self.face_model)
        self.renderer = FaceRenderer(self.face_model, image_size=image_size, camera_distance=camera_distance, backend=backend)
        self.prior = prior if prior is not None else ParameterPrior()
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.num_workers = num_workers
        self.batches_consumed = 0
        self.source: ParameterSource = PriorSource(self.prior, self.layout, self.face_model, seed)
        self._augment = _build_augmentation() if augment else None
        self._fixed: dict[int, Tensor] = {}
        self.image_size = image_size
        self.real_dirs = {"real": real_dir, "real_test": real_test_dir, "predict": predict_dir}
        self.real_options = {
            "detector": real_detector,
            "cache_dir": real_cache_dir,
            "largest_only": real_largest_only,
            "min_face_size": real_min_face_size,
        }
        self._corpora: dict[str, RealFaceCorpus] = {}

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
            self._fixed[stream] = self.prior.sample(
                self.layout,
                size,
                expression_prior=self.face_model.metadata.expression_prior,
                generator=generator_for(self.seed, stream),
            )
        return self._fixed[stream]

    # ------------------------------------------------------------ real faces
    def real_corpus(self, which: str = "real") -> RealFaceCorpus | None:
        """The corpus of ``real_dir`` (``which="real"``), ``real_test_dir`` or ``predict_dir``.

        Built once; landmark detection runs the first time a folder is seen and is cached
        on disk, so later builds (other ranks, resumed runs) only read the cache.
        """
        root = self.real_dirs[which]
        if root is None:
            return None
        if which not in self._corpora:
            if not Path(root).is_dir():
                raise FileNotFoundError(f"data.{which}_dir: folder not found: {root}")
            rank_zero_info(f"[ifn] preparing real faces of {root} ({which})")
            self._corpora[which] = RealFaceCorpus(
                root,
                image_size=self.image_size,
                progress=self.rank == 0,
                **self.real_options,
            )
            summary = self._corpora[which].summary()
            rank_zero_info(f"[ifn] {root}: {summary}")
        return self._corpora[which]

    def prepare_data(self) -> None:
        # Runs on one process per node before the others start: detect faces once, so
        # every rank's setup() reads the cache instead of detecting concurrently.
        for which in self.real_dirs:
            self.real_corpus(which)

    def _real_loader(self, which: str) -> DataLoader:
        corpus = self.real_corpus(which)
        assert corpus is not None
        if len(corpus) == 0:
            raise ValueError(f"data.{which}_dir {self.real_dirs[which]} yielded no faces: {corpus.summary()}")
        return DataLoader(corpus, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _ParameterStream(self),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def _fixed_loader(self, stream: int) -> DataLoader:
        return DataLoader(TensorDataset(self.fixed_parameters(stream)), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(STREAM_VAL)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.real_dirs["real_test"] is None:
            return self._fixed_loader(STREAM_TEST)
        return [self._fixed_loader(STREAM_TEST), self._real_loader("real_test")]

    def predict_dataloader(self) -> DataLoader:
        if self.real_dirs["predict"] is not None:
            return self._real_loader("predict")
        return self._fixed_loader(STREAM_TEST)

    # ------------------------------------------------------------- rendering
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, (list, tuple)) and len(batch) == 1:  # TensorDataset rows
            batch = batch[0]
        if isinstance(batch, dict):  # real faces: already cropped and masked
            batch["input"] = to_network_input(batch["image"])
            return batch
        if not isinstance(batch, Tensor):
            return batch
        training = self.trainer is not None and self.trainer.training
        if training:
            self.batches_consumed += 1
        return self.render_batch(batch, augment=training)

    @torch.no_grad()
    def render_batch(self, theta: Tensor, augment: bool = False) -> dict[str, Tensor]:
        """Render θ on its device and build the network input."""
        if self.renderer.device != theta.device:
            self.renderer.to(theta.device)
        out = self.renderer(theta)
        image = out.image
        if augment and self._augment is not None:
            image = self._augment(image) * out.mask
        return {
            "theta": theta,
            "image": out.image,
            "mask": out.mask,
            "landmarks": out.landmarks,
            "input": to_network_input(image),
        }

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
