"""Analysis-by-synthesis refinement of θ from the network's estimate.

The network gives one forward-pass estimate; the paper suggests it as the starting point of
optimisation-based reconstruction. Here a batch of faces is refined together by gradient
descent on θ through the differentiable renderer (the torch rasterizer on the CPU, nvdiffrast
on CUDA), minimising per face

    E(θ) = E_photo + w_lm · E_landmarks + w_prior · E_prior

* ``E_photo``: a robust (Cauchy) colour error over the pixels in both the photo's face mask
  and the render's, ``c² · log(1 + ‖r‖² / c²)`` per pixel, averaged. Beyond ``c`` a residual's
  pull fades, so hair, glasses, shadows the model cannot explain and the eyes' specular
  highlights do not drag the whole face.
* ``E_landmarks``: mean squared distance between the render's 68 projected landmarks and the
  photo's detected ones, in units of the crop side (both are framed by the same rule, so
  this compares the landmark configurations: pose, shape and expression).
* ``E_prior``: the model's Gaussian prior, ``½‖θs‖² + ½‖θr‖² + ½ w_e ‖θe‖²`` per
  coefficient (θs, θr are in units of their σ), which keeps the face a plausible one.

Before the first step the SH lighting is re-fitted in closed form (the render is linear in
it: :func:`ifn.render.illumination_fit.fit_illumination`), which is the cheapest large
improvement. Every candidate θ (the network's, the re-lit one, and each step's) is scored
by the *reported* metrics — plain photometric RMSE inside the photo mask and mask IoU — and
each face keeps the candidate with the lowest photometric error among those whose IoU is at
least the network's, so refinement never makes either worse than the estimate it starts from.

No optimisation library offers this masked, per-face, keep-the-best loop over a renderer,
so it is written here; the optimiser itself is ``torch.optim.Adam``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ifn.models.metrics import mask_iou_per_image, photometric_error_per_image
from ifn.render.illumination_fit import fit_illumination
from ifn.render.renderer import FaceRenderer

__all__ = ["RefineResult", "RefineSettings", "refine"]


@dataclass(frozen=True)
class RefineSettings:
    """How refinement weighs its terms and moves each θ group.

    Args:
        steps: gradient steps (0: only the closed-form lighting fit, if ``fit_light``).
        landmark_weight: ``w_lm``.
        prior_weight: ``w_prior``, relative to ``E_photo`` (which is in [0, 1]² units).
        expression_prior_weight: ``w_e``, the expression share of the prior (the model's
            expression prior is a box, not a Gaussian, so it is pulled more weakly).
        robust_scale: the Cauchy scale ``c`` of a pixel's colour error (in [0, 1] units).
        learning_rates: Adam step size per θ group.
        fit_light: re-fit the SH lighting in closed form before the first step.
        light_ridge: that fit's pull towards the network's lighting.
    """

    steps: int = 50
    landmark_weight: float = 1.0
    prior_weight: float = 1e-4
    expression_prior_weight: float = 0.1
    robust_scale: float = 0.3
    learning_rates: dict[str, float] = field(
        default_factory=lambda: {
            "rotation": 0.01,
            "shape": 0.05,
            "expression": 0.05,
            "reflectance": 0.05,
            "illumination": 0.01,
        }
    )
    fit_light: bool = True
    light_ridge: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refine steps must be >= 0, got {self.steps}")
        for name in ("landmark_weight", "prior_weight", "expression_prior_weight", "light_ridge"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.robust_scale <= 0:
            raise ValueError(f"robust_scale must be > 0, got {self.robust_scale}")


@dataclass(frozen=True)
class RefineResult:
    """Refined θ and the metrics before and after, per face.

    Attributes:
        theta: ``(B, m)`` the kept θ of each face.
        initial_photometric, initial_iou: ``(B,)`` of the starting θ (the network's).
        photometric, iou: ``(B,)`` of the kept θ.
        best_step: ``(B,)`` which candidate was kept: −1 the starting θ, 0 after the
            lighting fit, ``k`` after step ``k``.
        history: the mean photometric error of the batch at each candidate, in order.
    """

    theta: Tensor
    initial_photometric: Tensor
    initial_iou: Tensor
    photometric: Tensor
    iou: Tensor
    best_step: Tensor
    history: list[float]


def _score(renderer: FaceRenderer, theta: Tensor, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The reported metrics of θ: photometric RMSE in the photo mask, and mask IoU."""
    out = renderer(theta)
    photometric, valid = photometric_error_per_image(out.image, image, mask)
    iou, _ = mask_iou_per_image(out.mask, mask)
    return torch.where(valid, photometric, torch.full_like(photometric, float("inf"))), iou


def refine(
    renderer: FaceRenderer,
    theta: Tensor,
    image: Tensor,
    mask: Tensor,
    landmarks: Tensor,
    settings: RefineSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> RefineResult:
    """Refine a batch of faces' θ against their photo crops (see the module docstring).

    Args:
        renderer: renders θ at the crops' size (its device is used).
        theta: ``(B, m)`` starting estimate (the network's).
        image: ``(B, 3, S, S)`` photo crops in [0, 1] (0 outside the mask).
        mask: ``(B, 1, S, S)`` the photos' face masks.
        landmarks: ``(B, 68, 2)`` detected landmarks in crop pixels.
        settings: weights and step sizes (default :class:`RefineSettings`).
        progress: called with 1 after each step (e.g. a progress bar's ``update``).

    Returns:
        :class:`RefineResult`; no face's photometric error or IoU is worse than at ``theta``.

    Raises:
        ValueError: if the shapes disagree.
    """
    settings = settings or RefineSettings()
    layout = renderer.layout
    b, m = theta.shape
    s = renderer.image_size
    if m != layout.size or image.shape != (b, 3, s, s) or mask.shape != (b, 1, s, s) or landmarks.shape != (b, 68, 2):
        raise ValueError(
            f"refine needs theta (B, {layout.size}), image (B, 3, {s}, {s}), mask (B, 1, {s}, {s}), "
            f"landmarks (B, 68, 2); got {tuple(theta.shape)}, {tuple(image.shape)}, {tuple(mask.shape)}, "
            f"{tuple(landmarks.shape)}"
        )
    device = renderer.device
    image, mask, landmarks = image.to(device), mask.to(device), landmarks.to(device)
    photo_mask = mask > 0.5
    start = theta.detach().to(device).float()

    with torch.no_grad():
        best_photo, best_iou = _score(renderer, start, image, mask)
    initial_photo, initial_iou = best_photo.clone(), best_iou.clone()
    best_theta = start.clone()
    best_step = torch.full((b,), -1, dtype=torch.int64, device=device)
    history = [
        float(best_photo[torch.isfinite(best_photo)].mean()) if torch.isfinite(best_photo).any() else float("nan")
    ]

    def keep(candidate: Tensor, photo: Tensor, iou: Tensor, step: int) -> None:
        better = (photo < best_photo) & (iou >= initial_iou)
        best_theta[better] = candidate[better]
        best_photo[better] = photo[better]
        best_iou[better] = iou[better]
        best_step[better] = step
        finite = torch.isfinite(photo)
        history.append(float(photo[finite].mean()) if finite.any() else float("nan"))

    current = start.clone()
    if settings.fit_light:
        with torch.no_grad():
            basis, covered = renderer.illumination_basis(current)
            light = layout.split(current).illumination
            fitted = fit_illumination(basis, image, photo_mask & (covered > 0.5), light, settings.light_ridge)
            current[:, layout.slices["illumination"]] = fitted.flatten(1)
            photo, iou = _score(renderer, current, image, mask)
            keep(current, photo, iou, 0)

    if settings.steps == 0:
        return RefineResult(best_theta, initial_photo, initial_iou, best_photo, best_iou, best_step, history)

    groups = {name: current[:, layout.slices[name]].clone().requires_grad_(True) for name in layout.slices}
    optimiser = torch.optim.Adam(
        [{"params": [groups[name]], "lr": settings.learning_rates.get(name, 0.01)} for name in groups]
    )
    c2 = settings.robust_scale**2
    for step in range(1, settings.steps + 1):
        candidate = torch.cat([groups[name] for name in layout.slices], dim=1)
        out = renderer(candidate)
        with torch.no_grad():
            photo, valid = photometric_error_per_image(out.image, image, mask)
            photo = torch.where(valid, photo, torch.full_like(photo, float("inf")))
            iou, _ = mask_iou_per_image(out.mask, mask)
        if step > 1:  # step 1 renders the lighting fit's θ, already scored
            keep(candidate.detach(), photo, iou, step - 1)
        weight = (photo_mask & (out.mask > 0.5)).to(out.image.dtype)
        residual = ((out.image - image) ** 2).sum(1, keepdim=True)
        photometric = (c2 * torch.log1p(residual / c2) * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp_min(1)
        lm = ((out.landmarks - landmarks) / s).pow(2).sum(-1).mean(-1)
        prior = 0.5 * (
            groups["shape"].pow(2).sum(1)
            + groups["reflectance"].pow(2).sum(1)
            + settings.expression_prior_weight * groups["expression"].pow(2).sum(1)
        )
        loss = (photometric + settings.landmark_weight * lm + settings.prior_weight * prior).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(1)
    with torch.no_grad():
        final = torch.cat([groups[name] for name in layout.slices], dim=1).detach()
        photo, iou = _score(renderer, final, image, mask)
        keep(final, photo, iou, settings.steps)
    return RefineResult(best_theta, initial_photo, initial_iou, best_photo, best_iou, best_step, history)
