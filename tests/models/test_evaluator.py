"""The Evaluator and the test-metrics files, checked by value against hand computations.

Every expected number is computed here from first principles (numpy/torch arithmetic on the
renders, the face model's arrays and the θ differences), never by calling the metric code.
"""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from ifn.callbacks.test_metrics import TestMetricsWriter
from ifn.data.batch import FaceBatch, to_network_input
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.data.priors import ParameterPrior
from ifn.data.sources import STREAM_TEST
from ifn.models.evaluator import Evaluator
from ifn.models.inverse_face_net import InverseFaceNet
from ifn.render.settings import RenderSettings

SIZE = 32
RENDER = RenderSettings(n_shape=3, n_expression=2, n_reflectance=3, image_size=SIZE, backend="torch")


@pytest.fixture(scope="module")
def renderer():
    return RENDER.build_renderer()


@pytest.fixture(scope="module")
def theta(renderer):
    dm = SyntheticFaceDataModule(render=RENDER, test_size=2)
    return dm.fixed_parameters(STREAM_TEST)


def _rmse_255(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per-image RMSE on the 0-255 scale over the pixels (and 3 channels) where mask > 0.5."""
    p, t, m = (x.double().numpy() for x in (prediction, target, mask))
    out = []
    for b in range(p.shape[0]):
        inside = m[b, 0] > 0.5
        diff = (p[b][:, inside] - t[b][:, inside]) * 255.0
        out.append(math.sqrt(float((diff**2).mean())))
    return np.array(out)


def _iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.numpy() > 0.5, b.numpy() > 0.5
    return np.array([100.0 * (a[i] & b[i]).sum() / (a[i] | b[i]).sum() for i in range(a.shape[0])])


def _mean_face_theta(renderer, n: int) -> torch.Tensor:
    """θ = 0 but the constant SH coefficient of each channel, 0.9: the mean of U(0.6, 1.2)."""
    theta = torch.zeros(n, renderer.layout.size)
    start = renderer.layout.slices["illumination"].start
    theta[:, start : start + 3] = 0.9
    return theta


def _geometry_rmse(renderer, theta_a: torch.Tensor, theta_b: torch.Tensor, vertices: torch.Tensor) -> np.ndarray:
    """Per-image vertex RMSE (mm) between the meshes of two θ, from the basis arrays directly."""
    fm = renderer.face_model
    layout = renderer.layout
    basis = torch.cat([fm.shape_basis * fm.shape_std[:, None, None], fm.expression_basis * fm.expression_std[:, None, None]])
    out = []
    for a, b in zip(theta_a.double(), theta_b.double(), strict=False):
        coeff = torch.cat([a[layout.slices["shape"]] - b[layout.slices["shape"]],
                           a[layout.slices["expression"]] - b[layout.slices["expression"]]])
        displacement = torch.einsum("k,kvc->vc", coeff, basis.double())[vertices]
        out.append(displacement.pow(2).sum(-1).mean().sqrt().item())
    return np.array(out)


# ----------------------------------------------------------------------- the mean face


def test_mean_face_is_theta_zero_lit_by_the_prior_mean_ambient(renderer):
    evaluator = Evaluator(renderer, "test")
    theta = evaluator.mean_face_parameters(4, "cpu")
    assert torch.equal(theta, _mean_face_theta(renderer, 4))
    prior = ParameterPrior()
    start = renderer.layout.slices["illumination"].start
    assert theta[0, start].item() == pytest.approx((prior.ambient_low + prior.ambient_high) / 2)


# --------------------------------------------------------------------- synthetic faces


def test_synthetic_metrics_mean_and_std_by_value(renderer, theta):
    """Targets are the true renders plus 10/255 (face 0) and 20/255 (face 1): a perfect
    prediction has photometric errors 10 and 20, so mean 15 and std 5 (population)."""
    render = renderer(theta)
    offsets = torch.tensor([10.0, 20.0]).view(2, 1, 1, 1) / 255.0
    batch = FaceBatch(input=to_network_input(render.image), image=render.image + offsets * render.mask,
                      mask=render.mask, landmarks=render.landmarks, theta=theta)
    evaluator = Evaluator(renderer, "test")
    evaluator.update(theta.clone(), batch)
    values = {k: v.item() for k, v in evaluator.compute().items()}
    assert values["test/photometric_error"] == pytest.approx(15.0, abs=1e-3)
    assert values["test/photometric_error_std"] == pytest.approx(5.0, abs=1e-3)
    assert values["test/geometric_error_mm"] == pytest.approx(0.0, abs=1e-4)
    assert values["test/iou"] == pytest.approx(100.0)
    assert values["test/iou_std"] == pytest.approx(0.0)
    for group in ("rotation", "shape", "expression", "reflectance", "illumination"):
        assert values[f"test/param_rmse_{group}"] == pytest.approx(0.0, abs=1e-6)

    # The mean face on the same batch: every number from its own render, by hand.
    reference = renderer(_mean_face_theta(renderer, 2))
    photometric = _rmse_255(reference.image, batch.image, batch.mask)
    iou = _iou(reference.mask, batch.mask)
    geometric = _geometry_rmse(renderer, theta, torch.zeros_like(theta), renderer.face_model.face_mask)
    assert values["test/photometric_error_mean_face"] == pytest.approx(photometric.mean(), rel=1e-5)
    assert values["test/photometric_error_std_mean_face"] == pytest.approx(photometric.std(), rel=1e-4, abs=1e-4)
    assert values["test/iou_mean_face"] == pytest.approx(iou.mean(), rel=1e-6)
    assert values["test/iou_std_mean_face"] == pytest.approx(iou.std(), rel=1e-5, abs=1e-6)
    assert values["test/geometric_error_mm_mean_face"] == pytest.approx(geometric.mean(), rel=1e-5)
    assert values["test/geometric_error_mm_std_mean_face"] == pytest.approx(geometric.std(), rel=1e-4, abs=1e-5)
    rotation = torch.rad2deg(theta[:, :3].double())
    assert values["test/param_rmse_rotation_mean_face"] == pytest.approx(rotation.pow(2).mean().sqrt().item(), rel=1e-6)
    assert not any(key.startswith("test/real_") for key in values)


def test_geometric_error_is_measured_on_the_face_region_only(renderer, theta):
    """A prediction off by Δ = 1.5 in the second shape coefficient moves every vertex by
    1.5·σ₂·b₂: its RMSE over the face region, computed from the basis, is the error (this
    mode moves the region outside the face more, so the mask changes the number by ~10 %)."""
    render = renderer(theta)
    batch = FaceBatch(input=to_network_input(render.image), image=render.image, mask=render.mask,
                      landmarks=render.landmarks, theta=theta)
    prediction = theta.clone()
    prediction[:, renderer.layout.slices["shape"].start + 1] += 1.5
    evaluator = Evaluator(renderer, "val")
    evaluator.update(prediction, batch)
    values = {k: v.item() for k, v in evaluator.compute().items()}
    fm = renderer.face_model
    displacement = 1.5 * fm.shape_std[1].double() * fm.shape_basis[1].double()
    on_face = displacement[fm.face_mask].pow(2).sum(-1).mean().sqrt().item()
    everywhere = displacement.pow(2).sum(-1).mean().sqrt().item()
    assert abs(on_face - everywhere) > 0.05 * on_face  # the mask matters for this mode
    assert values["val/geometric_error_mm"] == pytest.approx(on_face, rel=1e-5)
    assert values["val/geometric_error_mm_std"] == pytest.approx(0.0, abs=1e-4)
    assert values["val/param_rmse_shape"] == pytest.approx(1.5 / math.sqrt(3), rel=1e-6)
    assert values["val/param_rmse_rotation"] == pytest.approx(0.0, abs=1e-9)
    # Relative to the mean face: its shape error is the RMS of the true shape coefficients.
    mean_face_shape = theta[:, renderer.layout.slices["shape"]].double().pow(2).mean().sqrt().item()
    assert values["val/param_rel_rmse_shape"] == pytest.approx((1.5 / math.sqrt(3)) / mean_face_shape, rel=1e-5)
    assert values["val/param_rel_rmse_rotation"] == pytest.approx(0.0, abs=1e-9)
    # Only shape is off: the mean over the five groups is a fifth of its relative error.
    assert values["val/param_rel_rmse_mean"] == pytest.approx(values["val/param_rel_rmse_shape"] / 5, rel=1e-9)


# -------------------------------------------------------------------------- real photos


def _photo_batch(renderer, theta):
    """"Photos": renders of θ plus 8/255, whose masks lose their top 3 face rows."""
    render = renderer(theta)
    mask = render.mask.clone()
    for b in range(mask.shape[0]):
        rows = torch.nonzero(mask[b, 0].sum(-1) > 0).flatten()
        mask[b, 0, rows[:3]] = 0.0
    image = (render.image + 8.0 / 255.0) * mask
    photos = {"image": image, "mask": mask, "landmarks": render.landmarks,
              "path": ["photos/a.jpg", "photos/b.jpg"], "face_index": torch.tensor([0, 2])}
    return FaceBatch.from_photos(photos), render


def test_real_photo_metrics_and_rows_by_value(renderer, theta):
    batch, render = _photo_batch(renderer, theta)
    evaluator = Evaluator(renderer, "test", keep_per_image=True)
    evaluator.update(theta.clone(), batch)
    values = {k: v.item() for k, v in evaluator.compute().items()}
    assert set(values) == {
        f"test/real_{name}{std}{who}" for name in ("photometric_error", "iou") for std in ("", "_std")
        for who in ("", "_mean_face")
    }
    # The network's render matches each photo up to the 8/255 offset inside the photo mask.
    photometric = _rmse_255(render.image, batch.image, batch.mask)
    assert np.allclose(photometric, 8.0, atol=1e-3)
    iou = _iou(render.mask, batch.mask)
    assert (iou < 99.0).all()  # the removed rows are in the render only
    assert values["test/real_photometric_error"] == pytest.approx(photometric.mean(), rel=1e-5)
    assert values["test/real_iou"] == pytest.approx(iou.mean(), rel=1e-6)
    assert values["test/real_iou_std"] == pytest.approx(iou.std(), rel=1e-5, abs=1e-6)
    # The mean-face reference is the mean face's own render, not the prediction's.
    reference = renderer(_mean_face_theta(renderer, 2))
    mean_photometric = _rmse_255(reference.image, batch.image, batch.mask)
    mean_iou = _iou(reference.mask, batch.mask)
    assert values["test/real_photometric_error_mean_face"] == pytest.approx(mean_photometric.mean(), rel=1e-5)
    assert values["test/real_iou_mean_face"] == pytest.approx(mean_iou.mean(), rel=1e-6)
    assert abs(mean_photometric.mean() - photometric.mean()) > 1.0
    # One row per face, with the same per-image numbers.
    rows = evaluator.real_rows
    assert [(r["path"], r["face_index"]) for r in rows] == [("photos/a.jpg", 0), ("photos/b.jpg", 2)]
    assert [r["iou"] for r in rows] == pytest.approx(list(iou), rel=1e-9)
    assert [r["photometric_error"] for r in rows] == pytest.approx(list(photometric), rel=1e-5)
    # Reset forgets everything.
    evaluator.reset()
    assert evaluator.compute() == {} and evaluator.real_rows == []


def test_rows_are_kept_only_when_asked(renderer, theta):
    batch, _ = _photo_batch(renderer, theta)
    evaluator = Evaluator(renderer, "val")
    evaluator.update(theta, batch)
    assert evaluator.real_rows == []


# ------------------------------------------------------- through Trainer.test to the files


class _ConstantNet(nn.Module):
    """Predicts the same θ for every input."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("theta", theta)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1) + 0 * self.dummy


def test_trainer_test_writes_the_hand_computed_metrics(tmp_path):
    dm = SyntheticFaceDataModule(render=RENDER, batch_size=3, val_size=0, test_size=5, seed=3)
    model = InverseFaceNet(dm.renderer, backbone="mobilenetv3_small_050")
    renderer = dm.renderer
    constant = dm.fixed_parameters(STREAM_TEST)[0].clone()
    constant[renderer.layout.slices["shape"]] += 0.5
    model.net = _ConstantNet(constant)
    writer = TestMetricsWriter()
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[writer])
    trainer.test(model, datamodule=dm)
    metrics = json.loads(writer.path.read_text())

    theta = dm.fixed_parameters(STREAM_TEST)
    target = renderer(theta)
    prediction = renderer(constant.expand(5, -1))
    photometric = _rmse_255(prediction.image, target.image, target.mask)
    geometric = _geometry_rmse(renderer, constant.expand(5, -1), theta, renderer.face_model.face_mask)
    iou = _iou(prediction.mask, target.mask)
    assert metrics["test/photometric_error"] == pytest.approx(photometric.mean(), rel=1e-5)
    assert metrics["test/photometric_error_std"] == pytest.approx(photometric.std(), rel=1e-4)
    assert metrics["test/geometric_error_mm"] == pytest.approx(geometric.mean(), rel=1e-5)
    assert metrics["test/geometric_error_mm_std"] == pytest.approx(geometric.std(), rel=1e-4)
    assert metrics["test/iou"] == pytest.approx(iou.mean(), rel=1e-5)
    shape = (constant[None, renderer.layout.slices["shape"]] - theta[:, renderer.layout.slices["shape"]]).double()
    assert metrics["test/param_rmse_shape"] == pytest.approx(shape.pow(2).mean().sqrt().item(), rel=1e-5)
    mean_face = renderer(_mean_face_theta(renderer, 5))
    assert metrics["test/photometric_error_mean_face"] == pytest.approx(
        _rmse_255(mean_face.image, target.image, target.mask).mean(), rel=1e-5
    )
    assert not (tmp_path / "test_real_per_image.csv").exists()  # no real photos in this test


def test_per_image_csv_is_written_from_the_test_evaluator(tmp_path, renderer, theta):
    batch, render = _photo_batch(renderer, theta)
    model = InverseFaceNet(renderer, backbone="mobilenetv3_small_050")
    model.evaluators["test"].update(theta, batch)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    writer = TestMetricsWriter()
    writer.on_test_end(trainer, model)
    with open(tmp_path / "test_real_per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["path"], int(r["face_index"])) for r in rows] == [("photos/a.jpg", 0), ("photos/b.jpg", 2)]
    assert [float(r["iou"]) for r in rows] == pytest.approx(list(_iou(render.mask, batch.mask)), rel=1e-9)
