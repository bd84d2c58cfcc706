"""Breeding (the paper's Algorithm 1): bootstrap the training distribution from real photos.

After ``start_step`` synthetic steps, every ``every_n_steps`` for ``rounds`` rounds:

1. infer θ for every face of the real corpus (``data.photos.train_dir``) with the current network
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
``groups`` breeds only some groups. With a small corpus, bred-only training on fixed
copies can over-fit the bank and drift; ``configs/quickstart_breeding.yaml`` mixes in the
prior, perturbs afresh and re-fits the lighting (the README compares the variants).

The round, the bank and the seed are saved in checkpoints; resuming restores the bank
and the source. Each round logs its size and statistics of the bank against the prior,
and writes the paper's Figure 3 as a plot (histograms of key parameters).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ifn.breeding.bank import bank_statistics, reconstruct_sharded
from ifn.breeding.plots import plot_round
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.data.sources import BredSource, BreedingNoise, bred_groups

__all__ = ["BreedingCallback"]


class BreedingCallback(L.Callback):
    """Replace the synthetic training distribution by re-rendered real reconstructions.

    Args:
        start_step: the first round happens after this many training steps (paper 15K).
        every_n_steps: steps between rounds (paper 7.5K).
        rounds: number of rounds (paper 8, as in ``configs/breeding.yaml``; 0, the default,
            turns breeding off, so the synthetic-only ablation of a config is ``--breeding.rounds 0``).
        copies: perturbed copies per real face (paper 2).
        noise: perturbation of the reconstructions (paper values by default).
        prior_fraction: share of prior samples mixed into bred batches (paper 0: bred only).
        fresh_perturbations: new perturbations every batch instead of fixed copies.
        crossover: recombine θ groups across bank rows (see :class:`~ifn.data.sources.BredSource`).
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
        rounds: int = 0,
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
        self.groups = bred_groups(groups)  # checked now, not at the first round
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
        if self.rounds > 0 and not dm.photos.configured("train"):
            raise ValueError(
                "BreedingCallback needs a folder of real photos: set --data.photos.train_dir DIR "
                "(or set --breeding.rounds 0 for the synthetic-only baseline)"
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
        corpus = dm.photos.nonempty_corpus("train", progress=trainer.is_global_zero)
        self.bank = self.reconstruct(trainer, pl_module, corpus)
        self.round += 1
        self._install(trainer)
        summary = corpus.summary()
        prior = dm.prior_source.reference_sample(self.seed)
        stats = bank_statistics(self.bank, prior, dm.layout)
        errors = self.photometric_errors
        record = {"round": self.round, "step": trainer.global_step, "faces": len(corpus), **summary,
                  **{f"photometric_error_{k}": v for k, v in errors.items()}}
        self.history.append(record)
        rank_zero_info(
            f"[ifn] breeding round {self.round}/{self.rounds} at step {trainer.global_step}: "
            f"{len(corpus)} real faces x {self.copies} copies (skipped files: {summary['skipped_images']}); "
            f"photometric error of the network's reconstructions {errors['network']:.2f}"
            + (f", after the lighting fit {errors['bank']:.2f}" if self.refine_illumination else "")
        )
        pl_module.log_dict(
            {
                "breeding/round": float(self.round),
                "breeding/corpus_faces": float(len(corpus)),
                "breeding/skipped_files": float(summary["skipped_images"]),
                "breeding/real_photometric_error": errors["network"],
                "breeding/bank_photometric_error": errors["bank"],
                **{f"breeding/{k}": v for k, v in stats.items()},
            },
            rank_zero_only=True,
        )
        if self.plot:
            directory = Path(trainer.log_dir or trainer.default_root_dir) / "breeding"  # DDP broadcast: all ranks
            if trainer.is_global_zero:
                source = dm.source
                bred = source.copies if isinstance(source, BredSource) else self.bank
                plot_round(
                    prior, self.bank, bred, dm.layout,
                    title=f"Breeding round {self.round} (step {trainer.global_step}): prior vs real vs bred",
                    path=directory / f"round_{self.round:02d}.png",
                    loggers=trainer.loggers,
                    step=trainer.global_step,
                )

    def reconstruct(self, trainer: L.Trainer, pl_module: L.LightningModule, corpus: Any) -> Tensor:
        """θ for every face of ``corpus``: sharded across ranks, gathered in corpus order.

        Also sets :attr:`photometric_errors`: the mean photometric RMSE (0–255, inside the
        photo mask) of the network's reconstructions of the corpus and of the banked θ (they
        differ when ``refine_illumination`` re-fits the lighting). A rise from round to round
        is the sign of a drifting bank.
        """
        renderer = self._datamodule(trainer).renderer
        if renderer.device != pl_module.device:
            renderer.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = reconstruct_sharded(
                corpus,
                trainer.global_rank,
                trainer.world_size,
                network=pl_module,
                renderer=renderer,
                device=pl_module.device,
                batch_size=self.inference_batch_size,
                refine_illumination=self.refine_illumination,
                illumination_ridge=self.illumination_ridge,
            )
        finally:
            pl_module.train(was_training)
        self.photometric_errors = result.mean_errors()
        return result.theta

    def _install(self, trainer: L.Trainer) -> None:
        dm = self._datamodule(trainer)
        assert self.bank is not None
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
                prior_source=dm.prior_source,
                crossover=self.crossover,
                groups=self.groups,
            )
        )

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
