"""Small numpy helpers for comparing a rendered view with its ground truth (renders/ panel).

The table's PSNR / SSIM / LPIPS come from nerfstudio's evaluation (``ns-eval``); these are
only used to annotate and colour the side-by-side renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["to_float_rgb", "load_rgb", "psnr", "error_map", "colorize"]


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
