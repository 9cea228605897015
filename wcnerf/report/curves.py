"""The curve plotter: per method, the mean over seeds with a band showing their spread.

One seed's curve is noisy (a held-out ray batch, a few thousand IoU points), and one line per
seed makes methods hard to tell apart; so every curve figure draws, per method, the mean of
its seeds at the steps every seed recorded and a shaded band: ``"minmax"`` (the range of the
seeds; honest for the usual three) or ``"std"`` (mean ± the sample std, n-1, as in the tables).
Used by the LLFF ``curves.png`` (:mod:`wcnerf.eval.plots`) and the shape trainer's
``comparison.png`` / ``curves.png`` (:mod:`wcnerf.shape.plot`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path
from .tables import seed_stats

Curve = Tuple[Sequence[float], Sequence[float]]

BANDS = {"minmax": "min-max over seeds", "std": "± sample std (n-1) over seeds"}

__all__ = ["BANDS", "ema", "mean_band", "draw_band", "plot_seed_curves"]


def ema(values: Sequence[float], alpha: float = 0.1) -> np.ndarray:
    """Exponential moving average (train PSNR of single ray batches is noisy)."""
    out = np.empty(len(values), dtype=np.float64)
    acc = None
    for i, v in enumerate(values):
        acc = float(v) if acc is None else (1 - alpha) * acc + alpha * float(v)
        out[i] = acc
    return out


def mean_band(curves: Sequence[Curve], band: str = "minmax") -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, low, high)`` over the seed curves at the steps that every curve recorded
    with a finite value (so the mean never jumps where a seed is missing); if they share no step,
    at each step over the seeds that have it. ``low == high == mean`` where one seed is present."""
    if band not in BANDS:
        raise ValueError(f"band {band!r}: choose from {', '.join(BANDS)}")
    per_step: Dict[float, List[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            if v is not None and math.isfinite(float(v)):
                per_step.setdefault(float(s), []).append(float(v))
    common = sorted(s for s, vs in per_step.items() if len(vs) == len(curves))
    steps = common or sorted(per_step)
    mean, low, high = [], [], []
    for s in steps:
        vs = per_step[s]
        st = seed_stats(vs)
        mean.append(st.mean)
        if band == "minmax":
            low.append(min(vs))
            high.append(max(vs))
        else:
            d = st.std or 0.0
            low.append(st.mean - d)
            high.append(st.mean + d)
    arr = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    return arr(steps), arr(mean), arr(low), arr(high)


def draw_band(ax: Any, curves: Sequence[Curve], *, color: Any = None, label: Optional[str] = None,
              band: str = "minmax", linestyle: str = "-", lw: float = 1.6, marker: Optional[str] = None,
              alpha: float = 0.2) -> bool:
    """The seeds' mean line and (with two or more seeds) their band on ``ax``; False, and nothing
    drawn, when no curve has a point. Markers only on sparse curves (at most 60 points)."""
    steps, mean, low, high = mean_band([c for c in curves if len(c[0])], band)
    if not len(steps):
        return False
    (line,) = ax.plot(steps, mean, linestyle, color=color, lw=lw, label=label,
                      marker=marker if len(steps) <= 60 else None, ms=3)
    if sum(1 for c in curves if len(c[0])) > 1:
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=alpha, lw=0)
    return True


def plot_seed_curves(series: Mapping[str, Sequence[Curve]], path: Path, *, band: str = "minmax", title: str = "",
                     xlabel: str = "step", ylabel: str = "", logy: bool = False) -> Optional[Path]:
    """One panel: per label (method) the mean over its seed curves with a ``band``; written to
    ``path`` (PNG, atomically). Returns None, and writes nothing, when no curve has a point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = {label: len(curves) for label, curves in series.items()}
    drawn = [draw_band(ax, curves, color=f"C{i % 10}", label=f"{label} ({n[label]} seed{'s' if n[label] != 1 else ''})",
                       band=band, marker="o") for i, (label, curves) in enumerate(series.items())]
    if not any(drawn):
        return None
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"mean over seeds; band: {BANDS[band]}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
