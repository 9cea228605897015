"""Open shape runs in the shape viewer without training: ``shape_fit.py --view RUN_DIR``.

``RUN_DIR`` is one run's folder (``config.json`` + ``checkpoint.pt``; finished when
``metrics.json`` is there) or a ``--compare`` folder (``comparison.json``: each conditioner's
run at the learning rate the comparison chose, first seed, side by side as during training).
A finished run shows its final mesh (``mesh.ply``), metrics and curves; an unfinished one its
last checkpoint (the viewer extracts the mesh at ``--viewer.resolution``). Nothing is trained
or written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .mesh import MeshLoadError, ShapeMesh, load_mesh
from .train import DEFAULT_MESH, FitConfig, RunError, _curves, _mesh_unit, load_field

__all__ = ["LoadedRun", "find_runs", "load_run", "load_runs", "show", "view"]


@dataclass
class LoadedRun:
    """A run folder read back: its settings, trained field, metrics (None: not finished) and curves."""

    label: str
    run_dir: Path
    cfg: FitConfig
    model: torch.nn.Module
    metrics: Optional[dict]
    curves: dict
    step: int


def find_runs(path: Path) -> List[tuple]:
    """``[(label, run_dir)]`` of what ``path`` holds: one run, or a comparison's chosen runs."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    summary_path = path / "comparison.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        seed = (summary.get("seeds") or [0])[0]
        runs = [(m, path / "runs" / f"{m}-lr{e['lr']:g}-s{seed}") for m, e in summary.get("methods", {}).items()]
        missing = [str(d) for _, d in runs if not (d / "config.json").is_file()]
        if missing:
            raise RunError(f"{path}: comparison.json names runs that are not there: {', '.join(missing)}")
        return runs
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        return [((cfg.get("field") or {}).get("conditioning", path.name), path)]
    if (path / "runs").is_dir():  # a comparison that has not written its report yet: every run so far
        runs = sorted(d for d in (path / "runs").iterdir() if (d / "config.json").is_file())
        if runs:
            return [(d.name, d) for d in runs]
    raise RunError(f"{path}: neither a shape run (no config.json) nor a comparison (no comparison.json)")


def load_run(run_dir: Path, label: Optional[str] = None, device: Optional[torch.device] = None) -> LoadedRun:
    """Rebuild a run's field from its checkpoint, with its metrics and curves."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise RunError(f"{run_dir}: no checkpoint.pt (the run never reached its first checkpoint)")
    model, cfg = load_field(run_dir, device)
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    state = ckpt["state"]
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return LoadedRun(label or cfg.field.conditioning, run_dir, cfg, model, metrics, _curves(state), int(state["step"]))


def load_runs(path: Path, device: Optional[torch.device] = None) -> List[LoadedRun]:
    return [load_run(d, label, device) for label, d in find_runs(path)]


def load_input(run: LoadedRun) -> ShapeMesh:
    """The run's input mesh, normalised as in training (path and margin from its config.json)."""
    try:
        return load_mesh(run.cfg.mesh or DEFAULT_MESH, margin=run.cfg.margin)
    except MeshLoadError as exc:
        raise RunError(f"{run.run_dir}: its input mesh (config.json) cannot be loaded: {exc}") from None


def show(runs: List[LoadedRun], viewer, shape: ShapeMesh) -> None:
    """Hand the runs to a :class:`~wcnerf.shape.train.FitMonitor` (the shape viewer) as if they
    had just been trained: finished ones with their final mesh, others at their checkpoint."""
    for r in runs:
        viewer.started(r.label, r.cfg, shape, r.model)
        if r.metrics is not None:
            viewer.finished(r.label, r.metrics, r.curves, _mesh_unit(r.run_dir, shape))
        else:
            loss = r.curves["loss"][-1] if r.curves.get("loss") else math.nan
            viewer.progress(r.label, r.step, loss, r.curves, r.model)


def _viewer_class():
    """The shape viewer (imported on use: viser is slow to import); tests replace it."""
    from wcnerf.viewer.shape_viewer import ShapeViewer

    return ShapeViewer


def view(cfg: FitConfig) -> int:
    """``--view RUN_DIR``: serve the run(s) in the shape viewer until Ctrl+C (or return once drawn
    with ``--viewer.no-keep-open``). Returns the exit code."""
    viewer = None
    code = 0
    try:
        runs = load_runs(cfg.viewer.view)
        shape = load_input(runs[0])
        viewer = _viewer_class()(host=cfg.viewer.host, port=cfg.viewer.port, resolution=cfg.viewer.resolution)
        show(runs, viewer, shape)
        viewer.wait_drawn()
        for r in runs:
            state = "finished" if r.metrics is not None else f"unfinished, step {r.step}/{r.cfg.optim.steps}"
            print(f"{r.label}: {r.run_dir} ({state})", flush=True)
        print(f"viewer: {viewer.url}  (remote machine: ssh -L {viewer.port}:localhost:{viewer.port} <host>, "
              f"then open http://localhost:{viewer.port})", flush=True)
        if cfg.viewer.keep_open:
            print("serving until Ctrl+C", flush=True)
            wait_for_ctrl_c()
    except (MeshLoadError, RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        pass
    finally:
        if viewer is not None:
            close_viewer(viewer, code)
    return code


def wait_for_ctrl_c() -> None:
    """Block until Ctrl+C raises KeyboardInterrupt. In short sleeps: Python raises it in the main
    thread only, and a SIGINT the kernel hands to one of the web server's threads does not wake a
    long sleep of the main thread (a test saw ``--view`` ignore Ctrl+C for 30 s)."""
    while True:
        time.sleep(0.25)


def close_viewer(viewer, code: int) -> None:
    """Close the viewer; if its web server hangs, end the process now with ``code`` (everything
    the run writes is written by then) instead of hanging at interpreter exit on its threads."""
    if viewer.close() is False:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
