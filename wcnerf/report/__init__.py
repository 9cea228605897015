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

from . import curves, panels, tables
from .curves import *  # noqa: F401,F403
from .panels import *  # noqa: F401,F403
from .tables import *  # noqa: F401,F403

__all__ = [*tables.__all__, *curves.__all__, *panels.__all__]
