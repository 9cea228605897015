"""Figures of a comparison sweep: PSNR curves (paper Fig. 7) and side-by-side held-out renders.

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
from wcnerf.eval.image_metrics import colorize, error_map, load_rgb, psnr
from wcnerf.eval.table import method_display, order_methods, order_scenes, scene_display

_SOURCES = {
    "Eval Images Metrics Dict (all images)/psnr": "every held-out view",
    "Eval Images Metrics/psnr": "one held-out view per evaluation",
    "Eval Metrics Dict/psnr": "a ray batch from the held-out views per evaluation",
}

__all__ = ["ema", "plot_curves", "compose_views", "write_scene_renders"]


def ema(values: Sequence[float], alpha: float = 0.1) -> np.ndarray:
    """Exponential moving average (train PSNR of single ray batches is noisy)."""
    out = np.empty(len(values), dtype=np.float64)
    acc = None
    for i, v in enumerate(values):
        acc = float(v) if acc is None else (1 - alpha) * acc + alpha * float(v)
        out[i] = acc
    return out


def plot_curves(
    curves: Sequence[Tuple[str, str, Any, Mapping[str, Any]]],
    path: Path,
    *,
    title: str = "",
    scenes: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
) -> Optional[Path]:
    """Train (dashed, smoothed) and held-out (solid, dots) PSNR against iterations, one
    panel per scene, one colour per method, one line per seed.

    ``curves``: ``(scene, method, seed, {"train": {"step": [...], "psnr": [...]},
    "heldout": {"step": [...], "psnr": [...], "source": tag}})``. Returns ``None`` (and
    writes nothing) when no run has a curve.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

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
    for k, scene in enumerate(scenes):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for scene_, method, seed, data in curves:
            if scene_ != scene or method not in colors:
                continue
            color = colors[method]
            train = data.get("train") or {}
            if train.get("step"):
                steps = np.asarray(train["step"], dtype=float)
                vals = np.asarray(train["psnr"], dtype=float)
                ok = np.isfinite(vals)
                ax.plot(steps[ok], ema(vals[ok], 0.05 if ok.sum() > 200 else 0.2), "--", color=color, lw=1.0, alpha=0.75)
            held = data.get("heldout") or {}
            if held.get("step"):
                steps = np.asarray(held["step"], dtype=float)
                vals = np.asarray(held["psnr"], dtype=float)
                ok = np.isfinite(vals)
                if ok.sum() > 60:  # eval ray batches: smooth a little as well
                    ax.plot(steps[ok], ema(vals[ok], 0.2), "-", color=color, lw=1.6)
                else:
                    ax.plot(steps[ok], vals[ok], "-o", color=color, lw=1.6, ms=3)
                if held.get("source"):
                    sources.add(str(held["source"]))
        ax.set_title(scene_display(scene))
        ax.set_xlabel("iteration")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colors[m], lw=2, label=method_display(m)) for m in methods]
    handles += [
        Line2D([], [], color="0.3", ls="--", label="train (smoothed)"),
        Line2D([], [], color="0.3", ls="-", label="held-out"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=9)
    head = title or "PSNR against iterations"
    if sources:
        head += "\nheld-out: " + ", ".join(_SOURCES.get(s, s) for s in sorted(sources))
    fig.suptitle(head, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(handles) > 4 else 0.06, 1, 0.93))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


def _text_strip(text: str, width: int, height: int = 22) -> np.ndarray:
    """A white ``height x width x 3`` uint8 strip with centred text (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(max(width, 1) / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    # about 0.85 * fontsize pixels per character at 100 dpi: shrink the font to fit the panel
    fontsize = max(5.0, min(10.0, width / (0.85 * max(len(text), 1))))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=fontsize)
    canvas.draw()
    arr = np.asarray(canvas.buffer_rgba())[..., :3]
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    h, w = min(height, arr.shape[0]), min(width, arr.shape[1])
    strip[:h, :w] = arr[:h, :w]
    return strip


def compose_views(
    gt: np.ndarray,
    preds: Sequence[Tuple[str, np.ndarray]],
    out_path: Path,
    *,
    caption: str = "",
    gap: int = 4,
) -> Path:
    """Ground truth, each method's render, then each method's error map, side by side, with
    a label above each panel; written as PNG with imageio. Returns the path."""
    import imageio.v3 as iio

    gt_f = load_rgb(gt) if isinstance(gt, (str, Path)) else np.asarray(gt)
    from wcnerf.eval.image_metrics import to_float_rgb

    gt_f = to_float_rgb(gt_f)
    h, w = gt_f.shape[:2]
    panels: List[Tuple[str, np.ndarray]] = [("ground truth", (gt_f * 255 + 0.5).astype(np.uint8))]
    errs = []
    for label, pred in preds:
        p = to_float_rgb(pred)
        if p.shape[:2] != (h, w):
            raise ValueError(f"{label}: render is {p.shape[:2]}, ground truth is {(h, w)}")
        errs.append((label, error_map(p, gt_f), psnr(p, gt_f)))
        panels.append((f"{label} ({psnr(p, gt_f):.2f} dB)", (p * 255 + 0.5).astype(np.uint8)))
    vmax = max([0.05] + [float(np.quantile(e, 0.99)) for _, e, _ in errs])
    for label, err, _ in errs:
        panels.append((f"|error| {label}", colorize(err, vmax)))
    caption = (caption + "; " if caption else "") + f"error maps: mean |render − truth| over RGB, 0 (black) to {vmax:.2f} (yellow)"
    label_h = 22
    cols = []
    for label, img in panels:
        cols.append(np.concatenate([_text_strip(label, w, label_h), img], axis=0))
    spacer = np.full((h + label_h, gap, 3), 255, dtype=np.uint8)
    row = []
    for i, c in enumerate(cols):
        if i:
            row.append(spacer)
        row.append(c)
    canvas = np.concatenate(row, axis=1)
    if caption:
        canvas = np.concatenate([_text_strip(caption, canvas.shape[1], 20), canvas], axis=0)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        iio.imwrite(tmp, canvas)
    return out_path


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
