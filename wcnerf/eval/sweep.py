"""The NeRF vs E-NeRF comparison sweep: scenes x methods x seeds under a protocol.

Outputs go to ``<output_root>/<protocol>/`` (default ``outputs/compare/<protocol>/``)::

    results.csv  table.md  curves.png  renders/<scene>.png     (wcnerf.eval.reports)
    runs/<scene>/<method>/seed-<seed>/                         (wcnerf.eval.runs)

This module runs the planned sweep (:mod:`wcnerf.eval.plan`): skipping finished runs, retrying
failed ones, showing progress, then writing the reports. The step "train and evaluate one run"
is a :data:`wcnerf.eval.runs.Runner`; how runs are executed, an
:class:`wcnerf.eval.execution.Execution`; where, an engine of :mod:`wcnerf.eval.executors`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rich.markup import escape

from wcnerf.eval.execution import Execution
from wcnerf.eval.executors import run_with_executor
from wcnerf.eval.plan import plan_runs
from wcnerf.eval.protocols import Protocol
from wcnerf.eval.reports import collect_records, default_console, write_reports
from wcnerf.eval.runs import METRICS_FILE, MethodSpec, RunSpec, Runner, SceneSpec, execute, read_json, run_state
from wcnerf.eval.workers import SweepJob
from wcnerf.lease import Lease, describe_holder

__all__ = ["SweepSummary", "run_sweep", "with_execution"]

# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    out_dir: Path
    planned: int = 0
    skipped_done: int = 0
    ran: int = 0
    done: int = 0
    failed: int = 0
    skipped_failed: int = 0
    skipped_running: int = 0
    interrupted: bool = False
    records: List[Dict[str, Any]] = field(default_factory=list)
    reports: Dict[str, Optional[Path]] = field(default_factory=dict)
    workers: List[Any] = field(default_factory=list)
    """The workers' reports (:class:`wcnerf.eval.workers.WorkerReport`, or why a worker died)."""

    @property
    def n_failed_total(self) -> int:
        return sum(1 for r in self.records if r.get("status") == "failed")


def run_sweep(
    protocol: Protocol,
    scenes: Sequence[SceneSpec],
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    *,
    runner: Runner,
    output_root: Path = Path("outputs/compare"),
    retry_failed: bool = True,
    redo: bool = False,
    console: Any = None,
    show_progress: bool = True,
    write_report: bool = True,
    execution: Optional[Execution] = None,
    executor_options: Any = None,
    lease_seconds: Optional[float] = None,
    progress_every: float = 30.0,
) -> SweepSummary:
    """Run every planned (scene, method, seed) that has not finished, then write the reports.

    Finished runs (``metrics.json`` present) are never redone (unless ``redo``, which deletes
    the run folders of the planned runs first); failed and interrupted runs are run again
    (failed ones only when ``retry_failed``); runs held by another live process are left alone.
    Every run is claimed by a lease on its folder (:mod:`wcnerf.lease`) before it is run.
    Ctrl-C marks the current run interrupted and still writes the reports.

    ``execution`` (default: :meth:`Execution.decide` for one local worker) says how: its
    ``executor`` (``local``, ``ray``, ``slurm``; :mod:`wcnerf.eval.executors`) with its
    ``workers`` starts that many workers (:func:`wcnerf.eval.workers.work`) on that engine
    instead of running the runs here; ``local`` with one worker runs them in this process.
    """
    console = default_console(console)
    execution = execution or Execution.decide(protocol)
    runner = with_execution(runner, execution)
    out_dir = Path(output_root) / protocol.name
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_runs(protocol, scenes, methods, seeds, out_dir)
    summary = SweepSummary(out_dir=out_dir, planned=len(plan))
    todo: List[RunSpec] = []
    for spec in plan:
        state = run_state(spec.run_dir)
        if redo and state != "running" and spec.run_dir.exists():
            shutil.rmtree(spec.run_dir)
            state = "pending"
        if state == "done":
            summary.skipped_done += 1
        elif state == "running":
            summary.skipped_running += 1
            console.print(f"[yellow]skip[/] {_name(spec)}: being run by another process ({escape(str(spec.run_dir))})")
        elif state == "failed" and not retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(spec)
    console.print(
        f"[bold]{protocol.name}[/]: {len(plan)} runs planned, {summary.skipped_done} already finished, "
        f"{len(todo)} to run" + (f", {summary.skipped_failed} failed left as they are" if summary.skipped_failed else "")
    )
    try:
        if not (execution.executor == "local" and (execution.workers or 1) <= 1):
            if todo or any(run_state(s.run_dir) == "running" for s in plan):
                _run_with_workers(protocol, scenes, methods, seeds, runner, out_dir, summary, console,
                                  execution=execution, options=executor_options,
                                  retry_failed=retry_failed, lease_seconds=lease_seconds, progress_every=progress_every)
        else:  # this process is the only worker
            if show_progress and todo and not console.is_terminal:  # a log file: plain lines, no bar
                _run_with_lines(todo, runner, summary, console, lease_seconds, progress_every)
            elif show_progress and todo:
                _run_with_progress(todo, runner, summary, console, lease_seconds)
            else:
                for spec in todo:
                    _run_one(spec, runner, summary, console, lease_seconds)
    except KeyboardInterrupt:
        summary.interrupted = True
        console.print("[red]interrupted[/]: the same command continues where this stopped")
    finally:
        if write_report:
            summary.records = collect_records(out_dir, plan)
            summary.reports = write_reports(out_dir, summary.records, protocol, console=console)
    return summary


