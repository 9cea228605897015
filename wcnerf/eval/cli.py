"""The comparison's command line (``wcnerf-compare``, ``scripts/compare_llff.py``): a
resumable sweep over scenes x methods x seeds under a protocol (the ones shipped with wcnerf, or
a YAML file of the same keys); by default E-NeRF vs NeRF on LLFF scenes (the paper's Table 4),
and any method ``ns-train`` knows under any conditioners on any scene its dataparser reads::

    wcnerf-compare --protocol cpu --scenes fern flower --seeds 0 1 2
    wcnerf-compare --protocol paper --scenes fern flower fortress horns leaves orchids room trex
    wcnerf-compare --methods nerf e-nerf weight-norm     # any conditioner name too
    wcnerf-compare --method nerfacto --conditioners none equilibrate --data my/scene \
        --dataparser nerfstudio-data --set max_num_iterations=3000 --seeds 0 1 2
    wcnerf-compare --max-num-iterations 30 --max-eval-views 1 --eval-image-scale 0.25   # a quick look

Lists are typed tuples, one value per word as in nerfstudio's command lines; a comma-joined
word (``--seeds 0,1,2``) is split too. Writes
``outputs/compare/<protocol>/{results.csv, table.md, curves.png, renders/, runs/}``. Running
the same command again skips finished runs, resumes interrupted ones from their last
checkpoint and retries failed ones. Exit code 1 when some run is failed, 130 when interrupted.

The flags shared with the other commands are spelled as there: ``--output-dir`` (was
``--output-root``), ``--overwrite`` (was ``--redo``), ``--threads`` (0: the default), ``--seeds``;
the old spellings still work.
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

from wcnerf.bounds import COUNT, EVAL_IMAGE_SCALE, EVAL_VIEWS, SEED, Bounds, at_least, positive, tyro_flag
from wcnerf.eval.plan import check_protocol, known_conditioners, parse_list
from wcnerf.eval.runs import MethodSpec

__all__ = ["Compare", "CompareLLFF", "Selection", "RunOptions", "Engine", "cpu_refusal", "main"]

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

    scenes: Annotated[Names, tyro.conf.arg(aliases=("--data",))] = ()
    """Scene names or folders (--data is the same). For llff a name is looked up as <root>/NAME
    and <root>/llff/NAME under wcnerf's example data, each --data-root and each $WCNERF_DATA entry
    (the same lookup as `ns-train ... llff --data NAME`). Default: the protocol's scenes."""
    methods: Names = ("nerf", "e-nerf")
    """nerf, e-nerf (the protocol's methods: under the cpu protocol ns-train's nerf-small and
    e-nerf-small, which these names also take), or any conditioner name (none, equilibrate-out,
    weight-norm, equinorm, ...): the protocol's base method with that conditioning. Tables print
    each with its ns-train method."""
    method: Optional[str] = None
    """Any method ns-train knows (nerfacto, vanilla-nerf, another plugin's...): compare it under
    --conditioners instead of the protocol's methods; outputs go to <protocol>-<method>/."""
    conditioners: Names = ("none", "equilibrate")
    """With --method: the conditioners compared (none: the method as it is, through the same
    wrapper), conditioned as wcnerf-train conditions it."""
    dataparser: Optional[str] = None
    """A dataparser ns-train knows (llff, nerfstudio-data, blender-data, colmap, ...) instead of
    the protocol's; the protocol's settings of its own dataparser are then dropped."""
    set: Tuple[str, ...] = ()
    """KEY=VALUE overrides of each run's nerfstudio config by dotted path (as in the protocol's
    `overrides`, e.g. pipeline.datamanager.dataparser.downscale_factor=4); values are YAML.
    Outputs then go to a folder of their own."""
    seeds: Seeds = ()
    """Seeds. Default: the protocol's seeds."""
    max_num_iterations: Optional[int] = None
    """Override the protocol's iteration count; outputs then go to <protocol>-<N>it/."""
    max_eval_views: Optional[int] = None
    """Evaluate at most N held-out views of each scene, evenly spaced, the first and the last
    included (0: all of them); default: the protocol's. Outputs then go to <protocol>-<N>views/."""
    eval_image_scale: Optional[float] = None
    """Render each evaluated held-out view at this fraction of its size, in (0, 1], its ground
    truth area-averaged to it (default: the protocol's, 1). Much cheaper on a CPU; PSNRs at
    different scales are not comparable. Outputs then go to <protocol>-scale<S>/."""
    data_root: Tuple[Path, ...] = ()
    """Extra folders to look scene names up in (put before $WCNERF_DATA)."""


