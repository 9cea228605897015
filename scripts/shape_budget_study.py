#!/usr/bin/env python
"""Does equilibration's gain last on shapes? The training-budget study for shape fits (issue 28,
point 2), rerunnable.

    python scripts/shape_budget_study.py                  # run / resume everything, then report
    python scripts/shape_budget_study.py --report-only    # rebuild the report from finished runs

A recipe of the shape trainer's own command, ``shape_fit.py --compare`` (every run resumable; a
finished run is reused, a killed one continues from its checkpoint), for each mesh (armadillo,
bunny), optimizer (Adam; SGD with momentum 0.9, as in ``scripts/orientation_study.py``) and
conditioner (``none``, ``equilibrate``), seeds 0, 1, 2:

1. learning rate, once per mesh x optimizer x conditioner, at the selection budget (1000 steps):
   every rate of one grid (``LR_GRID``, the orientation study's), each seed; the rate with the
   lowest *final training loss* (mean of the last 5 % of the steps, mean over seeds; a diverged
   seed rules the rate out) is kept: the shape trainer's own rule (``wcnerf.shape.compare``),
   which, unlike IoU or Chamfer, uses no test measurement, so the reported IoU is not the
   maximum of several noisy test values. When the best rate is the grid's lowest or highest, the
   grid is widened by one step of the 1-3-10 ladder on that side and the new rate run, until the
   best is inside the grid (at most ``max_widen`` times; :func:`select_lr`);
2. every budget (250, 500, 1000, 2000 steps; the cosine schedule over each run's own steps) at
   that rate; the 1000-step runs are the selection's own.

Runs live in ``<out>/runs/<mesh>/`` (``select-<opt>-<cond>-<N>steps``, ``budget-<opt>-<cond>-lr<lr>-<N>steps``:
one ``--compare`` folder each), logs in ``<out>/logs/``. The report, in ``<out>``:
``records.csv`` (one row per run), ``selection.json`` (each grid, its losses and the rate
kept), ``tables.md`` (per mesh x optimizer x budget: IoU, Chamfer-L1, normal consistency and the
floaters of both conditioners, mean ± sample std over seeds, and the gap equilibrate - none
paired by seed; :func:`tables_markdown` rebuilds it from records.csv alone) and
``gap_vs_budget.png`` (per mesh x optimizer: IoU gap and Chamfer gap vs budget, seeds as points).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import tyro

from wcnerf.report import format_duration

REPO = Path(__file__).resolve().parents[1]

BASELINE = "none"
LR_GRID: Dict[str, Tuple[float, ...]] = {"adam": (1e-3, 3e-3, 1e-2), "sgd": (0.1, 0.3, 1.0)}
"""The orientation study's grids (``scripts/orientation_study.py``)."""
LR_RULE = ("lowest final training loss (mean of the last 5% of steps, mean over seeds; a diverged seed rules a "
           "rate out), grid widened on the side of an edge best")
RECORD_COLUMNS = ["mesh", "optimizer", "conditioner", "seed", "budget", "lr", "iou", "chamfer_l1",
                  "normal_consistency", "floater_area", "floater_area_fraction", "floater_components",
                  "final_loss", "diverged", "run"]
# table rows: heading, records.csv column, decimals
METRICS = (("IoU", "iou", 4), ("Chamfer-L1", "chamfer_l1", 5), ("normal consistency", "normal_consistency", 4),
           ("floater area", "floater_area", 4), ("floater area fraction", "floater_area_fraction", 4),
           ("floater components", "floater_components", 1))


