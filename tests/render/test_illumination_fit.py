"""Closed-form SH lighting fit: exact recovery, the renderer's basis images, edge cases."""

from __future__ import annotations

import pytest
import torch

from ifn.render.illumination_fit import fit_illumination, relight
from ifn.render.renderer import FaceRenderer


def _random_problem(batch: int = 3, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.rand(batch, 3, 9, size, size, generator=gen) - 0.3
    truth = torch.randn(batch, 9, 3, generator=gen)
    image = torch.einsum("bckhw,bkc->bchw", basis, truth)
    return basis, truth, image


def test_plain_least_squares_recovers_the_lighting_exactly():
    basis, truth, image = _random_problem()
    mask = torch.ones(3, 1, 16, 16, dtype=torch.bool)
    fitted = fit_illumination(basis, image, mask, torch.zeros_like(truth), ridge=0.0)
    assert torch.allclose(fitted, truth, atol=1e-4)


def test_pixels_outside_the_mask_are_ignored():
    basis, truth, image = _random_problem(seed=1)
    mask = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    mask[..., 2:12, 3:14] = True
    corrupted = torch.where(mask, image, torch.full_like(image, 50.0))
    fitted = fit_illumination(basis, corrupted, mask, torch.zeros_like(truth), ridge=0.0)
    assert torch.allclose(fitted, truth, atol=1e-4)


def test_ridge_pulls_towards_the_initial_estimate():
    basis, truth, image = _random_problem(seed=2)
    mask = torch.ones(3, 1, 16, 16)
    initial = torch.zeros_like(truth)
    distances = [
        (fit_illumination(basis, image, mask, initial, ridge=r) - truth).norm().item() for r in (0.0, 0.1, 10.0)
    ]
    assert distances[0] < distances[1] < distances[2]
    huge = fit_illumination(basis, image, mask, initial, ridge=1e9)
    assert huge.abs().max() < 1e-4  # back at the anchor


def test_an_empty_mask_returns_the_initial_estimate():
    basis, truth, image = _random_problem(seed=3)
    initial = torch.randn_like(truth)
    fitted = fit_illumination(basis, image, torch.zeros(3, 1, 16, 16), initial)
    assert torch.allclose(fitted, initial, atol=1e-6)


def test_bad_arguments_rejected():
    basis, truth, image = _random_problem()
    with pytest.raises(ValueError, match="shapes do not match"):
        fit_illumination(basis, image[:, :2], torch.ones(3, 1, 16, 16), truth)
    with pytest.raises(ValueError, match="ridge"):
        fit_illumination(basis, image, torch.ones(3, 1, 16, 16), truth, ridge=-1.0)


def _faces(face_model, seed: int, ambient: float, light_noise: float):
    """A torch renderer and 2 random faces lit by ``ambient`` plus N(0, light_noise²) SH terms."""
    renderer = FaceRenderer(face_model, image_size=48, backend="torch")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(2, renderer.layout.size, generator=gen) * 0.3
    lighting = renderer.layout.slices["illumination"]
    theta[:, lighting] = torch.randn(2, 27, generator=gen) * light_noise
    theta[:, lighting.start : lighting.start + 3] = ambient
    return renderer, theta, lighting


def test_renderer_basis_images_reproduce_the_render(toy_face_model):
    # The render is albedo ⊙ Σ θi H_k(n), interpolated, then clamped; the basis images,
    # combined with the same θi, must give the same picture wherever it is not clamped.
    renderer, theta, _ = _faces(toy_face_model, seed=0, ambient=0.7, light_noise=0.1)
    layout = renderer.layout
    out = renderer(theta)
    basis, covered = renderer.illumination_basis(theta)
    assert basis.shape == (2, 3, 9, 48, 48)
    assert torch.equal(covered, out.mask)
    combined = torch.einsum("bckhw,bkc->bchw", basis, layout.split(theta).illumination)
    unclamped = (out.image > 1e-4) & (out.image < 1 - 1e-4) & (out.mask > 0.5)
    assert unclamped.float().mean() > 0.1
    assert torch.allclose(combined[unclamped], out.image[unclamped], atol=1e-5)
    # relight() clamps like the renderer, so it matches everywhere, clamped pixels included.
    assert torch.allclose(relight(basis, layout.split(theta).illumination), out.image, atol=1e-5)


def test_fitting_a_render_recovers_its_picture(toy_face_model):
    renderer, theta, lighting = _faces(toy_face_model, seed=1, ambient=0.8, light_noise=0.0)
    layout = renderer.layout
    coloured = theta.clone()
    coloured[:, lighting.start : lighting.start + 3] = torch.tensor([0.9, 0.6, 0.45])  # warm light
    coloured[:, lighting.start + 6 : lighting.start + 9] = 0.15  # light from above (z term)
    target = renderer(coloured)
    basis, _ = renderer.illumination_basis(theta)
    fitted = fit_illumination(basis, target.image, target.mask, layout.split(theta).illumination, ridge=1e-3)
    refit = theta.clone()
    refit[:, lighting] = fitted.flatten(1)
    inside = target.mask > 0.5

    def rmse(image: torch.Tensor) -> float:
        return (((image - target.image) ** 2) * inside).sum().div(inside.sum() * 3).sqrt().item()

    assert rmse(renderer(refit).image) < 0.1 * rmse(renderer(theta).image)
