"""Run state and execution: one (scene, method, seed) run of the comparison and its folder.

Layout of a run folder ``<output_root>/<protocol>/runs/<scene>/<method>/seed-<seed>/``::

    config.yml      # the run's nerfstudio TrainerConfig, written when it is planned (wcnerf.eval.plan)
    status.json     # written atomically at every change: pending/running/done/failed/interrupted
    metrics.json    # written atomically last: its existence is what "finished" means
    curves.json     # train / held-out PSNR against iterations (optional)
    heldout/gt_0000.png, heldout/pred_0000.png   # the first held-out view (optional)
    ...             # whatever the runner keeps (nerfstudio outputs, logs)

The step "train and evaluate one run" is a replaceable callable (:data:`Runner`): the real
one is :class:`wcnerf.eval.ns_runner.NerfstudioRunner` (which depends on this module only);
tests inject fakes. :func:`execute` runs one spec through a runner and records its status,
result or error. Planning is :mod:`wcnerf.eval.plan`, the sweep :mod:`wcnerf.eval.sweep`; the reports
:mod:`wcnerf.eval.reports`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from wcnerf.atomic import write_json
from wcnerf.eval.protocols import Protocol
from wcnerf.lease import lease_is_live, pid_alive, read_lease

__all__ = [
    "CONFIG_FILE",
    "STATUS_FILE",
    "METRICS_FILE",
    "CURVES_FILE",
    "HELDOUT_DIR",
    "MethodSpec",
    "SceneSpec",
    "RunSpec",
    "RunResult",
    "RunFailed",
    "Runner",
    "read_json",
    "run_dir_for",
    "run_state",
    "execute",
]

CONFIG_FILE = "config.yml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.json"
HELDOUT_DIR = "heldout"
PROGRESS_EVERY = 5.0
"""Seconds between two progress records in status.json."""


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


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
    views_evaluated: Optional[int] = None
    """Held-out views the evaluation renders (the dataparser's test split)."""
    views_held_out: Optional[int] = None
    """Views the dataparser holds out of training (more than evaluated when it evaluates a subset)."""
    image_width: Optional[int] = None
    """Width of the evaluated images (to cut ns-eval's side-by-side renders apart)."""


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
        """The run's training budget: its config's (once planned), else the protocol's (0: unknown)."""
        return config_iterations(self.run_dir) or self.protocol.max_num_iterations or 0

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.scene.label, self.method.label, self.seed)

    def settings(self) -> Dict[str, Any]:
        """Which run this is (recorded in status.json and metrics.json); what it trains is its
        ``config.yml``."""
        return {
            "protocol": self.protocol.name,
            "scene": self.scene.label,
            "scene_path": str(self.scene.path) if self.scene.path else None,
            "method": self.method.label,
            "ns_method": self.method.ns_method,
            "conditioning": self.method.conditioning,
            "seed": self.seed,
            "config": str(self.run_dir / CONFIG_FILE),
        }


_ITERATIONS_LINE = re.compile(r"^max_num_iterations: (\d+)$", re.M)


_FACTOR_LINE = re.compile(r"^\s+downscale_factor: (\d+)$", re.M)


def config_downscale_factor(run_dir: Path) -> Optional[int]:
    """The dataparser's ``downscale_factor`` in a run's ``config.yml`` (read from its text, as
    :func:`config_iterations`); None without one."""
    try:
        m = _FACTOR_LINE.search((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf8"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def config_iterations(run_dir: Path) -> Optional[int]:
    """``max_num_iterations`` of a run's ``config.yml``, read from its text (no nerfstudio
    import: the sweep's progress reads it often); None without one."""
    try:
        m = _ITERATIONS_LINE.search((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf8"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


@dataclass
class RunResult:
    """What a runner returns for a finished run (metrics over its evaluated held-out images)."""

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


# --------------------------------------------------------------------------------------
# Run state on disk
# --------------------------------------------------------------------------------------


def run_state(run_dir: Path) -> str:
    """``done`` (metrics.json exists), ``running`` (a live lease on the folder, held by a process
    on any host, see :mod:`wcnerf.lease`; or, without a lease, a live process on this host),
    ``failed``, ``interrupted`` (a kill left it running/unfinished) or ``pending`` (never started)."""
    run_dir = Path(run_dir)
    if read_json(run_dir / METRICS_FILE) is not None:
        return "done"
    lease = read_lease(run_dir)
    if lease is not None and lease_is_live(lease):
        return "running"
    status = read_json(run_dir / STATUS_FILE)
    if status is None:
        return "pending"
    state = status.get("status")
    if state == "running":
        pid = status.get("pid")
        if (lease is None and status.get("host") == socket.gethostname() and str(pid) != str(os.getpid())
                and pid_alive(pid)):
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


def _execution_record(runner: Runner) -> Optional[Dict[str, Any]]:
    """The execution policy the run is run under (``status.json``'s ``execution``), when the
    runner has one."""
    execution = getattr(runner, "execution", None)
    return execution.record() if hasattr(execution, "record") else None


def execute(spec: RunSpec, runner: Runner, sweep_id: Optional[str] = None, job_id: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Run one spec through the runner, recording status; returns (status, error).

    ``sweep_id`` / ``job_id`` (recorded in status.json) name the sweep invocation and the worker's
    job that ran it (a failed run is tried once per sweep). The progress the runner reports is
    kept in status.json's ``progress`` (step, total, measured seconds per iteration), at most
    every few seconds, for the sweep's ETA."""
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
        execution=_execution_record(runner),
        history=history[-10:],
        sweep=sweep_id,
        job_id=job_id,
        progress=None,
    )
    if spec.scene.error:
        err = spec.scene.error
        _set_status(run_dir, status="failed", stage="scene", error=err, finished=_now())
        return "failed", err
    outer_report = spec.report

    clock: Dict[str, Any] = {"last": 0.0, "first": None, "kind": None}

    def report(stage: str, step: Optional[float] = None, total: Optional[int] = None) -> None:
        now = time.monotonic()
        fields: Dict[str, Any] = {}
        if stage != getattr(report, "_last", None):
            report._last = stage  # type: ignore[attr-defined]
            fields["stage"] = stage
        kind = "eval" if stage.startswith("eval") else "train"  # training steps, or views evaluated
        if kind != clock["kind"]:
            if clock["kind"] is not None:
                fields["progress"] = None  # the last stage's progress says nothing of this one
            clock.update(kind=kind, first=None, last=0.0)
        if step is not None and total and now - clock["last"] >= PROGRESS_EVERY:
            first = clock["first"]
            if first is None or step < first[1]:
                clock["first"] = first = (now, step)
            rate = (now - first[0]) / (step - first[1]) if step > first[1] else None
            if kind == "eval":
                fields["progress"] = {"step": round(float(step), 3), "total": int(total), "unit": "views",
                                      "sec_per_view": rate, "at": time.time()}
            else:
                fields["progress"] = {"step": int(step), "total": int(total), "sec_per_iter": rate, "at": time.time()}
        if fields:
            clock["last"] = now if "progress" in fields else clock["last"]
            try:
                _set_status(run_dir, **fields)
            except OSError:
                pass
        outer_report(stage, step, total)

    spec.report = report
    try:
        result = runner(spec)
        if not isinstance(result, RunResult):
            raise TypeError(f"runner returned {type(result).__name__}, not RunResult")
    except (KeyboardInterrupt, SystemExit):  # SystemExit: a scheduler's time limit (submitit requeues)
        _set_status(run_dir, status="interrupted", error="interrupted (Ctrl-C, kill or time limit); continues on the next invocation", finished=_now())
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