@dataclass
class ShapeBudgetStudy:
    """Run (or resume) the shape training-budget study and write its report."""

    out: Path = Path("outputs/shape_budget")
    """Runs under <out>/runs, logs under <out>/logs, the report in <out>."""
    meshes: Tuple[Path, ...] = (Path("../shared/data/meshes/armadillo.obj"), Path("../shared/data/meshes/bun_zipper.ply"))
    optimizers: Tuple[Literal["adam", "sgd"], ...] = ("adam", "sgd")
    conditioners: Tuple[str, ...] = (BASELINE, "equilibrate")
    seeds: Tuple[int, ...] = (0, 1, 2)
    budgets: Tuple[int, ...] = (250, 500, 1000, 2000)
    select_budget: int = 1000
    """Steps at which each learning rate is chosen (the runs of that budget are the selection's)."""
    adam_lrs: Tuple[float, ...] = LR_GRID["adam"]
    sgd_lrs: Tuple[float, ...] = LR_GRID["sgd"]
    max_widen: int = 3
    """At most this many rates added to a grid whose best rate sits on its edge."""
    batch_size: int = 2048
    resolution: int = 128
    """Marching-cubes grid of the final mesh (Chamfer, normal consistency, floaters)."""
    surface_points: int = 50_000
    eval_every: int = 50
    """Steps between two points of each run's IoU curve."""
    shape_args: str = ""
    """More shape_fit.py arguments for every run, as one string (e.g. a smaller field or fewer points in
    a test), given with an = sign: --shape-args="--field.width 32 --sampling.n-near 4000"."""
    jobs: int = 2
    """Commands run at once (each with one torch thread)."""
    report_only: bool = False

    # ------------------------------------------------------------------------------------------ layout
    def grid(self, optimizer: str) -> Tuple[float, ...]:
        return {"adam": self.adam_lrs, "sgd": self.sgd_lrs}[optimizer]

    def folder(self, mesh: Path, optimizer: str, conditioner: str, budget: int, lr: Optional[float] = None) -> Path:
        """The --compare folder of the selection (``lr`` None) or of one budget at one rate."""
        name = (f"select-{optimizer}-{conditioner}-{budget}steps" if lr is None
                else f"budget-{optimizer}-{conditioner}-lr{lr:g}-{budget}steps")
        return self.out / "runs" / Path(mesh).stem / name

    def run_folder(self, mesh: Path, optimizer: str, conditioner: str, budget: int, lr: float, seed: int) -> Path:
        """One run (``wcnerf.shape.compare``'s layout): the selection's at the selection budget."""
        folder = self.folder(mesh, optimizer, conditioner, budget, None if budget == self.select_budget else lr)
        return folder / "runs" / f"{conditioner}-lr{lr:g}-s{seed}"

    def command(self, mesh: Path, optimizer: str, conditioner: str, budget: int, lrs: Sequence[float],
                folder: Path) -> List[str]:
        return [sys.executable, str(REPO / "scripts" / "shape_fit.py"), str(mesh), "--compare", conditioner,
                "--optim.optimizer", optimizer, "--optim.steps", str(budget), "--compare.lrs", *(f"{x:g}" for x in lrs),
                "--compare.seeds", *(str(s) for s in self.seeds), "--output-dir", str(self.out / "runs"),
                "--run-name", folder.name, "--optim.batch-size", str(self.batch_size),
                "--evaluation.every", str(self.eval_every), "--evaluation.resolution", str(self.resolution),
                "--evaluation.surface-points", str(self.surface_points), "--threads", "1", "--no-progress",
                *shlex.split(self.shape_args)]

    def lanes(self) -> List[Tuple[Path, str, str]]:
        return [(Path(m), o, c) for m in self.meshes for o in self.optimizers for c in self.conditioners]

    # ------------------------------------------------------------------------------------------ running
    def main(self) -> int:
        if self.select_budget not in self.budgets:
            print(f"[shape-budget] --select-budget {self.select_budget} is not one of --budgets", file=sys.stderr)
            return 2
        self.out.mkdir(parents=True, exist_ok=True)
        selection = _read_json(self.out / "selection.json")
        failed: List[str] = []
        if not self.report_only:
            progress = Progress(self)
            lock = threading.Lock()

            def lane(item):
                mesh, opt, cond = item
                key = lane_key(mesh, opt, cond)
                try:
                    entry = self.run_lane(mesh, opt, cond, progress)
                except StudyError as exc:
                    print(f"[shape-budget] {key}: {exc}", flush=True)
                    return key
                with lock:
                    selection[key] = entry
                    _write_text(self.out / "selection.json", json.dumps(selection, indent=2) + "\n")
                return None

            with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
                failed = [k for k in pool.map(lane, self.lanes()) if k]
        records = self.records(selection)
        write_report(self.out, records)
        print((self.out / "tables.md").read_text())
        figure = ", gap_vs_budget.png" if (self.out / "gap_vs_budget.png").is_file() else ""
        print(f"[shape-budget] wrote {self.out}/records.csv ({len(records)} runs), tables.md{figure}"
              + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
        return 1 if failed else 0

    def run_lane(self, mesh: Path, opt: str, cond: str, progress: "Progress") -> dict:
        """The rate of one mesh x optimizer x conditioner, then every budget at it."""
        key = lane_key(mesh, opt, cond)
        select_folder = self.folder(mesh, opt, cond, self.select_budget)

        def scores_for(grid: Sequence[float]) -> Dict[float, float]:
            self.run_command(key, mesh, opt, cond, self.select_budget, grid, select_folder, progress)
            return {lr: loss_score(self.run_folder(mesh, opt, cond, self.select_budget, lr, s) for s in self.seeds)
                    for lr in grid}

        best, grid, history = select_lr(self.grid(opt), scores_for, self.max_widen)
        edge = best in (min(grid), max(grid)) and len(grid) > 1
        print(f"[shape-budget] {key}: lr {best:g} (grid {', '.join(f'{x:g}' for x in grid)})"
              + ("; still on the grid's edge after the widenings allowed" if edge else ""), flush=True)
        for budget in self.budgets:
            if budget != self.select_budget:
                self.run_command(key, mesh, opt, cond, budget, [best], self.folder(mesh, opt, cond, budget, best), progress)
        return {"mesh": Path(mesh).stem, "optimizer": opt, "conditioner": cond, "lr": best, "grid": grid,
                "select_budget": self.select_budget, "rule": LR_RULE, "edge": edge, "history": history}

    def run_command(self, key: str, mesh: Path, opt: str, cond: str, budget: int, lrs: Sequence[float],
                    folder: Path, progress: "Progress") -> None:
        todo = [(lr, s) for lr in lrs for s in self.seeds
                if not (folder / "runs" / f"{cond}-lr{lr:g}-s{s}" / "metrics.json").is_file()]
        if not todo and (folder / "comparison.json").is_file():
            return  # every run finished: nothing to start
        cmd = self.command(mesh, opt, cond, budget, lrs, folder)
        log = self.out / "logs" / f"{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        what = f"{key} {budget} steps, lr {', '.join(f'{x:g}' for x in lrs)}"
        work = len(todo) * budget
        progress.begin(what, work, log)
        t0 = time.monotonic()
        with open(log, "a") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        progress.end(what, work, rc, time.monotonic() - t0)
        if rc != 0:
            raise StudyError(f"{what}: shape_fit.py exited {rc} (log: {log})")

    # ------------------------------------------------------------------------------------------ records
    def records(self, selection: Mapping[str, dict]) -> List[Dict[str, object]]:
        """One row per finished run of the study (the rates from ``selection.json``)."""
        rows = []
        for mesh, opt, cond in self.lanes():
            entry = selection.get(lane_key(mesh, opt, cond))
            if not entry:
                continue
            for budget in sorted(self.budgets):
                for seed in self.seeds:
                    run = self.run_folder(mesh, opt, cond, budget, entry["lr"], seed)
                    metrics = _read_json(run / "metrics.json")
                    if metrics:
                        rows.append(record(Path(mesh).stem, opt, cond, seed, budget, entry["lr"], metrics,
                                           run.relative_to(self.out)))
        return rows


class StudyError(RuntimeError):
    pass


def lane_key(mesh: Path, optimizer: str, conditioner: str) -> str:
    return f"{Path(mesh).stem}-{optimizer}-{conditioner}"


def record(mesh: str, optimizer: str, conditioner: str, seed: int, budget: int, lr: float, metrics: Mapping,
           run: Path) -> Dict[str, object]:
    """A records.csv row from a run's metrics.json (IoU: the final IoU on the fixed random points)."""
    return {"mesh": mesh, "optimizer": optimizer, "conditioner": conditioner, "seed": seed, "budget": budget,
            "lr": lr, "iou": metrics.get("iou_points"), "chamfer_l1": metrics.get("chamfer_l1"),
            "normal_consistency": metrics.get("normal_consistency"), "floater_area": metrics.get("floater_area"),
            "floater_area_fraction": metrics.get("floater_area_fraction"),
            "floater_components": metrics.get("floater_components"), "final_loss": metrics.get("final_loss"),
            "diverged": bool(metrics.get("diverged")), "run": str(run)}


def loss_score(run_dirs) -> float:
    """The selection score of one rate: mean final training loss over its seeds; inf when a seed
    is missing or diverged (``wcnerf.shape.compare``'s rule)."""
    losses = []
    for run in run_dirs:
        v = (_read_json(Path(run) / "metrics.json") or {}).get("final_loss")
        if v is None or not math.isfinite(v):
            return math.inf
        losses.append(float(v))
    return math.fsum(losses) / len(losses) if losses else math.inf


# ---------------------------------------------------------------------------------------------- the rate
def ladder(x: float) -> float:
    """The value of the 1-3-10 ladder (1, 3, 10, 30, ... times a power of ten) nearest ``x`` in log scale."""
    k = math.floor(math.log10(x))
    return float(f"{min((c * 10.0**k for c in (1, 3, 10)), key=lambda c: abs(math.log(c / x))):.3g}")


def widen(grid: Sequence[float], best: float) -> Optional[List[float]]:
    """``grid`` with one more rate beyond the edge that ``best`` sits on (the grid's own step at
    that edge, put on the 1-3-10 ladder; a grid of one rate gets one more on each side), or None
    when ``best`` is inside the grid."""
    g = sorted(float(x) for x in grid)
    if best not in (g[0], g[-1]):
        return None

    def step(edge: float, ratio: float) -> float:  # ratio > 1 upward, < 1 downward
        new = ladder(edge * ratio)
        return new if (new > edge if ratio > 1 else new < edge) else float(f"{edge * ratio:.3g}")

    if len(g) == 1:
        return [step(g[0], 1 / math.sqrt(10)), g[0], step(g[0], math.sqrt(10))]
    if best == g[-1]:
        return g + [step(g[-1], g[-1] / g[-2])]
    return [step(g[0], g[0] / g[1])] + g


def select_lr(grid: Sequence[float], scores_for: Callable[[Sequence[float]], Mapping[float, float]],
              max_widen: int = 3) -> Tuple[float, List[float], List[dict]]:
    """The best rate (lowest score; the smaller rate on a tie) of ``grid``, the grid widened on
    the side of its edge while the best sits there (at most ``max_widen`` times).

    ``scores_for(grid)`` runs (or reuses) every rate of the grid and returns {rate: score}.
    Returns the rate, the final grid and each round's grid, scores and best."""
    g = sorted(float(x) for x in grid)
    history: List[dict] = []
    for round_ in range(max_widen + 1):
        scores = scores_for(g)
        best = min(g, key=lambda lr: (scores.get(lr, math.inf), lr))
        history.append({"grid": list(g), "best": best,
                        "scores": {f"{lr:g}": (None if not math.isfinite(scores.get(lr, math.inf)) else scores[lr])
                                   for lr in g}})
        wider = widen(g, best) if round_ < max_widen else None
        if wider is None:
            break
        g = wider
    return best, g, history


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """Progress lines with an ETA, counted in training steps of the runs still to train."""

    def __init__(self, study: ShapeBudgetStudy):
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.done = 0
        self.planned = self._plan(study)

    @staticmethod
    def _plan(study: ShapeBudgetStudy) -> int:
        """Steps of the runs not finished yet, without widenings (they are added when they come)."""
        steps = 0
        for mesh, opt, cond in study.lanes():
            folder = study.folder(mesh, opt, cond, study.select_budget)
            for lr in study.grid(opt):
                for s in study.seeds:
                    if not (folder / "runs" / f"{cond}-lr{lr:g}-s{s}" / "metrics.json").is_file():
                        steps += study.select_budget
            steps += len(study.seeds) * sum(b for b in study.budgets if b != study.select_budget)  # rate unknown yet
        return steps

    def begin(self, what: str, work: int, log: Path) -> None:
        with self.lock:
            self.planned = max(self.planned, self.done + work)
            print(f"[shape-budget] start {what}: {work:,} steps to train (log: {log})", flush=True)

    def end(self, what: str, work: int, rc: int, seconds: float) -> None:
        with self.lock:
            self.done += work
            self.planned = max(self.planned, self.done)
            elapsed = time.monotonic() - self.start
            left = self.planned - self.done
            eta = format_duration(left * elapsed / self.done) if self.done and left else "0s" if not left else "?"
            print(f"[shape-budget] {'done' if rc == 0 else f'FAILED (exit {rc})'} {what} in {format_duration(seconds)} | "
                  f"{self.done:,} of ~{self.planned:,} steps ({100 * self.done / max(1, self.planned):.0f}%), "
                  f"elapsed {format_duration(elapsed)}, ETA {eta}", flush=True)


# ---------------------------------------------------------------------------------------------- the report
def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _write_text(path: Path, text: str) -> None:
    from wcnerf.atomic import write_text

    write_text(path, text)


def _num(v) -> Optional[float]:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def records_csv(records: Sequence[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECORD_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RECORD_COLUMNS})
    return buf.getvalue()


def read_records(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf8") as fh:
        return list(csv.DictReader(fh))


def _ordered(values) -> list:
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _conditioners(records: Sequence[Mapping[str, object]]) -> List[str]:
    conds = _ordered(str(r["conditioner"]) for r in records)
    return sorted(conds, key=lambda c: (c != BASELINE, conds.index(c)))


def per_seed(records: Sequence[Mapping[str, object]], mesh: str, optimizer: str, conditioner: str, budget: int,
             key: str) -> Dict[int, float]:
    """{seed: value} of one metric of one cell (finite values only)."""
    out = {}
    for r in records:
        if (str(r["mesh"]), str(r["optimizer"]), str(r["conditioner"]), int(r["budget"])) == (mesh, optimizer, conditioner, budget):
            v = _num(r.get(key))
            if v is not None:
                out[int(r["seed"])] = v
    return out


def paired_gaps(records: Sequence[Mapping[str, object]], mesh: str, optimizer: str, budget: int, key: str,
                conditioner: str, baseline: str = BASELINE) -> Dict[int, float]:
    """{seed: conditioner - baseline} over the seeds both have."""
    a = per_seed(records, mesh, optimizer, conditioner, budget, key)
    b = per_seed(records, mesh, optimizer, baseline, budget, key)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _gap_cell(values, decimals: int, n_seeds: int) -> str:
    from wcnerf.report import format_cell, seed_stats

    st = seed_stats(values)
    text = format_cell(st, decimals)
    if st.mean is not None and st.mean > 0:
        text = "+" + text
    return text + (f" (n={st.n})" if st.mean is not None and st.n != n_seeds else "")


def tables_markdown(records: Sequence[Mapping[str, object]]) -> str:
    """tables.md from the records alone (records.csv's rows, as read or as written): per mesh x
    optimizer x budget, each metric of each conditioner (mean ± sample std over seeds) and the gap
    conditioner - none paired by seed (mean ± sample std of the per-seed differences)."""
    from wcnerf.report import format_cell, seed_stats, stat_sentence

    conds = _conditioners(records)
    others = [c for c in conds if c != BASELINE]
    lines = ["# Shape training-budget study", "",
             f"Occupancy fits; each cell {stat_sentence()}; a gap is `conditioner - {BASELINE}` per seed (the same "
             "seed, so the same initial weights' draw and batches), then the mean ± sample std of those "
             "differences. IoU on the fixed random points of the bounding box; Chamfer-L1 and the floater area in "
             "the normalised [-1, 1]^3 frame; floaters: the extracted mesh's surface outside its largest "
             "connected component (area, fraction of the mesh's area, number of components). Each conditioner "
             "trains at one learning rate per mesh and optimizer (its lr below) at every budget, with its "
             "schedule over its own steps.", ""]
    for mesh in _ordered(str(r["mesh"]) for r in records):
        for opt in _ordered(str(r["optimizer"]) for r in records if str(r["mesh"]) == mesh):
            rows = [r for r in records if str(r["mesh"]) == mesh and str(r["optimizer"]) == opt]
            seeds = sorted({int(r["seed"]) for r in rows})
            lrs = "; ".join(f"{c} " + ", ".join(f"{x:g}" for x in sorted({float(r["lr"]) for r in rows
                                                                            if str(r["conditioner"]) == c}))
                            for c in conds if any(str(r["conditioner"]) == c for r in rows))
            lines += [f"## {mesh}, {opt.upper()}" + (" (momentum 0.9)" if opt == "sgd" else ""), "",
                      f"Seeds {', '.join(str(s) for s in seeds)}; lr {lrs}.", "",
                      "| budget | metric | " + " | ".join(conds) + "".join(f" | {c} - {BASELINE}" for c in others) + " |",
                      "|---|---|" + "---|" * (len(conds) + len(others))]
            for budget in sorted({int(r["budget"]) for r in rows}):
                for title, key, d in METRICS:
                    cells = [format_cell(seed_stats(per_seed(rows, mesh, opt, c, budget, key).values()), d)
                             for c in conds]
                    cells += [_gap_cell(paired_gaps(rows, mesh, opt, budget, key, c).values(), d, len(seeds))
                              for c in others]
                    lines.append(f"| {budget} | {title} | " + " | ".join(cells) + " |")
            lines.append("")
    if not records:
        lines += ["_No finished runs yet._", ""]
    return "\n".join(lines)


def plot_gaps(records: Sequence[Mapping[str, object]]):
    """The figure of gap_vs_budget.png (None with nothing to draw): a row per mesh x optimizer, IoU
    gap and Chamfer-L1 gap vs budget, each seed a point and the mean a line, for each conditioner
    against ``none``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [(m, o) for m in _ordered(str(r["mesh"]) for r in records)
              for o in _ordered(str(r["optimizer"]) for r in records if str(r["mesh"]) == m)]
    others = [c for c in _conditioners(records) if c != BASELINE]
    if not groups or not others:
        return None
    fig = Figure(figsize=(10, 3.2 * len(groups)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    markers = "os^Dv<>"
    for row, (mesh, opt) in enumerate(groups):
        rows = [r for r in records if str(r["mesh"]) == mesh and str(r["optimizer"]) == opt]
        budgets = sorted({int(r["budget"]) for r in rows})
        for col, (key, title) in enumerate((("iou", "IoU gap"), ("chamfer_l1", "Chamfer-L1 gap"))):
            ax = axes[row][col]
            ax.axhline(0.0, color="0.5", lw=0.8)
            for i, cond in enumerate(others):
                color = f"C{i}"
                gaps = {b: paired_gaps(rows, mesh, opt, b, key, cond) for b in budgets}
                for j, seed in enumerate(sorted({s for g in gaps.values() for s in g})):
                    pts = [(b, g[seed]) for b, g in gaps.items() if seed in g]
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=markers[j % len(markers)],
                               s=22, alpha=0.7, label=f"seed {seed}" if i == 0 else None)
                means = [(b, sum(g.values()) / len(g)) for b, g in gaps.items() if g]
                ax.plot([p[0] for p in means], [p[1] for p in means], color=color, lw=1.5,
                        label=f"{cond} - {BASELINE} (mean)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.minorticks_off()
            ax.set_xlabel("training budget (steps)")
            ax.set_ylabel(title)
            ax.set_title(f"{mesh}, {opt}: {title}\n(above 0: the conditioner {'better' if key == 'iou' else 'worse'})",
                         fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out: Path, records: Sequence[Mapping[str, object]]) -> None:
    """records.csv, then tables.md and gap_vs_budget.png from what records.csv holds."""
    _write_text(out / "records.csv", records_csv(records))
    rows = read_records(out / "records.csv")  # the report is what the records say, as a reader reads them
    _write_text(out / "tables.md", tables_markdown(rows))
    fig = plot_gaps(rows)
    if fig is not None:
        from wcnerf.atomic import atomic_path

        with atomic_path(out / "gap_vs_budget.png") as tmp:
            fig.savefig(tmp, dpi=110)


if __name__ == "__main__":
    sys.exit(tyro.cli(ShapeBudgetStudy, description=__doc__).main())
