#!/usr/bin/env python
"""Does equilibration's gain last? The training-budget study for NeRF (issue 28), rerunnable.

    python scripts/budget_study.py                    # run / resume everything, then report
    python scripts/budget_study.py --report-only      # rebuild the tables and figures
    # the paper's scale, on GPUs (each run keeps its checkpoints for the curve):
    python scripts/budget_study.py --protocol paper --budgets 25000 50000 100000 200000 \
        --set save_only_latest_checkpoint=false --results outputs/budget-paper

A recipe of the project's own commands, each resumable:

1. ``wcnerf-compare --protocol budget --max-num-iterations N`` for every budget N: the ``cpu``
   protocol's ``nerf-small`` vs ``e-nerf-small`` on each scene and seed, each run's learning
   rate decaying over its own N (as a user trains), into ``<out>/budget[-<N>it]/``;
2. the held-out curve of the longest runs: their checkpoints at the other budgets' steps,
   evaluated on every held-out view by nerfstudio's ``ns-eval`` (``wcnerf.eval.ns_eval``);
3. the report, in ``--results`` (default ``docs/results/budget/``): ``records.csv`` (one row
   per run), ``curve.csv`` (one row per evaluated checkpoint), ``tables.md`` (per scene and
   budget: PSNR and SSIM of both, and the gap E-NeRF - NeRF paired by seed; mean ± sample std
   over seeds), ``gap_vs_budget.png`` and ``heldout_curve.png``. :func:`tables_markdown`
   rebuilds ``tables.md`` from the two CSV files alone; ``tests/test_published_tables.py``
   checks that the published tables are what their records give.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import tyro

from wcnerf.report import format_cell, seed_stats, stat_sentence

REPO = Path(__file__).resolve().parents[1]

METHODS = ("nerf", "e-nerf")
RECORD_COLUMNS = ["scene", "method", "seed", "budget", "psnr", "ssim", "views_evaluated", "status"]
CURVE_COLUMNS = ["scene", "method", "seed", "budget", "step", "psnr", "ssim"]


@dataclass
class BudgetStudy:
    """Run (or resume) the training-budget study and write its tables and figures."""

    out: Path = Path("outputs/compare")
    """The harness's output root (one folder per budget)."""
    protocol: str = "budget"
    """The comparison protocol run at each budget (`budget`: the `cpu` protocol keeping every
    100th checkpoint; `paper` on GPUs, with `--set save_only_latest_checkpoint=false`)."""
    set: Tuple[str, ...] = ()
    """KEY=VALUE overrides of every run's config, as `wcnerf-compare --set`."""
    results: Path = REPO / "docs/results/budget"
    """Where records.csv, curve.csv, tables.md and the figures go."""
    budgets: Tuple[int, ...] = (700, 1500, 3000, 6000)
    scenes: Tuple[str, ...] = ("fern", "flower")
    seeds: Tuple[int, ...] = (0, 1)
    workers: int = 2
    """Runs at once, and then held-out curve evaluations at once (one torch thread each)."""
    data_root: Tuple[Path, ...] = (Path("../shared/data/llff"),)
    """Extra folders to look LLFF scene names up in."""
    curve_threads: int = 1
    """Torch threads of each curve evaluation (`--workers` of them run at once)."""
    report_only: bool = False

    def folder(self, budget: int) -> Path:
        from wcnerf.eval.protocols import load_protocol

        from wcnerf.eval.cli import Selection, selected_protocol

        return self.out / selected_protocol(load_protocol(self.protocol), Selection(set=self.set, max_num_iterations=budget)).name

    def run(self) -> int:
        from wcnerf.eval.cli import Compare, Engine, Selection

        worst = 0
        for budget in sorted(self.budgets):
            print(f"=== budget {budget}: {self.folder(budget)}", flush=True)
            code = Compare(
                protocol=self.protocol,
                select=Selection(scenes=self.scenes, methods=METHODS, seeds=self.seeds, max_num_iterations=budget,
                                 data_root=self.data_root, set=self.set),
                engine=Engine(workers=self.workers),
                output_root=self.out,
            ).main()
            if code == 130:
                return code
            worst = max(worst, code)
        return worst

    def records(self) -> List[Dict[str, object]]:
        from wcnerf.eval.reports import collect_records

        rows = []
        for budget in sorted(self.budgets):
            for r in collect_records(self.folder(budget)):
                rows.append({"budget": budget, "run_dir": r["abs_run_dir"],
                             **{k: r.get(k) for k in RECORD_COLUMNS if k != "budget"}})
        return rows

    def evaluate_curve(self, records: Sequence[Mapping[str, object]]) -> List[Dict[str, object]]:
        """Every held-out view at each other budget's step of the longest runs, ``--workers``
        checkpoints at once (resumable: a checkpoint evaluated before is read back)."""
        from concurrent.futures import ThreadPoolExecutor

        longest = max(self.budgets)
        steps = sorted(b for b in self.budgets if b < longest)
        finished = [r for r in records if r["budget"] == longest and r["status"] == "done"]
        points = [(r, step) for r in finished for step in steps]  # run by run, a run's steps in order
        progress = CurveProgress(sum(not checkpoint_result(Path(str(r["run_dir"])), step).is_file() for r, step in points),
                                 self.out / "budget_curve.log")

        def evaluate(point):
            return evaluate_checkpoint(Path(str(point[0]["run_dir"])), point[1], self.curve_threads, progress)

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            evaluated = list(pool.map(evaluate, points))
        rows = []
        for k, r in enumerate(finished):
            for step, metrics in zip(steps, evaluated[k * len(steps):(k + 1) * len(steps)]):
                if metrics is not None:
                    rows.append({"scene": r["scene"], "method": r["method"], "seed": r["seed"], "budget": longest,
                                 "step": step, "psnr": metrics.get("psnr"), "ssim": metrics.get("ssim")})
            rows.append({"scene": r["scene"], "method": r["method"], "seed": r["seed"], "budget": longest,
                         "step": longest, "psnr": r["psnr"], "ssim": r["ssim"]})
        return rows

    def main(self) -> int:
        if self.data_root:
            os.environ["WCNERF_DATA"] = os.pathsep.join(
                [str(p.expanduser().resolve()) for p in self.data_root] + [os.environ.get("WCNERF_DATA", "")]).strip(os.pathsep)
        code = 0 if self.report_only else self.run()
        records = self.records()
        curve = [] if self.report_only else self.evaluate_curve(records)
        self.results.mkdir(parents=True, exist_ok=True)
        _write_csv(self.results / "records.csv", RECORD_COLUMNS, records)
        if curve or not (self.results / "curve.csv").is_file():
            _write_csv(self.results / "curve.csv", CURVE_COLUMNS, curve)
        records, curve = read_csv(self.results / "records.csv"), read_csv(self.results / "curve.csv")
        (self.results / "tables.md").write_text(tables_markdown(records, curve), encoding="utf8")
        figures = [plot_gap(records, self.results / "gap_vs_budget.png"),
                   plot_curve(curve, self.results / "heldout_curve.png", records)]
        print(f"report: {self.results}/tables.md" + "".join(f", {f.name}" for f in figures if f), flush=True)
        return code


