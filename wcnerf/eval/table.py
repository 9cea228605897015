"""Aggregating per-run results: ``results.csv`` and the paper's Table 4 layout (``table.md``).

Both are built from *records*: one mapping per (scene, method, seed) run with at least the
keys ``scene``, ``method``, ``seed``, ``status`` (``done``, ``failed``, ``running``,
``interrupted``, ``pending``) and, for finished runs, ``psnr`` / ``ssim`` / ``lpips`` (``None``
when not measured). Nothing here trains or reads run folders; see :mod:`wcnerf.eval.reports`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from wcnerf.analysis.curves import Curve, mean_curve, steps_to_target
from wcnerf.atomic import write_text
from wcnerf.report import Stats, best_keys, format_cell, seed_stats, stat_sentence

__all__ = [
    "CSV_COLUMNS",
    "PAPER_SCENES",
    "METRICS",
    "Cell",
    "scene_display",
    "method_display",
    "method_names",
    "settings_line",
    "order_scenes",
    "order_methods",
    "aggregate",
    "results_csv",
    "write_results_csv",
    "read_results_csv",
    "table_markdown",
]

CSV_COLUMNS = [
    "protocol",
    "scene",
    "method",
    "seed",
    "status",
    "psnr",
    "ssim",
    "lpips",
    "iterations",
    "sec_per_iter",
    "train_seconds",
    "eval_seconds",
    "views_evaluated",
    "views_held_out",
    "eval_image_scale",
    "downscale_factor",
    "ns_method",
    "conditioning",
    "run_dir",
    "error",
]

# The eight LLFF scenes in the order of the NeRF / E-NeRF papers' tables.
PAPER_SCENES = ["fern", "flower", "fortress", "horns", "leaves", "orchids", "room", "trex"]
_SCENE_NAMES = {"trex": "T-Rex"}
_METHOD_NAMES = {"nerf": "NeRF", "e-nerf": "E-NeRF"}
BASELINE = "nerf"

# metric key, heading, higher is better, decimals
METRICS: List[Tuple[str, str, bool, int]] = [
    ("psnr", "PSNR ↑", True, 2),
    ("ssim", "SSIM ↑", True, 3),
    ("lpips", "LPIPS ↓", False, 3),
]


def scene_display(scene: str) -> str:
    return _SCENE_NAMES.get(scene.lower(), scene[:1].upper() + scene[1:])


def method_display(method: str, ns_method: Optional[str] = None) -> str:
    """The harness label as tables print it, with the ``ns-train`` method that trained it when
    known (``NeRF (ns-train nerf-small)``): under the cpu protocol ``nerf`` is nerf-small."""
    shown = _METHOD_NAMES.get(method, method)
    return f"{shown} (ns-train {ns_method})" if ns_method else shown


def method_names(records: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """label -> how every table names it: :func:`method_display` with the records' ns-train
    method (several, joined by ``/``, when runs of one label trained different methods)."""
    ns: Dict[str, List[str]] = {}
    for r in records:
        if r.get("method") is not None and r.get("ns_method"):
            have = ns.setdefault(str(r["method"]), [])
            if r["ns_method"] not in have:
                have.append(str(r["ns_method"]))
    return {m: method_display(m, "/".join(v)) for m, v in ns.items()}


def settings_line(records: Sequence[Mapping[str, Any]]) -> str:
    """What the runs were, from their configs and records (never from the protocol's nominal
    values): iterations, image downscale factor and how the held-out views were evaluated, each
    value listed with its runs' count when they differ. Empty without a record that says any."""

    def values(key: str) -> List[Any]:
        found: Dict[Any, int] = {}
        for r in records:
            v = r.get(key)
            if v not in (None, ""):
                found[v] = found.get(v, 0) + 1
        return sorted(found, key=lambda v: (str(type(v)), v))

    def listed(vals: List[Any], one: str, many: str) -> Optional[str]:
        if not vals:
            return None
        return one.format(vals[0]) if len(vals) == 1 else many.format(", ".join(_plain(v) for v in vals))

    parts = [
        listed(values("iterations"), "{} training iterations", "{} training iterations (runs differ)"),
        listed(values("downscale_factor"), "images downscaled by {}", "images downscaled by {} (runs differ)"),
    ]
    done = [r for r in records if r.get("status") == "done"]
    scales = sorted({float(r.get("eval_image_scale") or 1.0) for r in done})
    if scales:
        shown = ", ".join(_plain(x) for x in scales)
        parts.append("held-out views evaluated at full size" if scales == [1.0] else
                     f"held-out views evaluated at {shown} of their size (ground truth area-averaged to it)")
    parts = [x for x in parts if x]
    return ("Settings as run (from the runs' configs and records): " + "; ".join(parts) + ".") if parts else ""