def _name(spec: RunSpec) -> str:
    """The run for the console (rich markup escaped)."""
    return escape(f"{spec.scene.label} / {spec.method.label} / seed {spec.seed}")


def _run_one(spec: RunSpec, runner: Runner, summary: SweepSummary, console: Any, lease_seconds: Optional[float] = None) -> None:
    state = run_state(spec.run_dir)  # again: another process may have taken or finished it meanwhile
    if state == "done":
        summary.skipped_done += 1
        return
    if state == "running":
        summary.skipped_running += 1
        console.print(f"[yellow]skip[/] {_name(spec)}: being run by another process ({escape(str(spec.run_dir))})")
        return
    lease = Lease(spec.run_dir, stale_after=lease_seconds, info={"sweep": "inline"})
    if not lease.try_acquire():  # claimed by another process between the check and now
        summary.skipped_running += 1
        console.print(f"[yellow]skip[/] {_name(spec)}: being run by another process ({escape(describe_holder(lease.holder()))})")
        return
    try:
        if read_json(spec.run_dir / METRICS_FILE) is not None:  # finished meanwhile
            summary.skipped_done += 1
            return
        console.print(f"[cyan]run[/] {_name(spec)} -> {escape(str(spec.run_dir))}")
        status, err = execute(spec, runner)
    finally:
        lease.release()
    summary.ran += 1
    if status == "done":
        summary.done += 1
        m = read_json(spec.run_dir / METRICS_FILE) or {}
        console.print(f"[green]done[/] {_name(spec)}: PSNR {_f(m.get('psnr'))}, SSIM {_f(m.get('ssim'), 3)}")
    else:
        summary.failed += 1
        last = [ln for ln in (err or "").splitlines() if ln.strip()]
        console.print(f"[red]failed[/] {_name(spec)}: {escape(last[-1]) if last else 'unknown error'}")


def _f(x: Any, d: int = 2) -> str:
    try:
        return f"{float(x):.{d}f}"
    except (TypeError, ValueError):
        return "–"


def with_execution(runner: Runner, execution: Execution) -> Runner:
    """``runner`` with the sweep's execution policy, when it takes one and has none (the
    nerfstudio runner does; a test's fake runner need not)."""
    import dataclasses

    if dataclasses.is_dataclass(runner) and getattr(runner, "execution", "absent") is None:
        return dataclasses.replace(runner, execution=execution)  # type: ignore[type-var]
    return runner


