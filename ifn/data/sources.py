"""Where training θ come from: the prior, or a bred bank of real reconstructions.

A :class:`ParameterSource` makes training batch ``index`` of DDP rank ``rank`` from a
generator seeded by integer keys, so a stream is deterministic, never repeats, and
continues where it stopped after a resume (the DataModule checkpoints how many batches
were consumed). Every random stream of the package has its id here, so no two can
collide.

Breeding (see :mod:`ifn.breeding`) swaps the DataModule's source to a :class:`BredSource`:
θ inferred on real photos, perturbed (:class:`BreedingNoise`), optionally mixed with the
prior.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ifn.data.priors import ParameterPrior
from ifn.facemodel.model import ExpressionPrior
from ifn.params import GROUPS, ParamLayout

__all__ = [
    "STREAM_BRED",
    "STREAM_TEST",
    "STREAM_TRAIN",
    "STREAM_VAL",
    "BredSource",
    "BreedingNoise",
    "ParameterSource",
    "PriorSource",
    "bred_groups",
    "generator_for",
]

#: Ids of the random streams, the second key of :func:`generator_for` after the seed:
#: prior training batches, the fixed validation and test sets, and everything breeding draws.
STREAM_TRAIN, STREAM_VAL, STREAM_TEST, STREAM_BRED = 0, 1, 2, 3
#: The breeding "round" of the fixed prior sample that bank statistics are compared with:
#: beyond any real round, so it never coincides with a round's draws.
_PRIOR_REFERENCE_ROUND = 10**6


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (stable across processes and runs)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ParameterSource(abc.ABC):
    """Where training θ come from. Implementations must be deterministic in (index, rank)."""

    @abc.abstractmethod
    def batch(self, index: int, rank: int, batch_size: int) -> Tensor:
        """The ``index``-th training batch of ``rank``: ``(batch_size, m)`` float32 on the CPU."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass


