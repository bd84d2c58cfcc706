"""Synthetic-data priors over θ (the paper's Section 5): independent sampling of each group.

=================  =======================================================
group              distribution (defaults = the paper)
=================  =======================================================
α, β (pitch, yaw)  U(−40°, 40°)
γ (roll)           U(−15°, 15°)
θs, θr             N(0, 1)
θe                 U(low, high), ``first_bias`` added to θe,1 — from the face
                   model's documented :class:`~ifn.facemodel.model.ExpressionPrior`
                   unless overridden (paper basis: U(−12, 12), +4.8)
θi                 U(−0.2, 0.2); constant θi,1 ~ U(0.6, 1.2); RGB equal
=================  =======================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ifn.facemodel.model import ExpressionPrior
from ifn.params import NUM_SH, FaceParams, ParamLayout

__all__ = ["ParameterPrior"]


@dataclass
class ParameterPrior:
    """The distribution P(θ) = P(R) P(θs) P(θe) P(θr) P(θi) of the paper's Eq. 5.

    Args:
        pitch_yaw_deg: α, β ~ U(−x, x) degrees.
        roll_deg: γ ~ U(−x, x) degrees.
        shape_std: θs ~ N(0, x²).
        reflectance_std: θr ~ N(0, x²).
        expression_low: θe lower bound; ``None`` takes the face model's prior.
        expression_high: θe upper bound; ``None`` takes the face model's prior.
        expression_first_bias: added to θe,1; ``None`` takes the face model's prior.
        illumination_range: non-constant SH coefficients ~ U(−x, x).
        ambient_low: constant SH coefficient lower bound.
        ambient_high: constant SH coefficient upper bound.
        monochrome: the same SH coefficients for R, G and B (the paper, before breeding).
    """

    pitch_yaw_deg: float = 40.0
    roll_deg: float = 15.0
    shape_std: float = 1.0
    reflectance_std: float = 1.0
    expression_low: float | None = None
    expression_high: float | None = None
    expression_first_bias: float | None = None
    illumination_range: float = 0.2
    ambient_low: float = 0.6
    ambient_high: float = 1.2
    monochrome: bool = True

    def expression(self, model_prior: ExpressionPrior) -> tuple[float, float, float]:
        """The effective (low, high, first_bias) given the face model's documented prior."""
        low = model_prior.low if self.expression_low is None else self.expression_low
        high = model_prior.high if self.expression_high is None else self.expression_high
        bias = model_prior.first_bias if self.expression_first_bias is None else self.expression_first_bias
        if not low <= high:
            raise ValueError(f"expression prior needs low <= high, got {low} > {high}")
        return low, high, bias

    def sample(
        self,
        layout: ParamLayout,
        n: int,
        *,
        expression_prior: ExpressionPrior,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw ``n`` parameter vectors.

        Args:
            layout: θ's group sizes.
            n: number of samples.
            expression_prior: the face model's documented expression prior
                (``face_model.metadata.expression_prior``).
            generator: a CPU generator for reproducible streams.
            device: where to put the result (sampling happens on the CPU generator).

        Returns:
            ``(n, m)`` float32.
        """

        def uniform(*size: int, low: float, high: float) -> Tensor:
            return torch.rand(*size, generator=generator) * (high - low) + low

        pitch_yaw = math.radians(self.pitch_yaw_deg)
        roll = math.radians(self.roll_deg)
        rotation = torch.cat(
            [uniform(n, 2, low=-pitch_yaw, high=pitch_yaw), uniform(n, 1, low=-roll, high=roll)], dim=1
        )
        shape = torch.randn(n, layout.n_shape, generator=generator) * self.shape_std
        low, high, bias = self.expression(expression_prior)
        expression = uniform(n, layout.n_expression, low=low, high=high)
        if layout.n_expression:
            expression[:, 0] += bias
        reflectance = torch.randn(n, layout.n_reflectance, generator=generator) * self.reflectance_std
        channels = 1 if self.monochrome else 3
        light = uniform(n, NUM_SH, channels, low=-self.illumination_range, high=self.illumination_range)
        light[:, 0] = uniform(n, channels, low=self.ambient_low, high=self.ambient_high)
        light = light.expand(n, NUM_SH, 3)
        params = FaceParams(rotation, shape, expression, reflectance, light)
        return layout.join(params).to(device=device, dtype=torch.float32)

    def moments(self, layout: ParamLayout, *, expression_prior: ExpressionPrior) -> tuple[Tensor, Tensor]:
        """The mean and variance of every entry of θ under this prior, in closed form.

        A uniform law U(a, b) has mean (a + b)/2 and variance (b − a)²/12; a normal law
        N(0, s²) mean 0 and variance s².

        Returns:
            ``(m,)`` float64 means and ``(m,)`` float64 variances.
        """
        pitch_yaw = math.radians(self.pitch_yaw_deg)
        roll = math.radians(self.roll_deg)
        low, high, bias = self.expression(expression_prior)
        mean = torch.zeros(layout.size, dtype=torch.float64)
        var = torch.zeros(layout.size, dtype=torch.float64)
        s = layout.slices
        var[s["rotation"]] = torch.tensor([pitch_yaw**2 / 3, pitch_yaw**2 / 3, roll**2 / 3], dtype=torch.float64)
        var[s["shape"]] = self.shape_std**2
        mean[s["expression"]] = (low + high) / 2
        if layout.n_expression:
            mean[s["expression"].start] += bias
        var[s["expression"]] = (high - low) ** 2 / 12
        var[s["reflectance"]] = self.reflectance_std**2
        light = s["illumination"]
        var[light] = self.illumination_range**2 / 3
        ambient = slice(light.start, light.start + 3)  # coefficient-major: k = 0 for R, G, B
        mean[ambient] = (self.ambient_low + self.ambient_high) / 2
        var[ambient] = (self.ambient_high - self.ambient_low) ** 2 / 12
        return mean, var
