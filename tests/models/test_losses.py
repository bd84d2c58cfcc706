from __future__ import annotations

import pytest
import torch

from ifn.models.losses import ModelSpaceLoss
from ifn.params import ParamLayout


def _explicit_quadratic_form(p, theta, fm, weights):
    """(p − θ)ᵀ A (p − θ) with A = ΣᵀΣ built as a full matrix, averaged over the batch.

    σ per vertex: the RMS per-vertex displacement of a unit coefficient, measured here
    directly from the basis rather than taken from the loss's σ/√V formula.
    """

    def rms_per_vertex(basis, std):
        return torch.stack([(basis[i] * std[i]).norm(dim=-1).pow(2).mean().sqrt() for i in range(len(std))])

    sigma_diag = torch.cat(
        [
            torch.full((3,), weights[0]),
            weights[1] * rms_per_vertex(fm.shape_basis, fm.shape_std),
            weights[2] * rms_per_vertex(fm.expression_basis, fm.expression_std),
            weights[3] * rms_per_vertex(fm.reflectance_basis, fm.reflectance_std),
            torch.full((27,), weights[4]),
        ]
    ).double()
    sigma = torch.diag(sigma_diag)
    a = sigma.T @ sigma
    d = (p - theta).double()
    return torch.stack([d[i] @ a @ d[i] for i in range(d.shape[0])]).mean()


def test_model_space_loss_equals_explicit_quadratic_form(toy_face_model):
    weights = (400.0, 50.0, 50.0, 100.0, 20.0)
    loss = ModelSpaceLoss(toy_face_model, *weights)
    m = ParamLayout.for_face_model(toy_face_model).size
    gen = torch.Generator().manual_seed(0)
    p, theta = torch.randn(5, m, generator=gen), torch.randn(5, m, generator=gen)
    expected = _explicit_quadratic_form(p, theta, toy_face_model, weights)
    assert torch.allclose(loss(p, theta).double(), expected, rtol=1e-5)
    parts = loss.per_group(p, theta)
    assert torch.allclose(sum(parts.values()).double(), expected, rtol=1e-5)


def test_euclidean_ablation_is_plain_squared_distance(toy_face_model):
    loss = ModelSpaceLoss(toy_face_model, euclidean=True)
    m = loss.layout.size
    p = torch.zeros(2, m)
    theta = torch.zeros(2, m)
    theta[0, 0], theta[1, -1] = 3.0, 4.0
    assert loss(p, theta).item() == pytest.approx((9.0 + 16.0) / 2)


def test_loss_weights_scale_their_group_only(toy_face_model):
    base = ModelSpaceLoss(toy_face_model)
    doubled = ModelSpaceLoss(toy_face_model, shape_weight=100.0)
    m = base.layout.size
    p, theta = torch.randn(3, m), torch.randn(3, m)
    a, b = base.per_group(p, theta), doubled.per_group(p, theta)
    assert torch.allclose(b["shape"], 4 * a["shape"])
    for group in ("rotation", "expression", "reflectance", "illumination"):
        assert torch.allclose(a[group], b[group])


def test_loss_rejects_mismatched_shapes(toy_face_model):
    loss = ModelSpaceLoss(toy_face_model)
    with pytest.raises(ValueError, match="must both be"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3))
