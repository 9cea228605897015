"""The NeRF vs E-NeRF comparison sweep: scenes x methods x seeds under a protocol.

Layout of ``<output_root>/<protocol>/`` (default ``outputs/compare/<protocol>/``)::

    results.csv  table.md  curves.png  renders/<scene>.png
    runs/<scene>/<method>/seed-<seed>/
        status.json     # written atomically at every change: pending/running/done/failed/interrupted
        metrics.json    # written atomically last: its existence is what "finished" means
        curves.json     # train / held-out PSNR against iterations (optional)
        heldout/gt_0000.png, heldout/pred_0000.png   # the first held-out view (optional)
        ...             # whatever the runner keeps (nerfstudio outputs, logs)

The step "train and evaluate one run" is a replaceable callable (:data:`Runner`): the real
one is :class:`wcnerf.eval.ns_runner.NerfstudioRunner`; tests inject fakes. The harness owns
planning, skipping finished runs, retrying failed ones, recording status and errors, and
writing the reports.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from wcnerf.atomic import write_json, write_text
from wcnerf.eval.protocols import Protocol
from wcnerf.eval.table import (
    order_methods,
    order_scenes,
    table_markdown,
    write_results_csv,
)

__all__ = [
    "MethodSpec",
    "SceneSpec",
    "RunSpec",
    "RunResult",
    "RunFailed",
    "Runner",
    "SweepSummary",
    "known_conditioners",
    "parse_list",
    "resolve_methods",
    "resolve_scenes",
    "plan_runs",
    "read_json",
    "run_state",
    "run_sweep",
    "collect_records",
    "write_reports",
]

# Bare conditioner names that are the two named methods.
_ALIASES = {"none": "nerf", "equilibrate": "e-nerf"}

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.json"
HELDOUT_DIR = "heldout"


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def parse_list(values: Iterable[Any]) -> List[str]:
    """``("fern,flower", "room")`` -> ``["fern", "flower", "room"]`` (order kept, duplicates dropped)."""
    out: List[str] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


# --------------------------------------------------------------------------------------
# What is swept
# --------------------------------------------------------------------------------------


def known_conditioners() -> List[str]:
    """Conditioner names of :mod:`wcnerf.conditioning`: each is also a method of the sweep."""
    from wcnerf.conditioning import available

    return list(available())


@dataclass(frozen=True)
class MethodSpec:
    label: str
    """Name in folders, results.csv and the table (``nerf``, ``e-nerf``, ``weight-norm``)."""
    ns_method: str
    """Registered nerfstudio method trained for it."""
    conditioning: Optional[str] = None
    """Passed as ``--pipeline.model.conditioning`` (None: the method's own default)."""


@dataclass(frozen=True)
class SceneSpec:
    label: str
    """Name in folders and the table (the scene folder's name)."""
    path: Optional[Path]
    """The scene folder, or None when it could not be found."""
    error: Optional[str] = None
    """Why the scene cannot be used (its runs are recorded as failed with this error)."""


def resolve_methods(names: Sequence[str], protocol: Protocol) -> List[MethodSpec]:
    """Sweep labels -> methods. ``nerf`` / ``e-nerf`` (any key of ``protocol.methods``) are the
    registered methods; any other conditioner name runs ``protocol.base_method`` with that
    conditioning (``none`` and ``equilibrate`` are the same as ``nerf`` and ``e-nerf``)."""
    conditioners = known_conditioners()
    specs: List[MethodSpec] = []
    for raw in parse_list(names):
        name = _ALIASES.get(raw, raw) if raw not in protocol.methods else raw
        if name in protocol.methods:
            spec = MethodSpec(name, protocol.methods[name])
        elif name in conditioners:
            spec = MethodSpec(name, protocol.base_method, conditioning=name)
        else:
            raise ValueError(
                f"unknown method {raw!r}: use one of {sorted(protocol.methods)} or a conditioner name "
                f"({', '.join(conditioners)})"
            )
        if spec.label not in [s.label for s in specs]:
            specs.append(spec)
    if not specs:
        raise ValueError("no methods to run")
    return specs


def _scene_problem(path: Path, downscale_factor: int) -> Optional[str]:
    if not path.is_dir():
        return f"{path}: not a folder"
    if not (path / "poses_bounds.npy").is_file():
        return f"{path}: no poses_bounds.npy (not an LLFF / nerf_llff_data scene folder)"
    has = (path / f"images_{downscale_factor}").is_dir() or (path / "images").is_dir()
    if not has:
        return f"{path}: neither images_{downscale_factor}/ nor images/ to build it from"
    return None


def _data_roots() -> List[Path]:
    try:
        from wcnerf.data.llff_scene import data_search_roots

        return list(data_search_roots())
    except Exception:  # noqa: BLE001
        import wcnerf

        roots = [Path(wcnerf.__file__).resolve().parents[1] / "data"]
        roots += [Path(p).expanduser() for p in os.environ.get("WCNERF_DATA", "").split(os.pathsep) if p.strip()]
        return roots


def resolve_scenes(names: Sequence[str], downscale_factor: int) -> List[SceneSpec]:
    """Scene names or paths -> folders. A name is looked up under the repository's ``data/``
    and each ``$WCNERF_DATA`` entry, as ``<root>/<name>`` and ``<root>/llff/<name>``; the first
    folder with ``poses_bounds.npy`` and images for the protocol's factor wins. A scene that
    cannot be found is kept, with its error, so that its runs are reported as failed."""
    specs: List[SceneSpec] = []
    for raw in parse_list(names):
        given = Path(raw).expanduser()
        candidates: List[Path] = []
        if given.exists():
            candidates.append(given.parent if given.is_file() else given)
        elif not given.is_absolute():
            for root in _data_roots():
                candidates += [root / given, root / "llff" / given]
        existing = [c for c in candidates if c.is_dir()]
        good = [c for c in existing if _scene_problem(c, downscale_factor) is None]
        label = (existing[0] if existing else given).resolve().name if (existing or given.exists()) else given.name
        if good:
            spec = SceneSpec(good[0].resolve().name, good[0].resolve())
        elif existing:
            spec = SceneSpec(label, existing[0].resolve(), _scene_problem(existing[0], downscale_factor))
        else:
            env = os.environ.get("WCNERF_DATA")
            looked = "\n".join(f"  - {c}" for c in (candidates or [given.absolute()]))
            spec = SceneSpec(
                given.name,
                None,
                f"{raw}: LLFF scene folder not found. Looked in:\n{looked}\n"
                + (f"($WCNERF_DATA={env!r})" if env else "(set $WCNERF_DATA to a folder holding nerf_llff_data scenes)"),
            )
        clash = [s for s in specs if s.label == spec.label and s.path != spec.path]
        if clash:
            raise ValueError(f"two scenes named {spec.label!r}: {clash[0].path} and {spec.path}")
        if spec.label not in [s.label for s in specs]:
            specs.append(spec)
    return specs


@dataclass
class RunSpec:
    """One (scene, method, seed) run as handed to a :data:`Runner`."""

    protocol: Protocol
    scene: SceneSpec
    method: MethodSpec
    seed: int
    run_dir: Path
    report: Callable[..., None] = field(default=lambda *a, **k: None, repr=False, compare=False)
    """``report(stage, step=None, total=None)``: progress for the console (optional to call)."""

    @property
    def iterations(self) -> int:
        return self.protocol.max_num_iterations

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.scene.label, self.method.label, self.seed)

    def settings(self) -> Dict[str, Any]:
        """What the run's numbers depend on (recorded in status.json and metrics.json)."""
        p = self.protocol
        return {
            "protocol": p.name,
            "scene": self.scene.label,
            "scene_path": str(self.scene.path) if self.scene.path else None,
            "method": self.method.label,
            "ns_method": self.method.ns_method,
            "conditioning": self.method.conditioning,
            "seed": self.seed,
            "max_num_iterations": p.max_num_iterations,
            "downscale_factor": p.downscale_factor,
            "holdout_every": p.holdout_every,
            "train_args": list(p.train_args),
            "dataparser_args": list(p.dataparser_args),
        }


