"""Executors: the engines that start a sweep's workers (:func:`wcnerf.eval.workers.work`).

- ``local``: N worker processes on this machine (``multiprocessing``, spawned); with CUDA, one
  per visible GPU by default, each seeing its own (``CUDA_VISIBLE_DEVICES``); on a CPU, N
  processes; their threads are the sweep's :class:`wcnerf.eval.execution.Execution`.
- ``ray``: N Ray tasks, each reserving one GPU (``num_gpus``; CPUs on a CPU cluster), on an
  existing cluster (``address``) or a local Ray started for the sweep.
- ``slurm``: a job array of N workers through ``submitit`` (partition, time limit, GPUs, memory);
  a worker reaching its time limit is checkpointed and requeued by submitit, and the requeued
  worker resumes its run from the run's last checkpoint. ``cluster="local"`` runs the same
  jobs through submitit's local executor (for trying it out, and the tests).

The plan, the run state and the reports stay the harness's: every engine only starts workers,
the workers claim runs by their leases, and the driver (:func:`run_with_executor`) watches the
run folders for progress and writes the reports at the end. ``ray`` and ``submitit`` are
imported only when their executor is used; they come with ``pip install 'wcnerf[cluster]'``, and
without them that executor stops with one line saying so (:func:`cluster_module`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from rich.markup import escape

from wcnerf.eval.execution import EXECUTORS, visible_gpus
from wcnerf.eval.workers import SweepJob, WorkerReport, sweep_progress, work

__all__ = ["LocalOptions", "RayOptions", "SlurmOptions", "run_with_executor", "EXECUTORS"]


@dataclass
class LocalOptions:
    gpus: Optional[List[str]] = None
    """GPU ids to spread the workers over (default: the visible CUDA devices, none on a CPU)."""


@dataclass
class RayOptions:
    address: Optional[str] = None
    """An existing cluster (``auto``, ``ray://host:10001``); None starts a local Ray for the sweep."""
    gpus_per_worker: Optional[float] = None
    """Default: 1 when the cluster has GPUs, else 0."""
    cpus_per_worker: Optional[float] = None
    """Default: the sweep's threads per process (1 when unset)."""
    max_retries: int = 2
    """Ray restarts a worker whose process died this many times."""
    init_kwargs: Dict[str, Any] = field(default_factory=dict)
    """Extra ``ray.init`` arguments (tests: ``num_cpus``, ``runtime_env``)."""


@dataclass
class SlurmOptions:
    partition: Optional[str] = None
    time_min: int = 24 * 60
    """Time limit of each worker job (minutes); at the limit it is requeued and resumes."""
    gpus_per_worker: int = 1
    cpus_per_worker: int = 4
    mem_gb: Optional[float] = None
    max_requeues: int = 10
    """How often one worker may reach its time limit and be requeued."""
    folder: Optional[Path] = None
    """submitit's logs and pickles (default: <output>/<protocol>/slurm/)."""
    cluster: Optional[str] = None
    """None: SLURM (submitit picks it when sbatch exists); ``local``: submitit's local executor."""
    extra: Dict[str, Any] = field(default_factory=dict)
    """More ``slurm_*`` parameters of submitit (``slurm_constraint``, ``slurm_account``, ...)."""
    detach: bool = False
    """Submit and return; ``--report-only`` later writes the reports."""


# --------------------------------------------------------------------------------------
# local: processes on this machine
# --------------------------------------------------------------------------------------


def _local_worker(job: SweepJob, name: str, env: Dict[str, str], queue: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, _worker_sigterm)  # the run is marked interrupted, its lease released
    os.environ.update(env)  # inherited by ns-train / ns-eval
    report = work(job, name)
    queue.put(report)


class _LocalEngine:
    def __init__(self, job: SweepJob, n: int, opts: LocalOptions):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no forked torch / thread state
        self.queue = ctx.Queue()
        self.got: List[Any] = []
        gpus = opts.gpus if opts.gpus is not None else visible_gpus()
        self.procs = []
        for i in range(n):
            env = job.execution.env("worker")
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            p = ctx.Process(target=_local_worker, args=(job, f"local:{i}", env, self.queue), name=f"wcnerf-worker-{i}")
            p.start()
            self.procs.append(p)
        self.n = n
        self.describe = f"{n} local worker processes" + (f" on GPUs {', '.join(gpus[:n])}" if gpus else " (CPU)")

    def _drain(self, timeout: float = 0.0) -> None:
        import queue as _queue

        while True:
            try:
                self.got.append(self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait())
            except _queue.Empty:
                return

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            self._drain()  # a child exits only once its queue is flushed
            p.join(max(0.0, deadline - time.monotonic()))
        self._drain()
        return all(not p.is_alive() for p in self.procs)

    def results(self) -> List[Any]:
        self._drain(timeout=0.2)
        out: List[Any] = list(self.got)
        for i, p in enumerate(self.procs):
            if p.exitcode not in (0, None):
                out.append(f"local:{i} ended with exit code {p.exitcode}")
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's run is marked interrupted, its lease released
        for p in self.procs:
            p.join(10)


def _worker_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


CLUSTER_EXTRA = "pip install 'wcnerf[cluster]'"
"""How to get the ``ray`` / ``slurm`` executors' packages (not required by wcnerf itself)."""


def cluster_module(name: str, executor: str) -> Any:
    """``import name`` for ``--executor executor``; when it is not installed, an input error
    (one line and exit 2 through :func:`wcnerf.plugin.compat.install_input_error_hook`) naming
    the option, the package and :data:`CLUSTER_EXTRA`, instead of an ImportError's traceback."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        from wcnerf.plugin.compat import RunInputError  # importing wcnerf.plugin installs the hook

        raise RunInputError(
            f"--executor {executor}: needs the {name} package, which is not installed: {CLUSTER_EXTRA}") from None


# --------------------------------------------------------------------------------------
# ray: tasks on a Ray cluster
# --------------------------------------------------------------------------------------


def _ray_worker(job: SweepJob, index: int) -> WorkerReport:
    import ray

    os.environ.update(job.execution.env("worker"))
    try:
        task = ray.get_runtime_context().get_task_id()
    except Exception:  # noqa: BLE001
        task = None
    return work(job, f"ray:{index}" + (f":{task[:8]}" if task else ""))


def _start_local_ray(ray: Any, kwargs: Dict[str, Any], attempts: int = 4) -> None:
    """``ray.init(**kwargs)``, tried again when the node times out during startup: Ray 2.60's
    raylet gives its dashboard agent a fixed 15 s to report its ports, and on a busy machine the
    agent's imports alone take longer (measured: 21-24 s on 2 shared cores under load), which
    aborts the raylet; a second start often wins (warm caches, other load)."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001
                pass
            print(f"ray: the local node did not start in time (attempt {attempt} of {attempts}); starting it again", flush=True)


class _RayEngine:
    def __init__(self, job: SweepJob, n: int, opts: RayOptions):
        ray = cluster_module("ray", "ray")

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if opts.address:
                ray.init(address=opts.address, **opts.init_kwargs)
            else:
                kw = dict(include_dashboard=False)
                kw.update(opts.init_kwargs)
                _start_local_ray(ray, kw)
                self.started = True
        res = ray.cluster_resources()
        gpus = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
        cpus = opts.cpus_per_worker if opts.cpus_per_worker is not None else float(job.execution.threads or 1)
        if not n:  # one worker per GPU of the cluster, else per `cpus` CPUs
            n = int(res.get("GPU", 0) // gpus) if gpus else int(res.get("CPU", 1) // max(cpus, 1e-9))
            n = max(1, n)
        self.n = n
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=opts.max_retries)(_ray_worker)
        self.refs = [remote.remote(job, i) for i in range(n)]
        self.describe = (
            f"{n} Ray tasks ({cpus:g} CPU, {gpus:g} GPU each) on "
            + (f"the cluster at {opts.address}" if opts.address else "a local Ray started for the sweep")
            + f" [{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs]"
        )
        self.pending = list(self.refs)

    def wait(self, timeout: float) -> bool:
        if self.pending:
            _, self.pending = self.ray.wait(self.pending, num_returns=len(self.pending), timeout=timeout)
        return not self.pending

    def results(self) -> List[Any]:
        out: List[Any] = []
        for ref in self.refs:
            try:
                out.append(self.ray.get(ref, timeout=1))
            except Exception as exc:  # noqa: BLE001 - a worker that died more often than max_retries
                out.append(f"ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return out

    def stop(self) -> None:
        for ref in self.pending:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


# --------------------------------------------------------------------------------------
# slurm: a submitit job array
# --------------------------------------------------------------------------------------


class SlurmWorker:
    """The callable submitit runs in each array job; checkpointable: at the time limit (or a
    preemption) submitit calls :meth:`checkpoint` and requeues the job, which then runs this
    again and resumes the interrupted run from its last checkpoint."""

    def __init__(self, job: SweepJob):
        self.job = job

    def __call__(self, index: int) -> WorkerReport:
        os.environ.update(self.job.execution.env("worker"))
        try:
            import submitit

            env = submitit.JobEnvironment()
            name = f"submitit:{env.job_id}"
        except Exception:  # noqa: BLE001
            name = f"slurm:{index}"
        return work(self.job, name)

    def checkpoint(self, index: int) -> Any:
        import submitit

        # Nothing to save here: the run's own checkpoints are on disk; the SystemExit submitit
        # raises after this marks the run interrupted and releases its lease.
        return submitit.helpers.DelayedSubmission(self, index)


class _SlurmEngine:
    def __init__(self, job: SweepJob, n: int, opts: SlurmOptions):
        submitit = cluster_module("submitit", "slurm")

        folder = Path(opts.folder) if opts.folder else Path(job.out_dir) / "slurm"
        params: Dict[str, Any] = dict(name=f"wcnerf-{job.protocol.name}", timeout_min=int(opts.time_min),
                                      cpus_per_task=int(opts.cpus_per_worker))
        if opts.mem_gb:
            params["mem_gb"] = opts.mem_gb
        if opts.cluster == "local":
            # submitit's local executor itself (AutoExecutor hides its signal_delay_s)
            executor: Any = submitit.LocalExecutor(folder=folder / "%j", max_num_timeout=opts.max_requeues)
            params.update(opts.extra)
            executor.update_parameters(**params)
            kind = "submitit local"
        else:
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.cluster, slurm_max_num_timeout=opts.max_requeues)
            params.update(gpus_per_node=int(opts.gpus_per_worker), slurm_array_parallelism=n)
            if opts.partition:
                params["slurm_partition"] = opts.partition
            params.update(opts.extra)
            executor.update_parameters(**params)
            kind = "SLURM" if executor.cluster == "slurm" else f"submitit {executor.cluster}"
        self.n = n
        self.jobs = executor.map_array(SlurmWorker(job), list(range(n)))
        self.describe = (
            f"{n} {kind} array jobs "
            f"({', '.join(j.job_id for j in self.jobs)}), {opts.time_min} min each"
            + (f" on partition {opts.partition}" if opts.partition else "")
            + f"; logs in {folder}"
        )

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(j.done() for j in self.jobs):
                return True
            time.sleep(min(1.0, timeout))
        return all(j.done() for j in self.jobs)

    def results(self) -> List[Any]:
        out: List[Any] = []
        for j in self.jobs:
            try:
                out.append(j.result())
            except Exception as exc:  # noqa: BLE001
                out.append(f"job {j.job_id} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
        return out

    def stop(self) -> None:
        for j in self.jobs:
            try:
                j.cancel(check=False)
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def start_engine(kind: str, job: SweepJob, workers: Optional[int], options: Any = None) -> Any:
    """Start the workers; ``workers`` None: the engine's default (ray: one per GPU or per CPUs)."""
    if kind == "local":
        return _LocalEngine(job, workers or 1, options or LocalOptions())
    if kind == "ray":
        return _RayEngine(job, workers, options or RayOptions())
    if kind == "slurm":
        return _SlurmEngine(job, workers or 1, options or SlurmOptions())
    raise ValueError(f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}")


def run_with_executor(
    kind: str,
    job: SweepJob,
    workers: Optional[int],
    options: Any = None,
    *,
    console: Any = None,
    progress_every: float = 30.0,
    on_progress: Optional[Callable[[Any], None]] = None,
) -> List[Any]:
    """Start ``workers`` workers of ``job`` on the engine ``kind`` and wait for them, printing
    the sweep's progress (runs done / running / left, ETA) every ``progress_every`` seconds and
    whenever a run finishes. Returns the workers' reports (a string for a worker that died).
    Ctrl-C stops the workers (their runs are marked interrupted and continue next time)."""
    from wcnerf.eval.reports import default_console

    console = default_console(console)
    plan = job.plan()
    engine = start_engine(kind, job, workers, options)
    workers = engine.n
    console.print(f"[bold]{escape(kind)}[/]: {escape(engine.describe)}")
    if isinstance(options, SlurmOptions) and options.detach:
        console.print("detached: the jobs run on; `--report-only` writes the reports when they are done")
        return []
    last_line, last_print = None, 0.0
    try:
        while True:
            finished = engine.wait(min(2.0, progress_every))
            prog = sweep_progress(plan, workers, job)
            if on_progress is not None:
                on_progress(prog)
            line = prog.line()
            now = time.monotonic()
            if finished or line.split(";")[0] != (last_line or "").split(";")[0] or now - last_print >= progress_every:
                console.print(escape(line))
                for run_line in prog.run_lines():
                    console.print(escape(run_line))
                last_line, last_print = line, now
            if finished:
                break
        results = engine.results()
    except KeyboardInterrupt:
        engine.stop()
        raise
    finally:
        if hasattr(engine, "close"):
            engine.close()
    for r in results:
        if isinstance(r, str):
            console.print(f"[yellow]worker[/]: {escape(r)}")
    return results
