"""Fit an occupancy / SDF field with a weight-conditioned MLP to a triangle mesh.

    wcnerf-shape-fit                          # the example mesh shipped with wcnerf (spot)
    wcnerf-shape-fit mesh.obj                 # equilibrated field -> outputs/shape/mesh/<run>/
    wcnerf-shape-fit mesh.obj --field.conditioning weight-norm --optim.optimizer sgd
    wcnerf-shape-fit mesh.obj --compare none equilibrate weight-norm [--compare.lrs 1e-3 3e-3] [--seeds 0 1]
    wcnerf-shape-fit mesh.obj --viewer        # watch it at http://127.0.0.1:8080 (with --compare too)
    wcnerf-shape-fit --view outputs/shape/mesh/<run>   # open a finished run (or comparison) again

Running the same command again resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import tyro

from ..atomic import WriteError
from .mesh import MeshLoadError
from .train import FIT_BOUNDS, FitConfig, FitResult, RunError, fit


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-shape-fit``: parse the command line (``args``, default ``sys.argv[1:]``) and :func:`run` it."""
    return run(tyro.cli(FitConfig, args=args, description=__doc__))


def run(cfg: FitConfig) -> int:
    """One fit, or a comparison (``--compare``), optionally watched in the viewer; or, with
    ``--view RUN_DIR``, a finished run shown in the viewer. Returns the exit code."""
    try:
        FIT_BOUNDS.check(cfg)
    except ValueError as exc:  # before any file is read or folder made
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.viewer.view is not None:
        from .view import view

        return view(cfg)
    viewer = None
    code = 0
    try:
        if cfg.viewer.enabled:
            from wcnerf.viewer.shape_viewer import ShapeViewer

            viewer = ShapeViewer(host=cfg.viewer.host, port=cfg.viewer.port, resolution=cfg.viewer.resolution)
            print(f"viewer: {viewer.url}  (remote machine: ssh -L {viewer.port}:localhost:{viewer.port} <host>, "
                  f"then open http://localhost:{viewer.port})", flush=True)
        if cfg.compare.conditioners:
            from .compare import run_compare

            summary = run_compare(cfg, monitor=viewer)
            print((Path(summary["dir"]) / "comparison.md").read_text())
            print(f"wrote {summary['dir']}")
        else:
            report(fit(cfg, monitor=viewer))
        if viewer is not None and cfg.viewer.keep_open:
            viewer.wait_drawn()
            print(f"training done; the viewer stays at {viewer.url} until Ctrl+C", flush=True)
            from .view import wait_for_ctrl_c

            try:
                wait_for_ctrl_c()
            except KeyboardInterrupt:
                pass
    except (MeshLoadError, RunError, ValueError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        code = 130
    finally:
        if viewer is not None:
            from .view import close_viewer

            close_viewer(viewer, code)
    return code


def report(res: FitResult) -> None:
    if "interrupted_at" in res.metrics:
        print(f"stopped at step {res.metrics['interrupted_at']} (stop_after); rerun to resume: {res.run_dir}")
        return
    keys = ("iou_points", "iou_grid", "chamfer_l1", "normal_consistency", "fscore", "seconds_per_step", "train_seconds")
    print(json.dumps({k: res.metrics.get(k) for k in keys}, indent=2))
    print(f"wrote {res.run_dir}")
