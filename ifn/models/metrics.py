"""The paper's evaluation metrics (its Section 8) as torchmetrics ``Metric`` objects.

Every metric is a per-image error averaged over images; the paper reports mean ± std
over images (Table 1). Each metric therefore keeps only DDP-reducible sum states
(``dist_reduce_fx="sum"``, float64): the sum of the per-image values, the sum of their
squares and the number of images, so 2 processes × half the data give the same result
as 1 process × all of it. Images with nothing to compare (an empty mask) are skipped
and counted in the ``skipped`` state instead of producing NaN.

Reading the results:

* ``compute()`` returns the mean over images, a scalar tensor (``ParameterError``: a
  dict ``{group: tensor}``). It syncs across processes like any torchmetrics metric, so
  ``self.log("val/photometric_error", metric)`` in a LightningModule does the right thing.
* ``compute_stats()`` returns ``{"mean", "std", "count", "skipped"}``, all computed from
  ONE synced copy of the states. ``compute_std()`` is its ``"std"``. Both follow the
  same sync rules as ``compute()``: they gather the states across processes unless the
  metric was built with ``sync_on_compute=False``, and if the states are already synced
  (after a manual ``metric.sync()``) they read them as they are. Like ``compute()``
  under DDP, they are collective calls: every rank must make them.

Convention:
    The std is the population standard deviation over images (``ddof = 0``, numpy's
    default), ``sqrt(E[x²] − E[x]²)``. With no valid image the mean and std are NaN:
    that is "no data", not an error of 0.

Example:
    In a LightningModule (the metric objects are attributes, so they follow the device)::

        def validation_step(self, batch, batch_idx):
            ...
            self.val_photometric.update(render, image, mask)
            self.log("val/photometric_error", self.val_photometric)  # mean; Lightning computes + resets

        def on_validation_epoch_end(self):  # runs before Lightning resets the metric
            self.log("val/photometric_error_std", self.val_photometric.compute_std())
            errors = self.val_params.compute()  # a dict: log it by hand, then reset
            self.log_dict({f"val/param_error/{k}": v for k, v in errors.items()})
            self.val_params.reset()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric

from ifn.params import ParamLayout

__all__ = [
    "GeometricError",
    "MaskIoU",
    "ParameterError",
    "PerImageMetric",
    "PhotometricError",
    "mask_iou_per_image",
    "photometric_error_per_image",
]

_T = TypeVar("_T")


def _binary(mask: Tensor) -> Tensor:
    """A bool mask: bool tensors as they are, anything else thresholded ``> 0.5``."""
    return mask if mask.dtype == torch.bool else mask > 0.5


def _float(x: Tensor) -> Tensor:
    """``x`` as a floating tensor of at least float32 precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def photometric_error_per_image(prediction: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image photometric RMSE (0–255) inside the input mask.

    Args: as :meth:`PhotometricError.update`.

    Returns:
    ``(B,)`` float64 errors and ``(B,)`` bool validity (False where the mask is empty).
    """
    if prediction.ndim != 4 or prediction.shape[1] != 3:
        raise ValueError(f"prediction must be (B, 3, H, W), got {_shape(prediction)}")
    if target.shape != prediction.shape:
        raise ValueError(f"target must match prediction {_shape(prediction)}, got {_shape(target)}")
    b, _, h, w = prediction.shape
    if mask.shape != (b, 1, h, w):
        raise ValueError(f"mask must be {(b, 1, h, w)} (B, 1, H, W), got {_shape(mask)}")
    inside = _binary(mask)
    diff = (_float(prediction) - _float(target)) * 255.0
    sq = torch.where(inside, diff * diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    sse = sq.sum(dim=(1, 2, 3), dtype=torch.float64)
    n = inside.sum(dim=(1, 2, 3)) * 3
    valid = n > 0
    return (sse / n.clamp_min(1)).sqrt(), valid


def mask_iou_per_image(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image mask IoU in percent.

    Args: as :meth:`MaskIoU.update`.

    Returns:
    ``(B,)`` float64 IoU and ``(B,)`` bool validity (False where both masks are empty).
    """
    if prediction.ndim != 4 or prediction.shape[1] != 1:
        raise ValueError(f"prediction must be (B, 1, H, W), got {_shape(prediction)}")
    if target.shape != prediction.shape:
        raise ValueError(f"target must match prediction {_shape(prediction)}, got {_shape(target)}")
    a, b = _binary(prediction), _binary(target)
    intersection = (a & b).sum(dim=(1, 2, 3))
    union = (a | b).sum(dim=(1, 2, 3))
    valid = union > 0
    iou = 100.0 * intersection.to(torch.float64) / union.clamp_min(1).to(torch.float64)
    return iou, valid


class _SyncedCompute(Metric):
    """Adds :meth:`_with_synced_states`: run a function on synced states, as ``compute()`` does."""

    def _with_synced_states(self, fn: Callable[[], _T]) -> _T:
        """Call ``fn()`` while the states hold their all-process values.

        Mirrors torchmetrics' wrapper of ``compute()``: sync unless ``sync_on_compute=False``,
        restore the local states afterwards; if the metric is already synced, read as is.
        """
        if self._is_synced:
            return fn()
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return fn()


class PerImageMetric(_SyncedCompute):
    """Base class: mean and std over images of a per-image value, with DDP-exact sum states.

    Subclasses implement ``update`` and feed :meth:`_accumulate` with one value per image
    and a flag saying whether the image counts.

    States (all ``dist_reduce_fx="sum"``):
        value_sum: float64 sum of the per-image values.
        value_sq_sum: float64 sum of their squares.
        count: int64 number of images counted.
        skipped: int64 number of images skipped (nothing to compare).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    value_sum: Tensor
    value_sq_sum: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("value_sq_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor, valid: Tensor) -> None:
        """Add per-image ``values: (B,)`` where ``valid: (B,)`` bool; count the rest as skipped."""
        values = torch.where(
            valid, values.to(torch.float64), torch.zeros((), dtype=torch.float64, device=values.device)
        )
        self.value_sum += values.sum()
        self.value_sq_sum += (values * values).sum()
        n_valid = valid.sum()
        self.count += n_valid
        self.skipped += valid.numel() - n_valid

    def _stats(self) -> dict[str, Tensor]:
        n = self.count.to(torch.float64)
        mean = self.value_sum / n  # NaN when n == 0
        var = (self.value_sq_sum / n - mean * mean).clamp_min(0.0)
        return {"mean": mean, "std": var.sqrt(), "count": self.count.clone(), "skipped": self.skipped.clone()}

    def compute(self) -> Tensor:
        """The mean over images (a float64 scalar; NaN if no image counted)."""
        return self._stats()["mean"]

    def compute_stats(self) -> dict[str, Tensor]:
        """``{"mean", "std", "count", "skipped"}`` from one synced copy of the states.

        Returns:
            ``mean`` and ``std`` (population, ``ddof = 0``) over the counted images as float64
            scalars, ``count`` and ``skipped`` as int64 scalars.
        """
        return self._with_synced_states(self._stats)

    def compute_std(self) -> Tensor:
        """The standard deviation over images (population, ``ddof = 0``), synced like ``compute()``."""
        return self.compute_stats()["std"]


class PhotometricError(PerImageMetric):
    """RMSE of RGB values on the 0–255 scale inside the input's mask, averaged over images.

    Per image: ``sqrt(mean over the masked pixels and their 3 channels of (255·(p − t))²)``.
    Pixels outside the mask are ignored; an image whose mask is empty is skipped.

    Example:
        >>> metric = PhotometricError()
        >>> target = torch.zeros(1, 3, 4, 4)
        >>> mask = torch.zeros(1, 1, 4, 4)
        >>> mask[..., :2, :] = 1.0
        >>> prediction = target + 10.0 / 255.0
        >>> prediction[..., 2:, :] = 1.0  # outside the mask: ignored
        >>> metric.update(prediction, target, mask)
        >>> round(float(metric.compute()), 4)
        10.0
    """

    def update(self, prediction: Tensor, target: Tensor, mask: Tensor) -> None:
        """Add a batch.

        Args:
            prediction: ``(B, 3, H, W)`` the render of the reconstruction, in ``[0, 1]``.
            target: ``(B, 3, H, W)`` the input image, in ``[0, 1]``.
            mask: ``(B, 1, H, W)`` the INPUT's face mask (bool, or float thresholded ``> 0.5``).
        """
        self._accumulate(*photometric_error_per_image(prediction, target, mask))


class GeometricError(PerImageMetric):
    """RMSE in mm between corresponding vertices (of the face region), averaged over images.

    Per image: ``sqrt(mean over the selected vertices of ‖p_v − t_v‖²)``. No alignment is
    applied: both meshes are compared as given (model space, mm).

    Example:
        >>> metric = GeometricError()
        >>> target = torch.zeros(1, 5, 3)
        >>> metric.update(target + torch.tensor([3.0, 4.0, 0.0]), target)
        >>> float(metric.compute())
        5.0
    """

    def update(self, prediction: Tensor, target: Tensor, vertex_mask: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            prediction: ``(B, V, 3)`` reconstructed vertices in mm.
            target: ``(B, V, 3)`` ground-truth vertices in mm.
            vertex_mask: ``(V,)`` bool, the vertices to compare (e.g. ``FaceModel.face_mask``);
                ``None`` compares all. If it selects nothing, every image is skipped.
        """
        if prediction.ndim != 3 or prediction.shape[2] != 3:
            raise ValueError(f"prediction must be (B, V, 3), got {_shape(prediction)}")
        if target.shape != prediction.shape:
            raise ValueError(f"target must match prediction {_shape(prediction)}, got {_shape(target)}")
        b, v, _ = prediction.shape
        diff = _float(prediction) - _float(target)
        if vertex_mask is not None:
            if vertex_mask.shape != (v,):
                raise ValueError(f"vertex_mask must be ({v},) (V,), got {_shape(vertex_mask)}")
            if vertex_mask.dtype != torch.bool:
                raise TypeError(f"vertex_mask must be a bool tensor, got {vertex_mask.dtype}")
            diff = diff[:, vertex_mask.to(diff.device)]
        n = diff.shape[1]
        sse = (diff * diff).sum(dim=(1, 2), dtype=torch.float64)
        valid = torch.full((b,), n > 0, dtype=torch.bool, device=diff.device)
        self._accumulate((sse / max(n, 1)).sqrt(), valid)


class MaskIoU(PerImageMetric):
    """Intersection over union, in percent, of two masks, averaged over images.

    Per image: ``100 · |A ∩ B| / |A ∪ B|`` after thresholding both masks ``> 0.5`` (bool
    masks are used as they are). Images where both masks are empty are skipped.

    Example:
        >>> a = torch.zeros(1, 1, 4, 4)
        >>> b = torch.zeros(1, 1, 4, 4)
        >>> a[..., :2, :2] = 1.0
        >>> b[..., :2, :4] = 1.0
        >>> metric = MaskIoU()
        >>> metric.update(a, b)
        >>> float(metric.compute())
        50.0
    """

    higher_is_better = True

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            prediction: ``(B, 1, H, W)`` the rendered mask of the reconstruction.
            target: ``(B, 1, H, W)`` the input's face mask.
        """
        self._accumulate(*mask_iou_per_image(prediction, target))


class ParameterError(_SyncedCompute):
    """RMSE per θ group between predicted and true parameters (rotation in degrees).

    For each group with at least one entry: ``sqrt(mean over images and the group's
    entries of (p − θ)²)``, in degrees for ``rotation`` (θ holds radians) and in θ units
    (σ's, SH coefficients) for the others. Angles are not wrapped.

    States (all ``dist_reduce_fx="sum"``, float64, one entry per group of ``layout.sizes``):
        mse_sum: sum over images of the per-image mean squared error of the group.
        rmse_sum: sum over images of the per-image RMSE of the group (for the std).
        count: int64 number of images.

    Args:
        layout: the θ layout of the face model in use.
        **kwargs: passed on to :class:`torchmetrics.Metric`.

    Example:
        >>> layout = ParamLayout(n_shape=2, n_expression=0, n_reflectance=1)
        >>> metric = ParameterError(layout)
        >>> target = torch.zeros(1, layout.size)
        >>> prediction = target.clone()
        >>> prediction[:, :3] = 0.1
        >>> errors = metric(prediction, target)
        >>> sorted(errors)
        ['illumination', 'reflectance', 'rotation', 'shape']
        >>> round(float(errors["rotation"]), 4)
        5.7296
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    mse_sum: Tensor
    rmse_sum: Tensor
    count: Tensor

    def __init__(self, layout: ParamLayout, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = layout
        self.groups: tuple[str, ...] = tuple(name for name, size in layout.sizes.items() if size > 0)
        g = len(self.groups)
        self.add_state("mse_sum", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rmse_sum", default=torch.zeros(g, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            prediction: ``(B, m)`` predicted θ.
            target: ``(B, m)`` true θ.
        """
        m = self.layout.size
        if prediction.ndim != 2 or prediction.shape[1] != m:
            raise ValueError(f"prediction must be (B, {m}) (B, m), got {_shape(prediction)}")
        if target.shape != prediction.shape:
            raise ValueError(f"target must match prediction {_shape(prediction)}, got {_shape(target)}")
        diff = prediction.to(torch.float64) - target.to(torch.float64)
        slices = self.layout.slices
        mse = []
        for name in self.groups:
            d = diff[:, slices[name]]
            if name == "rotation":
                d = torch.rad2deg(d)
            mse.append((d * d).mean(dim=1))
        per_image = torch.stack(mse, dim=1)  # (B, G)
        self.mse_sum += per_image.sum(dim=0)
        self.rmse_sum += per_image.sqrt().sum(dim=0)
        self.count += prediction.shape[0]

    def _stats(self) -> dict[str, Any]:
        n = self.count.to(torch.float64)
        rmse = (self.mse_sum / n).sqrt()
        mean = self.rmse_sum / n
        std = (self.mse_sum / n - mean * mean).clamp_min(0.0).sqrt()
        return {
            "rmse": dict(zip(self.groups, rmse.unbind(), strict=True)),
            "mean": dict(zip(self.groups, mean.unbind(), strict=True)),
            "std": dict(zip(self.groups, std.unbind(), strict=True)),
            "count": self.count.clone(),
        }

    def compute(self) -> dict[str, Tensor]:
        """``{group: RMSE}`` over all images and the group's entries (float64 scalars, θ order)."""
        return self._stats()["rmse"]

    def compute_stats(self) -> dict[str, Any]:
        """All statistics from one synced copy of the states.

        Returns:
            ``{"rmse": {group: t}, "mean": {group: t}, "std": {group: t}, "count": t}``:
            the pooled RMSE (what :meth:`compute` returns), the mean and the population std
            (``ddof = 0``) over images of the per-image RMSE, and the number of images.
        """
        return self._with_synced_states(self._stats)

    def compute_std(self) -> dict[str, Tensor]:
        """``{group: std over images of the per-image RMSE}``, synced like ``compute()``."""
        return self.compute_stats()["std"]