def _plain(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def order_scenes(scenes: Iterable[str]) -> List[str]:
    """Paper scenes in the paper's order, then the others in the order first seen."""
    seen: List[str] = []
    for s in scenes:
        if s not in seen:
            seen.append(s)
    known = [s for s in PAPER_SCENES if s in seen]
    return known + [s for s in seen if s not in PAPER_SCENES]


def order_methods(methods: Iterable[str]) -> List[str]:
    """NeRF, E-NeRF, then the other conditioners in the order first seen."""
    seen: List[str] = []
    for m in methods:
        if m not in seen:
            seen.append(m)
    head = [m for m in ("nerf", "e-nerf") if m in seen]
    return head + [m for m in seen if m not in head]


def _num(value: Any) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass
class Cell:
    """One table entry: a metric over the seeds of one (method, scene) or the scene average."""

    mean: Optional[float] = None
    std: Optional[float] = None
    n_ok: int = 0
    n_runs: int = 0
    n_failed: int = 0
    scenes_covered: int = 0
    scenes_total: int = 0
    """For the average column: how many scenes entered the average."""

    @property
    def complete(self) -> bool:
        return self.mean is not None and self.n_ok == self.n_runs and self.scenes_covered == self.scenes_total


def aggregate(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    scenes: Sequence[str],
    methods: Sequence[str],
) -> Dict[Tuple[str, str], Cell]:
    """``{(method, scene): Cell}`` plus ``(method, "__avg__")`` for the average over scenes.

    Per scene: mean and sample std (:func:`wcnerf.report.seed_stats`) over the seeds that
    finished. Average: the mean of the per-scene means over the scenes where the method has a
    value; its std is the sample std over seeds of the per-seed scene averages (seeds that
    finished every scene; needs two).
    """
    cells: Dict[Tuple[str, str], Cell] = {}
    for m in methods:
        per_scene_means: List[float] = []
        per_seed: Dict[Any, Dict[str, float]] = {}
        covered = 0
        for s in scenes:
            rows = [r for r in records if r.get("method") == m and r.get("scene") == s]
            vals = []
            failed = 0
            for r in rows:
                v = _num(r.get(metric))
                if r.get("status") == "done" and v is not None:
                    vals.append(v)
                    per_seed.setdefault(r.get("seed"), {})[s] = v
                if r.get("status") == "failed":
                    failed += 1
            cell = Cell(n_ok=len(vals), n_runs=len(rows), n_failed=failed, scenes_covered=1, scenes_total=1)
            if vals:
                st = seed_stats(vals)
                cell.mean, cell.std = st.mean, st.std
                per_scene_means.append(cell.mean)
                covered += 1
            cells[(m, s)] = cell
        avg = Cell(scenes_covered=covered, scenes_total=len(scenes))
        avg.n_runs = sum(cells[(m, s)].n_runs for s in scenes)
        avg.n_ok = sum(cells[(m, s)].n_ok for s in scenes)
        avg.n_failed = sum(cells[(m, s)].n_failed for s in scenes)
        if per_scene_means:
            avg.mean = sum(per_scene_means) / len(per_scene_means)
            if covered == len(scenes):
                seed_avgs = [
                    sum(v[s] for s in scenes) / len(scenes) for v in per_seed.values() if all(s in v for s in scenes)
                ]
                if len(seed_avgs) >= 2:
                    avg.std = seed_stats(seed_avgs).std
        cells[(m, "__avg__")] = avg
    return cells


def _fmt(x: float, decimals: int, signed: bool = False) -> str:
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def _cell_text(cell: Cell, decimals: int, bold: bool, average: bool) -> str:
    if cell.mean is None:
        if cell.n_failed and cell.n_failed == cell.n_runs:
            return "failed"
        return "–"
    text = format_cell(Stats(cell.mean, cell.std, cell.n_ok), decimals, bold_it=bold)
    if average and cell.scenes_covered < cell.scenes_total:
        text += f" † ({cell.scenes_covered}/{cell.scenes_total} scenes)"
    elif not average and cell.n_ok < cell.n_runs:
        text += f" ({cell.n_ok}/{cell.n_runs} seeds)"
    return text


def _best(cells: Dict[Tuple[str, str], Cell], methods: Sequence[str], col: str, higher: bool) -> List[str]:
    """Methods with the best mean in a column (:func:`wcnerf.report.best_keys`: ties all win; none
    when fewer than two compete)."""
    cands = [(m, cells[(m, col)]) for m in methods if cells[(m, col)].mean is not None]
    if col == "__avg__":  # only averages over the same (full) set of scenes are comparable
        cands = [(m, c) for m, c in cands if c.scenes_covered == c.scenes_total]
    return sorted(best_keys({m: c.mean for m, c in cands}, higher), key=list(methods).index)


def _status_counts(records: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for r in records:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    return counts


def _one_line(text: Any, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    out = " ⏎ ".join(lines[-3:])
    out = out.replace("|", "\\|")
    return out if len(out) <= limit else "…" + out[-limit:]


def _views_text(records: Sequence[Mapping[str, Any]], scenes: Sequence[str]) -> str:
    """Which held-out views the metrics average, per scene, as the finished runs recorded them:
    "all of the scene's held-out views (Fern 3, Flower 5)", or "the evaluated held-out views
    (Fern 3 of 3, Fern62 5 of 8, evenly spaced)" when a protocol's max_eval_views left some out."""
    counts: Dict[str, set] = {}
    for r in records:
        if r.get("status") == "done" and r.get("views_evaluated") is not None:
            counts.setdefault(r["scene"], set()).add((r["views_evaluated"], r.get("views_held_out") or r["views_evaluated"]))
    parts, partial = [], False
    for scene in scenes:
        for k, n in sorted(counts.get(scene, ())):
            partial |= k < n
            parts.append((scene_display(scene), k, n))
    if not parts:
        return "all of the scene's held-out views"
    if not partial:
        return "all of the scene's held-out views (" + ", ".join(f"{name} {n}" for name, _, n in parts) + ")"
    return "the evaluated held-out views (" + ", ".join(f"{name} {k} of {n}" for name, k, n in parts) + ", evenly spaced)"


def table_markdown(
    records: Sequence[Mapping[str, Any]],
    *,
    title: str = "E-NeRF vs NeRF on LLFF",
    protocol_summary: str = "",
    scenes: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    baseline: str = BASELINE,
    heldout_curves: Optional[Mapping[Tuple[str, str], Sequence[Curve]]] = None,
) -> str:
    """The paper's Table 4 layout: one table per metric, methods as rows, scenes as columns,
    the average last; mean ± sample std (n-1) over seeds; the best method of each column in bold; a row
    with the PSNR difference of every other method minus NeRF (or minus ``none``, the method
    unconditioned, in a comparison without NeRF); with ``heldout_curves``
    (``(scene, method) -> seed curves`` of held-out PSNR), the steps each method needs to reach
    the plain model's final held-out PSNR (:mod:`wcnerf.analysis.curves`); then every run that
    did not finish (failed, interrupted, running, pending) with its error."""
    scenes = list(scenes) if scenes is not None else order_scenes(r["scene"] for r in records)
    methods = list(methods) if methods is not None else order_methods(r["method"] for r in records)
    if baseline not in methods and "none" in methods:  # `--method M --conditioners none ...`: M unconditioned
        baseline = "none"
    seeds = sorted({r.get("seed") for r in records}, key=lambda s: (str(type(s)), s))
    names = {m: method_display(m) for m in methods}
    names.update(method_names(records))
    out = io.StringIO()
    out.write(f"# {title}\n\n")
    settings = settings_line(records)
    if settings:
        out.write(settings + "\n\n")
    if protocol_summary:
        out.write(protocol_summary.strip() + "\n\n")
    counts = _status_counts(records)
    out.write(
        f"Runs: {len(records)} ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
        f"seeds: {', '.join(str(s) for s in seeds) or '–'}. "
        f"Each run's metric is the mean over {_views_text(records, scenes)}; cells are "
        f"{stat_sentence()}; the best method of each column is in bold.\n\n"
    )
    iters = sorted({int(r["iterations"]) for r in records if r.get("status") == "done" and r.get("iterations")})
    if len(iters) > 1:
        out.write(
            f"**Note:** the finished runs were trained for different numbers of iterations "
            f"({', '.join(str(i) for i in iters)}); see `iterations` in results.csv.\n\n"
        )
    if not records:
        out.write("_No runs yet._\n")
        return out.getvalue()
    header = "| Method | " + " | ".join(scene_display(s) for s in scenes) + " | Average |\n"
    rule = "|---|" + "---|" * (len(scenes) + 1) + "\n"
    notes: List[str] = []
    for key, heading, higher, decimals in METRICS:
        cells = aggregate(records, key, scenes, methods)
        if not any(c.mean is not None for c in cells.values()):
            done = [r for r in records if r.get("status") == "done"]
            if done:
                notes.append(f"{heading.split()[0]} was not measured in any finished run" + (
                    " (LPIPS needs AlexNet's pretrained weights, which could not be read or fetched)." if key == "lpips" else "."
                ))
                continue
        out.write(f"## {heading}\n\n")
        out.write(header + rule)
        for m in methods:
            row = [names[m]]
            for col in list(scenes) + ["__avg__"]:
                bold = m in _best(cells, methods, col, higher)
                row.append(_cell_text(cells[(m, col)], decimals, bold, col == "__avg__"))
            out.write("| " + " | ".join(row) + " |\n")
        if key == "psnr" and baseline in methods:
            for m in methods:
                if m == baseline:
                    continue
                row = [f"Δ PSNR ({method_display(m)} − {method_display(baseline)})"]
                diffs = []
                for col in scenes:
                    a, b = cells[(m, col)], cells[(baseline, col)]
                    if a.mean is None or b.mean is None:
                        row.append("–")
                        continue
                    diffs.append(a.mean - b.mean)
                    row.append(_fmt(a.mean - b.mean, decimals, signed=True))
                # average: over the scenes where both have a value († when not all of them)
                if diffs:
                    text = _fmt(sum(diffs) / len(diffs), decimals, signed=True)
                    row.append(text + (f" † ({len(diffs)}/{len(scenes)} scenes)" if len(diffs) < len(scenes) else ""))
                else:
                    row.append("–")
                out.write("| " + " | ".join(row) + " |\n")
        out.write("\n")
    if heldout_curves and baseline in methods:
        out.write(steps_to_target_markdown(heldout_curves, scenes, methods, baseline, records, names))
    if any(
        c.scenes_covered < c.scenes_total
        for c in aggregate(records, "psnr", scenes, methods).values()
        if c.scenes_total > 1 and c.mean is not None
    ):
        notes.append("† averaged over the scenes that finished only; not comparable with a full average.")
    for n in notes:
        out.write(f"_{n}_\n\n")
    unfinished = [r for r in records if r.get("status") != "done"]
    out.write("## Runs that did not finish\n\n")
    if not unfinished:
        out.write("None: every run finished.\n")
    else:
        out.write("| Scene | Method | Seed | Status | Error (last lines) | Run folder |\n|---|---|---|---|---|---|\n")
        for r in sorted(
            unfinished,
            key=lambda r: (scenes.index(r["scene"]) if r["scene"] in scenes else 99, str(r["method"]), str(r["seed"])),
        ):
            out.write(
                f"| {scene_display(str(r['scene']))} | {names.get(str(r['method']), method_display(str(r['method'])))} | {r.get('seed')} | "
                f"{r.get('status')} | {_one_line(r.get('error')) or '–'} | `{r.get('run_dir', '')}` |\n"
            )
    return out.getvalue()


def steps_to_target_markdown(
    heldout_curves: Mapping[Tuple[str, str], Sequence[Curve]],
    scenes: Sequence[str],
    methods: Sequence[str],
    baseline: str = BASELINE,
    records: Sequence[Mapping[str, Any]] = (),
    names: Optional[Mapping[str, str]] = None,
) -> str:
    """The "steps to target" table: per method and scene, the fraction of the plain model's
    steps at which the seed-averaged held-out PSNR first reaches the plain model's final value
    (mean of its last 3 points); "not reached" otherwise. The average is over scenes where
    every method was measured; lower is faster. With ``records`` (finished runs with their
    measured ``sec_per_iter``), also the time to that value: the step reached times the mean
    seconds per training iteration of that method's runs on that scene (training only: no
    start-up, evaluation batches or checkpoints). ``names``: how the rows name the methods
    (default: :func:`method_names` of ``records``)."""
    names = {**{m: method_display(m) for m in methods}, **(names if names is not None else method_names(records))}
    per_scene = {
        s: steps_to_target({m: heldout_curves.get((s, m), ()) for m in methods}, baseline) for s in scenes
    }
    out = io.StringIO()
    out.write("## Steps to the plain model's final held-out PSNR ↓\n\n")
    out.write(
        f"Fraction of {method_display(baseline)}'s iterations after which the held-out PSNR curve "
        "(mean over seeds) first reaches the final value of "
        f"{method_display(baseline)}'s (mean of its last 3 points); {method_display(baseline)}'s own "
        "row shows how early its noisy curve touches that value.\n\n"
    )
    out.write(_per_method_rows(per_scene, scenes, methods, lambda v: f"{v:.2f}", names))
    seconds = _seconds_to_target(per_scene, heldout_curves, records, scenes, methods, baseline)
    if seconds:
        out.write("## Training seconds to the plain model's final held-out PSNR ↓\n\n")
        out.write(
            "The step of the table above times the mean measured seconds per training iteration of "
            "that method's runs on that scene (training iterations only, as the runs were timed; "
            "a comparison between methods needs runs timed on the same machine under the same load).\n\n"
        )
        out.write(_per_method_rows(seconds, scenes, methods, lambda v: f"{v:.0f} s", names))
    return out.getvalue()


def _seconds_to_target(per_scene, heldout_curves, records, scenes, methods, baseline):
    """``{scene: {method: seconds or None}}`` from the fractions, the baseline's last step and the
    runs' measured seconds per iteration; ``{}`` when no run has a measured time."""
    spi: Dict[Tuple[str, str], List[float]] = {}
    for r in records:
        v = r.get("sec_per_iter")
        if r.get("status") == "done" and isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
            spi.setdefault((str(r["scene"]), str(r["method"])), []).append(float(v))
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for s in scenes:
        base = heldout_curves.get((s, baseline))
        base_steps = mean_curve(base)[0] if base else []
        last = base_steps[-1] if base_steps else None
        row: Dict[str, Optional[float]] = {}
        for m, frac in per_scene[s].items():
            if (s, m) not in spi or last is None:
                continue
            row[m] = None if frac is None else frac * last * fmean(spi[(s, m)])
        out[s] = row
    return out if any(out.values()) else {}


def _per_method_rows(per_scene, scenes, methods, fmt, names) -> str:
    """A method x scene markdown table of values (None: "not reached", absent: "–") with the
    average over the scenes when every scene has a value."""
    out = io.StringIO()
    out.write("| Method | " + " | ".join(scene_display(s) for s in scenes) + " | Average |\n")
    out.write("|---|" + "---|" * (len(scenes) + 1) + "\n")
    for m in methods:
        row = [names[m]]
        vals = []
        for s in scenes:
            if m not in per_scene.get(s, {}):
                row.append("–")
                continue
            v = per_scene[s][m]
            row.append("not reached" if v is None else fmt(v))
            vals.append(v)
        measured = len(vals) == len(scenes)
        if measured and all(v is not None for v in vals):
            row.append(fmt(sum(vals) / len(vals)))
        elif measured:
            row.append(f"not reached on {sum(v is None for v in vals)}/{len(scenes)}")
        else:
            row.append("–")
        out.write("| " + " | ".join(row) + " |\n")
    out.write("\n")
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, str) and "\n" in value:
        return _one_line(value, limit=2000).replace("\\|", "|")
    return value


def results_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per run with :data:`CSV_COLUMNS` (empty cell = not measured)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def write_results_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    write_text(Path(path), results_csv(records))
    return Path(path)


PER_IMAGE_COLUMNS = ["protocol", "scene", "method", "seed", "image", "psnr", "ssim", "lpips", "run_dir"]


def write_per_image_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``results_per_image.csv``, results.csv's companion: one row per evaluated held-out view
    of every finished run (the record's ``per_image``: ns-eval's per-image metrics), so that an
    outlier view can be found."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        for view in r.get("per_image") or ():
            row = {**{k: r.get(k) for k in ("protocol", "scene", "method", "seed", "run_dir")}, **view}
            row["image"] = Path(str(view.get("image") or "")).name
            writer.writerow({k: _csv_value(row.get(k)) for k in PER_IMAGE_COLUMNS})
    write_text(Path(path), buf.getvalue())
    return Path(path)


def read_results_csv(path: Path) -> List[Dict[str, Any]]:
    """The rows of a ``results.csv`` with numbers parsed (empty cells become ``None``)."""
    rows = []
    with open(path, newline="", encoding="utf8") as fh:
        for row in csv.DictReader(fh):
            rec: Dict[str, Any] = dict(row)
            for k in ("psnr", "ssim", "lpips", "sec_per_iter", "train_seconds", "eval_seconds", "eval_image_scale"):
                rec[k] = _num(rec.get(k))
            for k in ("seed", "iterations", "views_evaluated", "views_held_out", "downscale_factor"):
                rec[k] = int(rec[k]) if rec.get(k) not in (None, "") else None
            rows.append(rec)
    return rows