@dataclass
class RunResult:
    """What a runner returns for a finished run (metrics over every held-out image)."""

    psnr: float
    ssim: Optional[float] = None
    lpips: Optional[float] = None
    iterations: Optional[int] = None
    sec_per_iter: Optional[float] = None
    train_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class RunFailed(RuntimeError):
    """A run that did not produce metrics; ``str(exc)`` is shown, ``log_tail`` kept in full."""

    def __init__(self, message: str, log_tail: str = "", log_path: Optional[Path] = None):
        super().__init__(message)
        self.log_tail = log_tail
        self.log_path = log_path


Runner = Callable[[RunSpec], RunResult]


def run_dir_for(out_dir: Path, scene: str, method: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / scene / method / f"seed-{seed}"


def plan_runs(
    protocol: Protocol,
    scenes: Sequence[SceneSpec],
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    out_dir: Path,
) -> List[RunSpec]:
    """Every (scene, method, seed), scene-major so a scene's comparison completes early."""
    return [
        RunSpec(protocol, sc, m, int(seed), run_dir_for(out_dir, sc.label, m.label, int(seed)))
        for sc in scenes
        for seed in seeds
        for m in methods
    ]


# --------------------------------------------------------------------------------------
# Run state on disk
# --------------------------------------------------------------------------------------


def _pid_alive(pid: Any) -> bool:
    try:
        pid = int(pid)
        if pid <= 0 or pid == os.getpid():
            return False
        os.kill(pid, 0)
        return True
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False


def run_state(run_dir: Path) -> str:
    """``done`` (metrics.json exists), ``running`` (another live process on this host holds it),
    ``failed``, ``interrupted`` (a kill left it running/unfinished) or ``pending`` (never started)."""
    run_dir = Path(run_dir)
    if read_json(run_dir / METRICS_FILE) is not None:
        return "done"
    status = read_json(run_dir / STATUS_FILE)
    if status is None:
        return "pending"
    state = status.get("status")
    if state == "running":
        if status.get("host") == socket.gethostname() and _pid_alive(status.get("pid")):
            return "running"
        return "interrupted"
    if state in ("failed", "interrupted"):
        return state
    return "pending"


def _set_status(run_dir: Path, **fields: Any) -> Dict[str, Any]:
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path) or {}
    status.update(fields)
    status["updated"] = _now()
    write_json(path, status)
    return status


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RunFailed):
        text = str(exc)
        if exc.log_tail:
            text += "\n" + exc.log_tail
        return text
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() + "\n" + "".join(
        traceback.format_tb(exc.__traceback__)[-3:]
    )


