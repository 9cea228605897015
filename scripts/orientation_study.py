#!/usr/bin/env python
"""Which E is E-NeRF? The equilibration orientation study (issue 11), rerunnable.

    python scripts/orientation_study.py                       # everything, 2 commands at a time
    python scripts/orientation_study.py --report-only         # rebuild study.md from finished runs

It is a recipe of the project's own commands, each resumable (finished runs are reused):

* NeRF: ``compare_llff.py --protocol cpu`` on fern and flower, seeds 0,1,2, conditioners
  none / equilibrate-out / equilibrate-in / weight-norm (one command per scene);
* shapes: ``shape_fit.py --compare`` on the armadillo and the bunny, seeds 0,1,2, with Adam
  and with SGD (momentum 0.9), the same four conditioners, each at its best learning rate of
  one grid per optimizer (lowest final training loss), 400 steps, IoU curve every 20 steps.

Then ``<out>/study.md``: final held-out PSNR and IoU (mean ± sample std over seeds, from
:mod:`wcnerf.report`), IoU at 15% of the steps, steps to the plain model's final value, and the
best conditioner of each column.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import tyro

REPO = Path(__file__).resolve().parents[1]

CONDITIONERS = ("none", "equilibrate-out", "equilibrate-in", "weight-norm")
LR_GRID = {"adam": ("1e-3", "3e-3", "1e-2"), "sgd": ("0.1", "0.3", "1.0")}
SHAPE_ARGS = ["--optim.steps", "400", "--optim.batch-size", "2048", "--evaluation.every", "20",
              "--evaluation.resolution", "96", "--evaluation.surface-points", "20000", "--threads", "1", "--no-progress"]


@dataclass
class Study:
    """Run (or resume) the equilibration orientation study and write study.md."""

    out: Path = Path("outputs/orientation")
    scenes: Tuple[str, ...] = ("fern", "flower")
    meshes: Tuple[Path, ...] = (Path("../shared/data/meshes/armadillo.obj"), Path("../shared/data/meshes/bun_zipper.ply"))
    optimizers: Tuple[str, ...] = ("adam", "sgd")
    seeds: str = "0,1,2"
    conditioners: Tuple[str, ...] = CONDITIONERS
    data_root: Tuple[Path, ...] = (Path("../shared/data/llff"),)
    """Extra folders to look LLFF scene names up in."""
    jobs: int = 2
    """Commands run at once (each uses one thread)."""
    report_only: bool = False

    def nerf_command(self, scene: str) -> List[str]:
        cmd = [sys.executable, str(REPO / "scripts/compare_llff.py"), "--protocol", "cpu", "--scenes", scene,
               "--methods", *self.conditioners, "--seeds", *self.seeds.split(","), "--output-root", str(self.out)]
        if self.data_root:  # one flag, every root (a repeated flag would keep only the last)
            cmd += ["--data-root", *(str(root) for root in self.data_root)]
        return cmd

    def shape_command(self, mesh: Path, optimizer: str) -> List[str]:
        return [sys.executable, str(REPO / "scripts/shape_fit.py"), str(mesh), "--compare", *self.conditioners,
                "--optim.optimizer", optimizer, "--compare.lrs", *LR_GRID[optimizer],
                "--compare.seeds", *self.seeds.split(","), "--output-dir", str(self.out / "shape"), *SHAPE_ARGS]

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        commands = [(f"nerf-{s}", self.nerf_command(s)) for s in self.scenes]
        commands += [(f"shape-{Path(m).stem}-{o}", self.shape_command(m, o)) for m in self.meshes for o in self.optimizers]
        failed = []
        if not self.report_only:
            def run(item):
                name, cmd = item
                log = self.out / f"{name}.log"
                print(f"[study] {name}: {' '.join(cmd)}  (log: {log})", flush=True)
                with open(log, "a") as fh:
                    rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
                print(f"[study] {name}: exit {rc}", flush=True)
                return name, rc

            with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
                failed = [name for name, rc in pool.map(run, commands) if rc != 0]
        else:  # the report also needs the NeRF tables rebuilt from the run folders
            subprocess.call(self.nerf_command(self.scenes[0]) + ["--report-only"], stdout=subprocess.DEVNULL)
        text = study_markdown(self)
        (self.out / "study.md").write_text(text)
        print(text)
        print(f"[study] wrote {self.out / 'study.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


def _frac(v) -> str:
    return "–" if v == "–" else "not reached" if v is None else f"{v:.2f}"


def _bold_best(rows: dict, stats: dict, col: int, d: int, higher: bool = True) -> None:
    """Cell ``col`` of each row from its :class:`wcnerf.report.Stats` (``stats[row]``), the best
    mean in bold (:func:`wcnerf.report.best_keys`); keeps a suffix already in the cell."""
    from wcnerf.report import best_keys, format_cell

    best = best_keys({k: st.mean for k, st in stats.items()}, higher)
    for k, st in stats.items():
        rows[k][col] = format_cell(st, d, bold_it=k in best) + rows[k][col]


def nerf_section(study: Study) -> List[str]:
    from wcnerf.analysis.curves import steps_to_target
    from wcnerf.eval.runs import CURVES_FILE, read_json
    from wcnerf.eval.table import read_results_csv
    from wcnerf.report import seed_stats, stat_sentence

    csv = study.out / "cpu" / "results.csv"
    if not csv.is_file():
        return ["_NeRF: no results yet._", ""]
    seeds = {int(x) for x in study.seeds.split(",")}
    records = [r for r in read_results_csv(csv) if r.get("status") == "done" and int(r["seed"]) in seeds]
    labels = {c: ("nerf" if c == "none" else c) for c in study.conditioners}
    rows = {c: [c] for c in study.conditioners}
    psnr = []  # per scene: {conditioner: Stats}
    for scene in study.scenes:
        curves = {}
        psnr.append({})
        for c in study.conditioners:
            rs = [r for r in records if r["scene"] == scene and r["method"] == labels[c]]
            psnr[-1][c] = seed_stats(r["psnr"] for r in rs)
            rows[c].append(f" (n={len(rs)})" if len(rs) != len(seeds) else "")  # the cell goes before it
            curves[c] = []
            for r in rs:
                data = read_json(study.out / "cpu" / r["run_dir"] / CURVES_FILE) or {}
                held = data.get("heldout") or {}
                if held.get("step"):
                    curves[c].append((held["step"], held["psnr"]))
        reach = steps_to_target(curves, "none")
        for c in study.conditioners:
            rows[c].append(_frac(reach.get(c, "–")))
    for i in range(len(study.scenes)):
        _bold_best(rows, psnr[i], 1 + 2 * i, 2)
    head = "| conditioner | " + " | ".join(f"{s} PSNR | {s} steps to target" for s in study.scenes) + " |"
    return ["## NeRF (cpu protocol: nerf-small, 700 iterations, factor 8)", "",
            f"Held-out PSNR over all held-out views (ns-eval), {stat_sentence(len(seeds))}; steps to target: "
            "fraction of the plain model's iterations after which the seed-averaged held-out PSNR curve "
            "(a held-out ray batch every 50 iterations) first reaches the plain model's final value.", "",
            head, "|---|" + "---|---|" * len(study.scenes)] + ["| " + " | ".join(r) + " |" for r in rows.values()] + [""]


def shape_section(study: Study) -> List[str]:
    from wcnerf.report import seed_stats, stat_sentence

    lines = ["## Shapes (occupancy, 400 steps, batch 2048, IoU curve every 20 steps on 20k points)", "",
             "Per conditioner the best learning rate of the grid (lowest final training loss); IoU @15% is the "
             f"curve at step 60; final IoU on 100k points; {stat_sentence()}.", ""]
    for mesh in study.meshes:
        name = Path(mesh).stem
        for opt in study.optimizers:
            found = sorted((study.out / "shape").glob(f"*/compare-occupancy-{opt}-400steps-*/comparison.json"))
            found = [p for p in found if Path(json.loads(p.read_text())["mesh"]).stem == name]
            if not found:
                lines += [f"_{name} / {opt}: no results yet._", ""]
                continue
            data = json.loads(found[-1].read_text())
            rows, early, final = {}, {}, {}
            for c in study.conditioners:
                e = data["methods"].get(c)
                if e is None:
                    continue
                per_seed = e["per_seed"].values()
                early[c] = seed_stats(v.get("iou_early") for v in per_seed)
                final[c] = seed_stats(v.get("iou_points") for v in per_seed)
                rows[c] = [c, f"{e['lr']:g}", "", _frac(data.get("steps_to_target", {}).get(c, "–")), ""]
            _bold_best(rows, early, 2, 3)
            _bold_best(rows, final, 4, 3)
            lines += [f"### {name}, {opt.upper()} (lr grid {', '.join(f'{x:g}' for x in data['lrs'])}; "
                      f"seeds {', '.join(str(x) for x in data['seeds'])})", "",
                      "| conditioner | lr | IoU @15% | steps to target | final IoU |", "|---|---|---|---|---|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows.values()] + [""]
    return lines


def study_markdown(study: Study) -> str:
    lines = ["# Equilibration orientation study", "",
             "`equilibrate-out`: unit rows of torch's weight (per output neuron); `equilibrate-in`: unit columns "
             "(per input, the paper's notation; single-output heads left plain); `weight-norm` for reference. "
             f"NeRF seeds {study.seeds}; each shape table names its seeds. Command: `python scripts/orientation_study.py`. "
             "Best mean per column in bold.", ""]
    return "\n".join(lines + nerf_section(study) + shape_section(study)) + "\n"


if __name__ == "__main__":
    sys.exit(tyro.cli(Study, description=__doc__).main())
