"""The summary of one finished run: its held-out metrics, a picture of one held-out view, the
LLFF spiral camera path, and the commands a nerfstudio user runs next (evaluate, render the
spiral, open the viewer, export)::

    wcnerf-summary outputs/fern/e-nerf-small/<timestamp>
    wcnerf-summary --load-config outputs/fern/e-nerf-small/<timestamp>/config.yml --no-evaluate

``scripts/train_enerf.py`` prints it after training. Everything goes through nerfstudio's own
command lines, as a user would run them:

* metrics: ``ns-eval --load-config <run>/config.yml`` over every held-out view (PSNR, SSIM,
  LPIPS when its weights are local), written to ``<run>/eval/metrics.json`` with the renders in
  ``<run>/eval/renders/``;
* ``<run>/heldout_view.png``: ground truth, render and error map of the first held-out view
  (:mod:`wcnerf.tools.heldout`);
* ``<run>/camera_paths/spiral.json``: the LLFF spiral (:mod:`wcnerf.data.spiral`) for
  ``ns-render camera-path``.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from wcnerf.tools.heldout import HELDOUT_PNG, heldout_panel, heldout_renders
from wcnerf.tools.runs import RunArgs, evaluate_run, load_run_config, run_tool, scene_of_run

__all__ = [
    "RunSummary",
    "Summary",
    "export_crop_box",
    "next_commands",
    "summarize_run",
    "format_summary",
    "main",
]

SPIRAL_JSON = Path("camera_paths") / "spiral.json"


def _q(parts: Sequence[Any]) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def export_crop_box(scene, depth_margin: float = 1.1) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """``(center, rotation rpy, scale)`` of ``ns-export``'s oriented box (``--obb-center``,
    ``--obb-rotation``, ``--obb-scale``) around what the training cameras see, in the training
    frame: the axis-aligned box of every camera's view frustum from half the nearest depth
    bound to ``depth_margin`` x the farthest. Keeps NDC's "at infinity" points (background
    rays, clamped ~100 away) out of a point cloud."""
    import numpy as np

    near, far = 0.5 * float(np.min(scene.bounds)), depth_margin * float(np.max(scene.bounds))
    u, v = 0.5 * scene.width / scene.focal, 0.5 * scene.height / scene.focal
    corners = np.array([[d * x, d * y, -d] for d in (near, far) for x in (-u, u) for y in (-v, v)])  # camera frame
    poses = np.asarray(scene.poses)
    pts = np.einsum("nij,kj->nki", poses[:, :3, :3], corners) + poses[:, None, :3, 3]
    lo = np.floor(pts.reshape(-1, 3).min(0) * 100) / 100
    hi = np.ceil(pts.reshape(-1, 3).max(0) * 100) / 100
    r = lambda a: tuple(round(float(x), 2) for x in a)  # noqa: E731
    return r((lo + hi) / 2), (0.0, 0.0, 0.0), r(hi - lo)


def next_commands(config_path: Path, run_dir: Path, scene=None, *, method: str = "",
                  predict_normals: bool = False) -> List[Tuple[str, str]]:  # fmt: skip
    """``(what, command)`` of what to run next on a finished run."""
    cfg = str(config_path)
    name = scene.root.name if scene is not None else run_dir.parent.parent.name
    cmds: List[Tuple[str, str]] = [
        ("evaluate (every held-out view)", _q(["ns-eval", "--load-config", cfg, "--output-path", run_dir / "eval" / "metrics.json"])),
    ]
    if scene is not None:
        spiral = run_dir / SPIRAL_JSON
        cmds.append(("spiral video (path: wcnerf-spiral RUN)",
                     _q(["ns-render", "camera-path", "--load-config", cfg, "--camera-path-filename", spiral,
                         "--output-path", Path("renders") / name / "spiral.mp4"])))  # fmt: skip
    cmds.append(("open it in the viewer (http://127.0.0.1:7007)",
                 _q(["ns-viewer", "--load-config", cfg, "--viewer.websocket-host", "127.0.0.1"])))
    export_dir = Path("exports") / name / method if method else Path("exports") / name
    crop: List[Any] = []
    if scene is not None:
        center, rot, scale = export_crop_box(scene)
        crop = ["--obb-center", *center, "--obb-rotation", *rot, "--obb-scale", *scale]
    if predict_normals:
        cmds.append(("mesh (Poisson, normals predicted by the model)",
                     _q(["ns-export", "poisson", "--load-config", cfg, "--output-dir", export_dir, *crop,
                         "--num-pixels-per-side", 1024])))  # fmt: skip
    else:
        cmds.append(("point cloud (normals estimated from the points)",
                     _q(["ns-export", "pointcloud", "--load-config", cfg, "--output-dir", export_dir,
                         "--normal-method", "open3d", *crop])))  # fmt: skip
    return cmds


@dataclass
class RunSummary:
    config: Path
    run_dir: Path
    method: str = ""
    results: Dict[str, Any] = field(default_factory=dict)
    num_heldout: int = 0
    heldout_png: Optional[Path] = None
    spiral: Optional[Path] = None
    commands: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def metric(self, *keys: str) -> Optional[float]:
        for k in keys:
            v = self.results.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                return float(v)
        return None


def summarize_run(config_path: Path, *, evaluate: bool = True, env: Optional[Dict[str, str]] = None,
                  say: Callable[[str], None] = print) -> RunSummary:  # fmt: skip
    """Evaluate a finished run (ns-eval; without ``evaluate``, read the ``<run>/eval/`` an
    earlier ns-eval left), draw its first held-out view, write its spiral path, and list the
    next commands; returns the :class:`RunSummary` (see :func:`format_summary`)."""
    config_path = Path(config_path)
    run_dir = config_path.parent
    config = load_run_config(config_path)
    method = str(getattr(config, "method_name", "") or "")
    s = RunSummary(config=config_path, run_dir=run_dir, method=method)
    scene = None
    try:
        scene, _ = scene_of_run(config_path)
    except Exception as exc:  # noqa: BLE001 - the summary never fails on a figure
        s.notes.append(f"no LLFF scene for the spiral / crop box: {exc}")
    if scene is not None:
        from wcnerf.atomic import write_json
        from wcnerf.data.spiral import spiral_camera_path

        s.spiral = run_dir / SPIRAL_JSON
        write_json(s.spiral, spiral_camera_path(scene))
    metrics_json = run_dir / "eval" / "metrics.json"
    if evaluate:
        say("[wcnerf] evaluating every held-out view with ns-eval (log: "
            f"{run_dir / 'eval' / 'ns_eval.log'}) ...")  # fmt: skip
        try:
            s.results = evaluate_run(config_path, run_dir / "eval", env=env)
        except Exception as exc:  # noqa: BLE001
            s.notes.append(f"evaluation failed: {exc}")
    elif metrics_json.is_file():
        try:
            s.results = json.loads(metrics_json.read_text())["results"]
        except (ValueError, KeyError, TypeError) as exc:
            s.notes.append(f"unreadable {metrics_json}: {exc}")
    else:
        s.notes.append(f"not evaluated: no {metrics_json} (ns-eval writes it)")
    renders = heldout_renders(run_dir)
    s.num_heldout = len(renders)
    if renders and scene is not None:
        psnr = s.metric("psnr", "fine_psnr")
        caption = f"{scene.root.name}, first held-out view"
        try:
            s.heldout_png = heldout_panel(renders[0], scene.width, run_dir / HELDOUT_PNG, method or "render", caption)
        except Exception as exc:  # noqa: BLE001
            s.notes.append(f"no held-out picture: {exc}")
        if s.heldout_png is None and psnr is not None:
            s.notes.append(f"could not split {renders[0]} into ground truth and render")
    model = config.pipeline.model
    s.commands = next_commands(config_path, run_dir, scene, method=method,
                               predict_normals=bool(getattr(model, "predict_normals", False)))  # fmt: skip
    return s


def format_summary(s: RunSummary) -> str:
    """The lines printed by ``wcnerf-summary`` and at the end of ``scripts/train_enerf.py``."""
    lines = [f"[wcnerf] finished run: {s.run_dir}"]
    psnr, ssim, lpips = s.metric("psnr", "fine_psnr"), s.metric("ssim", "fine_ssim"), s.metric("lpips", "fine_lpips")
    if psnr is not None:
        views = f"{s.num_heldout} held-out view{'s' if s.num_heldout != 1 else ''}"
        metrics = f"PSNR {psnr:.2f} dB" + (f", SSIM {ssim:.3f}" if ssim is not None else "")
        metrics += f", LPIPS {lpips:.3f}" if lpips is not None else " (LPIPS: AlexNet's weights could not be had offline)"
        lines.append(f"[wcnerf] {views} (ns-eval): {metrics}; {s.run_dir / 'eval' / 'metrics.json'}")
    if s.heldout_png is not None:
        lines.append(f"[wcnerf] ground truth | render | error map: {s.heldout_png}")
    if s.spiral is not None:
        lines.append(f"[wcnerf] LLFF spiral camera path: {s.spiral}")
    lines += [f"[wcnerf] note: {n}" for n in s.notes]
    lines.append("[wcnerf] next:")
    for what, cmd in s.commands:
        lines.append(f"  # {what}\n  {cmd}")
    return "\n".join(lines)


@dataclass
class Summary(RunArgs):
    """Summarise a finished run: held-out metrics (ns-eval), ground truth | render | error map
    of the first held-out view, the LLFF spiral camera path and the commands to run next."""

    evaluate: bool = True
    """Run ns-eval over every held-out view (--no-evaluate: report what <run>/eval/ holds)."""

    def main(self) -> int:
        print(format_summary(summarize_run(self.config_path(), evaluate=self.evaluate)), flush=True)
        return 0


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-summary``: parse the command line (``sys.argv`` unless ``args``) and run."""
    return run_tool(Summary, args)


if __name__ == "__main__":
    sys.exit(main())