def _execute(spec: RunSpec, runner: Runner) -> Tuple[str, Optional[str]]:
    """Run one spec through the runner, recording status; returns (status, error)."""
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_json(run_dir / STATUS_FILE) or {}
    attempt = int(previous.get("attempts", 0)) + 1
    history = list(previous.get("history", []))
    if previous.get("status") in ("failed", "running", "interrupted"):
        entry = {k: previous.get(k) for k in ("status", "stage", "error", "started", "updated", "attempts") if k in previous}
        if entry.get("status") == "running":  # its process died without a word (kill -9, power loss)
            entry.update(status="interrupted", error="process ended while running (killed)")
        history.append(entry)
    _set_status(
        run_dir,
        status="running",
        stage="starting",
        attempts=attempt,
        started=_now(),
        pid=os.getpid(),
        host=socket.gethostname(),
        error=None,
        settings=spec.settings(),
        history=history[-10:],
    )
    if spec.scene.error:
        err = spec.scene.error
        _set_status(run_dir, status="failed", stage="scene", error=err, finished=_now())
        return "failed", err
    outer_report = spec.report

    def report(stage: str, step: Optional[int] = None, total: Optional[int] = None) -> None:
        if stage != getattr(report, "_last", None):
            report._last = stage  # type: ignore[attr-defined]
            try:
                _set_status(run_dir, stage=stage)
            except OSError:
                pass
        outer_report(stage, step, total)

    spec.report = report
    try:
        result = runner(spec)
        if not isinstance(result, RunResult):
            raise TypeError(f"runner returned {type(result).__name__}, not RunResult")
    except KeyboardInterrupt:
        _set_status(run_dir, status="interrupted", error="interrupted (Ctrl-C or kill); continues on the next invocation", finished=_now())
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is fatal to the sweep
        err = _error_text(exc)
        extra = {"log": str(exc.log_path)} if isinstance(exc, RunFailed) and exc.log_path else {}
        _set_status(run_dir, status="failed", error=err, finished=_now(), **extra)
        return "failed", err
    finally:
        spec.report = outer_report
    metrics = {
        **spec.settings(),
        **asdict(result),
        "finished": _now(),
        "attempts": attempt,
    }
    write_json(run_dir / METRICS_FILE, metrics)
    _set_status(run_dir, status="done", stage="done", error=None, finished=metrics["finished"])
    return "done", None


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

    @property
    def n_failed_total(self) -> int:
        return sum(1 for r in self.records if r.get("status") == "failed")


