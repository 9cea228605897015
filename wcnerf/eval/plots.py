"""Figures of a comparison sweep: PSNR curves (paper Fig. 7; the mean over seeds with a band,
drawn by :mod:`wcnerf.report.curves`), side-by-side held-out renders and the layer-wise
condition numbers over training.

Inputs are plain data (curves as step/value lists, renders as image files) so that these
work on any run folder laid out as in :mod:`wcnerf.eval.runs` (``curves.json``,
``heldout/gt_0000.png``, ``heldout/pred_0000.png``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from wcnerf.atomic import atomic_path
from wcnerf.eval.table import method_display, order_methods, order_scenes, scene_display
from wcnerf.report import BANDS, compose_views, draw_band, ema, load_rgb

_SOURCES = {
    "Eval Images Metrics Dict (all images)/psnr": "every held-out view",
    "Eval Images Metrics/psnr": "one held-out view per evaluation",
    "Eval Metrics Dict/psnr": "a ray batch from the held-out views per evaluation",
}

__all__ = ["ema", "plot_curves", "compose_views", "write_scene_renders", "kappa_figure", "plot_conditioning"]


def plot_curves(
    curves: Sequence[Tuple[str, str, Any, Mapping[str, Any]]],
    path: Path,
    *,
    title: str = "",
    scenes: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    band: str = "minmax",
) -> Optional[Path]:
    """Train (dashed, smoothed) and held-out (solid) PSNR against iterations, one panel per
    scene, one colour per method: the mean over the method's seeds with a ``band`` (``"minmax"``
    or ``"std"``; :func:`wcnerf.report.draw_band`).

    ``curves``: ``(scene, method, seed, {"train": {"step": [...], "psnr": [...]},
    "heldout": {"step": [...], "psnr": [...], "source": tag}})``. Returns ``None`` (and
    writes nothing) when no run has a curve.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    curves = [c for c in curves if c[3] and (c[3].get("train", {}).get("step") or c[3].get("heldout", {}).get("step"))]
    if not curves:
        return None
    scenes = list(scenes) if scenes is not None else order_scenes(c[0] for c in curves)
    scenes = [s for s in scenes if any(c[0] == s for c in curves)]
    methods = list(methods) if methods is not None else order_methods(c[1] for c in curves)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    ncols = min(4, len(scenes))
    nrows = math.ceil(len(scenes) / ncols)
    fig = Figure(figsize=(max(4.2 * ncols, 7.0), 3.4 * nrows + 0.9), dpi=110)
    sources = set()
    seeds: Dict[str, set] = {}
    for k, scene in enumerate(scenes):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for method in methods:
            train, held = [], []
            for scene_, method_, seed, data in curves:
                if scene_ != scene or method_ != method:
                    continue
                seeds.setdefault(method, set()).add(seed)
                t = data.get("train") or {}
                if t.get("step"):
                    steps, vals = _finite(t["step"], t["psnr"])
                    train.append((steps, ema(vals, 0.05 if len(vals) > 200 else 0.2)))
                h = data.get("heldout") or {}
                if h.get("step"):
                    steps, vals = _finite(h["step"], h["psnr"])
                    held.append((steps, ema(vals, 0.2) if len(vals) > 60 else vals))  # eval ray batches: smooth too
                    if h.get("source"):
                        sources.add(str(h["source"]))
            draw_band(ax, train, color=colors[method], band=band, linestyle="--", lw=1.0, alpha=0.12)
            draw_band(ax, held, color=colors[method], band=band, marker="o")
        ax.set_title(scene_display(scene))
        ax.set_xlabel("iteration")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colors[m], lw=2, label=f"{method_display(m)} ({_seeds_text(seeds.get(m))})")
               for m in methods if m in seeds]
    handles += [
        Line2D([], [], color="0.3", ls="--", label="train (smoothed)"),
        Line2D([], [], color="0.3", ls="-", label="held-out"),
        Patch(color="0.3", alpha=0.2, label=BANDS[band]),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=9)
    head = title or "PSNR against iterations"
    head += f" (mean over seeds; band: {BANDS[band]})"
    if sources:
        head += "\nheld-out: " + ", ".join(_SOURCES.get(s, s) for s in sorted(sources))
    fig.suptitle(head, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(handles) > 4 else 0.06, 1, 0.93))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