def _run_with_workers(protocol, scenes, methods, seeds, runner, out_dir, summary, console, *, execution,
                      options, retry_failed, lease_seconds, progress_every) -> None:
    """Hand the plan to the execution's workers on its engine; count what they ran."""
    kw = {"lease_seconds": float(lease_seconds)} if lease_seconds is not None else {}
    job = SweepJob(protocol, list(scenes), list(methods), [int(s) for s in seeds], Path(out_dir).resolve(), runner,
                   execution=execution, retry_failed=retry_failed, **kw)
    results = run_with_executor(execution.executor, job, execution.workers, options, console=console,
                                progress_every=progress_every)
    for rep in results:
        for r in getattr(rep, "ran", []):
            summary.ran += 1
            if r["status"] == "done":
                summary.done += 1
            else:
                summary.failed += 1
    summary.workers = [r for r in results]


def _run_with_progress(todo: Sequence[RunSpec], runner: Runner, summary: SweepSummary, console: Any,
                       lease_seconds: Optional[float] = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),  # per run: from its measured iterations; overall: from the runs done
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("[bold]runs", total=len(todo))
        for spec in todo:
            current = progress.add_task(f"{_name(spec)}: starting", total=spec.iterations)

            def report(stage: str, step: Optional[int] = None, total: Optional[int] = None, _t=current, _s=spec) -> None:
                kwargs: Dict[str, Any] = {"description": f"{_name(_s)}: {escape(stage)}"}
                if total is not None:
                    kwargs["total"] = total
                if step is not None:
                    kwargs["completed"] = step
                progress.update(_t, **kwargs)

            spec.report = report
            try:
                _run_one(spec, runner, summary, progress.console, lease_seconds)
            finally:
                progress.remove_task(current)
            progress.advance(overall)



class _LineProgress:
    """One run's progress as plain lines, for a console that is not a terminal (a log file keeps
    no progress bar): the stage when it changes, then every ``every`` seconds the training step
    or the held-out views evaluated, with the ETA at the pace measured in this stage."""

    def __init__(self, name: str, console: Any, every: float, clock: Any = None) -> None:
        import time

        self.name, self.console, self.every = name, console, every
        self.clock = clock or time.monotonic
        self.stage: Optional[str] = None
        self.kind: Optional[str] = None
        self.first: Optional[Tuple[float, float]] = None
        self.last = 0.0

    def __call__(self, stage: str, step: Optional[float] = None, total: Optional[int] = None) -> None:
        from wcnerf.eval.workers import _count
        from wcnerf.report import format_duration

        now = self.clock()
        kind = "eval" if stage.startswith("eval") else "train"
        if kind != self.kind:
            self.kind, self.first, self.last = kind, None, now
        if stage != self.stage:
            self.stage = stage
            self.console.print(f"{self.name}: {escape(stage)}")
        if step is None or not total:
            return
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
        if now - self.last < self.every:
            return
        t0, s0 = self.first
        eta = (now - t0) / (step - s0) * (total - step) if step > s0 else None
        what = f"eval {_count(step)}/{total} held-out views" if kind == "eval" else f"step {int(step)}/{total}"
        self.console.print(f"{self.name}: {what}, ETA {format_duration(eta) if eta is not None else 'unknown yet'}")
        self.last = now


def _run_with_lines(todo: Sequence[RunSpec], runner: Runner, summary: SweepSummary, console: Any,
                    lease_seconds: Optional[float], every: float) -> None:
    """:func:`_run_with_progress` for a console that is not a terminal: progress as lines."""
    for i, spec in enumerate(todo):
        spec.report = _LineProgress(f"{escape(f'[{i + 1}/{len(todo)}]')} {_name(spec)}", console, every)
        _run_one(spec, runner, summary, console, lease_seconds)
