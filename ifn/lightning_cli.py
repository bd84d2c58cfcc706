"""LightningCLI for ``ifn fit|validate|test|predict`` (omegaconf interpolation enabled).

The face model and render settings are one node, ``data.render``. The DataModule builds
the renderer from it, and the LightningModule is handed that same renderer when both are
instantiated, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ifn.breeding.callback import BreedingCallback
from ifn.callbacks.predictions import ThetaJSONWriter
from ifn.callbacks.test_metrics import TestMetricsWriter
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.models.inverse_face_net import InverseFaceNet

__all__ = ["IFNLightningCLI", "run_lightning_cli"]


class IFNLightningCLI(LightningCLI):
    """LightningCLI with the data → model renderer hand-over and the ifn callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.renderer", "model.renderer", apply_on="instantiate")
        parser.link_arguments("data.prior_source", "model.prior_source", apply_on="instantiate")
        parser.add_lightning_class_args(TestMetricsWriter, "test_metrics")
        parser.add_lightning_class_args(ThetaJSONWriter, "predictions")
        # Breeding is always wired in but off (0 rounds) unless a config turns it on, so the
        # synthetic-only ablation of a breeding config is just `--breeding.rounds 0`.
        parser.add_lightning_class_args(BreedingCallback, "breeding")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default logger is TensorBoard; keep a CSV copy of the metrics beside it
        # (same version folder) so runs can be read without TensorBoard.
        loggers = trainer.loggers
        if len(loggers) == 1 and type(loggers[0]) is TensorBoardLogger and loggers[0].name == "lightning_logs":
            tensorboard = loggers[0]
            csv = CSVLogger(tensorboard.save_dir, name=tensorboard.name, version=tensorboard.version)
            trainer.loggers = [tensorboard, csv]
        return trainer

    def after_test(self) -> None:
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, TestMetricsWriter)), None)
        if writer is not None and writer.path is not None and self.trainer.is_global_zero:
            print(writer.path)


def run_lightning_cli(args: Sequence[str] | None = None) -> IFNLightningCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv``)."""
    return IFNLightningCLI(
        InverseFaceNet,
        SyntheticFaceDataModule,
        args=None if args is None else list(args),
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
