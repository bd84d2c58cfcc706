"""LightningCLI for ``ifn fit|validate|test|predict`` (omegaconf interpolation enabled).

The face model and render settings are one node, ``data.render``. The DataModule builds
the renderer from it, and the LightningModule is handed that same renderer when both are
instantiated, so the two can never disagree.

Mistakes become one-line :class:`~ifn.errors.UsageError` errors (``ifn`` prints them as
``ifn: error: …``, exit status 2): a wrong option or config key (with the closest valid
key), a value the classes refuse when they are built (a negative batch size, an unknown
backbone, a missing face-model file), and a ``--ckpt_path`` that is missing, unreadable,
corrupt or trained with other model settings. Option names must be written in full (no
abbreviations: ``--trainer.max_step`` is an error, not ``--trainer.max_steps``).

Durable fits (:mod:`ifn.callbacks.durable`): checkpoints are written atomically in their own
folder, a fit that finds another live fit in its ``default_root_dir`` takes the next free
folder, and a fit resumed with ``--ckpt_path`` in the same ``default_root_dir`` logs into the
original run's version folder, continuing its steps. Every command that reads a photo
folder writes ``photos_<role>.json`` beside its outputs (:class:`~ifn.callbacks.outputs.PhotoReportWriter`).

``--ckpt_path`` with model settings: Lightning's CLI would load the checkpoint's saved
hyperparameters over the run's (``--model.backbone resnet34`` with a resnet18 checkpoint ran
a resnet18, and its saved config said so). Here the run's settings are kept and must match
the checkpoint's (:func:`~ifn.models.checkpoint.check_hyperparameters`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ifn.breeding.callback import BreedingCallback
from ifn.callbacks.durable import (
    RUN_KEY,
    AtomicCheckpointIO,
    ResumedCSVLogger,
    RunRecord,
    claim_run_folder,
    release_run_folder,
)
from ifn.callbacks.outputs import PhotoReportWriter
from ifn.callbacks.predictions import ThetaJSONWriter
from ifn.callbacks.test_metrics import TestMetricsWriter
from ifn.data.datamodule import SyntheticFaceDataModule
from ifn.errors import UsageError, debug_enabled, one_line
from ifn.models.checkpoint import check_hyperparameters, read_checkpoint
from ifn.models.inverse_face_net import InverseFaceNet

__all__ = ["ConfigError", "IFNArgumentParser", "IFNLightningCLI", "run_lightning_cli"]

#: ``--ckpt_path`` values that Lightning resolves itself (not file names).
_SPECIAL_CKPT_PATHS = ("best", "last", "hpc")
#: Longer parser messages (a failed Union match lists every subtype) are cut here.
_MAX_MESSAGE = 300


class ConfigError(UsageError):
    """A command line or config file that the parser refuses (unknown key, wrong type...)."""


def _options(parser: LightningArgumentParser) -> list[str]:
    """Every ``--option`` of ``parser`` and of the subcommand named in its arguments."""
    parsers = [parser]
    subcommands = getattr(parser, "_subcommands_action", None)
    if subcommands is not None:
        chosen = [a for a in getattr(parser, "args", None) or [] if a in subcommands._name_parser_map]
        names = chosen[:1] or list(subcommands._name_parser_map)
        parsers += [subcommands._name_parser_map[name] for name in names]
    return sorted({o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")})


def _suggestion(key: str, options: Sequence[str]) -> str:
    """`` (did you mean '--x'?)`` for the option closest to ``key``, or nothing."""
    option = "--" + key.lstrip("-").split("=", 1)[0]
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != option else ""


def _short_message(message: str, parser: LightningArgumentParser) -> str:
    """jsonargparse's message in one line, with the closest valid key for an unknown one."""
    options = _options(parser)
    unrecognized = re.match(r"unrecognized arguments: (.*)", message, flags=re.DOTALL)
    if unrecognized:
        # Only the option names: the values after them are not what is wrong.
        keys = [a.split("=", 1)[0] for a in unrecognized.group(1).split() if a.startswith("-")]
        if keys:
            named = ", ".join(f"{key}{_suggestion(key, options)}" for key in keys)
            return f"unknown option{'s' if len(keys) > 1 else ''} {named}; --help lists them"
    unexpected = re.search(r"does not accept option '([^']+)'", message)  # a key in a config file
    if unexpected:
        return f"{one_line(message)}{_suggestion(unexpected.group(1), options)}; see --help"
    text = one_line(message)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "… (set IFN_DEBUG=1 for the whole message)"
    return text


class IFNArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one :class:`ConfigError` line instead of the
    usage dump (about a hundred lines) that jsonargparse prints before the message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse parses nested types with internal parsers that must raise (not exit):
        # those keep its own behaviour.
        if not self.exit_on_error:
            super().error(message, ex)
        if debug_enabled():
            raise ConfigError(message) from ex
        parser = getattr(ex, "subcommand_parser", None) or self
        raise ConfigError(_short_message(message, parser)) from ex


