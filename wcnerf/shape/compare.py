"""Fit several conditioners on one mesh with the same seeds and the same points, and compare.

Learning-rate selection is the same for every conditioner: each (conditioner, lr) is trained
for every seed, and the lr with the lowest *final training loss* (mean of the last 5 % of
steps, averaged over seeds) is kept. Test metrics (IoU, Chamfer) are not used to choose.

Training speed, at each conditioner's chosen lr: the IoU curve's value at ``EARLY_FRACTION``
of the steps, and the steps to reach the plain field's final IoU
(:mod:`wcnerf.analysis.curves`; needs ``none`` among the conditioners).

Seed statistics, cells and bolding are :mod:`wcnerf.report`'s: mean ± sample std (n-1) over seeds,
as in the LLFF table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Optional

import numpy as np

from ..analysis.curves import steps_to_target, value_at_fraction
from ..conditioning import available
from ..report import STAT, Stats, best_keys, format_cell, seed_stats, stat_sentence
from .mesh import load_mesh
from .plot import plot_curves
from .render import FITS_PNG, render_fits
from ..atomic import write_text
from .train import DEFAULT_MESH, CompareConfig, FitConfig, FitMonitor, _mesh_unit, fit

EARLY_FRACTION = 0.15
CURVES_PNG = "comparison.png"
BASELINE = "none"
REPORTED = ("iou_early", "iou_points", "iou_grid", "chamfer_l1", "normal_consistency", "fscore", "floater_area",
            "floater_area_fraction", "floater_components", "seconds_per_step", "cpu_seconds_per_step")


def _trained_curve(curves: dict) -> tuple:
    """The IoU curve without its step-0 point (the untrained field, drawn in the curves): the
    early IoU and the steps to the target measure training, and the step 0 would be the point
    nearest 15% of a short run, and part of the target's last points on a run of a few."""
    steps, ious = list(curves["eval_step"]), list(curves["eval_iou"])
    if steps and steps[0] == 0:
        steps, ious = steps[1:], ious[1:]
    return steps, ious


def _mean(vals):
    return seed_stats(vals).mean


