"""The model-space loss of the paper (its Section 6.2).

``L(p, θ) = (p − θ)ᵀ A (p − θ)`` with ``A = ΣᵀΣ`` and
``Σ = diag(ωR·1₃, ωs·σs, ωe·σe, ωr·σr, ωi·1₂₇)``: a parameter error costs what it does to
the face (millimetres of geometry, albedo units), so high-variance modes matter more.
The ablation baseline is the plain Euclidean loss (all ω = 1, σ = 1).

Balanced (``balanced=True``): within a group, errors still cost what they do to the face;
between groups, the ω's become each group's share of the loss expected at the start of
training. Each group g is divided by ``n_g = Σ_{i∈g} (σ_i/√V)² Var_prior(θ_i)``, the loss a
prediction of the prior mean would make on average, so
``E_prior[L_g(prior mean, θ)] = ω_g`` exactly. With the paper's literal weighting the
appearance groups carry a tiny share of the loss and so of the gradient, and the network
learns to predict their mean.

Within a group (``mode_exponent`` α): the model-space weighting (α = 1) makes a mode's
error cost σ_i² — what it does to the face — so a model's strongest mode dominates its group
and the weaker modes, still well visible in the image, get almost no gradient: the network
learns the first mode of each group and the mean of the rest. With α < 1 the per-entry scale
becomes ``(σ_i/√V)^α · Var_prior(θ_i)^((α−1)/2)`` before the groups are balanced, so at the
prior mean entry i's expected loss is proportional to ``(σ_i/√V)^(2α)``: α = 0 counts every
mode of a group the same (its error relative to its prior spread), α = ½ splits the group's
share by each mode's RMS effect instead of its square.

Convention:
    σ here is the RMS *per-vertex* effect of one unit of θ: ``σ_i / √V`` for the stored
    standard deviation σ_i of an orthonormal ``3V``-dimensional mode (millimetres of
    displacement per vertex for shape and expression, albedo units per vertex for
    reflectance). Stored σ's grow with √V (they are norms over all vertices), so using
    them raw makes the loss depend on mesh resolution and lets geometry outweigh rotation
    by orders of magnitude with the paper's weights; per vertex, the paper's ω's keep every
    group in play (``docs/conventions.md`` works the magnitudes out for a real face model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ifn.facemodel.model import FaceModel
from ifn.params import ParamLayout

__all__ = ["ModelSpaceLoss"]


class ModelSpaceLoss(nn.Module):
    """Weighted quadratic loss in model space, averaged over the batch.

    Args:
        face_model: provides σs, σe, σr (truncated models give truncated σ's).
        rotation_weight: ωR.
        shape_weight: ωs.
        expression_weight: ωe.
        reflectance_weight: ωr.
        illumination_weight: ωi.
        euclidean: ignore the weights and σ's: ``L = ‖p − θ‖²`` (the paper's baseline).
        balanced: make the ω's the groups' shares of the expected loss at the prior mean.
        prior_variance: ``(m,)`` per-entry variance of θ under the training prior (needed
            when ``balanced``; :meth:`ifn.data.priors.ParameterPrior.moments`).
        mode_exponent: α in [0, 1], how a group's share is split among its modes (1: by
            σ², the model-space weighting; 0: evenly). Needs ``balanced``.

    Example:
        >>> from ifn.facemodel import procedural_face_model
        >>> loss = ModelSpaceLoss(procedural_face_model())
        >>> theta = torch.zeros(2, loss.layout.size)
        >>> float(loss(theta, theta))
        0.0
    """

    scale: Tensor

    def __init__(
        self,
        face_model: FaceModel,
        rotation_weight: float = 400.0,
        shape_weight: float = 50.0,
        expression_weight: float = 50.0,
        reflectance_weight: float = 100.0,
        illumination_weight: float = 20.0,
        euclidean: bool = False,
        balanced: bool = False,
        prior_variance: Tensor | None = None,
        mode_exponent: float = 1.0,
    ) -> None:
        super().__init__()
        self.layout = ParamLayout.for_face_model(face_model)
        self.euclidean = euclidean
        self.balanced = balanced
        if balanced and euclidean:
            raise ValueError("a loss is either euclidean or balanced, not both")
        if not 0.0 <= mode_exponent <= 1.0:
            raise ValueError(f"mode_exponent must be in [0, 1], got {mode_exponent}")
        if mode_exponent != 1.0 and not balanced:
            raise ValueError("mode_exponent other than 1 needs balanced=True (and the prior's variance)")
        self.mode_exponent = mode_exponent
        if balanced and (prior_variance is None or prior_variance.shape != (self.layout.size,)):
            raise ValueError(f"balanced needs the prior's per-entry variance, shape ({self.layout.size},)")
        self.weights = {
            "rotation": rotation_weight,
            "shape": shape_weight,
            "expression": expression_weight,
            "reflectance": reflectance_weight,
            "illumination": illumination_weight,
        }
        if euclidean:
            scale = torch.ones(self.layout.size)
        else:
            per_vertex = face_model.n_vertices**-0.5
            stds = {
                "rotation": torch.ones(3),
                "shape": face_model.shape_std.detach().cpu().float() * per_vertex,
                "expression": face_model.expression_std.detach().cpu().float() * per_vertex,
                "reflectance": face_model.reflectance_std.detach().cpu().float() * per_vertex,
                "illumination": torch.ones(self.layout.n_illumination),
            }
            if balanced:
                assert prior_variance is not None
                scale = torch.cat(list(stds.values())).double()
                if mode_exponent != 1.0:
                    spread = prior_variance.double().sqrt()
                    # An entry the prior holds fixed has no spread to measure it in: it keeps
                    # the model-space scale, so a prediction away from the constant still costs.
                    varies = spread > 0
                    scale = torch.where(
                        varies, scale**mode_exponent * spread.where(varies, 1.0) ** (mode_exponent - 1.0), scale
                    )
                for group, cols in self.layout.slices.items():
                    if cols.stop == cols.start:
                        continue
                    expected = (scale[cols] ** 2 * prior_variance[cols].double()).sum()
                    if expected <= 0:
                        raise ValueError(f"the prior does not vary {group}: it cannot be balanced")
                    scale[cols] *= (self.weights[group] / expected).sqrt()
                scale = scale.float()
            else:
                scale = torch.cat([self.weights[group] * stds[group] for group in self.layout.sizes])
        # Σ's diagonal; A = ΣᵀΣ is diagonal too, so (p−θ)ᵀA(p−θ) = ‖Σ(p−θ)‖².
        self.register_buffer("scale", scale)

    def extra_repr(self) -> str:
        if self.euclidean:
            return "euclidean=True"
        weights = ", ".join(f"{k}_weight={v:g}" for k, v in self.weights.items())
        extra = f", balanced=True, mode_exponent={self.mode_exponent:g}" if self.balanced else ""
        return weights + extra

    def per_group(self, prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each group's share of the loss, averaged over the batch."""
        weighted = ((prediction - target) * self.scale) ** 2
        return {group: weighted[:, s].sum(dim=1).mean() for group, s in self.layout.slices.items()}

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Args: prediction, target ``(B, m)``. Returns: the scalar batch mean of L."""
        if prediction.shape != target.shape or prediction.ndim != 2 or prediction.shape[1] != self.layout.size:
            raise ValueError(
                f"prediction and target must both be (B, {self.layout.size}), "
                f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        return (((prediction - target) * self.scale) ** 2).sum(dim=1).mean()
