"""The one reporting stack: seed statistics, table cells and seed-band curves.

Every table and figure of the project (the LLFF comparison's ``table.md`` and ``curves.png``,
the shape trainer's ``comparison.md`` and ``comparison.png``, ``scripts/orientation_study.py``)
takes its numbers and formats from here, so that "±" means the same thing everywhere:

* :mod:`wcnerf.report.tables` - :func:`seed_stats` (mean and sample std, n-1, over seeds),
  :func:`format_cell` ("18.51 ± 0.08"), :func:`best_keys` (the bolding rule) and
  :func:`stat_sentence` (the sentence every table prints saying what ± is);
* :mod:`wcnerf.report.curves` - the curve plotter: mean over seeds with a min-max or ±std band
  per method (matplotlib Agg);
* :mod:`wcnerf.report.panels` - pictures of one view: ground truth | render | error map
  (:func:`compose_views`, :func:`split_eval_image` of ns-eval's combined image, :func:`psnr`).
"""

from .curves import BANDS, draw_band, ema, mean_band, plot_seed_curves
from .panels import colorize, compose_views, error_map, load_rgb, psnr, psnr_from_mse, split_eval_image, to_float_rgb
from .tables import STAT, Stats, best_keys, bold, format_cell, seed_stats, stat_sentence

__all__ = [
    "STAT",
    "Stats",
    "seed_stats",
    "format_cell",
    "bold",
    "best_keys",
    "stat_sentence",
    "BANDS",
    "ema",
    "mean_band",
    "draw_band",
    "plot_seed_curves",
    "to_float_rgb",
    "load_rgb",
    "psnr_from_mse",
    "psnr",
    "error_map",
    "colorize",
    "compose_views",
    "split_eval_image",
]
