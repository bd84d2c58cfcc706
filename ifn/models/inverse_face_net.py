"""``InverseFaceNet``: the LightningModule that trains a backbone to regress θ.

It is handed the run's :class:`~ifn.render.renderer.FaceRenderer` (the DataModule's, so
data and model share one face model) and trains with the model-space loss. Validation and
test go through an :class:`~ifn.models.evaluator.Evaluator` per stage. Checkpoints carry
the face model's identity (:mod:`ifn.models.checkpoint`), checked whenever weights are
loaded.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from ifn.data.batch import FaceBatch
from ifn.data.priors import ParameterPrior
from ifn.data.sources import PriorSource
from ifn.facemodel.model import FaceModel
from ifn.models.backbone import create_backbone
from ifn.models.checkpoint import (
    CHECKPOINT_KEY,
    check_face_model,
    face_model_record,
    read_checkpoint,
    recorded_settings,
)
from ifn.models.evaluator import Evaluator
from ifn.models.losses import ModelSpaceLoss
from ifn.render.renderer import FaceRenderer

__all__ = ["InverseFaceNet"]


class InverseFaceNet(L.LightningModule):
    """Single-shot inverse face rendering network.

    Args:
        renderer: the run's renderer (face model, θ layout, render settings); with the CLI
            it is the DataModule's, handed over when both are built.
        backbone: timm model name (paper: AlexNet; ResNet-101 compared).
        pretrained: start from ImageNet weights (needs them downloadable or cached).
        backbone_checkpoint: local weights file for the backbone.
        rotation_weight: ωR of the model-space loss (with ``balanced_loss``: rotation's share).
        shape_weight: ωs.
        expression_weight: ωe.
        reflectance_weight: ωr.
        illumination_weight: ωi.
        euclidean_loss: the plain-L2 ablation (all weights and σ's 1, no balancing).
        balanced_loss: the ω's set each group's share of the loss expected at the prior mean
            (see :class:`~ifn.models.losses.ModelSpaceLoss`), so every group is learned. Off,
            with ω = (400, 50, 50, 100, 20), is the paper's literal loss
            (``configs/experiment/literal_loss.yaml``), under which reflectance and light
            carry about a thousandth of the loss and stay at their mean.
        prior_source: the training prior (the DataModule's ``prior_source``, handed over by
            the CLI); ``None`` takes the default prior with the face model's expression prior.
        photometric_weight: weight of an extra training term (not in the paper): the mean
            squared colour error, in [0, 1] units inside the input's mask, between the render
            of the prediction and the synthetic input. It reaches appearance through the
            pixels it changes; 0 turns it off.
        mode_exponent: with ``balanced_loss``, how each group's share is split among its
            modes: 1 by σ² (the paper's model-space weighting, under which a group's weaker
            modes get almost no gradient and stay at their mean), 0 evenly, the default (see
            :class:`~ifn.models.losses.ModelSpaceLoss`).
        optimizer: optimizer factory (default: AdaDelta, lr 0.01, weight decay 0.001).
        lr_scheduler: optional scheduler factory.

    Example:
        >>> from ifn.render.settings import RenderSettings
        >>> renderer = RenderSettings(n_shape=5, n_expression=5, n_reflectance=10, image_size=64).build_renderer()
        >>> model = InverseFaceNet(renderer)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 50])
    """

    def __init__(
        self,
        renderer: FaceRenderer,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_checkpoint: str | None = None,
        rotation_weight: float = 1.0,
        shape_weight: float = 1.0,
        expression_weight: float = 1.0,
        reflectance_weight: float = 1.0,
        illumination_weight: float = 1.0,
        euclidean_loss: bool = False,
        balanced_loss: bool = True,
        prior_source: PriorSource | None = None,
        photometric_weight: float = 0.0,
        mode_exponent: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["renderer", "prior_source", "optimizer", "lr_scheduler"])
        # A submodule, so it moves with the network; the face model's tensors are not
        # persistent, so checkpoints hold only the network (and the identity, see
        # on_save_checkpoint).
        self.renderer = renderer
        self.layout = renderer.layout
        self.net = create_backbone(backbone, self.layout.size, pretrained, backbone_checkpoint)
        prior_variance = None
        balanced_loss = balanced_loss and not euclidean_loss
        if balanced_loss:
            prior = prior_source.prior if prior_source is not None else ParameterPrior()
            expression_prior = renderer.face_model.metadata.expression_prior
            prior_variance = prior.moments(self.layout, expression_prior=expression_prior)[1]
        self.loss = ModelSpaceLoss(
            renderer.face_model,
            rotation_weight=rotation_weight,
            shape_weight=shape_weight,
            expression_weight=expression_weight,
            reflectance_weight=reflectance_weight,
            illumination_weight=illumination_weight,
            euclidean=euclidean_loss,
            balanced=balanced_loss,
            prior_variance=prior_variance,
            mode_exponent=mode_exponent if balanced_loss else 1.0,
        )
        self.evaluators = nn.ModuleDict(
            {"val": Evaluator(renderer, "val"), "test": Evaluator(renderer, "test", keep_per_image=True)}
        )
        if photometric_weight < 0:
            raise ValueError(f"photometric_weight must be >= 0, got {photometric_weight}")
        self.photometric_weight = photometric_weight
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler

    @property
    def face_model(self) -> FaceModel:
        return self.renderer.face_model

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        face_model: str | None = None,
        map_location: str | torch.device = "cpu",
        **overrides: Any,
    ) -> InverseFaceNet:
        """Rebuild a trained network, with its renderer, from a checkpoint file alone.

        The checkpoint records its render settings and face model identity; the face model
        file is looked up where it was at training time unless ``face_model`` says where it
        is now, and must have the recorded content.

        Args:
            path: a checkpoint written by ``ifn fit``.
            face_model: the face model (``"procedural"`` or a ``.npz`` file) to use instead
                of the recorded path.
            map_location: where to load the tensors.
            **overrides: render settings to change (e.g. ``backend="torch"``).

        Raises:
            CheckpointMismatchError: if the face model is not the one it was trained with.
            UsageError: if the checkpoint records no render settings (written before they
                were recorded: build the renderer yourself and use ``load_from_checkpoint``).
        """
        return cls.from_checkpoint_data(read_checkpoint(path, map_location), str(path), face_model, **overrides)

    @classmethod
    def from_checkpoint_data(
        cls, checkpoint: dict[str, Any], source: str, face_model: str | None = None, **overrides: Any
    ) -> InverseFaceNet:
        """:meth:`from_checkpoint` for a checkpoint already read (:func:`~ifn.models.checkpoint.read_checkpoint`),
        so that a caller that also needs its other entries reads the file once.

        Args:
            checkpoint: the checkpoint's contents.
            source: where it came from, for error messages.
            face_model, **overrides: as :meth:`from_checkpoint`.
        """
        from ifn.errors import UsageError

        settings = recorded_settings(checkpoint)
        if settings is None:
            raise UsageError(
                f"{source} records no render settings; use InverseFaceNet.load_from_checkpoint(path, renderer=...)"
            )
        if face_model is not None:
            overrides["face_model"] = face_model
        renderer = settings.replace(**overrides).build_renderer()
        check_face_model(checkpoint, renderer, source)
        # Only this class's own arguments: LightningCLI also records its bookkeeping
        # (``_instantiator``, ``_class_path``) among the hyper-parameters. The starting
        # weights (``pretrained``, ``backbone_checkpoint``) are replaced by the checkpoint's:
        # rebuilding them would mean a download, or a backbone file that may be gone.
        accepted = inspect.signature(cls.__init__).parameters
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in accepted and k != "renderer"}
        hparams.update(pretrained=False, backbone_checkpoint=None)
        model = cls(renderer, **hparams)
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()

    # ----------------------------------------------------------------- model
    def forward(self, network_input: Tensor) -> Tensor:
        """``(B, 3, H, W)`` input in [−0.5, 0.5] → θ ``(B, m)``."""
        return self.net(network_input)

    # -------------------------------------------------------------- training
    def training_step(self, batch: FaceBatch, batch_idx: int) -> Tensor:
        prediction = self(batch.input)
        loss = self.loss(prediction, batch.theta)
        if self.photometric_weight > 0:
            photometric = self.photometric_term(prediction, batch)
            self.log("train/photometric_mse", photometric.detach(), batch_size=len(batch))
            loss = loss + self.photometric_weight * photometric
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        batch_size = prediction.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if batch_idx % 50 == 0:
            parts = self.loss.per_group(prediction.detach(), batch.theta)
            total = sum(parts.values())
            self.log_dict({f"train/loss_{k}": v for k, v in parts.items()}, batch_size=batch_size)
            # Each group's share of the loss: a group with a tiny share gets almost no gradient.
            self.log_dict({f"train/loss_share_{k}": v / total for k, v in parts.items()}, batch_size=batch_size)
        return loss

    def photometric_term(self, prediction: Tensor, batch: FaceBatch) -> Tensor:
        """Mean squared colour error between the render of ``prediction`` and ``batch.image``
        over the pixels and channels inside ``batch.mask`` (differentiable in θ)."""
        render = self.renderer(prediction)
        inside = batch.mask
        squared = (render.image - batch.image).pow(2) * inside
        return squared.sum() / (3 * inside.sum()).clamp_min(1.0)

    # ------------------------------------------------------------ evaluation
    def validation_step(self, batch: FaceBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: FaceBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def _evaluate(self, batch: FaceBatch, stage: str) -> None:
        prediction = self(batch.input)
        if batch.is_synthetic:
            loss = self.loss(prediction, batch.theta)
            self.log(f"{stage}/loss", loss, batch_size=len(batch), sync_dist=True)
        self.evaluators[stage].update(prediction, batch)

    def on_validation_epoch_start(self) -> None:
        self.evaluators["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.evaluators["test"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.evaluators[stage].compute()
        if values:
            # compute() already synchronised the metric states across ranks.
            self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------- inference
    def predict_step(self, batch: FaceBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """θ for a batch of faces (synthetic or real), kept with the photo identifiers."""
        out: dict[str, Any] = {"theta": self(batch.input)}
        if batch.path is not None:
            out["path"] = batch.path
            out["face_index"] = batch.face_index
        return out

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ifn.models.checkpoint import record_weights  # the checks of a checkpoint live there

        checkpoint[CHECKPOINT_KEY] = face_model_record(self.renderer)
        # Lightning has filled checkpoint["state_dict"] before this hook: hash what is written.
        record_weights(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ifn.models.checkpoint import check_state_dict_fits, check_weights

        source = "checkpoint"
        if self._trainer is not None and self.trainer.ckpt_path:
            source = str(self.trainer.ckpt_path)
        # Intact first (a flipped bit), then the right face model, then weights that fit this
        # network: each refusal is one line instead of a bad run or PyTorch's key listing.
        check_weights(checkpoint, source)
        check_face_model(checkpoint, self.renderer, source)
        check_state_dict_fits(checkpoint, self, source)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        params = self.net.parameters()
        if self.optimizer_factory is None:
            optimizer = torch.optim.Adadelta(params, lr=0.01, weight_decay=0.001)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
