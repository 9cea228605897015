"""The comparison's command line (``scripts/compare_llff.py``): E-NeRF vs NeRF on LLFF scenes
(the paper's Table 4), a resumable sweep over scenes x methods x seeds under a protocol of
``configs/protocols/``::

    python scripts/compare_llff.py --protocol cpu --scenes fern flower --seeds 0 1 2
    python scripts/compare_llff.py --protocol paper --scenes fern flower fortress horns leaves orchids room trex
    python scripts/compare_llff.py --methods nerf e-nerf weight-norm     # any conditioner name too

Lists are typed tuples, one value per word as in nerfstudio's command lines; a comma-joined
word (``--seeds 0,1,2``) is split too. Writes
``outputs/compare/<protocol>/{results.csv, table.md, curves.png, renders/, runs/}``. Running
the same command again skips finished runs, resumes interrupted ones from their last
checkpoint and retries failed ones. Exit code 1 when some run is failed, 130 when interrupted.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Tuple, TypeVar

import tyro
from rich.console import Console
from rich.markup import escape
from tyro.constructors import PrimitiveConstructorSpec
from typing_extensions import Annotated

from wcnerf.eval.sweep import parse_list

__all__ = ["CompareLLFF", "Selection", "Execution", "Engine", "cpu_refusal", "main"]

T = TypeVar("T")


def _words(cast: Callable[[str], T], metavar: str) -> PrimitiveConstructorSpec:
    """A tuple option taking one value per word, where a word may also be a comma list."""
    return PrimitiveConstructorSpec(
        nargs="*",
        metavar=metavar,
        instance_from_str=lambda words: tuple(parse_list(words, cast)),
        is_instance=lambda value: isinstance(value, tuple),
        str_from_instance=lambda value: [str(v) for v in value],
    )


Names = Annotated[Tuple[str, ...], _words(str, "NAME [NAME ...]")]
Seeds = Annotated[Tuple[int, ...], _words(int, "INT [INT ...]")]


@dataclass
class Selection:
    """What is swept (every scene x method x seed)."""

    scenes: Names = ()
    """Scene names or folders. A name is looked up as <root>/NAME and <root>/llff/NAME under the
    repo's data/, each --data-root and each $WCNERF_DATA entry (the same lookup as
    `ns-train ... llff --data NAME`). Default: the protocol's scenes."""
    methods: Names = ("nerf", "e-nerf")
    """nerf, e-nerf, or any conditioner name (none, equilibrate-out, weight-norm, equinorm, ...):
    the protocol's base method with that conditioning."""
    seeds: Seeds = ()
    """Seeds. Default: the protocol's seeds."""
    max_num_iterations: Optional[int] = None
    """Override the protocol's iteration count; outputs then go to <protocol>-<N>it/."""
    data_root: Tuple[Path, ...] = ()
    """Extra folders to look scene names up in (put before $WCNERF_DATA)."""


@dataclass
class Execution:
    """How the runs are run."""

    retry_failed: bool = True
    """Run failed runs again (interrupted ones are always continued)."""
    redo: bool = False
    """Delete the selected runs' folders and run them from scratch."""
    threads: Optional[int] = None
    """OMP/MKL threads of every training / evaluation subprocess (default: the protocol's
    ``threads``, or its ``train_threads`` / ``eval_threads`` for a local worker with the cores to itself)."""


