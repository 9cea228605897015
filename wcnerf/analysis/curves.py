"""Training speed from held-out curves: the value at a fraction of the run, and steps to target.

The weight-conditioning paper's claim is *faster* training, so beside the final figures we
report, per method, how soon its held-out curve (PSNR for NeRF, IoU for shapes; higher is
better) first reaches the plain model's final value:

* every method's curve is first averaged over seeds, on the steps all its seeds recorded
  (one seed's held-out batch is noisy);
* the target is the plain model's final value: the mean of the last ``window`` points of its
  seed-averaged curve;
* ``steps_to_target`` = the first step at which a method's averaged curve is >= the target,
  divided by the plain model's last step; ``None`` = not reached. The plain model's own
  figure is reported too: it is below 1.0 by as much as its curve's noise allows, and reads
  as the resolution of the measure.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Dict, Mapping, Optional, Sequence, Tuple

Curve = Tuple[Sequence[int], Sequence[float]]

__all__ = ["mean_curve", "value_at_fraction", "first_reach", "steps_to_target"]


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """Seed-average: the mean value at each step that every curve has (non-finite dropped)."""
    per_step: Dict[int, list] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            if v is not None and math.isfinite(float(v)):
                per_step.setdefault(int(s), []).append(float(v))
    steps = sorted(s for s, vs in per_step.items() if len(vs) == len(curves))
    return steps, [fmean(per_step[s]) for s in steps]


def value_at_fraction(curve: Curve, fraction: float, total_steps: int) -> Optional[float]:
    """The curve's value at the recorded step nearest to ``fraction * total_steps``."""
    steps, values = curve
    if not steps:
        return None
    target = fraction * total_steps
    i = min(range(len(steps)), key=lambda k: abs(steps[k] - target))
    return float(values[i])


def first_reach(curve: Curve, target: float) -> Optional[int]:
    """First step whose value is >= ``target`` (higher is better), or None."""
    for s, v in zip(*curve):
        if v >= target:
            return int(s)
    return None


def steps_to_target(curves: Mapping[str, Sequence[Curve]], baseline: str, *, window: int = 3
                    ) -> Dict[str, Optional[float]]:
    """``{method: fraction of the baseline's steps to reach its final value, or None}``.

    ``curves``: method -> the seed curves of one scene / mesh. Methods without curves are left
    out; empty if the baseline has no curve."""
    if baseline not in curves or not curves[baseline]:
        return {}
    base = mean_curve(curves[baseline])
    if not base[0]:
        return {}
    target = fmean(base[1][-window:])
    last = base[0][-1]
    out: Dict[str, Optional[float]] = {}
    for method, seed_curves in curves.items():
        if not seed_curves:  # not measured: absent, not "not reached"
            continue
        step = first_reach(mean_curve(seed_curves), target)
        out[method] = None if step is None else step / last
    return out
