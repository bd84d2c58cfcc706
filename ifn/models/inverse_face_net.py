"""InverseFaceNet: a timm backbone regressing θ, trained with the model-space loss (SPEC §4).

Validation and test render the predictions and measure the paper's metrics (SPEC §7) —
photometric error, geometric error, mask IoU — plus per-group parameter errors, for the
network and for the mean face as a reference (suffix ``_mean_face``). Real photographs
(batches that carry no ``theta``) get the photometric error and IoU only, logged with a
``real_`` prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from ifn.io import write_csv_atomic
from ifn.models.losses import ModelSpaceLoss
from ifn.models.metrics import (
    GeometricError,
    MaskIoU,
    ParameterError,
    PhotometricError,
    mask_iou_per_image,
    photometric_error_per_image,
)
from ifn.facemodel.model import FaceModel, build_face_model
from ifn.params import ParamLayout
from ifn.render.renderer import FaceRenderer, RenderOutput

__all__ = ["InverseFaceNet", "create_backbone"]

#: Ambient light given to the mean-face reference so that it is lit (mean of the SPEC §3 prior).
MEAN_FACE_AMBIENT = 0.9


def create_backbone(name: str, num_outputs: int, pretrained: bool = False, checkpoint_path: str | None = None) -> nn.Module:
    """A timm model whose last layer outputs θ (bias 0, weights ~ N(0, 0.01²), paper §6.1).

    Args:
        name: any timm model name, e.g. ``resnet18``, ``resnet101``.
        num_outputs: m = |θ|.
        pretrained: load ImageNet weights through timm's normal mechanism (Hugging Face
            hub cache; needs network access the first time).
        checkpoint_path: a local weights file (``.safetensors``/``.pth``) instead of the hub;
            implies ``pretrained``. The classifier in it is discarded.

    Raises:
        FileNotFoundError: if ``checkpoint_path`` does not exist.
        RuntimeError: if pretrained weights cannot be obtained, with what to do instead.
    """
    kwargs: dict[str, Any] = {"num_classes": num_outputs}
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown timm backbone {name!r}: {err}") from err
        raise
    except Exception as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for timm model {name!r} ({type(err).__name__}: {err}). "
            "Without network access, download them elsewhere and pass "
            "--model.backbone_checkpoint /path/to/model.safetensors, or put them in the Hugging Face cache "
            "and set HF_HUB_OFFLINE=1; or train from scratch with --model.pretrained false."
        ) from err
    head = net.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"timm model {name!r} has a {type(head).__name__} head; ifn needs a Linear classifier")
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return net


class InverseFaceNet(L.LightningModule):
    """Single-shot inverse face rendering network.

    Args:
        face_model: ``"procedural"`` or a ``.npz`` face model (linked from the data config).
        n_shape: θs size (linked from the data config).
        n_expression: θe size (linked).
        n_reflectance: θr size (linked).
        image_size: render size for metrics (linked).
        camera_distance: camera distance for metric renders (linked).
        backend: rasterizer for metric renders (linked).
        backbone: timm model name (paper: AlexNet; ResNet-101 compared).
        pretrained: start from ImageNet weights (needs them downloadable or cached).
        backbone_checkpoint: local weights file for the backbone.
        rotation_weight: ωR of the model-space loss.
        shape_weight: ωs.
        expression_weight: ωe.
        reflectance_weight: ωr.
        illumination_weight: ωi.
        euclidean_loss: the plain-L2 ablation (all weights and σ's 1).
        optimizer: optimizer factory (default: AdaDelta, lr 0.01, weight decay 0.001).
        lr_scheduler: optional scheduler factory.
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
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_checkpoint: str | None = None,
        rotation_weight: float = 400.0,
        shape_weight: float = 50.0,
        expression_weight: float = 50.0,
        reflectance_weight: float = 100.0,
        illumination_weight: float = 20.0,
        euclidean_loss: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        face = build_face_model(face_model, n_shape, n_expression, n_reflectance)
        self.layout = ParamLayout.for_face_model(face)
        self.net = create_backbone(backbone, self.layout.size, pretrained, backbone_checkpoint)
        self.loss = ModelSpaceLoss(
            face,
            rotation_weight=rotation_weight,
            shape_weight=shape_weight,
            expression_weight=expression_weight,
            reflectance_weight=reflectance_weight,
            illumination_weight=illumination_weight,
            euclidean=euclidean_loss,
        )
        # The face model and renderer are shared, fixed data (cached, possibly also held by
        # the DataModule): kept out of the module tree so checkpoints hold only the network.
        self.__dict__["face_model"] = face
        self.__dict__["renderer"] = FaceRenderer(face, image_size=image_size, camera_distance=camera_distance, backend=backend)
        self._real_rows: list[dict[str, Any]] = []
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            for suffix in ("", "_mean_face"):
                self.metrics[f"{stage}{suffix}"] = nn.ModuleDict(
                    {
                        "photometric_error": PhotometricError(),
                        "geometric_error_mm": GeometricError(),
                        "iou": MaskIoU(),
                        "param_rmse": ParameterError(self.layout),
                    }
                )
            for suffix in ("", "_mean_face"):
                self.metrics[f"{stage}_real{suffix}"] = nn.ModuleDict(
                    {"photometric_error": PhotometricError(), "iou": MaskIoU()}
                )

    face_model: FaceModel
    renderer: FaceRenderer

    # ----------------------------------------------------------------- model
    def forward(self, network_input: Tensor) -> Tensor:
        """``(B, 3, H, W)`` input in [−0.5, 0.5] → θ ``(B, m)``."""
        return self.net(network_input)

    def _face_to(self, device: torch.device) -> None:
        if self.face_model.mean_shape.device != device:
            self.face_model.to(device)

    def mean_face_parameters(self, batch_size: int) -> Tensor:
        """The reference prediction: θ = 0 except the constant SH coefficient (lit, not black)."""
        theta = torch.zeros(batch_size, self.layout.size, device=self.device)
        start = self.layout.slices["illumination"].start
        theta[:, start : start + 3] = MEAN_FACE_AMBIENT
        return theta

    # -------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        prediction = self(batch["input"])
        loss = self.loss(prediction, batch["theta"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        batch_size = prediction.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if batch_idx % 50 == 0:
            parts = self.loss.per_group(prediction.detach(), batch["theta"])
            self.log_dict({f"train/loss_{k}": v for k, v in parts.items()}, batch_size=batch_size)
        return loss

    # ------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        self._face_to(self.device)
        prediction = self(batch["input"])
        batch_size = prediction.shape[0]
        if "theta" not in batch:
            render = self._update_image_metrics(self.metrics[f"{stage}_real"], prediction, batch)
            self._update_image_metrics(self.metrics[f"{stage}_real_mean_face"], self.mean_face_parameters(batch_size), batch)
            if stage == "test":
                self._record_real_images(render, batch)
            return
        self.log(f"{stage}/loss", self.loss(prediction, batch["theta"]), batch_size=batch_size, sync_dist=True)
        target_geometry = self._geometry(batch["theta"])
        for suffix, theta in (("", prediction), ("_mean_face", self.mean_face_parameters(batch_size))):
            metrics = self.metrics[f"{stage}{suffix}"]
            self._update_image_metrics(metrics, theta, batch)
            metrics["geometric_error_mm"].update(self._geometry(theta), target_geometry, self.face_model.face_mask)
            metrics["param_rmse"].update(theta, batch["theta"])

    def _geometry(self, theta: Tensor) -> Tensor:
        params = self.layout.split(theta)
        return self.face_model.geometry(params.shape, params.expression)

    def _update_image_metrics(self, metrics: nn.ModuleDict, theta: Tensor, batch: dict[str, Tensor]) -> RenderOutput:
        render = self.renderer(theta)
        metrics["photometric_error"].update(render.image, batch["image"], batch["mask"])
        metrics["iou"].update(render.mask, batch["mask"])
        return render

    def _record_real_images(self, render: RenderOutput, batch: dict[str, Any]) -> None:
        photometric, has_mask = photometric_error_per_image(render.image, batch["image"], batch["mask"])
        iou, _ = mask_iou_per_image(render.mask, batch["mask"])
        for i in range(render.image.shape[0]):
            self._real_rows.append(
                {
                    "path": batch["path"][i],
                    "face_index": int(batch["face_index"][i]),
                    "photometric_error": photometric[i].item() if has_mask[i] else float("nan"),
                    "iou": iou[i].item(),
                }
            )

    def on_test_epoch_start(self) -> None:
        self._real_rows = []

    def _write_real_rows(self) -> None:
        """Per-image real-photo results → ``test_real_per_image.csv`` in the log directory."""
        rows = self._real_rows
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not rows:  # the same on every rank after the gather
            return
        # Under DDP trainer.log_dir is a broadcast: every rank must ask, before the rank check.
        path = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "test_real_per_image.csv"
        if not self.trainer.is_global_zero:
            return
        rows = sorted({(r["path"], r["face_index"]): r for r in rows}.values(), key=lambda r: (r["path"], r["face_index"]))
        write_csv_atomic(path, rows, ["path", "face_index", "photometric_error", "iou"])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self._write_real_rows()

    def _log_epoch_metrics(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        groups = {"": ("", ""), "_mean_face": ("", "_mean_face"), "_real": ("real_", ""),
                  "_real_mean_face": ("real_", "_mean_face")}
        for key, (prefix, suffix) in groups.items():
            for name, metric in self.metrics[f"{stage}{key}"].items():
                if not metric.update_called:
                    continue
                if name == "param_rmse":
                    for group, value in metric.compute().items():
                        values[f"{stage}/{prefix}param_rmse_{group}{suffix}"] = value
                else:
                    stats = metric.compute_stats()  # one synchronisation for mean and std
                    values[f"{stage}/{prefix}{name}{suffix}"] = stats["mean"]
                    values[f"{stage}/{prefix}{name}_std{suffix}"] = stats["std"]
                metric.reset()
        if values:
            # The metric states were already synchronised across ranks by compute().
            self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------- inference
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """θ for a batch of network inputs (synthetic or real), kept with any identifiers."""
        prediction = self(batch["input"])
        out: dict[str, Any] = {"theta": prediction}
        for key in ("path", "face_index"):
            if key in batch:
                out[key] = batch[key]
        return out

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        params = self.net.parameters()
        if self.optimizer_factory is None:
            optimizer = torch.optim.Adadelta(params, lr=0.01, weight_decay=0.001)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}