class IFNLightningCLI(LightningCLI):
    """LightningCLI with the data → model renderer hand-over, the ifn callbacks, and
    one-line errors for misuse (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.renderer", "model.renderer", apply_on="instantiate")
        parser.link_arguments("data.prior_source", "model.prior_source", apply_on="instantiate")
        parser.add_lightning_class_args(TestMetricsWriter, "test_metrics")
        parser.add_lightning_class_args(ThetaJSONWriter, "predictions")
        parser.add_lightning_class_args(PhotoReportWriter, "photo_reports")
        # Breeding is always wired in but off (0 rounds) unless a config turns it on, so the
        # synthetic-only ablation of a breeding config is just `--breeding.rounds 0`.
        parser.add_lightning_class_args(BreedingCallback, "breeding")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not any(isinstance(cb, RunRecord) for cb in trainer.callbacks):
            trainer.callbacks.append(RunRecord())
        if self.subcommand == "fit":
            self._claim_folder(trainer)
            if str(self.config[self.subcommand].get("ckpt_path")) == "last":
                self._note_last_checkpoint(trainer)
        # Lightning's default logger is TensorBoard; keep a CSV copy of the metrics beside it
        # (same version folder) so runs can be read without TensorBoard.
        loggers = trainer.loggers
        if len(loggers) == 1 and type(loggers[0]) is TensorBoardLogger and loggers[0].name == "lightning_logs":
            tensorboard = loggers[0]
            resumed = self._resumed_version(tensorboard)
            if resumed is not None:
                version, step = resumed
                # Into the original's version folder: TensorBoard drops its events from the
                # resumed step on (logged after the checkpoint, about to be logged again).
                tensorboard = TensorBoardLogger(tensorboard.save_dir, name=tensorboard.name, version=version,
                                                purge_step=step)
                csv = ResumedCSVLogger(tensorboard.save_dir, tensorboard.name, version, step)
                print(f"[ifn] resuming at step {step}: logging into {tensorboard.log_dir}")
            else:
                csv = CSVLogger(tensorboard.save_dir, name=tensorboard.name, version=tensorboard.version)
            trainer.loggers = [tensorboard, csv]
        return trainer

    def _claim_folder(self, trainer: Trainer) -> None:
        """Take ``default_root_dir`` for this fit, or the next free folder if a live fit holds
        it; checkpoint folders and the default logger below the old folder move along."""
        root = Path(trainer.default_root_dir)
        claimed = claim_run_folder(root)
        self._claimed = claimed
        if claimed == root:
            return
        old, new = Path(os.path.realpath(root)), Path(os.path.realpath(claimed))
        trainer._default_root_dir = str(claimed)
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                try:
                    callback.dirpath = str(new / Path(os.path.realpath(callback.dirpath)).relative_to(old))
                except ValueError:
                    continue  # a folder outside the run's: the user's choice
        loggers = trainer.loggers
        if len(loggers) == 1 and type(loggers[0]) is TensorBoardLogger and loggers[0].name == "lightning_logs":
            trainer.loggers = [TensorBoardLogger(str(claimed), name="lightning_logs")]

    def _note_last_checkpoint(self, trainer: Trainer) -> None:
        """For ``--ckpt_path last``: check and note the checkpoint Lightning will pick, the
        newest file with ``last`` in its name in a checkpoint folder (Lightning's rule)."""
        folders = {cb.dirpath for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath}
        candidates = [p for folder in folders if Path(folder).is_dir() for p in Path(folder).iterdir()
                      if "last" in p.name and p.is_file()]
        if candidates:
            self._note_resume(read_checkpoint(max(candidates, key=lambda p: p.stat().st_mtime)))

    def _note_resume(self, checkpoint: dict[str, Any]) -> None:
        # What a resumed fit needs to log where the original did (the rest is not kept).
        self._resume_record = checkpoint.get(RUN_KEY)
        self._resume_step = checkpoint.get("global_step")

    def _resumed_version(self, tensorboard: TensorBoardLogger) -> tuple[int | str, int] | None:
        """``(version, step)`` of the run a fit resumes, if it logged in this logger's folder."""
        record, step = getattr(self, "_resume_record", None), getattr(self, "_resume_step", None)
        if self.subcommand != "fit" or not isinstance(record, dict) or step is None:
            return None
        version = record.get("logger_version")
        same_dir = record.get("save_dir") == str(Path(tensorboard.save_dir).resolve())
        if version is None or not same_dir or record.get("logger_name") != tensorboard.name:
            return None
        return version, int(step)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:
            self._release_folder()

    def _release_folder(self) -> None:
        claimed = getattr(self, "_claimed", None)
        if claimed is not None:
            release_run_folder(claimed)
            self._claimed = None

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built, instead of Lightning's hyperparameter
        override: the file must exist, be a readable checkpoint with intact weights, and have
        been trained with this run's model settings."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in _SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
            return  # Lightning resolves these names (and remote files) itself
        if str(ckpt_path).startswith("registry"):
            return
        checkpoint = read_checkpoint(Path(ckpt_path))
        self._note_resume(checkpoint)
        model = self.config[subcommand].get("model")
        wanted = {key: model[key] for key in vars(model)} if model is not None else {}
        check_hyperparameters(checkpoint, wanted, str(ckpt_path))

    def instantiate_classes(self) -> None:
        # Constructors refuse impossible settings with ValueError (a negative batch size, an
        # unknown backbone) or OSError (a missing face-model file), Lightning with
        # MisconfigurationException: at this point, before any work, they are the user's to fix.
        try:
            super().instantiate_classes()
        except UsageError:
            self._release_folder()
            raise
        except (ValueError, OSError, MisconfigurationException) as err:
            self._release_folder()
            raise UsageError(one_line(err)) from err

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
        # allow_abbrev=False: a typo such as --trainer.max_step must not pass as a prefix.
        parser_kwargs={"parser_mode": "omegaconf+", "allow_abbrev": False},
        parser_class=IFNArgumentParser,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