@dataclass
class Engine:
    """Where the runs are run: workers on this machine, on a Ray cluster or as SLURM jobs. Each
    worker claims the next unfinished run by a lease on its folder, trains and evaluates it, and
    repeats; the reports are written when all are done (docs/compare.md)."""

    executor: Literal["local", "ray", "slurm"] = "local"
    """local: worker processes here (one per visible GPU; on a CPU --workers N processes with
    the protocol's threads each); ray: Ray tasks with one GPU (or the protocol's CPUs) each;
    slurm: a job array through submitit."""
    workers: Optional[int] = None
    """Number of workers (default: local, one per visible GPU, else 1; ray, one per GPU of the
    cluster, else CPUs / threads; slurm, 1). Runs are handed out one at a time."""
    lease_seconds: float = 120.0
    """A run whose worker has not renewed its lease for this long is taken over (it resumes
    from its last checkpoint)."""
    progress_every: float = 30.0
    """Seconds between two progress lines (runs done / running / left, ETA)."""
    ray_address: Optional[str] = None
    """An existing Ray cluster (`auto` on a cluster node, or ray://HOST:10001); default: a
    local Ray started for the sweep."""
    slurm_partition: Optional[str] = None
    slurm_time_min: int = 24 * 60
    """Time limit of each worker job in minutes; at the limit the job is requeued and its run
    continues from its last checkpoint."""
    slurm_gpus: int = 1
    """GPUs per worker job."""
    slurm_cpus: int = 4
    """CPUs per worker job."""
    slurm_mem_gb: Optional[float] = None
    slurm_folder: Optional[Path] = None
    """submitit's logs and job pickles (default <output-root>/<protocol>/slurm/)."""
    slurm_local: bool = False
    """Run the same submitit job array on this machine (submitit's local executor), to try it."""
    detach: bool = False
    """slurm: submit the jobs and return; `--report-only` writes the reports later."""
    allow_cpu: bool = False
    """Run a protocol of more than 20000 iterations without a GPU anyway."""


CPU_ITERATION_LIMIT = 20000


def cpu_refusal(protocol: Any, executor: str, allow_cpu: bool) -> Optional[str]:
    """Why a long protocol must not start on a CPU here (None when it may): the `paper`
    protocol's 200k iterations take days per run on a GPU and months on a CPU."""
    if allow_cpu or protocol.max_num_iterations <= CPU_ITERATION_LIMIT or executor != "local":
        return None
    if protocol.device == "cpu":
        where = "its device is `cpu`"
    elif protocol.device == "auto":
        import torch

        if torch.cuda.is_available():
            return None
        where = "no CUDA GPU is visible here (torch.cuda.is_available() is False)"
    else:
        return None
    return (
        f"protocol `{protocol.name}` trains {protocol.max_num_iterations} iterations per run and {where}: "
        "at CPU speed that is weeks per run. Use `--protocol cpu`, fewer iterations (`--max-num-iterations N`), "
        "a GPU machine or cluster (`--executor ray|slurm`), or pass `--allow-cpu` to run it anyway."
    )