def run_compare(cfg: FitConfig, monitor: Optional[FitMonitor] = None) -> dict:
    methods = list(cfg.compare.conditioners)
    known = tuple(available())
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--compare: unknown conditioner(s) {', '.join(bad) or '(none given)'}; "
                         f"choose from {', '.join(known)}")
    lrs = [float(lr) for lr in cfg.compare.lrs] or [cfg.optim.resolved_lr()]
    seeds = [int(seed) for seed in cfg.compare.seeds] or [cfg.seed]
    shape = load_mesh(cfg.mesh or DEFAULT_MESH, margin=cfg.margin)
    base = dataclasses.replace(cfg, compare=CompareConfig(), run_name=None)
    optim = cfg.optim
    # The folder depends on the shared settings only, not on the lists: adding a learning rate,
    # seed or conditioner later reuses the finished runs and rewrites the report.
    tag = hashlib.sha256(base.training_key(shape).encode()).hexdigest()[:6]
    out_dir = cfg.output_dir / shape.name / (cfg.run_name or f"compare-{cfg.task}-{optim.optimizer}-{optim.steps}steps-{tag}")
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[float, list]] = {m: {} for m in methods}
    for method in methods:
        for lr in lrs:
            for seed in seeds:
                sub = dataclasses.replace(base, field=dataclasses.replace(base.field, conditioning=method),
                                          optim=dataclasses.replace(optim, lr=lr), seed=seed)
                res = fit(sub, run_dir=out_dir / "runs" / f"{method}-lr{lr:g}-s{seed}", shape=shape,
                          monitor=monitor, run_label=method)
                results[method].setdefault(lr, []).append(res)

    summary: dict = {"mesh": str(shape.path), "task": cfg.task, "curve_points": cfg.evaluation.curve_points,
                     "optimizer": optim.optimizer, "steps": optim.steps, "batch_size": optim.batch_size,
                     "seeds": seeds, "lrs": lrs, "statistic": STAT,
                     "lr_selection": "per conditioner, lowest final training loss (mean of last 5% of steps, mean over seeds)",
                     "methods": {}, "sweep": {}}
    best_curves = {}
    best_iou_curves = {}
    best_fits = []
    for method in methods:
        scores = {}
        for lr, runs in results[method].items():
            losses = [r.metrics.get("final_loss") for r in runs]
            scores[lr] = math.inf if any(v is None or not math.isfinite(v) for v in losses) else float(np.mean(losses))
            summary["sweep"].setdefault(method, {})[f"{lr:g}"] = {
                "final_loss": None if math.isinf(scores[lr]) else scores[lr],
                "iou_points": _mean([r.metrics.get("iou_points") for r in runs])}
        best_lr = min(scores, key=lambda k: (scores[k], k))
        runs = results[method][best_lr]
        best_iou_curves[method] = [_trained_curve(r.curves) for r in runs]
        for r, curve in zip(runs, best_iou_curves[method]):
            r.metrics["iou_early"] = value_at_fraction(curve, EARLY_FRACTION, optim.steps)
        entry = {"lr": best_lr, "final_loss": None if math.isinf(scores[best_lr]) else scores[best_lr],
                 "per_seed": {str(r.metrics["seed"]): {k: r.metrics.get(k) for k in REPORTED} for r in runs}}
        for k in REPORTED:  # mean and sample std (n-1; None for one seed) over seeds
            stats = seed_stats(r.metrics.get(k) for r in runs)
            entry[k], entry[k + "_std"] = stats.mean, stats.std
        summary["methods"][method] = entry
        best_curves[f"{method} (lr {best_lr:g})"] = [r.curves for r in runs]
        best_fits.append((f"{method} (lr {best_lr:g}, seed {runs[0].metrics['seed']})",
                          _mesh_unit(runs[0].run_dir, shape), runs[0].metrics))

    summary["early_fraction"] = EARLY_FRACTION
    summary["steps_to_target"] = steps_to_target(best_iou_curves, BASELINE)
    # the pictures before the reports that embed them
    plot_curves(best_curves, out_dir / CURVES_PNG,
                title=f"{shape.name}: {optim.optimizer}, {optim.steps} steps, mean over seeds {seeds}")
    render_fits(shape.mesh, best_fits, out_dir / FITS_PNG,
                title=f"{shape.name}: input and each conditioner's fit ({cfg.task}, {optim.optimizer}, {optim.steps} steps)")
    summary["figures"] = {"fits": FITS_PNG, "curves": CURVES_PNG}
    write_text(out_dir / "comparison.json", json.dumps(summary, indent=2) + "\n")
    write_text(out_dir / "comparison.md", to_markdown(summary, shape.name))
    summary["dir"] = str(out_dir)
    return summary


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


# column heading, metric key, decimals, higher is better: mean ± sample std over seeds, best in bold
_STAT_COLUMNS = (("IoU (points)", "iou_points", 4, True), ("IoU (grid)", "iou_grid", 4, True),
                 ("Chamfer-L1", "chamfer_l1", 5, False), ("normal cons.", "normal_consistency", 4, True),
                 ("F-score@1%", "fscore", 4, True), ("floater area (frac.)", "floater_area_fraction", 4, False),
                 ("floater pieces", "floater_components", 1, False))


def _stats(entry: dict, key: str) -> Stats:
    """A metric's seed statistics from the per-seed values (so every report computes them alike)."""
    if entry.get("per_seed"):
        return seed_stats(v.get(key) for v in entry["per_seed"].values())
    return Stats(entry.get(key), entry.get(key + "_std"))


