"""The bank of a breeding round: real faces reconstructed, lighting re-fitted, summarised.

Plain functions of tensors, a network and a renderer; the schedule and the state live in
:mod:`ifn.breeding.callback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ifn.data.batch import to_network_input
from ifn.models.metrics import photometric_error_per_image
from ifn.params import ParamLayout
from ifn.render.illumination_fit import fit_illumination, relight
from ifn.render.renderer import FaceRenderer

__all__ = [
    "Reconstruction",
    "bank_statistics",
    "fit_bank_illumination",
    "gather_in_order",
    "key_columns",
    "reconstruct_faces",
    "reconstruct_sharded",
    "shard",
]


@dataclass(frozen=True)
class Reconstruction:
    """θ of every face of a corpus, and how well they explain the photos.

    Attributes:
        theta: ``(N, m)`` the banked θ (the network's, with re-fitted lighting if asked).
        network_error: ``(N,)`` photometric RMSE (0–255, inside the photo mask) of the
            network's own reconstruction.
        bank_error: ``(N,)`` the same for the banked θ (equal unless the lighting was re-fitted).
    """

    theta: Tensor
    network_error: Tensor
    bank_error: Tensor

    def mean_errors(self) -> dict[str, float]:
        """``{"network": …, "bank": …}`` means over faces (NaN for an empty corpus)."""
        if len(self.theta) == 0:
            return {"network": math.nan, "bank": math.nan}
        return {"network": self.network_error.mean().item(), "bank": self.bank_error.mean().item()}


def fit_bank_illumination(
    renderer: FaceRenderer, theta: Tensor, image: Tensor, mask: Tensor, ridge: float
) -> tuple[Tensor, Tensor, Tensor]:
    """θ with its SH illumination re-fitted to the photos, inside photo mask ∩ render mask.

    Geometry and albedo are kept; the render is linear in θi, so the fit is a closed-form
    least squares pulled towards the network's estimate by ``ridge``.

    Returns:
        The new θ, and the renders before and after the fit (both from one set of basis
        images, since the fit changes only the lighting).
    """
    layout = renderer.layout
    basis, covered = renderer.illumination_basis(theta)
    lighting = layout.split(theta).illumination
    fitted = fit_illumination(basis, image, (mask > 0.5) & (covered > 0.5), lighting, ridge)
    refit = theta.clone()
    refit[:, layout.slices["illumination"]] = fitted.flatten(1)
    return refit, relight(basis, lighting), relight(basis, fitted)


@torch.no_grad()
def reconstruct_faces(
    network: Callable[[Tensor], Tensor],
    renderer: FaceRenderer,
    faces: Dataset,
    *,
    device: torch.device,
    batch_size: int = 64,
    refine_illumination: bool = False,
    illumination_ridge: float = 0.01,
) -> Reconstruction:
    """Infer θ for every face of ``faces`` (items with ``image`` and ``mask``), in order.

    Args:
        network: network input ``(B, 3, H, W)`` in [−0.5, 0.5] → θ ``(B, m)`` (in eval mode).
        renderer: renders the reconstructions (on ``device``).
        faces: a dataset of real faces, e.g. a :class:`~ifn.data.corpus.RealFaceCorpus`.
        device: where to run.
        batch_size: faces per forward pass.
        refine_illumination: re-fit each face's lighting to its photo (:func:`fit_bank_illumination`).
        illumination_ridge: the fit's pull towards the network's estimate.
    """
    parts, network_errors, bank_errors = [], [], []
    for batch in DataLoader(faces, batch_size=batch_size, shuffle=False):
        image = batch["image"].to(device)
        mask = batch["mask"].to(device)
        theta = network(to_network_input(image)).float()
        if refine_illumination:
            theta, network_image, bank_image = fit_bank_illumination(renderer, theta, image, mask, illumination_ridge)
        else:
            network_image = bank_image = renderer(theta).image
        network_errors.append(photometric_error_per_image(network_image, image, mask)[0].cpu())
        bank_errors.append(photometric_error_per_image(bank_image, image, mask)[0].cpu())
        parts.append(theta.cpu())
    empty = torch.zeros(0, dtype=torch.float64)
    return Reconstruction(
        theta=torch.cat(parts) if parts else torch.zeros(0, renderer.layout.size),
        network_error=torch.cat(network_errors) if network_errors else empty,
        bank_error=torch.cat(bank_errors) if bank_errors else empty,
    )


def shard(n: int, rank: int, world: int) -> list[int]:
    """The indices of ``range(n)`` that ``rank`` of ``world`` handles (interleaved)."""
    return list(range(rank, n, world))


def gather_in_order(local: Reconstruction, indices: Sequence[int], total: int, world: int) -> Reconstruction:
    """Every rank's part of a sharded reconstruction, put back in corpus order on every rank.

    A collective call under DDP (``world > 1``); with one process it returns ``local``.
    """
    if world == 1:
        return local
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (list(indices), local.theta, local.network_error, local.bank_error))
    theta = torch.empty(total, local.theta.shape[1])
    network_error = torch.empty(total, dtype=torch.float64)
    bank_error = torch.empty(total, dtype=torch.float64)
    for rank_indices, rank_theta, rank_network, rank_bank in gathered:
        theta[rank_indices] = rank_theta
        network_error[rank_indices] = rank_network.to(torch.float64)
        bank_error[rank_indices] = rank_bank.to(torch.float64)
    return Reconstruction(theta, network_error, bank_error)


def reconstruct_sharded(faces: Dataset, rank: int, world: int, **kwargs: Any) -> Reconstruction:
    """:func:`reconstruct_faces` with the faces sharded across ranks, gathered in corpus order."""
    indices = shard(len(faces), rank, world)  # type: ignore[arg-type]
    local = reconstruct_faces(faces=Subset(faces, indices), **kwargs)
    return gather_in_order(local, indices, len(faces), world)  # type: ignore[arg-type]


def key_columns(layout: ParamLayout) -> dict[str, int]:
    """Columns of θ shown in statistics and plots (the paper's Figure 3 in spirit)."""
    s = layout.slices
    rotation = s["rotation"].start
    columns = {"pitch_deg": rotation, "yaw_deg": rotation + 1, "roll_deg": rotation + 2}
    for group, count in (("shape", 2), ("expression", 2), ("reflectance", 1)):
        for i in range(min(count, s[group].stop - s[group].start)):
            columns[f"{group}_{i + 1}"] = s[group].start + i
    ill = s["illumination"].start
    # θi is stored coefficient-major (3·k + channel): ambient R and B, and the z band (k = 2) in R.
    columns.update({"light_ambient_R": ill, "light_ambient_B": ill + 2, "light_z_R": ill + 3 * 2})
    return columns


def bank_statistics(bank: Tensor, prior: Tensor, layout: ParamLayout) -> dict[str, float]:
    """Mean/std of the key parameters in the bank and in a prior sample (angles in degrees)."""
    out: dict[str, float] = {}
    for name, column in key_columns(layout).items():
        for label, theta in (("bank", bank), ("prior", prior)):
            values = theta[:, column]
            if name.endswith("_deg"):
                values = torch.rad2deg(values)
            out[f"{label}_{name}_mean"] = values.mean().item()
            out[f"{label}_{name}_std"] = values.std().item() if values.numel() > 1 else 0.0
    return out
