"""Training curves (loss and IoU against steps), one or several runs overlaid in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    k = np.ones(window) / window
    return np.convolve(y, k, mode="valid")


def plot_curves(runs: dict[str, dict], path: Path, title: str = "") -> None:
    """``runs`` maps a label to {"loss": [...per step], "eval_step": [...], "eval_iou": [...]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    for label, c in runs.items():
        loss = np.asarray(c.get("loss", []), dtype=float)
        if len(loss):
            w = max(1, len(loss) // 100)
            y = _smooth(loss, w)
            ax_loss.plot(np.arange(len(y)) + w, y, label=label)
        if len(c.get("eval_step", [])):
            ax_iou.plot(c["eval_step"], c["eval_iou"], marker=".", label=label)
    ax_loss.set_yscale("log")
    # plain tick labels: the default 10^k mathtext labels cost seconds of layout per figure
    from matplotlib.ticker import LogFormatter

    ax_loss.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax_loss.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labelled when < ~1 decade
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (moving average)")
    ax_iou.set_xlabel("step")
    ax_iou.set_ylabel("IoU (fixed random points)")
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        if runs:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88 if title else 0.95, wspace=0.22)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