def to_markdown(summary: dict, name: str) -> str:
    seeds = summary["seeds"]
    early = summary.get("early_fraction", EARLY_FRACTION)
    columns = ((f"IoU @{early:.0%}", "iou_early", 4, True),) + _STAT_COLUMNS
    methods = summary["methods"]
    stats = {(m, key): _stats(e, key) for m, e in methods.items() for _, key, _, _ in columns}
    best = {key: best_keys({m: stats[(m, key)].mean for m in methods}, higher) for _, key, _, higher in columns}
    lines = [f"# Conditioning comparison: {name}", "",
             f"Task {summary['task']}, optimizer {summary['optimizer']}, {summary['steps']} steps, "
             f"batch {summary['batch_size']}, seeds {seeds} (same seeds and same training points for every "
             f"conditioner). Learning rate: {summary['lr_selection']}, from {', '.join(f'{x:g}' for x in summary['lrs'])}.",
             f"Metrics are {stat_sentence(len(seeds))}, the best mean of each metric column in bold; final loss, s/step "
             "and CPU s/step are means over seeds. Chamfer-L1 is in the normalised [-1, 1]^3 frame.",
             "s/step is wall-clock (noisy on a shared machine); CPU s/step is the process's CPU time per "
             "step (all threads), a steadier cost measure. Floaters (`wcnerf.shape.metrics.floater_metrics`): "
             "the extracted mesh's area outside its largest connected piece, as a fraction of its area, and the "
             "number of those other pieces.", "",
             f"IoU @{early:.0%}: the IoU curve (on {summary.get('curve_points', 'the curve')} points) at {early:.0%} of the "
             "steps; steps to target: the fraction of the steps after which the seed-averaged IoU curve first "
             f"reaches the plain field's final IoU (`{BASELINE}`'s own row shows the curve's noise).", "",
             f"| conditioner | lr | {columns[0][0]} | steps to target | "
             + " | ".join(c[0] for c in _STAT_COLUMNS) + " | final loss | s/step | CPU s/step |",
             "|---|---|---|---|" + "---|" * (len(_STAT_COLUMNS) + 3)]
    targets = summary.get("steps_to_target") or {}

    def cell(m, key, decimals):
        return format_cell(stats[(m, key)], decimals, bold_it=m in best[key], empty="n/a")

    for m, e in methods.items():
        reach = targets.get(m, "–") if m in targets else "–"
        reach = "not reached" if reach is None else reach if isinstance(reach, str) else f"{reach:.2f}"
        row = [m, f"{e['lr']:g}", cell(m, "iou_early", 4), reach]
        row += [cell(m, key, d) for _, key, d, _ in _STAT_COLUMNS]
        row += [_fmt(e["final_loss"], ".4g"), _fmt(e["seconds_per_step"], ".4f"), _fmt(e["cpu_seconds_per_step"], ".4f")]
        lines.append("| " + " | ".join(row) + " |")
    if len(summary["lrs"]) > 1:
        lines += ["", "Learning-rate sweep (final training loss / IoU on points, mean over seeds):", "",
                  "| conditioner | " + " | ".join(f"lr {x:g}" for x in summary["lrs"]) + " |",
                  "|---|" + "---|" * len(summary["lrs"])]
        for m, sweep in summary["sweep"].items():
            cells = [f"{_fmt(sweep[f'{x:g}']['final_loss'], '.4g')} / {_fmt(sweep[f'{x:g}']['iou_points'], '.4f')}"
                     for x in summary["lrs"]]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    figures = summary.get("figures") or {}
    if figures.get("fits"):
        lines += ["", f"![Input and each conditioner's fit]({figures['fits']})", "",
                  f"The input (grey) and each conditioner's marching-cubes mesh (orange) at its chosen learning rate, "
                  f"seed {seeds[0]}, from the same cameras (`--view` on this folder opens them in the viewer)."]
    if figures.get("curves"):
        lines += ["", f"![Training loss and IoU curves]({figures['curves']})", "",
                  "Training loss and IoU curves at each conditioner's chosen learning rate: mean over seeds, "
                  "the band their min-max."]
    return "\n".join(lines) + "\n"
