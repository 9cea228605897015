#!/usr/bin/env python
"""The whole training step as a user sees it: plain and conditioned ``ns-train`` runs side by side.

``bench_step.py`` times both pipelines interleaved in one process. A user trains each method in
its own process, where a step also costs what the process' memory allocator makes it cost (on
the CPU, glibc decides per process whether a step's large temporaries reuse heap memory or fault
in fresh pages: :mod:`wcnerf.plugin.cpu_allocator`). This script runs the harness' own training
command (``NerfstudioRunner.train_command`` of a protocol, default ``cpu``) for the plain and the
conditioned method at the same time, each pinned to its own core, then again with the cores
swapped (the geometric mean of the two ratios cancels a speed difference between the cores),
for each seed and each process setting: ``wcnerf`` (the trainer's default at the protocol's one thread: a steady malloc) and
``nerfstudio`` (glibc's defaults, as under nerfstudio's own trainer).

Per run it reads the wall seconds per iteration from nerfstudio's per-step events (from step
``--skip`` to the end), the process' CPU seconds over the same steps (``/proc/<pid>/stat``
sampled 4 times a second: on a shared VM a core can lose wall time to other guests, which CPU
time does not count), its whole user and system CPU seconds and minor page faults
(``os.wait4``) and its final held-out PSNR (mean of the last 3 held-out ray batches: a check that
the settings do not change what is learnt). It prints conditioned / plain per seed and the
median over seeds with its range. ``--plain e-nerf`` (the conditioned method against itself) is
an A/A control: the noise of the measurement.

    python scripts/bench_runs.py                                   # cpu protocol, fern, 3 seeds, wcnerf and nerfstudio
    python scripts/bench_runs.py --plain e-nerf --settings wcnerf  # A/A control
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import tyro

from wcnerf.eval.ns_runner import ITER_TIME_TAG, NerfstudioRunner, extract_curves, read_scalars
from wcnerf.eval.protocols import Protocol, load_protocol
from wcnerf.eval.runs import MethodSpec, RunSpec, SceneSpec

SETTINGS = {
    "wcnerf": [],
    "nerfstudio": ["--steady-cpu-allocator", "False"],
}


@dataclass
class Args:
    data: Path = Path("data/llff/fern")
    """LLFF scene."""
    protocol: str = "cpu"
    """Protocol whose training command is run (its methods, factor, threads, logging)."""
    conditioned: str = "e-nerf"
    """The protocol's label of the conditioned method (the plain one's too for an A/A control)."""
    plain: str = "nerf"
    """The protocol's label of the plain method."""
    seeds: Tuple[int, ...] = (0, 1, 2)
    iterations: int = 200
    """Training iterations per run."""
    skip: int = 20
    """Iterations left out of the median (start-up)."""
    settings: Tuple[str, ...] = ("wcnerf", "nerfstudio")
    """Process settings to compare (see the module docstring)."""
    out: Path = Path("outputs/bench/runs")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _step_walltimes(logdir: Path) -> List[Tuple[int, float]]:
    """(step, wall time) of nerfstudio's per-step ``Train Iter (time)`` events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        events += [(e.step, e.wall_time) for e in acc.Scalars(ITER_TIME_TAG)]
    return sorted(events)


def run_pair(args: Args, protocol: Protocol, setting: str, seed: int, cores: Tuple[int, int], tag: str) -> Dict[str, Dict[str, float]]:
    """Train the two methods at once, the conditioned one pinned to ``cores[0]``, the plain one
    to ``cores[1]``; per role: s/iteration, CPU s/iteration, user/system CPU s, minor faults,
    held-out PSNR."""
    protocol = protocol.with_overrides(
        max_num_iterations=args.iterations, train_args=list(protocol.train_args) + SETTINGS[setting]
    )
    runner = NerfstudioRunner()
    scene = SceneSpec(args.data.name, args.data.resolve())
    procs = {}
    for role, label, core in (("conditioned", args.conditioned, cores[0]), ("plain", args.plain, cores[1])):
        run_dir = args.out / setting / f"seed{seed}" / tag / role
        spec = RunSpec(protocol, scene, MethodSpec(label, protocol.methods[label]), seed, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out must not read old events
        run_dir.mkdir(parents=True)
        with open(run_dir / "train.log", "w") as log:
            proc = subprocess.Popen(runner.train_command(spec), stdout=log, stderr=subprocess.STDOUT, env=runner._env(spec),
                                    preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))  # fmt: skip
        procs[role] = (proc, spec)
    samples: Dict[str, List[Tuple[float, float]]] = {role: [] for role in procs}  # (wall, process CPU s)
    finished: Dict[str, Tuple[int, object]] = {}
    while len(finished) < len(procs):
        for role, (proc, _) in procs.items():
            if role not in finished:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    finished[role] = (status, usage)
                else:
                    samples[role].append((time.time(), _cpu_seconds(proc.pid)))
        time.sleep(0.25)
    out: Dict[str, Dict[str, float]] = {}
    for role, (proc, spec) in procs.items():
        status, usage = finished[role]
        if status != 0:
            raise SystemExit(f"{spec.run_dir / 'train.log'}: ns-train failed (wait status {status})")
        steps = [(step, wall) for step, wall in _step_walltimes(runner.base_dir(spec)) if step >= args.skip]
        (s0, w0), (s1, w1) = steps[0], steps[-1]
        walls, cpus = zip(*samples[role])
        cpu = float(numpy.interp(w1, walls, cpus) - numpy.interp(w0, walls, cpus))
        heldout = extract_curves(read_scalars(runner.base_dir(spec)))["heldout"]["psnr"][-3:]
        out[role] = {"s_per_iter": (w1 - w0) / (s1 - s0), "cpu_s_per_iter": cpu / (s1 - s0),
                     "user_s": usage.ru_utime, "system_s": usage.ru_stime, "minor_faults": usage.ru_minflt,  # type: ignore[attr-defined]
                     "heldout_psnr": statistics.mean(heldout) if heldout else float("nan")}  # fmt: skip
    return out


def main(args: Args) -> None:
    unknown = [a for a in args.settings if a not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {sorted(SETTINGS)}")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("bench_runs needs 2 CPU cores (one per run of a pair)")
    a, b = allowed[:2]
    print(f"[bench_runs] {args.conditioned} vs {args.plain} ({args.protocol} protocol, {args.data}), "
          f"{args.iterations} iterations, seeds {list(args.seeds)}, settings {list(args.settings)}, cores {a} and {b}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    protocol = load_protocol(args.protocol)
    results: Dict[str, List[Dict[str, object]]] = {s: [] for s in args.settings}
    todo = [(seed, s) for seed in args.seeds for s in args.settings]
    start = time.perf_counter()
    for k, (seed, setting) in enumerate(todo):
        # the pair twice, cores swapped: the geometric mean of the two ratios cancels a speed
        # difference between the cores (measured up to 30% on a shared VM)
        rounds = [run_pair(args, protocol, setting, seed, (a, b), "ab"), run_pair(args, protocol, setting, seed, (b, a), "ba")]
        ratios = [r["conditioned"]["s_per_iter"] / r["plain"]["s_per_iter"] for r in rounds]
        ratio = math.sqrt(ratios[0] * ratios[1])
        cpu_ratio = math.sqrt(math.prod(r["conditioned"]["cpu_s_per_iter"] / r["plain"]["cpu_s_per_iter"] for r in rounds))
        mean = {role: {key: statistics.mean(r[role][key] for r in rounds) for key in rounds[0][role]} for role in ("conditioned", "plain")}
        results[setting].append({"seed": seed, "ratio": ratio, "cpu_ratio": cpu_ratio, "round_ratios": ratios, **mean})
        c, p = mean["conditioned"], mean["plain"]
        elapsed = time.perf_counter() - start
        eta = elapsed / (k + 1) * (len(todo) - k - 1)
        print(f"  [{k + 1}/{len(todo)}, ETA {eta / 60:.1f} min] {setting:10s} seed {seed}: s/iteration ratio "
              f"{ratios[0]:.3f} and {ratios[1]:.3f} (cores swapped) -> {ratio:.3f}, CPU s/iteration ratio {cpu_ratio:.3f}; "
              f"mean of the two rounds: s/iteration {c['s_per_iter']:.4f} / {p['s_per_iter']:.4f}, CPU s/iteration "
              f"{c['cpu_s_per_iter']:.4f} / {p['cpu_s_per_iter']:.4f}, whole-process user+system CPU s "
              f"{c['user_s']:.1f}+{c['system_s']:.1f} / {p['user_s']:.1f}+{p['system_s']:.1f}, minor faults "
              f"{c['minor_faults'] / 1e6:.2f}M / {p['minor_faults'] / 1e6:.2f}M, held-out PSNR "
              f"{c['heldout_psnr']:.2f} / {p['heldout_psnr']:.2f}", flush=True)  # fmt: skip
    print(f"\n| setting | {args.conditioned} / {args.plain} s/iteration, median [min, max] | per seed | "
          "CPU s/iteration ratio, median [min, max] | system CPU s (cond / plain, mean) | minor faults (cond / plain, mean) | held-out PSNR (cond / plain, mean) |"
          "\n|---|---|---|---|---|---|---|")
    for setting, rows in results.items():
        ratios = [float(r["ratio"]) for r in rows]  # type: ignore[arg-type]
        cpu = [float(r["cpu_ratio"]) for r in rows]  # type: ignore[arg-type]
        avg = lambda role, key: statistics.mean(float(r[role][key]) for r in rows)  # type: ignore[index]  # noqa: E731
        print(f"| {setting} | {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] | "
              f"{', '.join(f'{x:.3f}' for x in ratios)} | {statistics.median(cpu):.3f} [{min(cpu):.3f}, {max(cpu):.3f}] | "
              f"{avg('conditioned', 'system_s'):.1f} / "
              f"{avg('plain', 'system_s'):.1f} | {avg('conditioned', 'minor_faults') / 1e6:.2f}M / "
              f"{avg('plain', 'minor_faults') / 1e6:.2f}M | {avg('conditioned', 'heldout_psnr'):.2f} / "
              f"{avg('plain', 'heldout_psnr'):.2f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_runs.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print(f"\n[bench_runs] {args.out / 'bench_runs.json'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