class CurveProgress:
    """``curve: 3/24 checkpoints evaluated, 12m left`` after each ns-eval, on the terminal and
    appended to a log file (the ETA from the ones evaluated in this call)."""

    def __init__(self, total: int, log: Path) -> None:
        import threading
        import time

        self.total, self.log, self.done, self.start = total, log, 0, time.monotonic()
        self.lock = threading.Lock()

    def step(self, what: str) -> None:
        import time

        from wcnerf.report import format_duration

        with self.lock:
            self.done += 1
            left = (time.monotonic() - self.start) / self.done * (self.total - self.done)
            line = f"curve: {self.done}/{self.total} checkpoints evaluated ({what}), {format_duration(left)} left"
            print(line, flush=True)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf8") as fh:
                fh.write(line + "\n")


def checkpoint_result(run_dir: Path, step: int) -> Path:
    """Where the held-out evaluation of a run's checkpoint at ``step`` is kept."""
    return run_dir / "heldout_curve" / f"step-{step}" / "ns_eval.json"


def evaluate_checkpoint(run_dir: Path, step: int, threads: int,
                        progress: Optional[CurveProgress] = None) -> Optional[Dict[str, float]]:
    """ns-eval of one checkpoint of a run on every held-out view it evaluates (its output in
    ``ns_eval.log`` beside the result); None when that checkpoint does not exist (the run did
    not keep it)."""
    import json

    import yaml

    result = checkpoint_result(run_dir, step)
    out = result.parent
    if result.is_file():
        return json.loads(result.read_text())["results"]
    (config_file,) = sorted(run_dir.glob("ns/*/*/run/config.yml"))  # the config ns-train wrote
    config = yaml.load(config_file.read_text(), Loader=yaml.Loader)
    if not (config.get_checkpoint_dir() / f"step-{step:09d}.ckpt").is_file():
        return None
    config.load_step = step
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yml").write_text(yaml.dump(config), encoding="utf8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"ns-eval {run_dir} at step {step} (log: {out / 'ns_eval.log'})", flush=True)
    with open(out / "ns_eval.log", "w", encoding="utf8") as log:
        code = subprocess.run([sys.executable, "-m", "wcnerf.eval.ns_eval", "--load-config", str(out / "config.yml"),
                               "--output-path", str(result)], env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not result.is_file():
        print(f"ns-eval failed (exit {code}) at step {step} of {run_dir}: the curve leaves this point out; "
              f"see {out / 'ns_eval.log'}", file=sys.stderr, flush=True)
        return None
    if progress is not None:
        progress.step(f"{run_dir.name} of {run_dir.parent.parent.name} {run_dir.parent.name}, step {step}")
    return json.loads(result.read_text())["results"]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    path.write_text(buf.getvalue(), encoding="utf8")


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------
# Tables and figures, from the CSV files alone
# --------------------------------------------------------------------------------------


def _done(rows: Sequence[Mapping[str, str]]) -> List[Mapping[str, str]]:
    return [r for r in rows if r.get("status", "done") == "done" and r.get("psnr") not in (None, "")]


def _value(rows: Sequence[Mapping[str, str]], scene: str, method: str, budget: int, key: str) -> Dict[int, float]:
    """Seed -> value of one (scene, method, budget)."""
    return {int(r["seed"]): float(r[key]) for r in rows
            if r["scene"] == scene and r["method"] == method and int(r["budget"]) == budget and r.get(key) not in (None, "")}


def gaps(rows: Sequence[Mapping[str, str]], scene: str, budget: int, key: str = "psnr") -> Dict[int, float]:
    """E-NeRF - NeRF per seed (only seeds where both finished: the gap is paired by seed)."""
    a, b = _value(rows, scene, "e-nerf", budget, key), _value(rows, scene, "nerf", budget, key)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _scenes(rows: Sequence[Mapping[str, str]]) -> List[str]:
    return list(dict.fromkeys(r["scene"] for r in rows))


def tables_markdown(records: Sequence[Mapping[str, str]], curve: Sequence[Mapping[str, str]]) -> str:
    """The study's tables from its records (``records.csv``) and curve points (``curve.csv``)."""
    done = _done(records)
    budgets = sorted({int(r["budget"]) for r in done})
    lines = [
        "# Training-budget study: nerf-small vs e-nerf-small",
        "",
        f"Cells are {stat_sentence()}; Δ is E-NeRF − NeRF paired by seed (both finished). "
        "Each run's learning rate decays 5e-3 → 5e-4 over its own budget; held-out metrics over every "
        "held-out view (fern 3, flower 5), images at factor 8, one torch thread per run.",
        "",
    ]
    for scene in _scenes(done):
        lines += [f"### {scene}", "",
                  "| iterations | seeds | NeRF PSNR | E-NeRF PSNR | Δ PSNR | NeRF SSIM | E-NeRF SSIM | Δ SSIM |",
                  "|---|---|---|---|---|---|---|---|"]
        for budget in budgets:
            cells = []
            for key, d in (("psnr", 2), ("ssim", 3)):
                cells += [format_cell(seed_stats(_value(done, scene, m, budget, key).values()), d) for m in ("nerf", "e-nerf")]
                g = gaps(done, scene, budget, key)
                cells.append(format_cell(seed_stats(g.values()), d) if g else "–")
            seeds = sorted(gaps(done, scene, budget))
            lines.append(f"| {budget} | {', '.join(map(str, seeds)) or '–'} | " + " | ".join(cells) + " |")
        lines.append("")
    points = _done(curve)
    if points:
        longest = max(int(r["budget"]) for r in points)
        steps = sorted({int(r["step"]) for r in points})
        lines += [f"### Held-out curve of the {longest}-iteration runs", "",
                  f"PSNR on every held-out view at their checkpoints (the learning rate still decaying over {longest}); "
                  f"{stat_sentence()}.", "",
                  "| scene | step | NeRF | E-NeRF | Δ |", "|---|---|---|---|---|"]
        for scene in _scenes(points):
            for step in steps:
                at = [dict(r, budget=str(step)) for r in points if r["scene"] == scene and int(r["step"]) == step]
                if not at:
                    continue
                cells = [format_cell(seed_stats(_value(at, scene, m, step, "psnr").values()), 2) for m in ("nerf", "e-nerf")]
                g = gaps(at, scene, step)
                lines.append(f"| {scene} | {step} | " + " | ".join(cells) + f" | {format_cell(seed_stats(g.values()), 2) if g else '–'} |")
        lines.append("")
    return "\n".join(lines)


def plot_gap(records: Sequence[Mapping[str, str]], path: Path) -> Optional[Path]:
    """Δ PSNR (E-NeRF − NeRF) against the budget, one panel per scene: each seed a point, the
    mean a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _done(records)
    scenes = _scenes(done)
    if not scenes:
        return None
    fig, axes = plt.subplots(1, len(scenes), figsize=(4.2 * len(scenes), 3.4), squeeze=False)
    for ax, scene in zip(axes[0], scenes):
        budgets = sorted({int(r["budget"]) for r in done if r["scene"] == scene})
        means = []
        for b in budgets:
            g = gaps(done, scene, b)
            ax.scatter([b] * len(g), list(g.values()), s=18, color="tab:blue", alpha=0.7)
            for seed, v in g.items():
                ax.annotate(str(seed), (b, v), textcoords="offset points", xytext=(4, 0), fontsize=7)
            means.append(seed_stats(g.values()).mean)
        ax.plot(budgets, means, color="tab:blue", label="mean over seeds")
        ax.axhline(0, color="0.5", lw=0.8)
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, -0.05), max(high, 0.05))  # the zero line always in view: where the gap has closed
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the budgets are labelled
        ax.set_xlabel("training budget (iterations; LR decays over each)")
        ax.set_ylabel("Δ held-out PSNR, E-NeRF − NeRF (dB)")
        ax.set_title(scene)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve(curve: Sequence[Mapping[str, str]], path: Path,
               records: Sequence[Mapping[str, str]] = ()) -> Optional[Path]:
    """Held-out PSNR of the longest runs at their checkpoints, one panel per scene: per method
    the mean over seeds with a min-max band; beside them, as crosses, the mean final PSNR of the
    shorter budgets' own runs (their learning rate decayed over fewer iterations)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wcnerf.atomic import atomic_path
    from wcnerf.report.curves import BANDS, draw_band

    points = _done(curve)
    scenes = _scenes(points)
    if not scenes:
        return None
    longest = max(int(r["budget"]) for r in points)
    finals = [r for r in _done(records) if int(r["budget"]) < longest]
    fig = Figure(figsize=(4.6 * len(scenes), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scenes), squeeze=False)[0]
    for ax, scene in zip(axes, scenes):
        for i, (method, name) in enumerate((("nerf", "NeRF"), ("e-nerf", "E-NeRF"))):
            by_seed: Dict[int, List[Tuple[int, float]]] = {}
            for r in points:
                if r["scene"] == scene and r["method"] == method:
                    by_seed.setdefault(int(r["seed"]), []).append((int(r["step"]), float(r["psnr"])))
            seeds = [sorted(pts) for pts in by_seed.values()]
            draw_band(ax, [([s for s, _ in c], [v for _, v in c]) for c in seeds], color=f"C{i}", marker="o",
                      label=f"{name}, {longest} run ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})")
            own = sorted({int(r["budget"]) for r in finals if r["scene"] == scene and r["method"] == method})
            means = [seed_stats(_value(finals, scene, method, b, "psnr").values()).mean for b in own]
            ax.scatter(own, means, marker="x", color=f"C{i}", s=40, label=f"{name}, each budget's own run (mean)")
        ax.set_title(f"{scene}: held-out PSNR, every held-out view\nlines: mean over seeds; band: {BANDS['minmax']}",
                     fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("held-out PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


if __name__ == "__main__":
    sys.exit(tyro.cli(BudgetStudy).main())