@dataclass
class RunOptions:
    """How the runs are run."""

    retry_failed: bool = True
    """Run failed runs again (interrupted ones are always continued)."""
    redo: Annotated[bool, tyro.conf.arg(aliases=("--overwrite",))] = False
    """Delete the selected runs' folders and run them from scratch (--redo is the old name)."""
    threads: int = 0
    """OMP/MKL threads of every training / evaluation subprocess (0: the protocol's threads, or
    its train_threads / eval_threads for a local worker with the cores to itself)."""
    device: Optional[str] = None
    """cpu, cuda or mps for every run (default: the protocol's; auto is cuda where a GPU is seen)."""


@dataclass
class Engine:
    """Where the runs are run: workers on this machine, on a Ray cluster or as SLURM jobs. Each
    worker claims the next unfinished run by a lease on its folder, trains and evaluates it, and
    repeats; the reports are written when all are done."""

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
    """Seconds between two progress lines (runs done / running / left, ETA; each run's training
    step or evaluated views with its ETA). Printed as plain lines when the output is not a terminal."""
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
    """submitit's logs and job pickles (default <output-dir>/<protocol>/slurm/)."""
    slurm_local: bool = False
    """Run the same submitit job array on this machine (submitit's local executor), to try it."""
    detach: bool = False
    """slurm: submit the jobs and return; `--report-only` writes the reports later."""
    allow_cpu: bool = False
    """Run a protocol of more than 20000 iterations without a GPU anyway."""


CPU_ITERATION_LIMIT = 20000

COMPARE_BOUNDS = Bounds((
    ("select.seeds", SEED), ("select.max_num_iterations", COUNT),
    ("select.max_eval_views", EVAL_VIEWS), ("select.eval_image_scale", EVAL_IMAGE_SCALE),
    ("run.threads", at_least(0, warn_above=1024, note="0: the protocol's")), ("engine.workers", at_least(1, warn_above=4096)),
    ("engine.lease_seconds", positive(warn_above=86400)), ("engine.progress_every", positive(warn_above=86400)),
    ("engine.slurm_time_min", at_least(1, warn_above=30 * 24 * 60)), ("engine.slurm_gpus", at_least(0, warn_above=64)),
    ("engine.slurm_cpus", at_least(1, warn_above=1024)), ("engine.slurm_mem_gb", positive(warn_above=16384)),
), flag=lambda path: tyro_flag(path.rpartition(".")[2]))
"""The bounds of every number wcnerf-compare takes (its groups' flags carry no prefix)."""


def cpu_refusal(iterations: int, protocol_name: str, execution: Any, allow_cpu: bool) -> Optional[str]:
    """Why a long sweep must not start on a CPU here (None when it may): the `paper`
    protocol's 200k iterations take days per run on a GPU and months on a CPU."""
    if allow_cpu or iterations <= CPU_ITERATION_LIMIT or execution.executor != "local" or execution.device != "cpu":
        return None
    return (
        f"protocol `{protocol_name}` trains {iterations} iterations per run on the CPU (no CUDA GPU is visible here, "
        "or the device is cpu): at CPU speed that is weeks per run. Use `--protocol cpu`, fewer iterations "
        "(`--max-num-iterations N`), a GPU machine or cluster (`--executor ray|slurm`), or pass `--allow-cpu` to run it anyway."
    )


