"""Seed statistics and table cells: one definition of "mean ± std" and one bolding rule.

The statistic is the mean and the *sample* standard deviation (``ddof=1``, divisor n-1) over
the seeds: the seeds are a small sample of the possible runs, and the sample std is the
unbiased-variance estimate of their spread that the project's standards ask for (the
population std, divisor n, understates it: 0.188 instead of 0.230 for three seeds). A single
seed has no spread to estimate: its std is ``None`` and its cell shows the value alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Optional, Set

__all__ = ["STAT", "Stats", "seed_stats", "format_cell", "format_duration", "bold", "best_keys", "stat_sentence"]

STAT = "mean ± sample std (n-1)"
"""What a cell "m ± s" is; every table says so in its header (:func:`stat_sentence`)."""


@dataclass(frozen=True)
class Stats:
    """Mean and sample std (n-1) of ``n`` values; ``std`` is None for n < 2, ``mean`` for n = 0."""

    mean: Optional[float] = None
    std: Optional[float] = None
    n: int = 0


def _finite(values: Iterable[Any]) -> list:
    out = []
    for v in values:
        if v is None or v == "":
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return out


def seed_stats(values: Iterable[Any]) -> Stats:
    """:class:`Stats` of the finite values (None, "" and nan/inf are not measurements and are
    left out): the mean and the sample std over seeds, ``sqrt(sum((x - mean)^2) / (n - 1))``."""
    xs = _finite(values)
    n = len(xs)
    if not n:
        return Stats()
    mean = math.fsum(xs) / n
    if n < 2:
        return Stats(mean, None, 1)
    return Stats(mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)), n)


def bold(text: str) -> str:
    return f"**{text}**"


def format_cell(stats: Stats, decimals: int, *, bold_it: bool = False, empty: str = "–") -> str:
    """``"18.51 ± 0.08"`` (both with ``decimals``); the mean alone for one seed; ``empty`` when
    nothing was measured; in ``**bold**`` with ``bold_it``."""
    if stats.mean is None:
        return empty
    text = f"{stats.mean:.{decimals}f}"
    if stats.std is not None:
        text += f" ± {stats.std:.{decimals}f}"
    return bold(text) if bold_it else text


def best_keys(means: Mapping[Hashable, Optional[float]], higher: bool = True) -> Set[Hashable]:
    """The bolding rule: the keys (rows) with the best mean of a column, higher or lower being
    better per metric; ties all win; none when fewer than two rows have a mean (nothing to beat)."""
    vals = {k: v for k, v in means.items() if v is not None and math.isfinite(v)}
    if len(vals) < 2:
        return set()
    best = (max if higher else min)(vals.values())
    tol = 1e-12 * max(1.0, abs(best))
    return {k for k, v in vals.items() if abs(v - best) <= tol}


def stat_sentence(n_seeds: Optional[int] = None) -> str:
    """The header every table prints: ``"mean ± sample std (n-1) over 3 seeds"``; without a
    count, over the seeds that finished. Always says that a single seed shows its value alone."""
    over = "the seeds that finished" if n_seeds is None else f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    return f"{STAT} over {over} (a single seed shows its value alone)"


def format_duration(seconds) -> str:
    """``95`` -> ``1m35s``, ``3725`` -> ``1h02m`` (``?`` when unknown): progress lines and ETAs."""
    import math

    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