@dataclass
class CompareLLFF:
    """Train and evaluate NeRF and E-NeRF (and other conditioners) on LLFF scenes."""

    protocol: str = "cpu"
    """Protocol name (configs/protocols/<name>.yaml: paper, cpu) or path to a protocol YAML."""
    select: tyro.conf.OmitArgPrefixes[Selection] = field(default_factory=Selection)
    run: tyro.conf.OmitArgPrefixes[Execution] = field(default_factory=Execution)
    engine: tyro.conf.OmitArgPrefixes[Engine] = field(default_factory=Engine)
    output_root: Path = Path("outputs/compare")
    """Outputs go to <output-root>/<protocol>/."""
    report_only: bool = False
    """Only rebuild results.csv, table.md, curves.png and renders/ from the run folders."""
    dry_run: bool = False
    """Print each run's state and its ns-train command; run nothing."""

    def main(self, console: Any = None) -> int:
        """Run (or plan, or report) the sweep; returns the exit code."""
        from wcnerf.eval.ns_runner import NerfstudioRunner
        from wcnerf.eval.protocols import load_protocol
        from wcnerf.eval.reports import collect_records, write_reports
        from wcnerf.eval.runs import run_state
        from wcnerf.eval.sweep import plan_runs, resolve_methods, resolve_scenes, run_sweep

        console = console if console is not None else Console()
        sel = self.select
        if sel.data_root:
            extra = os.pathsep.join(str(Path(p).expanduser().resolve()) for p in sel.data_root)
            os.environ["WCNERF_DATA"] = os.pathsep.join(x for x in (extra, os.environ.get("WCNERF_DATA", "")) if x)
        protocol = load_protocol(self.protocol)
        if sel.max_num_iterations is not None and sel.max_num_iterations != protocol.max_num_iterations:
            # another iteration count is another protocol: its own output folder, never mixed
            protocol = protocol.with_overrides(
                name=f"{protocol.name}-{sel.max_num_iterations}it", max_num_iterations=sel.max_num_iterations
            )
        scenes = resolve_scenes(sel.scenes or protocol.scenes, protocol.downscale_factor)
        methods = resolve_methods(sel.methods, protocol)
        seeds = list(sel.seeds) or list(protocol.seeds)
        runner = NerfstudioRunner(threads=self.run.threads)
        console.print(f"[bold]{escape(protocol.summary())}[/]")
        for sc in scenes:
            # the whole message (a lookup error lists every place looked at), markup escaped
            where = escape(str(sc.path)) if sc.error is None else "[red]" + escape(sc.error) + "[/]"
            console.print(f"  scene {escape(sc.label)}: {where}")
        out_dir = self.output_root / protocol.name
        if self.dry_run:
            for spec in plan_runs(protocol, scenes, methods, seeds, out_dir):
                state = run_state(spec.run_dir)
                cmd = runner.train_command(spec) if spec.scene.path else ["(scene not found)"]
                console.print(
                    escape(f"[{state}] {spec.scene.label} {spec.method.label} seed {spec.seed}: {' '.join(cmd)}"),
                    soft_wrap=True,
                )
            return 0
        if self.report_only:
            plan = plan_runs(protocol, scenes, methods, seeds, out_dir) if sel.scenes else []
            records = collect_records(out_dir, plan)
            write_reports(out_dir, records, protocol, console=console)
            return 1 if any(r["status"] == "failed" for r in records) else 0

        eng = self.engine
        refusal = cpu_refusal(protocol, eng.executor, eng.allow_cpu)
        if refusal:
            console.print(f"[red]refused[/]: {escape(refusal)}")
            return 2
        options, workers = self._engine_options(out_dir)

        def _sigterm(signum, frame):  # `kill PID`: stop like Ctrl-C (status + reports written)
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _sigterm)
        summary = run_sweep(
            protocol,
            scenes,
            methods,
            seeds,
            runner=runner,
            output_root=self.output_root,
            retry_failed=self.run.retry_failed,
            redo=self.run.redo,
            console=console,
            executor=eng.executor,
            workers=workers,
            executor_options=options,
            lease_seconds=eng.lease_seconds,
            progress_every=eng.progress_every,
        )
        failed = summary.n_failed_total
        console.print(
            f"[bold]{summary.planned} planned[/]: {summary.skipped_done} were finished, {summary.done} finished now, "
            f"{summary.failed} failed now; {failed} failed in total -> {escape(str(summary.out_dir / 'table.md'))}"
        )
        if summary.interrupted:
            return 130
        return 1 if failed else 0


    def _engine_options(self, out_dir: Path) -> Tuple[Any, Optional[int]]:
        """The executor's options and the number of workers (None: the engine's default)."""
        from wcnerf.eval.executors import LocalOptions, RayOptions, SlurmOptions, visible_gpus

        eng = self.engine
        if eng.executor == "local":
            gpus = visible_gpus()
            return LocalOptions(gpus=gpus), eng.workers or max(1, len(gpus))
        if eng.executor == "ray":
            return RayOptions(address=eng.ray_address), eng.workers
        return (
            SlurmOptions(
                partition=eng.slurm_partition,
                time_min=eng.slurm_time_min,
                gpus_per_worker=eng.slurm_gpus,
                cpus_per_worker=eng.slurm_cpus,
                mem_gb=eng.slurm_mem_gb,
                folder=eng.slurm_folder,
                cluster="local" if eng.slurm_local else None,
                detach=eng.detach,
            ),
            eng.workers or 1,
        )


def main(args: Optional[Sequence[str]] = None) -> int:
    """``compare_llff`` entry point: parse the command line (``sys.argv`` unless ``args``) and
    run; returns the exit code."""
    return tyro.cli(CompareLLFF, args=args).main()
