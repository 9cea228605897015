"""Workers of a sweep: claim the next unfinished run by its lease, train and evaluate it,
release it, repeat until no run is left; and the sweep's progress read from the run folders.

A worker is what every executor (:mod:`wcnerf.eval.executors`: local processes, Ray tasks,
SLURM array jobs through submitit) starts; the engines only start workers. What a worker
needs travels in a picklable :class:`SweepJob` (the protocol, scenes, methods, seeds, the
output folder, the runner and the execution policy); each worker plans the same runs from it
(:func:`wcnerf.eval.plan.plan_runs`) and claims them through :class:`wcnerf.lease.Lease` in
the run folders: two workers, processes or hosts never run the same run at once, and a run
whose worker died is taken over when its lease is stale (or at once when the dead worker was
on the same host) and resumes from its last checkpoint.

A run that fails is tried once per sweep (``SweepJob.sweep_id``, recorded in status.json);
``retry_failed=False`` also leaves the runs that had failed before the sweep.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from wcnerf.eval.execution import Execution
from wcnerf.eval.plan import plan_runs
from wcnerf.eval.protocols import Protocol
from wcnerf.eval.runs import METRICS_FILE, STATUS_FILE, MethodSpec, RunSpec, Runner, SceneSpec, execute, read_json, run_state
from wcnerf.lease import LEASE_FILE, Lease, default_stale_after
from wcnerf.report.tables import format_duration

__all__ = ["SweepJob", "WorkerReport", "work", "SweepProgress", "sweep_progress", "new_sweep_id"]


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass
class SweepJob:
    """Everything a worker needs (picklable: sent to processes, Ray tasks and SLURM jobs)."""

    protocol: Protocol
    scenes: List[SceneSpec]
    methods: List[MethodSpec]
    seeds: List[int]
    out_dir: Path
    """``<output_root>/<protocol>``, absolute (workers may start in another folder)."""
    runner: Runner
    execution: Execution = field(default_factory=Execution)
    sweep_id: str = field(default_factory=new_sweep_id)
    retry_failed: bool = True
    lease_seconds: float = field(default_factory=default_stale_after)
    """A run's lease is stale (its worker presumed dead) after this many seconds without renewal."""
    poll_seconds: Optional[float] = None
    """How often a worker with nothing to claim looks again (default: lease_seconds / 4, at most 10)."""

    def plan(self) -> List[RunSpec]:
        return plan_runs(self.protocol, self.scenes, self.methods, self.seeds, Path(self.out_dir))

    @property
    def poll(self) -> float:
        return self.poll_seconds if self.poll_seconds is not None else min(10.0, max(0.1, self.lease_seconds / 4))


@dataclass
class WorkerReport:
    """What one worker did (returned through the engine to the driver)."""

    worker: str
    host: str
    pid: int
    ran: List[Dict[str, Any]] = field(default_factory=list)
    """One entry per run it executed: scene, method, seed, status, seconds, took_over."""


def _skip_for_good(spec: RunSpec, job: SweepJob) -> bool:
    """Finished, or failed and not to be tried (again) in this sweep."""
    if read_json(spec.run_dir / METRICS_FILE) is not None:
        return True
    status = read_json(spec.run_dir / STATUS_FILE) or {}
    if status.get("status") == "failed":
        return not job.retry_failed or status.get("sweep") == job.sweep_id
    return False


def work(job: SweepJob, worker: str = "worker", log: Any = None) -> WorkerReport:
    """Claim, run and release runs of ``job`` until none is left; returns what was run.

    Runs held by another worker's live lease are waited for (they finish, or their lease goes
    stale and this worker takes them over); a run marked running by a process without a lease
    (an older harness) is left alone."""
    log = log or (lambda msg: print(msg, flush=True))
    report = WorkerReport(worker=worker, host=socket.gethostname(), pid=os.getpid())
    plan = job.plan()
    while True:
        ran_one = False
        waiting = 0
        for spec in plan:
            if _skip_for_good(spec, job):
                continue
            if run_state(spec.run_dir) == "running" and not (spec.run_dir / LEASE_FILE).exists():
                continue  # held without a lease: not ours to judge
            lease = Lease(spec.run_dir, stale_after=job.lease_seconds, job_id=worker, info={"sweep": job.sweep_id})
            if not lease.try_acquire():
                waiting += 1
                continue
            try:
                if _skip_for_good(spec, job):  # finished between the check and the claim
                    continue
                took = lease.took_over
                if took:
                    log(f"[{worker}] {spec.key}: taking over from {took.get('host')} pid {took.get('pid')} (lease stale)")
                log(f"[{worker}] run {spec.scene.label} / {spec.method.label} / seed {spec.seed}")
                t0 = time.time()
                status, err = execute(spec, job.runner, sweep_id=job.sweep_id, job_id=worker)
                report.ran.append(
                    {
                        "scene": spec.scene.label,
                        "method": spec.method.label,
                        "seed": spec.seed,
                        "status": status,
                        "seconds": round(time.time() - t0, 3),
                        "took_over": bool(took),
                        "lease_lost": lease.lost.is_set(),
                    }
                )
                log(f"[{worker}] {status} {spec.scene.label} / {spec.method.label} / seed {spec.seed}")
            finally:
                lease.release()
            ran_one = True
            break  # the next unfinished run, from the top of the plan
        if ran_one:
            continue
        if not waiting:
            return report
        time.sleep(job.poll)