class PriorSource(ParameterSource):
    """Fresh samples of the synthetic prior P(θ); also the fixed validation/test sets.

    Args:
        prior: the distribution.
        layout: θ's group sizes.
        expression_prior: the face model's documented expression prior
            (``face_model.metadata.expression_prior``).
        seed: base seed of every stream.
    """

    def __init__(
        self, prior: ParameterPrior, layout: ParamLayout, expression_prior: ExpressionPrior, seed: int
    ) -> None:
        self.prior = prior
        self.layout = layout
        self.expression_prior = expression_prior
        self.seed = seed

    def batch(self, index: int, rank: int, batch_size: int) -> Tensor:
        generator = generator_for(self.seed, STREAM_TRAIN, rank, index)
        return self.sample(batch_size, generator)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, m)`` θ drawn with ``generator``."""
        return self.prior.sample(self.layout, n, expression_prior=self.expression_prior, generator=generator)

    def fixed_set(self, stream: int, n: int) -> Tensor:
        """The fixed θ of a stream (``STREAM_VAL``, ``STREAM_TEST``): the same every run."""
        return self.sample(n, generator_for(self.seed, stream))

    def reference_sample(self, seed: int, n: int = 4096) -> Tensor:
        """A fixed prior sample that breeding compares its bank with (seeded by breeding's seed)."""
        return self.sample(n, generator_for(seed, STREAM_BRED, _PRIOR_REFERENCE_ROUND))


@dataclass(frozen=True)
class BreedingNoise:
    """Perturbation of a real reconstruction (paper, Section 7; standard deviations or ranges).

    Attributes:
        rotation_deg: α, β, γ += U(−x, x) degrees.
        shape: θs += N(0, x²).
        expression: θe += N(0, x²).
        reflectance: θr += N(0, x²).
        illumination: θi += N(0, x²), independently per colour channel.
    """

    rotation_deg: float = 5.0
    shape: float = 0.05
    expression: float = 0.1
    reflectance: float = 0.2
    illumination: float = 0.02

    def perturb(self, theta: Tensor, layout: ParamLayout, generator: torch.Generator) -> Tensor:
        """``(N, m)`` → perturbed copy (CPU)."""
        n = theta.shape[0]
        noise = torch.zeros_like(theta)
        slices = layout.slices
        limit = math.radians(self.rotation_deg)
        noise[:, slices["rotation"]] = (torch.rand(n, 3, generator=generator) * 2 - 1) * limit
        for group in ("shape", "expression", "reflectance", "illumination"):
            size = slices[group].stop - slices[group].start
            noise[:, slices[group]] = torch.randn(n, size, generator=generator) * getattr(self, group)
        return theta + noise


def bred_groups(groups: Sequence[str] | None) -> tuple[str, ...]:
    """The θ groups to breed (``None``: all), checked to be a non-empty subset of ``GROUPS``."""
    chosen = tuple(GROUPS if groups is None else groups)
    if not chosen or set(chosen) - set(GROUPS):
        raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {list(chosen)}")
    return chosen


class BredSource(ParameterSource):
    """Training θ drawn from a bred bank (optionally mixed with prior samples).

    Args:
        bank: ``(N, m)`` θ inferred on the real corpus.
        layout: θ layout.
        noise: the perturbation.
        copies: perturbed copies per real face (fixed, made once per round).
        round_index: breeding round (seeds the copies and the draws).
        seed: base seed.
        fresh_perturbations: perturb every draw anew instead of using the fixed copies.
        prior_fraction: fraction of each batch drawn from the prior instead.
        prior_source: where those prior samples come from.
        crossover: take each θ group (rotation, shape, expression, reflectance,
            illumination) of a training sample from an independently drawn bank row, so
            a small corpus yields many combinations and no group can be predicted from
            another (e.g. a face's colour from its shape) by memorising the bank.
        groups: the θ groups taken from the bank; the others come from the prior
            (default: all groups, as in the paper).
    """

    def __init__(
        self,
        bank: Tensor,
        layout: ParamLayout,
        noise: BreedingNoise,
        copies: int,
        round_index: int,
        seed: int,
        fresh_perturbations: bool = False,
        prior_fraction: float = 0.0,
        prior_source: PriorSource | None = None,
        crossover: bool = False,
        groups: Sequence[str] | None = None,
    ) -> None:
        groups = bred_groups(groups)
        if bank.ndim != 2 or bank.shape[0] == 0 or bank.shape[1] != layout.size:
            raise ValueError(f"bank must be (N > 0, {layout.size}), got {tuple(bank.shape)}")
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction must be in [0, 1], got {prior_fraction}")
        if (prior_fraction > 0 or len(groups) < len(GROUPS)) and prior_source is None:
            raise ValueError("prior_fraction > 0 or a subset of groups needs a prior_source")
        self.bank = bank.detach().cpu().float()
        self.layout = layout
        self.noise = noise
        self.round_index = round_index
        self.seed = seed
        self.fresh_perturbations = fresh_perturbations
        self.prior_fraction = prior_fraction
        self.prior_source = prior_source
        self.crossover = crossover
        self.groups = groups
        generator = generator_for(seed, STREAM_BRED, round_index)
        self.copies = torch.cat([noise.perturb(self.bank, layout, generator) for _ in range(max(1, copies))])

    def __len__(self) -> int:
        return self.bank.shape[0] if self.fresh_perturbations else self.copies.shape[0]

    def batch(self, index: int, rank: int, batch_size: int) -> Tensor:
        generator = generator_for(self.seed, STREAM_BRED, self.round_index, rank, index)
        pool = self.bank if self.fresh_perturbations else self.copies
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        theta = pool[rows].clone()
        if self.crossover:
            for group in GROUPS[1:]:  # the first group keeps ``rows``
                group_rows = torch.randint(len(self), (batch_size,), generator=generator)
                theta[:, self.layout.slices[group]] = pool[group_rows, self.layout.slices[group]]
        if self.fresh_perturbations:
            theta = self.noise.perturb(theta, self.layout, generator)
        if self.prior_fraction > 0 or len(self.groups) < len(GROUPS):
            assert self.prior_source is not None
            prior = self.prior_source.batch(index, rank, batch_size)
            for group in set(GROUPS) - set(self.groups):
                theta[:, self.layout.slices[group]] = prior[:, self.layout.slices[group]]
            if self.prior_fraction > 0:
                from_prior = torch.rand(batch_size, generator=generator) < self.prior_fraction
                theta = torch.where(from_prior[:, None], prior, theta)
        return theta


