"""The picture of a breeding round: how the bank and the bred corpus sit against the prior."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from ifn.breeding.bank import key_columns
from ifn.params import ParamLayout

__all__ = ["plot_round"]


def plot_round(
    prior: Tensor,
    bank: Tensor,
    bred: Tensor,
    layout: ParamLayout,
    title: str,
    path: Path,
    loggers: list[Logger] = (),  # type: ignore[assignment]
    step: int = 0,
) -> Path:
    """Histograms of the key θ entries (the paper's Figure 3 in spirit), written to ``path``
    and sent to TensorBoard / Weights & Biases loggers among ``loggers``.

    Args:
        prior: ``(N, m)`` a sample of the synthetic prior.
        bank: ``(N_b, m)`` the real reconstructions.
        bred: ``(N_c, m)`` the bred training θ.
        layout: θ layout.
        title: figure title.
        path: PNG file to write (its folder is created).
        loggers: the trainer's loggers.
        step: global step for the loggers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = key_columns(layout)
    n_cols = math.ceil(len(columns) / 2)
    fig, axes = plt.subplots(2, n_cols, figsize=(3.2 * n_cols, 5.5))
    for ax, (name, column) in zip(axes.flat, columns.items(), strict=False):
        series = {
            "synthetic prior": prior[:, column],
            "real reconstructions": bank[:, column],
            "bred corpus": bred[:, column],
        }
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
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("breeding/distribution", fig, global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key="breeding/distribution", images=[str(path)], step=step)
    plt.close(fig)
    return path