def _yaml_value(item: str, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {item!r}: the value is not YAML ({str(exc).splitlines()[0]})") from None


def selected_protocol(protocol: Any, sel: "Selection") -> Any:
    """The protocol with the command line's method, dataparser, overrides, budget and evaluation
    sizing applied; each change that alters what a run trains or what is measured gives it a
    name (an output folder) of its own, and is kept in ``changes`` (for the reports)."""
    import dataclasses
    import hashlib

    name = protocol.name
    changes = list(protocol.changes)
    if sel.dataparser and sel.dataparser != protocol.dataparser:
        kept = {k: v for k, v in protocol.overrides.items() if not k.startswith("pipeline.datamanager.dataparser.")}
        protocol = dataclasses.replace(protocol, dataparser=sel.dataparser, overrides=kept)
        name += f"-{sel.dataparser}"
        changes.append(f"--dataparser {sel.dataparser}")
    if sel.method:
        protocol = dataclasses.replace(protocol, methods={}, base_method=sel.method)
        name += f"-{sel.method}"
        changes.append(f"--method {sel.method}")
    if sel.set:
        values = {}
        for item in sel.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set {item!r}: expected KEY=VALUE (a dotted path in the run's config, e.g. "
                                 "max_num_iterations=3000)")
            values[key.strip()] = _yaml_value(item, value)
        protocol = protocol.with_overrides(**values)
        name += "-set" + hashlib.sha1(repr(sorted(values.items())).encode()).hexdigest()[:6]
        changes.append("--set " + " ".join(sel.set))
    protocol = dataclasses.replace(protocol, name=name)
    if sel.max_num_iterations is not None and sel.max_num_iterations != protocol.max_num_iterations:
        protocol = protocol.with_budget(sel.max_num_iterations)
        changes.append(f"--max-num-iterations {sel.max_num_iterations}")
    views = sel.max_eval_views
    if views is not None and views == _evaluated_views(protocol):
        views = None  # what the protocol evaluates already: the same measurement, the same folder
    scale = sel.eval_image_scale if sel.eval_image_scale != protocol.eval_image_scale else None
    if views is not None or scale is not None:
        protocol = protocol.with_evaluation(views, scale)
        changes += ([f"--max-eval-views {views}"] if views is not None else []) + (
            [f"--eval-image-scale {scale:g}"] if scale is not None else [])
    return dataclasses.replace(protocol, changes=tuple(changes)) if changes else protocol


def _evaluated_views(protocol: Any) -> int:
    """How many held-out views the protocol evaluates (0: all): its dataparser's max_eval_views
    override, else its eval_views."""
    from wcnerf.eval.protocols import DATAPARSER_EVAL_VIEWS

    return int(protocol.overrides.get(DATAPARSER_EVAL_VIEWS, protocol.eval_views) or 0)


@dataclass
class Compare:
    """Train and evaluate methods under weight conditioners over scenes and seeds, and report."""

    protocol: str = "cpu"
    """A protocol shipped with wcnerf (paper, cpu, budget) or the path of a protocol YAML file."""
    select: tyro.conf.OmitArgPrefixes[Selection] = field(default_factory=Selection)
    run: tyro.conf.OmitArgPrefixes[RunOptions] = field(default_factory=RunOptions)
    engine: tyro.conf.OmitArgPrefixes[Engine] = field(default_factory=Engine)
    output_root: Annotated[Path, tyro.conf.arg(aliases=("--output-dir",))] = Path("outputs/compare")
    """Outputs go to <output-dir>/<protocol>/ (--output-root is the old name)."""
    report_only: bool = False
    """Only rebuild results.csv, table.md, curves.png and renders/ from the run folders."""
    dry_run: bool = False
    """Print each run's state and its ns-train command; run nothing."""

    def main(self, console: Any = None) -> int:
        """Run (or plan, or report) the sweep; returns the exit code."""
        from wcnerf.eval.execution import Execution
        from wcnerf.eval.ns_runner import NerfstudioRunner
        from wcnerf.eval.plan import build_config, config_changes, plan_runs, resolve_methods, resolve_scenes, write_configs
        from wcnerf.eval.protocols import ProtocolError, load_protocol
        from wcnerf.eval.reports import collect_records, write_reports
        from wcnerf.eval.runs import run_state
        from wcnerf.eval.sweep import run_sweep

        console = console if console is not None else Console()
        sel = self.select
        if sel.data_root:
            extra = os.pathsep.join(str(Path(p).expanduser().resolve()) for p in sel.data_root)
            os.environ["WCNERF_DATA"] = os.pathsep.join(x for x in (extra, os.environ.get("WCNERF_DATA", "")) if x)
        eng = self.engine
        try:
            COMPARE_BOUNDS.check(self, warn=lambda line: console.print(f"[yellow]warning[/]: {escape(line)}"))
            protocol = selected_protocol(load_protocol(self.protocol), sel)
            check_protocol(protocol, [sel.method] if sel.method else [])
            if sel.method:
                methods = [MethodSpec(c, sel.method, conditioning=c) for c in parse_list(sel.conditioners)]
                unknown = [c for c in parse_list(sel.conditioners) if c not in known_conditioners()]
                if unknown or not methods:
                    raise ValueError(f"--conditioners: unknown {unknown or 'none given'}; known: {', '.join(known_conditioners())}")
            else:
                methods = resolve_methods(sel.methods, protocol)
            scenes = resolve_scenes(sel.scenes or protocol.scenes, protocol)
            execution = Execution.decide(protocol, eng.executor, eng.workers, self.run.threads, self.run.device)
        except (ProtocolError, ValueError) as exc:
            console.print(f"[red]refused[/]: {escape(str(exc))}")
            return 2
        seeds = list(sel.seeds) or list(protocol.seeds)  # both bounded: COMPARE_BOUNDS, PROTOCOL_BOUNDS at load
        runner = NerfstudioRunner(execution=execution)
        console.print(f"[bold]{escape(protocol.summary())}[/]")
        for sc in scenes:
            # the whole message (a lookup error lists every place looked at), markup escaped
            where = escape(str(sc.path)) if sc.error is None else "[red]" + escape(sc.error) + "[/]"
            console.print(f"  scene {escape(sc.label)}: {where}")
        out_dir = self.output_root / protocol.name
        plan = plan_runs(protocol, scenes, methods, seeds, out_dir)
        missing = [sc for sc in scenes if sc.error]
        unusable = (f"[red]refused[/]: {len(missing)} scene(s) cannot be used (above): "
                    f"{', '.join(escape(sc.label) for sc in missing)}")
        if missing and not (self.dry_run or self.report_only):  # refused before any run folder is written
            console.print(unusable + "; nothing was run")
            return 2
        if self.report_only:
            records = collect_records(out_dir, plan if sel.scenes else [])
            write_reports(out_dir, records, protocol, console=console)
            return 1 if any(r["status"] == "failed" for r in records) else 0
        try:
            configs = {spec.key: build_config(spec, execution.device, execution.allocator)
                       for spec in plan if spec.scene.error is None}  # every override is checked here
        except (ProtocolError, ValueError) as exc:
            console.print(f"[red]refused[/]: {escape(str(exc))}")
            return 2
        if self.dry_run:
            for spec in plan:
                state = run_state(spec.run_dir)
                cmd = runner.train_command(spec) if spec.scene.error is None else ["(scene not found)"]
                console.print(
                    escape(f"[{state}] {spec.scene.label} {spec.method.label} seed {spec.seed}: {' '.join(cmd)}"),
                    soft_wrap=True,
                )
                if spec.key in configs:
                    config = configs[spec.key]
                    factor = getattr(config.pipeline.datamanager.dataparser, "downscale_factor", None)
                    console.print(escape(
                        f"    {config.max_num_iterations} iterations, --downscale-factor {factor}, "
                        f"{spec.scene.views_evaluated} of {spec.scene.views_held_out} held-out views evaluated"
                        + (f" at {protocol.eval_image_scale:g} of their size" if protocol.eval_image_scale != 1 else "")
                        + "; "
                        f"its config is ns-train {spec.method.ns_method} {' '.join(config_changes(config))}"),
                        soft_wrap=True)
            if missing:  # the plan is shown, but it cannot run as it stands
                console.print(unusable)
                return 2
            return 0
        budget = max((int(c.max_num_iterations) for c in configs.values()), default=0)
        refusal = cpu_refusal(budget, protocol.name, execution, eng.allow_cpu)
        if refusal:
            console.print(f"[red]refused[/]: {escape(refusal)}")
            return 2
        write_configs(plan, execution.device, execution.allocator, console=console, built=configs)

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
            execution=execution,
            executor_options=self._engine_options(),
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

    def _engine_options(self) -> Any:
        """The executor's options."""
        from wcnerf.eval.executors import LocalOptions, RayOptions, SlurmOptions

        eng = self.engine
        if eng.executor == "local":
            return LocalOptions()
        if eng.executor == "ray":
            return RayOptions(address=eng.ray_address)
        return SlurmOptions(
            partition=eng.slurm_partition,
            time_min=eng.slurm_time_min,
            gpus_per_worker=eng.slurm_gpus,
            cpus_per_worker=eng.slurm_cpus,
            mem_gb=eng.slurm_mem_gb,
            folder=eng.slurm_folder,
            cluster="local" if eng.slurm_local else None,
            detach=eng.detach,
        )


CompareLLFF = Compare
"""The name this command had while it compared LLFF scenes only."""


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-compare`` entry point: parse the command line (``sys.argv`` unless ``args``)
    and run; returns the exit code."""
    return tyro.cli(Compare, args=args).main()
