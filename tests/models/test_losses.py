from __future__ import annotations

import math

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


def test_balanced_loss_gives_each_group_its_weight_in_expectation(toy_face_model):
    """At the prior mean, the balanced loss of each group averages to its ω over prior samples."""
    from ifn.data.priors import ParameterPrior

    prior = ParameterPrior()
    expression_prior = toy_face_model.metadata.expression_prior
    layout = ParamLayout.for_face_model(toy_face_model)
    _, variance = prior.moments(layout, expression_prior=expression_prior)
    weights = {"rotation": 1.0, "shape": 2.0, "expression": 3.0, "reflectance": 4.0, "illumination": 5.0}
    loss = ModelSpaceLoss(toy_face_model, **{f"{k}_weight": v for k, v in weights.items()}, balanced=True,
                          prior_variance=variance)
    theta = prior.sample(layout, 100_000, expression_prior=expression_prior, generator=torch.Generator().manual_seed(0))
    # The prior mean, by hand: 0 but the expression range's centre (+ bias on θe,1) and ambient light 0.9.
    mean = torch.zeros(layout.size)
    e = layout.slices["expression"]
    mean[e] = (expression_prior.low + expression_prior.high) / 2
    mean[e.start] += expression_prior.first_bias
    ambient = layout.slices["illumination"].start
    mean[ambient : ambient + 3] = 0.9
    parts = loss.per_group(mean.expand_as(theta), theta)
    for group, weight in weights.items():
        assert parts[group].item() == pytest.approx(weight, rel=0.02), group
    # The paper's literal weighting, for contrast, gives appearance a tiny share of the same loss.
    literal = ModelSpaceLoss(toy_face_model).per_group(mean.expand_as(theta), theta)
    total = sum(v.item() for v in literal.values())
    assert literal["illumination"].item() / total < 0.05


def test_balanced_loss_keeps_model_space_weighting_within_a_group(toy_face_model):
    from ifn.data.priors import ParameterPrior

    layout = ParamLayout.for_face_model(toy_face_model)
    _, variance = ParameterPrior().moments(layout, expression_prior=toy_face_model.metadata.expression_prior)
    balanced = ModelSpaceLoss(toy_face_model, balanced=True, prior_variance=variance)
    literal = ModelSpaceLoss(toy_face_model)
    shape = layout.slices["shape"]
    # Within the shape group the ratio of entries' costs is σ_i² / σ_j², as in the literal loss.
    ratio_balanced = balanced.scale[shape] / balanced.scale[shape.start]
    ratio_literal = literal.scale[shape] / literal.scale[shape.start]
    assert torch.allclose(ratio_balanced, ratio_literal, rtol=1e-5)
    with pytest.raises(ValueError, match="variance"):
        ModelSpaceLoss(toy_face_model, balanced=True)
    with pytest.raises(ValueError, match="either euclidean or balanced"):
        ModelSpaceLoss(toy_face_model, balanced=True, euclidean=True, prior_variance=variance)


@pytest.mark.parametrize("exponent", [0.0, 0.5])
def test_mode_exponent_sets_each_modes_expected_share_within_its_group(toy_face_model, exponent):
    """At the prior mean, entry i of a group costs ∝ (σ_i/√V)^(2α) on average: α = 0 makes every mode
    of a group count the same, α = 1 is the model-space weighting; each group still totals its ω."""
    from ifn.data.priors import ParameterPrior

    prior = ParameterPrior()
    expression_prior = toy_face_model.metadata.expression_prior
    layout = ParamLayout.for_face_model(toy_face_model)
    mean, variance = prior.moments(layout, expression_prior=expression_prior)
    loss = ModelSpaceLoss(toy_face_model, shape_weight=2.0, balanced=True, prior_variance=variance,
                          mode_exponent=exponent)
    theta = prior.sample(layout, 200_000, expression_prior=expression_prior, generator=torch.Generator().manual_seed(1))
    per_entry = ((mean.float() - theta) * loss.scale).pow(2).mean(0)
    per_vertex = toy_face_model.n_vertices**-0.5
    stds = {"shape": toy_face_model.shape_std, "expression": toy_face_model.expression_std,
            "reflectance": toy_face_model.reflectance_std}
    for group, std in stds.items():
        cols = layout.slices[group]
        effect = (std.double() * per_vertex) ** (2 * exponent)
        expected = loss.weights[group] * effect / effect.sum()  # by hand: the share, split by σ^(2α)
        assert torch.allclose(per_entry[cols].double(), expected, rtol=0.03), group
    # Rotation and light have no σ: their entries split the group's ω by prior variance alone (α = 0 ⇒ evenly).
    if exponent == 0.0:
        rotation = per_entry[layout.slices["rotation"]]
        assert torch.allclose(rotation, torch.full_like(rotation, loss.weights["rotation"] / 3), rtol=0.03)
    with pytest.raises(ValueError, match="mode_exponent"):
        ModelSpaceLoss(toy_face_model, mode_exponent=0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ModelSpaceLoss(toy_face_model, balanced=True, prior_variance=variance, mode_exponent=1.5)


def test_mode_exponent_keeps_an_entry_the_prior_holds_fixed_finite_and_costly(toy_face_model):
    from ifn.data.priors import ParameterPrior

    layout = ParamLayout.for_face_model(toy_face_model)
    prior = ParameterPrior(roll_deg=0.0)  # roll never varies
    _, variance = prior.moments(layout, expression_prior=toy_face_model.metadata.expression_prior)
    roll = layout.slices["rotation"].start + 2
    assert variance[roll] == 0
    loss = ModelSpaceLoss(toy_face_model, balanced=True, prior_variance=variance, mode_exponent=0.0)
    assert torch.isfinite(loss.scale).all()
    # Pitch and yaw share rotation's ω evenly (U(−a, a): variance a²/3); roll still costs like them per radian.
    pitch_yaw = math.radians(prior.pitch_yaw_deg)
    assert loss.scale[roll - 2].item() ** 2 * pitch_yaw**2 / 3 == pytest.approx(loss.weights["rotation"] / 2, rel=1e-5)
    assert loss.scale[roll] > 0
