"""Breeding (SPEC §5, the paper's Algorithm 1): bootstrap the training distribution from real photos.

After ``start_step`` synthetic steps, every ``every_n_steps`` for ``rounds`` rounds:

1. infer θ for every face of the real corpus (``data.real_dir``) with the current network
   (eval mode, batched, sharded across DDP ranks and gathered so every rank holds the
   same bank, in corpus order);
2. make ``copies`` perturbed copies of each: α, β, γ += U(−5°, 5°), θs += N(0, 0.05),
   θr += N(0, 0.2), θe += N(0, 0.1), θi += N(0, 0.02) per colour channel (where coloured
   light enters);
3. swap the DataModule's parameter source to the bred bank, so the next batches render
   those θ (on the fly: rendering is step 3 of the paper) — bred data only, as in the
   paper, or a mix with prior samples (``prior_fraction``), and fixed copies or fresh
   perturbations every batch (``fresh_perturbations``).

Options beyond the paper, for small corpora: ``refine_illumination`` re-fits each real
face's SH lighting to its photo in closed form before it enters the bank (the network alone
cannot learn light it never predicts), ``crossover`` recombines θ groups across faces, and
``groups`` breeds only some groups. With the 20-photo development corpus, bred-only
training drifts; ``configs/quickstart_breeding.yaml`` (fresh perturbations, 50 % prior,
lighting re-fit) is what beat the synthetic-only baseline on held-out photos.

The round, the bank and the seed are saved in checkpoints; resuming restores the bank
and the source. Each round logs its size and statistics of the bank against the prior,
and writes the paper's Figure 3 as a plot (histograms of key parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ifn.data.datamodule import ParameterSource, PriorSource, SyntheticFaceDataModule, generator_for, to_network_input
from ifn.models.metrics import photometric_error_per_image
from ifn.render.illumination_fit import fit_illumination, relight
from ifn.params import GROUPS, ParamLayout
from ifn.render.renderer import FaceRenderer

__all__ = ["BredSource", "BreedingCallback", "BreedingNoise"]

STREAM_BRED = 3


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


def _bred_groups(groups: Sequence[str] | None) -> tuple[str, ...]:
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
        groups = _bred_groups(groups)
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


class BreedingCallback(L.Callback):
    """Replace the synthetic training distribution by re-rendered real reconstructions.

    Args:
        start_step: the first round happens after this many training steps (paper 15K).
        every_n_steps: steps between rounds (paper 7.5K).
        rounds: number of rounds (paper 8).
        copies: perturbed copies per real face (paper 2).
        noise: perturbation of the reconstructions (paper values by default).
        prior_fraction: share of prior samples mixed into bred batches (paper 0: bred only).
        fresh_perturbations: new perturbations every batch instead of fixed copies.
        crossover: recombine θ groups across bank rows (see :class:`BredSource`).
        groups: θ groups taken from the bank, the rest from the prior (default all).
        refine_illumination: after inferring θ of a real face, re-fit its SH illumination to
            the photo in closed form (geometry and albedo kept), so the bank carries the
            photos' lighting rather than only the network's estimate of it. Not in the paper.
        illumination_ridge: the fit's pull towards the network's estimate (relative ridge).
        inference_batch_size: batch size when reconstructing the real corpus.
        seed: seed of perturbations and draws (all ranks use the same bank and copies).
        plot: write the Figure-3 style plot each round.
    """

    def __init__(
        self,
        start_step: int = 15000,
        every_n_steps: int = 7500,
        rounds: int = 8,
        copies: int = 2,
        noise: BreedingNoise = BreedingNoise(),  # noqa: B008 - frozen, never mutated
        prior_fraction: float = 0.0,
        fresh_perturbations: bool = False,
        crossover: bool = False,
        groups: list[str] | None = None,
        refine_illumination: bool = False,
        illumination_ridge: float = 0.01,
        inference_batch_size: int = 64,
        seed: int = 0,
        plot: bool = True,
    ) -> None:
        if start_step < 0 or every_n_steps <= 0 or rounds < 0 or copies < 1:
            raise ValueError("need start_step >= 0, every_n_steps > 0, rounds >= 0, copies >= 1")
        self.start_step = start_step
        self.every_n_steps = every_n_steps
        self.rounds = rounds
        self.copies = copies
        self.noise = noise
        self.prior_fraction = prior_fraction
        self.fresh_perturbations = fresh_perturbations
        self.crossover = crossover
        self.groups = _bred_groups(groups)  # checked now, not at the first round
        self.refine_illumination = refine_illumination
        self.illumination_ridge = illumination_ridge
        self.inference_batch_size = inference_batch_size
        self.seed = seed
        self.plot = plot
        self.round = 0
        self.bank: Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.photometric_errors: dict[str, float] = {}

    # --------------------------------------------------------------- schedule
    def step_of_round(self, round_index: int) -> int:
        """The global step after which round ``round_index`` (1-based) runs."""
        return self.start_step + (round_index - 1) * self.every_n_steps

    @staticmethod
    def _datamodule(trainer: L.Trainer) -> SyntheticFaceDataModule:
        dm = trainer.datamodule
        if not isinstance(dm, SyntheticFaceDataModule):
            raise TypeError(f"BreedingCallback needs a SyntheticFaceDataModule, got {type(dm).__name__}")
        return dm

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        if self.rounds > 0 and dm.real_dirs["real"] is None:
            raise ValueError(
                "BreedingCallback needs a folder of real photos: set --data.real_dir DIR "
                "(or remove the callback / set rounds: 0 for the synthetic-only baseline)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume, the restored bank must feed the stream again.
        if self.bank is not None:
            self._install(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.round < self.rounds and trainer.global_step >= self.step_of_round(self.round + 1):
            self.breed(trainer, pl_module)

    # ------------------------------------------------------------------ round
    def breed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run one breeding round now."""
        dm = self._datamodule(trainer)
        corpus = dm.real_corpus("real")
        assert corpus is not None
        if len(corpus) == 0:
            raise ValueError(f"data.real_dir {dm.real_dirs['real']} yielded no faces: {corpus.summary()}")
        self.bank = self.reconstruct(trainer, pl_module, corpus)
        self.round += 1
        self._install(trainer)
        summary = corpus.summary()
        stats = self.bank_statistics(dm)
        record = {"round": self.round, "step": trainer.global_step, "faces": len(corpus), **summary,
                  **{f"photometric_error_{k}": v for k, v in self.photometric_errors.items()}}
        self.history.append(record)
        rank_zero_info(
            f"[ifn] breeding round {self.round}/{self.rounds} at step {trainer.global_step}: "
            f"{len(corpus)} real faces x {self.copies} copies (skipped files: {summary['skipped_images']}); "
            f"photometric error of the network's reconstructions {self.photometric_errors['network']:.2f}"
            + (f", after the lighting fit {self.photometric_errors['bank']:.2f}" if self.refine_illumination else "")
        )
        pl_module.log_dict(
            {
                "breeding/round": float(self.round),
                "breeding/corpus_faces": float(len(corpus)),
                "breeding/skipped_files": float(summary["skipped_images"]),
                "breeding/real_photometric_error": self.photometric_errors["network"],
                "breeding/bank_photometric_error": self.photometric_errors["bank"],
                **{f"breeding/{k}": v for k, v in stats.items()},
            },
            rank_zero_only=True,
        )
        if self.plot:
            directory = Path(trainer.log_dir or trainer.default_root_dir) / "breeding"  # DDP broadcast: all ranks
            if trainer.is_global_zero:
                self._plot(trainer, dm, directory)

    @torch.no_grad()
    def reconstruct(self, trainer: L.Trainer, pl_module: L.LightningModule, corpus: Any) -> Tensor:
        """θ for every face of ``corpus``: sharded across ranks, gathered in corpus order.

        Also sets :attr:`photometric_errors`: the mean photometric RMSE (0–255, inside the
        photo mask) of the network's reconstructions of the corpus and of the banked θ (they
        differ when ``refine_illumination`` re-fits the lighting). A rise from round to round
        is the sign of a drifting bank.
        """
        world, rank = trainer.world_size, trainer.global_rank
        indices = list(range(rank, len(corpus), world))
        loader = DataLoader(Subset(corpus, indices), batch_size=self.inference_batch_size, shuffle=False)
        was_training = pl_module.training
        pl_module.eval()
        parts, errors = [], []
        renderer = self._datamodule(trainer).renderer
        try:
            for batch in loader:
                image = batch["image"].to(pl_module.device)
                mask = batch["mask"].to(pl_module.device)
                theta = pl_module(to_network_input(image)).float()
                if renderer.device != theta.device:
                    renderer.to(theta.device)
                if self.refine_illumination:
                    theta, network_image, bank_image = self._fit_illumination(renderer, theta, image, mask)
                else:
                    network_image = bank_image = renderer(theta).image
                network_error = photometric_error_per_image(network_image, image, mask)[0]
                bank_error = photometric_error_per_image(bank_image, image, mask)[0]
                parts.append(theta.cpu())
                errors.append(torch.stack([network_error, bank_error], dim=1).cpu())
        finally:
            pl_module.train(was_training)
        local = torch.cat(parts) if parts else torch.zeros(0, pl_module.layout.size)
        local_errors = torch.cat(errors) if errors else torch.zeros(0, 2, dtype=torch.float64)
        if world == 1:
            bank, all_errors = local, local_errors
        else:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, (indices, local, local_errors))
            bank = torch.empty(len(corpus), local.shape[1])
            all_errors = torch.empty(len(corpus), 2, dtype=torch.float64)
            for rank_indices, rank_theta, rank_errors in gathered:
                bank[rank_indices] = rank_theta
                all_errors[rank_indices] = rank_errors
        means = all_errors.mean(0).tolist() if len(all_errors) else [math.nan, math.nan]
        self.photometric_errors = {"network": means[0], "bank": means[1]}
        return bank

    def _fit_illumination(
        self, renderer: FaceRenderer, theta: Tensor, image: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """θ with its illumination re-fitted to the photos (inside photo mask ∩ render mask).

        Returns the new θ and the renders before and after the fit; both come from one set of
        basis images, since the fit changes only the lighting.
        """
        layout = renderer.layout
        basis, covered = renderer.illumination_basis(theta)
        lighting = layout.split(theta).illumination
        fitted = fit_illumination(basis, image, (mask > 0.5) & (covered > 0.5), lighting, self.illumination_ridge)
        refit = theta.clone()
        refit[:, layout.slices["illumination"]] = fitted.flatten(1)
        return refit, relight(basis, lighting), relight(basis, fitted)

    def _install(self, trainer: L.Trainer) -> None:
        dm = self._datamodule(trainer)
        assert self.bank is not None
        prior_source = PriorSource(dm.prior, dm.layout, dm.face_model, dm.seed)
        dm.set_source(
            BredSource(
                self.bank,
                dm.layout,
                self.noise,
                self.copies,
                self.round,
                self.seed,
                fresh_perturbations=self.fresh_perturbations,
                prior_fraction=self.prior_fraction,
                prior_source=prior_source,
                crossover=self.crossover,
                groups=self.groups,
            )
        )

    # ------------------------------------------------------------- statistics
    def _prior_reference(self, dm: SyntheticFaceDataModule, n: int = 4096) -> Tensor:
        """A fixed sample of the synthetic prior, the reference the bank is compared with."""
        return dm.prior.sample(
            dm.layout, n, expression_prior=dm.face_model.metadata.expression_prior,
            generator=generator_for(self.seed, STREAM_BRED, 10**6),
        )

    def bank_statistics(self, dm: SyntheticFaceDataModule) -> dict[str, float]:
        """Mean/std of key parameters in the bank and in the prior (for logging)."""
        assert self.bank is not None
        prior = self._prior_reference(dm)
        out: dict[str, float] = {}
        for name, column in _key_columns(dm.layout).items():
            for label, theta in (("bank", self.bank), ("prior", prior)):
                values = theta[:, column]
                if name in ("yaw_deg", "pitch_deg", "roll_deg"):
                    values = torch.rad2deg(values)
                out[f"{label}_{name}_mean"] = values.mean().item()
                out[f"{label}_{name}_std"] = values.std().item() if values.numel() > 1 else 0.0
        return out

    def _plot(self, trainer: L.Trainer, dm: SyntheticFaceDataModule, directory: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        assert self.bank is not None
        source = dm.source
        bred = source.copies if isinstance(source, BredSource) else self.bank
        prior = self._prior_reference(dm)
        columns = _key_columns(dm.layout)
        fig, axes = plt.subplots(2, math.ceil(len(columns) / 2), figsize=(3.2 * math.ceil(len(columns) / 2), 5.5))
        for ax, (name, column) in zip(axes.flat, columns.items()):
            series = {"synthetic prior": prior[:, column], "real reconstructions": self.bank[:, column],
                      "bred corpus": bred[:, column]}
            if name.endswith("_deg"):
                series = {k: torch.rad2deg(v) for k, v in series.items()}
            lo = min(v.min().item() for v in series.values())
            hi = max(v.max().item() for v in series.values())
            for label, values in series.items():
                ax.hist(values.numpy(), bins=30, range=(lo, hi + 1e-6), density=True, histtype="step", label=label)
            ax.set_title(name, fontsize=9)
        for ax in axes.flat[len(columns) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"Breeding round {self.round} (step {trainer.global_step}): prior vs real vs bred")
        fig.tight_layout()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"round_{self.round:02d}.png"
        fig.savefig(path, dpi=80)
        for logger in trainer.loggers:
            if type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_figure("breeding/distribution", fig, global_step=trainer.global_step)
            elif type(logger).__name__ == "WandbLogger":
                logger.log_image(key="breeding/distribution", images=[str(path)], step=trainer.global_step)
        plt.close(fig)

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "bank": self.bank,
            "seed": self.seed,
            "history": self.history,
            "noise": asdict(self.noise),
            "copies": self.copies,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = int(state_dict["round"])
        self.bank = state_dict["bank"]
        self.seed = int(state_dict.get("seed", self.seed))
        self.history = list(state_dict.get("history", []))


def _key_columns(layout: ParamLayout) -> dict[str, int]:
    """Columns of θ shown in statistics and plots (the paper's Figure 3 in spirit)."""
    s = layout.slices
    columns = {"pitch_deg": s["rotation"].start, "yaw_deg": s["rotation"].start + 1, "roll_deg": s["rotation"].start + 2}
    for group, count in (("shape", 2), ("expression", 2), ("reflectance", 1)):
        for i in range(min(count, s[group].stop - s[group].start)):
            columns[f"{group}_{i + 1}"] = s[group].start + i
    ill = s["illumination"].start
    columns.update({"light_ambient_R": ill, "light_ambient_B": ill + 2, "light_z_R": ill + 3 * 2})
    return columns

