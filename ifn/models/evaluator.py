"""``Evaluator``: predictions → the paper's metrics, for the network and the mean face.

For every batch it renders the predicted θ and compares the render with the input:

* synthetic faces (ground-truth θ known): photometric error, geometric error of the face
  region, mask IoU and per-group parameter errors;
* real photos: photometric error and IoU only (there is no geometric ground truth),
  reported with a ``real_`` prefix, and one row per face for the per-image CSV.

The mean face (θ = 0, lit by the prior's mean ambient light) is evaluated on the same
batches as a reference, reported with the suffix ``_mean_face``. The metric objects are
torchmetrics metrics with sum states, so values are exact under DDP.

Names (for stage ``test``; ``val`` alike): ``test/photometric_error``,
``test/photometric_error_std``, ``test/geometric_error_mm``, ``test/iou``,
``test/param_rmse_<group>``, ``test/real_photometric_error``, ``test/real_iou``, each also
with ``_mean_face`` appended (``test/photometric_error_std_mean_face``); and
``test/param_rel_rmse_<group>``, a group's error relative to the mean face's (0 is perfect,
1 is what predicting the mean face achieves: the group is not learned) and their mean over
the groups, ``test/param_rel_rmse_mean``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ifn.data.batch import FaceBatch
from ifn.models.metrics import (
    GeometricError,
    MaskIoU,
    ParameterError,
    PhotometricError,
    mask_iou_per_image,
    photometric_error_per_image,
)
from ifn.render.renderer import FaceRenderer, RenderOutput

__all__ = ["MEAN_FACE_AMBIENT", "Evaluator"]

#: Ambient light (constant SH coefficient, every channel) of the mean-face reference, so that
#: it is lit rather than black: the mean of the prior's ambient range U(0.6, 1.2).
MEAN_FACE_AMBIENT = 0.9
_PREDICTORS = ("network", "mean_face")


class Evaluator(nn.Module):
    """Accumulate the paper's metrics over an evaluation run.

    Args:
        renderer: renders predictions (and holds the face model: mask and geometry).
        stage: metric name prefix (``"val"``, ``"test"``).
        keep_per_image: keep one row per real face (:attr:`real_rows`) for a per-image report.

    Example:
        >>> from ifn.render.settings import RenderSettings
        >>> renderer = RenderSettings(n_shape=2, n_expression=2, n_reflectance=2, image_size=32).build_renderer()
        >>> evaluator = Evaluator(renderer, "val")
        >>> theta = evaluator.mean_face_parameters(2)
        >>> sorted(evaluator.compute())  # nothing seen yet: nothing to report
        []
    """

    def __init__(self, renderer: FaceRenderer, stage: str, keep_per_image: bool = False) -> None:
        super().__init__()
        self.renderer = renderer
        self.stage = stage
        self.keep_per_image = keep_per_image
        layout = renderer.layout
        self.synthetic = nn.ModuleDict(
            {
                who: nn.ModuleDict(
                    {
                        "photometric_error": PhotometricError(),
                        "geometric_error_mm": GeometricError(),
                        "iou": MaskIoU(),
                        "param_rmse": ParameterError(layout),
                    }
                )
                for who in _PREDICTORS
            }
        )
        self.real = nn.ModuleDict(
            {who: nn.ModuleDict({"photometric_error": PhotometricError(), "iou": MaskIoU()}) for who in _PREDICTORS}
        )
        self.real_rows: list[dict[str, Any]] = []

    def mean_face_parameters(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The reference prediction: θ = 0 except the constant SH coefficient (lit, not black)."""
        layout = self.renderer.layout
        theta = torch.zeros(batch_size, layout.size, device=device if device is not None else self.renderer.device)
        start = layout.slices["illumination"].start
        theta[:, start : start + 3] = MEAN_FACE_AMBIENT
        return theta

    @torch.no_grad()
    def update(self, prediction: Tensor, batch: FaceBatch) -> RenderOutput:
        """Add a batch; returns the render of the prediction.

        Args:
            prediction: ``(B, m)`` predicted θ.
            batch: the faces it was predicted from.
        """
        reference = self.mean_face_parameters(prediction.shape[0], prediction.device)
        target_geometry = self._geometry(batch.theta) if batch.is_synthetic else None
        renders = {}
        for who, theta in zip(_PREDICTORS, (prediction, reference), strict=True):
            render = self.renderer(theta)
            metrics = self.synthetic[who] if batch.is_synthetic else self.real[who]
            metrics["photometric_error"].update(render.image, batch.image, batch.mask)
            metrics["iou"].update(render.mask, batch.mask)
            if batch.is_synthetic:
                metrics["geometric_error_mm"].update(self._geometry(theta), target_geometry, self.face_mask)
                metrics["param_rmse"].update(theta, batch.theta)
            renders[who] = render
        if not batch.is_synthetic and self.keep_per_image:
            self._record_rows(renders["network"], batch)
        return renders["network"]

    @property
    def face_mask(self) -> Tensor:
        return self.renderer.face_model.face_mask

    def _geometry(self, theta: Tensor) -> Tensor:
        params = self.renderer.layout.split(theta)
        return self.renderer.face_model.geometry(params.shape, params.expression)

    def _record_rows(self, render: RenderOutput, batch: FaceBatch) -> None:
        photometric, has_mask = photometric_error_per_image(render.image, batch.image, batch.mask)
        iou, _ = mask_iou_per_image(render.mask, batch.mask)
        assert batch.path is not None and batch.face_index is not None
        for i in range(len(batch)):
            self.real_rows.append(
                {
                    "path": batch.path[i],
                    "face_index": int(batch.face_index[i]),
                    "photometric_error": photometric[i].item() if has_mask[i] else float("nan"),
                    "iou": iou[i].item(),
                }
            )

    def compute(self) -> dict[str, Tensor]:
        """Every metric that saw data, by its logged name (a collective call under DDP)."""
        values: dict[str, Tensor] = {}
        for kind, groups in (("", self.synthetic), ("real_", self.real)):
            for who, metrics in groups.items():
                suffix = "" if who == "network" else f"_{who}"
                for name, metric in metrics.items():
                    if not metric.update_called:
                        continue
                    if name == "param_rmse":
                        for group, value in metric.compute().items():
                            values[f"{self.stage}/{kind}param_rmse_{group}{suffix}"] = value
                    else:
                        stats = metric.compute_stats()  # one synchronisation for mean and std
                        values[f"{self.stage}/{kind}{name}{suffix}"] = stats["mean"]
                        values[f"{self.stage}/{kind}{name}_std{suffix}"] = stats["std"]
        # Each group's error relative to the mean face's: 1 means the group is not learned at all.
        relative = []
        for group in self.renderer.layout.sizes:
            network = values.get(f"{self.stage}/param_rmse_{group}")
            reference = values.get(f"{self.stage}/param_rmse_{group}_mean_face")
            if network is not None and reference is not None:
                values[f"{self.stage}/param_rel_rmse_{group}"] = network / reference
                relative.append(network / reference)
        if relative:
            # One number in which every group counts the same (the loss-weight sweep's target).
            values[f"{self.stage}/param_rel_rmse_mean"] = torch.stack(relative).mean()
        return values

    def reset(self) -> None:
        """Forget everything accumulated (metrics and per-image rows)."""
        for groups in (self.synthetic, self.real):
            for metrics in groups.values():
                for metric in metrics.values():
                    metric.reset()
        self.real_rows = []