def _finite(steps: Sequence[Any], values: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray]:
    steps, vals = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(vals)
    return steps[ok], vals[ok]


def _seeds_text(seeds: Optional[set]) -> str:
    n = len(seeds or ())
    return f"{n} seed{'s' if n != 1 else ''}"


def write_scene_renders(
    views: Dict[str, List[Tuple[str, Path, Path]]],
    out_dir: Path,
    *,
    methods: Optional[Sequence[str]] = None,
) -> List[Path]:
    """For each scene, ``views[scene] = [(method, gt_png, pred_png), ...]`` -> ``<scene>.png``."""
    written = []
    for scene in order_scenes(views):
        entries = views[scene]
        order = list(methods) if methods is not None else order_methods(m for m, _, _ in entries)
        entries = sorted(entries, key=lambda e: order.index(e[0]) if e[0] in order else len(order))
        if not entries:
            continue
        gt = load_rgb(entries[0][1])
        preds = [(method_display(m), load_rgb(p)) for m, _, p in entries]
        written.append(
            compose_views(gt, preds, Path(out_dir) / f"{scene}.png", caption=f"{scene_display(scene)}: first held-out view")
        )
    return written


# ------------------------------------------------------------------------------ layer-wise kappa
_PART_ORDER = ("coarse", "fine", "field")


def _order_parts(parts) -> List[str]:
    parts = list(dict.fromkeys(parts))
    return [p for p in _PART_ORDER if p in parts] + sorted(p for p in parts if p not in _PART_ORDER)


def _trivial(series: Sequence[Sequence[Tuple[int, float]]]) -> bool:
    """A layer whose kappa is 1 at every logged step in every run (one output or one input:
    a single singular value), which says nothing about conditioning."""
    return all(v == 1.0 for pts in series for _, v in pts)


def _layer_stats(layers: Mapping[str, Sequence[Tuple[int, float]]], keep: Sequence[str]):
    """Per step: (median, max) over the kept layers' finite kappas."""
    by_step: Dict[int, List[float]] = {}
    for layer in keep:
        for step, v in layers.get(layer, ()):
            if math.isfinite(v) and v > 0:
                by_step.setdefault(int(step), []).append(float(v))
    steps = sorted(by_step)
    return (steps, [float(np.median(by_step[s])) for s in steps], [float(np.max(by_step[s])) for s in steps])


def _geo_mean(series: Sequence[Tuple[List[int], List[float]]]) -> Tuple[List[int], List[float]]:
    """Geometric mean over runs at each step (of the runs that logged that step)."""
    acc: Dict[int, List[float]] = {}
    for steps, vals in series:
        for s, v in zip(steps, vals):
            acc.setdefault(s, []).append(math.log(v))
    steps = sorted(acc)
    return steps, [math.exp(sum(acc[s]) / len(acc[s])) for s in steps]


