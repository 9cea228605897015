"""Pictures of one view (ground truth | render | error): used by the harness's renders/ and by wcnerf-heldout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_path

__all__ = [
    "to_float_rgb",
    "load_rgb",
    "psnr_from_mse",
    "psnr",
    "error_map",
    "colorize",
    "compose_views",
    "split_eval_image",
]


def to_float_rgb(img: np.ndarray) -> np.ndarray:
    """``H x W x 3`` float64 in [0, 1] from uint8/uint16/float, gray or RGBA."""
    arr = np.asarray(img)
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        arr = arr.astype(np.float64)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def load_rgb(path: Union[str, Path]) -> np.ndarray:
    import imageio.v3 as iio

    return to_float_rgb(iio.imread(path))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for a mean squared error of values in [0, 1] (peak 1)."""
    return float("inf") if mse <= 0 else float(-10.0 * np.log10(mse))


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] (peak 1), as nerfstudio's ``PeakSignalNoiseRatio(1.0)``."""
    return psnr_from_mse(float(np.mean((to_float_rgb(pred) - to_float_rgb(gt)) ** 2)))


def error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel absolute error averaged over the colour channels, ``H x W`` in [0, 1]."""
    return np.mean(np.abs(to_float_rgb(pred) - to_float_rgb(gt)), axis=-1)


def colorize(values: np.ndarray, vmax: float = 0.25, cmap: str = "inferno") -> np.ndarray:
    """``H x W`` values -> ``H x W x 3`` uint8 through a matplotlib colormap (0 .. vmax)."""
    from matplotlib import colormaps

    norm = np.clip(np.asarray(values, dtype=np.float64) / max(vmax, 1e-12), 0.0, 1.0)
    rgba = colormaps[cmap](norm)
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


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


def split_eval_image(combined: Any, width: int) -> Optional[Tuple[Any, Any]]:
    """nerfstudio's eval ``img`` is ground truth and renders side by side (vanilla NeRF:
    ``[gt | coarse | fine]``). Returns ``(gt, last panel)`` or None if the width does not fit."""
    w = combined.shape[1]
    if width <= 0 or w % width or w // width < 2:
        return None
    return combined[:, :width], combined[:, w - width :]