def _console(console: Any = None) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console()


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
) -> SweepSummary:
    """Run every planned (scene, method, seed) that has not finished, then write the reports.

    Finished runs (``metrics.json`` present) are never redone (unless ``redo``, which deletes
    the run folders of the planned runs first); failed and interrupted runs are run again
    (failed ones only when ``retry_failed``); runs held by another live process are left alone.
    Ctrl-C marks the current run interrupted and still writes the reports.
    """
    console = _console(console)
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
            _warn_if_settings_changed(spec, console)
        elif state == "running":
            summary.skipped_running += 1
            console.print(f"[yellow]skip[/] {_name(spec)}: being run by another process ({spec.run_dir})")
        elif state == "failed" and not retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(spec)
    console.print(
        f"[bold]{protocol.name}[/]: {len(plan)} runs planned, {summary.skipped_done} already finished, "
        f"{len(todo)} to run" + (f", {summary.skipped_failed} failed left as they are" if summary.skipped_failed else "")
    )
    try:
        if show_progress and todo:
            _run_with_progress(todo, runner, summary, console)
        else:
            for spec in todo:
                _run_one(spec, runner, summary, console)
    except KeyboardInterrupt:
        summary.interrupted = True
        console.print("[red]interrupted[/]: the same command continues where this stopped")
    finally:
        if write_report:
            summary.records = collect_records(out_dir, plan)
            summary.reports = write_reports(out_dir, summary.records, protocol, console=console)
    return summary


def _name(spec: RunSpec) -> str:
    return f"{spec.scene.label} / {spec.method.label} / seed {spec.seed}"


def _warn_if_settings_changed(spec: RunSpec, console: Any) -> None:
    metrics = read_json(spec.run_dir / METRICS_FILE) or {}
    now = spec.settings()
    changed = [
        k
        for k in ("ns_method", "conditioning", "max_num_iterations", "downscale_factor", "holdout_every", "train_args")
        if k in metrics and metrics.get(k) != now.get(k)
    ]
    if changed:
        console.print(
            f"[yellow]note[/] {_name(spec)} finished earlier with different settings ({', '.join(changed)}); "
            "kept (use --redo to run it again)"
        )