def kappa_figure(
    runs: Sequence[Tuple[str, str, Any, Mapping[str, Any]]],
    *,
    title: str = "",
    methods: Optional[Sequence[str]] = None,
):
    """The layer-wise condition numbers over training, or None when no run logged any.

    ``runs``: ``(scene, method, seed, kappa)`` with ``kappa`` as :func:`wcnerf.eval.kappa.run_kappa`
    returns it, ``{part: {metric: {layer: [(step, value)]}}}``. One panel per part (columns:
    ``coarse``/``fine``, ``field``/``proposal_<i>``, ...) and logged metric (rows:
    :data:`wcnerf.eval.kappa.KAPPA_METRICS`); in each, per method (one colour) the median
    (solid) and the maximum (dashed) over the part's layers, each the geometric mean over the
    method's runs (scenes and seeds) at every logged step; log scale. Layers whose kappa is 1
    throughout (a single output, e.g. the density head) are left out.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from wcnerf.eval.kappa import KAPPA_METRICS

    runs = [r for r in runs if r[3]]
    if not runs:
        return None
    parts = _order_parts(p for r in runs for p in r[3])
    metrics = [m for m in KAPPA_METRICS if any(r[3].get(p, {}).get(m) for r in runs for p in parts)]
    if not metrics:
        return None
    methods = list(methods) if methods is not None else order_methods(r[1] for r in runs)
    methods = [m for m in methods if any(r[1] == m for r in runs)]
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    nrows, ncols = len(metrics), len(parts)
    height = 3.1 * nrows + 1.2
    fig = Figure(figsize=(max(4.4 * ncols, 7.0), height), dpi=110)
    left_out = set()
    for i, metric in enumerate(metrics):
        for j, part in enumerate(parts):
            ax = fig.add_subplot(nrows, ncols, i * ncols + j + 1)
            # the same layers for every method (the methods share the architecture)
            layers = sorted({layer for r in runs for layer in r[3].get(part, {}).get(metric, {})})
            keep = [l for l in layers
                    if not _trivial([r[3].get(part, {}).get(metric, {}).get(l, []) for r in runs])]
            left_out.update(f"{part}/{l}" for l in layers if l not in keep)
            drawn, xs = False, []
            for method in methods:
                per_run = [_layer_stats(r[3].get(part, {}).get(metric, {}), keep) for r in runs if r[1] == method]
                per_run = [s for s in per_run if s[0]]
                if not per_run:
                    continue
                n = len(per_run)
                for k, style in ((1, "-"), (2, "--")):
                    steps, vals = _geo_mean([(s[0], s[k]) for s in per_run])
                    xs += steps
                    ax.plot(steps, vals, style, color=colors[method], lw=1.6 if k == 1 else 1.1,
                            marker="o" if len(steps) <= 30 else None, ms=3,
                            label=f"{method_display(method)} ({n} run{'s' if n > 1 else ''})" if k == 1 else None)
                drawn = True
            if drawn:
                ax.set_yscale("log")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if min(xs) == max(xs):  # one analysis step (a short run): not a range of -0.04 .. 0.04
                    ax.set_xlim(min(xs) - 1, max(xs) + 1)
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_title(f"{part} ({len(keep)} layers)" if i == 0 else part, fontsize=10)
            ax.set_xlabel("iteration")
            if j == 0:
                ax.set_ylabel(KAPPA_METRICS[metric], fontsize=9)
            ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=colors[m], lw=2, label=method_display(m)) for m in methods]
    handles += [Line2D([], [], color="0.3", ls="-", label="median over layers"),
                Line2D([], [], color="0.3", ls="--", label="max over layers")]
    ncol = min(len(handles), 6)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    head = title or "Layer-wise condition numbers over training"
    head += "\ngeometric mean over each method's runs (scenes × seeds)"
    if left_out:
        head += f"; {len(left_out)} single-output layers (κ ≡ 1) left out"
    fig.suptitle(head, fontsize=10)
    legend_rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, (0.1 + 0.22 * legend_rows) / height, 1, 1))  # (tight_layout makes room for the suptitle)
    return fig


def plot_conditioning(
    runs: Sequence[Tuple[str, str, Any, Mapping[str, Any]]],
    path: Path,
    *,
    title: str = "",
    methods: Optional[Sequence[str]] = None,
) -> Optional[Path]:
    """:func:`kappa_figure` written to ``path`` (atomically); None, and nothing written (an
    older figure removed), when no run logged the layer-wise analysis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    fig = kappa_figure(runs, title=title, methods=methods)
    if fig is None:
        path.unlink(missing_ok=True)  # a figure of earlier runs would no longer match the report
        return None
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