# --------------------------------------------------------------------------------------
# Progress of the whole sweep, from the run folders
# --------------------------------------------------------------------------------------


@dataclass
class SweepProgress:
    planned: int
    done: int
    running: int
    failed: int
    left: int
    remaining_iterations: int
    sec_per_iter: Optional[float]
    """Measured: mean over the running runs (status.json's progress) and the finished ones."""
    eta_seconds: Optional[float]
    running_runs: List[Dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        eta = format_duration(self.eta_seconds) if self.eta_seconds is not None else "unknown (no iteration timed yet)"
        text = f"runs: {self.done}/{self.planned} done, {self.running} running, {self.left} left"
        if self.failed:
            text += f", {self.failed} failed"
        spi = f", {self.sec_per_iter:.3g} s/iteration" if self.sec_per_iter else ""
        return text + f"; ETA {eta}{spi}"

    def run_lines(self) -> List[str]:
        out = []
        for r in self.running_runs:
            if r.get("views") is not None:
                step = f"eval {_count(r['views'])}/{r['views_total']} held-out views"
            else:
                step = f"step {r['step']}/{r['total']}" if r.get("step") is not None else r.get("stage") or "starting"
            eta = f", {format_duration(r['eta'])} left" if r.get("eta") is not None else ""
            out.append(f"  {r['scene']} / {r['method']} / seed {r['seed']}: {step}{eta} ({r.get('job') or '?'})")
        return out


def _count(x: float) -> str:
    """1.0 -> ``1``, 1.456 -> ``1.46``."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


def sweep_progress(plan: Sequence[RunSpec], workers: int, job: Optional[SweepJob] = None) -> SweepProgress:
    """Runs done / running / failed / left and the ETA: the iterations left (the protocol's for
    each run not started, total - step for each running one) times the measured seconds per
    iteration, over ``workers`` runs at a time. (Evaluation time is not in the sweep's ETA; a run
    being evaluated has its own: views left times the seconds per view so far.)"""
    done = running = failed = left = 0
    remaining = 0
    rates: List[float] = []
    running_runs: List[Dict[str, Any]] = []
    for spec in plan:
        state = run_state(spec.run_dir)
        status = read_json(spec.run_dir / STATUS_FILE) or {}
        if state == "done":
            done += 1
            spi = (read_json(spec.run_dir / METRICS_FILE) or {}).get("sec_per_iter")
            if isinstance(spi, (int, float)) and spi > 0:
                rates.append(float(spi))
            continue
        if state == "failed" and (job is None or not job.retry_failed or status.get("sweep") == job.sweep_id):
            failed += 1
            continue
        prog = status.get("progress") or {}
        if state == "running":
            running += 1
            entry = {"scene": spec.scene.label, "method": spec.method.label, "seed": spec.seed,
                     "stage": status.get("stage"), "job": status.get("job_id")}
            if prog.get("unit") == "views":  # trained; evaluating its held-out views
                seen, views, spv = float(prog.get("step") or 0), int(prog.get("total") or 0), prog.get("sec_per_view")
                entry.update(views=seen, views_total=views,
                             eta=(views - seen) * spv if isinstance(spv, (int, float)) and spv > 0 else None)
                running_runs.append(entry)
                continue
            step, total = prog.get("step"), prog.get("total") or spec.iterations
            spi = prog.get("sec_per_iter")
            if isinstance(spi, (int, float)) and spi > 0:
                rates.append(float(spi))
            rest = max(0, int(total) - int(step or 0))
            if not str(status.get("stage") or "").startswith(("eval", "trained")):
                remaining += rest
            entry.update(step=step, total=total, eta=rest * spi if isinstance(spi, (int, float)) and spi > 0 else None)
            running_runs.append(entry)
        else:
            left += 1
            if prog.get("unit") == "views":  # interrupted while evaluating: trained already
                continue
            step = prog.get("step") if state == "interrupted" else None  # resumes near there
            remaining += max(0, spec.iterations - int(step or 0))
    rate = sum(rates) / len(rates) if rates else None
    eta = remaining * rate / max(1, min(workers, running + left) or 1) if rate is not None else None
    if running + left == 0:
        eta = 0.0
    return SweepProgress(len(plan), done, running, failed, left, remaining, rate, eta, running_runs)