def _run_one(spec: RunSpec, runner: Runner, summary: SweepSummary, console: Any) -> None:
    state = run_state(spec.run_dir)  # again: another process may have taken or finished it meanwhile
    if state == "done":
        summary.skipped_done += 1
        return
    if state == "running":
        summary.skipped_running += 1
        console.print(f"[yellow]skip[/] {_name(spec)}: being run by another process ({spec.run_dir})")
        return
    console.print(f"[cyan]run[/] {_name(spec)} -> {spec.run_dir}")
    status, err = _execute(spec, runner)
    summary.ran += 1
    if status == "done":
        summary.done += 1
        m = read_json(spec.run_dir / METRICS_FILE) or {}
        console.print(f"[green]done[/] {_name(spec)}: PSNR {_f(m.get('psnr'))}, SSIM {_f(m.get('ssim'), 3)}")
    else:
        summary.failed += 1
        last = [ln for ln in (err or "").splitlines() if ln.strip()]
        console.print(f"[red]failed[/] {_name(spec)}: {last[-1] if last else 'unknown error'}")


def _f(x: Any, d: int = 2) -> str:
    try:
        return f"{float(x):.{d}f}"
    except (TypeError, ValueError):
        return "–"


def _run_with_progress(todo: Sequence[RunSpec], runner: Runner, summary: SweepSummary, console: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("[bold]runs", total=len(todo))
        for spec in todo:
            current = progress.add_task(f"{_name(spec)}: starting", total=spec.iterations)

            def report(stage: str, step: Optional[int] = None, total: Optional[int] = None, _t=current, _s=spec) -> None:
                kwargs: Dict[str, Any] = {"description": f"{_name(_s)}: {stage}"}
                if total is not None:
                    kwargs["total"] = total
                if step is not None:
                    kwargs["completed"] = step
                progress.update(_t, **kwargs)

            spec.report = report
            try:
                _run_one(spec, runner, summary, progress.console)
            finally:
                progress.remove_task(current)
            progress.advance(overall)


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _record(out_dir: Path, run_dir: Path, fallback: Optional[RunSpec] = None) -> Dict[str, Any]:
    metrics = read_json(run_dir / METRICS_FILE)
    status = read_json(run_dir / STATUS_FILE) or {}
    settings = dict(status.get("settings") or {})
    if fallback is not None:
        settings = {**fallback.settings(), **settings} if settings else fallback.settings()
    rec: Dict[str, Any] = {
        "protocol": settings.get("protocol"),
        "scene": settings.get("scene"),
        "method": settings.get("method"),
        "seed": settings.get("seed"),
        "ns_method": settings.get("ns_method"),
        "conditioning": settings.get("conditioning"),
        "iterations": settings.get("max_num_iterations"),
        # relative to the folder of results.csv / table.md
        "run_dir": os.path.relpath(Path(run_dir).resolve(), Path(out_dir).resolve()),
        "abs_run_dir": str(Path(run_dir).resolve()),
    }
    if metrics is not None:
        rec.update({k: metrics.get(k) for k in ("psnr", "ssim", "lpips", "sec_per_iter", "train_seconds", "eval_seconds")})
        for k in ("protocol", "scene", "method", "seed", "ns_method", "conditioning"):
            if metrics.get(k) is not None:
                rec[k] = metrics[k]
        rec["iterations"] = metrics.get("iterations") or metrics.get("max_num_iterations")
        rec["status"] = "done"
        rec["error"] = ""
    else:
        state = run_state(run_dir)
        rec["status"] = state
        rec["error"] = status.get("error") or ("" if state != "interrupted" else "interrupted; resumes on the next invocation")
    return rec


def collect_records(out_dir: Path, plan: Sequence[RunSpec] = ()) -> List[Dict[str, Any]]:
    """One record per run: the planned ones plus every other run folder found under
    ``out_dir/runs`` (earlier invocations with other scenes, methods or seeds)."""
    out_dir = Path(out_dir)
    by_dir: Dict[Path, Dict[str, Any]] = {}
    for spec in plan:
        by_dir[spec.run_dir.resolve()] = _record(out_dir, spec.run_dir, spec)
    runs = out_dir / "runs"
    if runs.is_dir():
        for status_path in sorted(runs.glob(f"*/*/seed-*/{STATUS_FILE}")):
            d = status_path.parent.resolve()
            if d not in by_dir:
                rec = _record(out_dir, status_path.parent)
                if rec.get("scene") is not None and rec.get("method") is not None:
                    by_dir[d] = rec
    records = list(by_dir.values())
    scenes = order_scenes(r["scene"] for r in records)
    methods = order_methods(r["method"] for r in records)
    records.sort(key=lambda r: (scenes.index(r["scene"]), methods.index(r["method"]), int(r["seed"] or 0)))
    return records


def _curves_and_views(records: Sequence[Mapping[str, Any]]):
    curves = []
    views: Dict[str, List[Tuple[str, Path, Path]]] = {}
    chosen: Dict[Tuple[str, str], Tuple[int, Path, Path]] = {}
    for r in records:
        if r.get("status") != "done":
            continue
        d = Path(r["abs_run_dir"])
        data = read_json(d / CURVES_FILE)
        if data:
            curves.append((r["scene"], r["method"], r["seed"], data))
        gt, pred = d / HELDOUT_DIR / "gt_0000.png", d / HELDOUT_DIR / "pred_0000.png"
        if gt.is_file() and pred.is_file():
            key = (r["scene"], r["method"])
            if key not in chosen or int(r["seed"]) < chosen[key][0]:
                chosen[key] = (int(r["seed"]), gt, pred)
    for (scene, method), (_, gt, pred) in chosen.items():
        views.setdefault(scene, []).append((method, gt, pred))
    return curves, views


def write_reports(
    out_dir: Path,
    records: Sequence[Dict[str, Any]],
    protocol: Optional[Protocol] = None,
    console: Any = None,
) -> Dict[str, Optional[Path]]:
    """results.csv, table.md, curves.png and renders/ from the records. A figure that fails is
    reported on the console (and skipped); the CSV and the table are always written."""
    console = _console(console)
    out_dir = Path(out_dir)
    written: Dict[str, Optional[Path]] = {}
    written["results.csv"] = write_results_csv(records, out_dir / "results.csv")
    summary = protocol.summary() if protocol else ""
    if protocol and protocol.description:
        summary = f"{protocol.description}\n\n{summary}"
    title = f"E-NeRF vs NeRF on LLFF ({protocol.name} protocol)" if protocol else "E-NeRF vs NeRF on LLFF"
    curves, views = _curves_and_views(records)
    heldout: Dict[Tuple[str, str], List[Tuple[List[int], List[float]]]] = {}
    for scene, method, _seed, data in curves:
        held = data.get("heldout") or {}
        if held.get("step"):
            heldout.setdefault((scene, method), []).append((held["step"], held["psnr"]))
    write_text(out_dir / "table.md",
               table_markdown(records, title=title, protocol_summary=summary, heldout_curves=heldout))
    written["table.md"] = out_dir / "table.md"
    try:
        from wcnerf.eval.plots import plot_curves

        written["curves.png"] = plot_curves(
            curves, out_dir / "curves.png", title=f"Train and held-out PSNR ({protocol.name if protocol else ''})"
        )
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]curves.png not written[/]: {type(exc).__name__}: {exc}")
        written["curves.png"] = None
    try:
        from wcnerf.eval.plots import write_scene_renders

        paths = write_scene_renders(views, out_dir / "renders")
        written["renders"] = (out_dir / "renders") if paths else None
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]renders/ not written[/]: {type(exc).__name__}: {exc}")
        written["renders"] = None
    console.print(
        "reports: " + ", ".join(str(p) for p in written.values() if p is not None)
    )
    return written
