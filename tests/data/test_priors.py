from __future__ import annotations

import math

import pytest
import torch

from ifn.data.priors import ParameterPrior
from ifn.facemodel.model import ExpressionPrior
from ifn.params import ParamLayout

LAYOUT = ParamLayout(n_shape=20, n_expression=10, n_reflectance=15)
PAPER_EXPRESSION = ExpressionPrior(low=-12.0, high=12.0, first_bias=4.8)
N = 40_000


@pytest.fixture(scope="module")
def samples():
    generator = torch.Generator().manual_seed(0)
    theta = ParameterPrior().sample(LAYOUT, N, expression_prior=PAPER_EXPRESSION, generator=generator)
    return LAYOUT.split(theta)


def _check_uniform(x: torch.Tensor, low: float, high: float) -> None:
    assert x.min() >= low and x.max() <= high
    mean, var = (low + high) / 2, (high - low) ** 2 / 12
    assert abs(x.mean().item() - mean) < 0.02 * (high - low)
    assert abs(x.var().item() / var - 1) < 0.03


def test_rotation_prior(samples):
    deg = torch.rad2deg(samples.rotation)
    _check_uniform(deg[:, 0], -40, 40)
    _check_uniform(deg[:, 1], -40, 40)
    _check_uniform(deg[:, 2], -15, 15)


def test_shape_and_reflectance_are_standard_normal(samples):
    for x in (samples.shape, samples.reflectance):
        assert abs(x.mean().item()) < 0.01
        assert abs(x.std().item() - 1) < 0.01
        # Gaussian, not uniform: about 4.6 % beyond 2σ.
        assert abs((x.abs() > 2).float().mean().item() - 0.0455) < 0.005


def test_expression_prior_with_mouth_bias(samples):
    _check_uniform(samples.expression[:, 1:], -12, 12)
    _check_uniform(samples.expression[:, 0], -12 + 4.8, 12 + 4.8)


def test_illumination_prior_is_monochrome(samples):
    light = samples.illumination  # (N, 9, 3)
    assert torch.equal(light[..., 0], light[..., 1]) and torch.equal(light[..., 0], light[..., 2])
    _check_uniform(light[:, 0, 0], 0.6, 1.2)
    _check_uniform(light[:, 1:, 0], -0.2, 0.2)


def test_coloured_light_and_overrides():
    prior = ParameterPrior(monochrome=False, expression_low=-1.0, expression_high=1.0, expression_first_bias=0.5,
                           pitch_yaw_deg=10.0)
    theta = prior.sample(LAYOUT, 2000, expression_prior=PAPER_EXPRESSION, generator=torch.Generator().manual_seed(1))
    params = LAYOUT.split(theta)
    assert not torch.equal(params.illumination[..., 0], params.illumination[..., 1])
    assert params.expression[:, 1:].abs().max() <= 1.0
    assert params.expression[:, 0].min() >= -0.5 and params.expression[:, 0].max() <= 1.5
    assert params.rotation[:, :2].abs().max() <= math.radians(10.0)


def test_same_generator_seed_same_samples():
    prior = ParameterPrior()
    a = prior.sample(LAYOUT, 8, expression_prior=PAPER_EXPRESSION, generator=torch.Generator().manual_seed(3))
    b = prior.sample(LAYOUT, 8, expression_prior=PAPER_EXPRESSION, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_invalid_expression_range():
    with pytest.raises(ValueError, match="low <= high"):
        ParameterPrior(expression_low=2.0, expression_high=1.0).sample(LAYOUT, 1, expression_prior=PAPER_EXPRESSION)


def test_moments_are_the_closed_form_of_the_laws():
    layout = ParamLayout(n_shape=3, n_expression=4, n_reflectance=2)
    prior = ParameterPrior()
    mean, var = prior.moments(layout, expression_prior=ExpressionPrior(low=-3.0, high=3.0, first_bias=2.0))
    s = layout.slices
    deg = math.pi / 180
    # By hand: U(-a, a) has variance a²/3; U(a, b) mean (a + b)/2 and variance (b - a)²/12.
    assert torch.allclose(var[s["rotation"]], torch.tensor([(40 * deg) ** 2 / 3] * 2 + [(15 * deg) ** 2 / 3], dtype=torch.float64))
    assert torch.equal(var[s["shape"]], torch.ones(3, dtype=torch.float64))
    assert torch.equal(mean[s["expression"]], torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(var[s["expression"]], torch.full((4,), 3.0, dtype=torch.float64))
    light = s["illumination"].start
    assert torch.allclose(mean[light : light + 3], torch.full((3,), 0.9, dtype=torch.float64))
    assert torch.allclose(var[light : light + 3], torch.full((3,), 0.03, dtype=torch.float64))
    assert torch.allclose(var[light + 3 :], torch.full((24,), 0.2**2 / 3, dtype=torch.float64))
    # And the sampler agrees with them.
    sample = prior.sample(layout, 200_000, expression_prior=ExpressionPrior(-3.0, 3.0, 2.0),
                          generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(sample.mean(0), mean, atol=0.02)
    assert torch.allclose(sample.var(0), var, rtol=0.02)
