"""Training curves (loss and IoU against steps), one or several runs overlaid in one PNG; a run
given as several seeds is drawn as their mean with a band (:mod:`wcnerf.report.curves`)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..atomic import atomic_path
from ..report import BANDS, draw_band

IOU_RANGE = (0.0, 1.0)
"""The IoU axis of the curves (here and in the shape viewer): from 0 to 1, whatever the points."""


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    k = np.ones(window) / window
    return np.convolve(y, k, mode="valid")


def _loss_curve(c: dict):
    """(steps, moving average of the loss): a window of 1% of the steps, placed at its end."""
    loss = np.asarray(c.get("loss", []), dtype=float)
    w = max(1, len(loss) // 100)
    y = _smooth(loss, w)
    return np.arange(len(y)) + w, y


def plot_curves(runs: dict[str, Union[dict, list[dict]]], path: Path, title: str = "", band: str = "minmax"):
    """``runs`` maps a label to one run's curves, {"loss": [...per step], "eval_step": [...],
    "eval_iou": [...]}, or to a list of them (its seeds: mean over seeds with a ``band``,
    ``"minmax"`` or ``"std"``). Writes ``path`` and returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_iou = fig.subplots(1, 2)
    several = False
    for i, (label, seeds) in enumerate(runs.items()):
        seeds = [seeds] if isinstance(seeds, dict) else list(seeds)
        several |= len(seeds) > 1
        name = f"{label} ({len(seeds)} seeds)" if len(seeds) > 1 else label
        color = f"C{i % 10}"
        draw_band(ax_loss, [_loss_curve(c) for c in seeds], color=color, label=name, band=band, lw=1.5)
        draw_band(ax_iou, [(c.get("eval_step", []), c.get("eval_iou", [])) for c in seeds], color=color,
                  label=name, band=band, lw=1.5, marker=".")
    ax_loss.set_yscale("log")
    # plain tick labels: the default 10^k mathtext labels cost seconds of layout per figure
    ax_loss.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax_loss.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labelled when < ~1 decade
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (moving average)")
    ax_iou.set_xlabel("step")
    ax_iou.set_ylabel("IoU (fixed random points)")
    ax_iou.set_ylim(*IOU_RANGE)  # an IoU lies in [0, 1]: autoscale would pad past 1
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if several:
        title = (title + "; " if title else "") + f"band: {BANDS[band]}"
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88 if title else 0.95, wspace=0.22)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return fig
