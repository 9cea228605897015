"""Live web viewer for shape fitting: ``python scripts/shape_fit.py mesh.obj --viewer``.

A viser page with the input mesh and, next to it, the mesh each run's field currently
describes; a panel lists every run's step, loss and IoU so far, with loss and IoU curves.
With ``--compare`` each conditioner gets its own slot in the row, so their meshes are seen
side by side as they train.

Training never waits for the page. :meth:`ShapeViewer.progress` (called on the training
thread) only copies the field's state dict and drops it in a one-per-run mailbox; a worker
thread extracts the mesh from that copy (its own copy of the network, a coarse marching-cubes
grid) and pushes it to viser, which serves whoever is connected, late joiners included.
If the worker falls behind, older snapshots are replaced, not queued.

Everything is shown in the unit cube the trainer works in ([-1, 1]^3, same normalisation as the
metrics); the mesh files on disk are in the input's coordinates.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import viser

from wcnerf.shape.extract import evaluate_grid, marching_cubes
from wcnerf.shape.plot import IOU_RANGE

INPUT_COLOR = (170, 170, 170)
FIT_COLOR = (240, 140, 40)  # the tests look for this orange in the screenshot
SPACING = 2.4  # distance between slots (the unit cube is 2 wide)


def slot_x(slot: int) -> float:
    """Slots run along -x: seen from -z (the camera below), that is left to right on screen."""
    return -slot * SPACING


@dataclass
class _Run:
    slot: int
    label: str
    detail: str
    total_steps: int
    task: str
    model: torch.nn.Module  # the viewer's private copy; only the worker thread touches it
    step: int = 0
    loss: Optional[float] = None
    iou: Optional[float] = None
    final: Optional[dict] = None
    curves: dict = field(default_factory=dict)
    pending: Optional[dict] = None  # latest state-dict snapshot not yet drawn
    faces: int = 0


class ShapeViewer:
    """Implements :class:`wcnerf.shape.train.FitMonitor` by drawing on a viser page."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, resolution: int = 64):
        self.resolution = resolution
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self.server.scene.set_up_direction("+y")
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._draws = 0

        self.server.gui.configure_theme(control_width="large")
        self._status = self.server.gui.add_markdown("**Shape fit** waiting for the first run")
        self._table = self.server.gui.add_markdown("")
        self._show_input = self.server.gui.add_checkbox("Show input mesh", True)
        self._show_input.on_update(lambda _: self._set_input_visible(self._show_input.value))
        self._plot = None
        self._input_handle = None
        self.server.on_client_connect(self._frame_camera)
        self._worker = threading.Thread(target=self._work, name="shape-viewer", daemon=True)
        self._worker.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ FitMonitor (training thread)
    def started(self, run: str, cfg, shape, model: torch.nn.Module) -> None:
        with self._lock:
            if self._input_handle is None:
                self._input_name = shape.name
                self._input_handle = self.server.scene.add_mesh_simple(
                    "/input", shape.mesh.vertices.astype(np.float32), shape.mesh.faces.astype(np.uint32),
                    color=INPUT_COLOR, position=(0.0, 0.0, 0.0))
                self.server.scene.add_label("/input/label", f"input: {shape.name}", position=(0.0, 1.15, 0.0))
            slot = self._runs[run].slot if run in self._runs else len(self._runs) + 1
            self._runs[run] = _Run(
                slot=slot, label=run, detail=f"{cfg.optim.optimizer} lr {cfg.optim.resolved_lr():g} seed {cfg.seed}",
                total_steps=cfg.optim.steps, task=cfg.task, model=copy.deepcopy(model).eval())
            x = slot_x(slot)
            self.server.scene.add_label(f"/fit/{run}/label", f"{run}", position=(x, 1.15, 0.0))
            new_slot = slot == len(self._runs)
        if new_slot:
            for client in self.server.get_clients().values():
                self._frame_camera(client)
        self._refresh_panel()

    def progress(self, run: str, step: int, loss: float, curves: dict, model: torch.nn.Module) -> None:
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with self._lock:
            r = self._runs[run]
            r.step, r.loss, r.curves = step, loss, curves
            r.iou = curves["eval_iou"][-1] if curves.get("eval_iou") else r.iou
            r.pending = snapshot
        self._wake.set()

    def finished(self, run: str, metrics: dict, curves: dict, mesh_unit) -> None:
        with self._lock:
            r = self._runs[run]
            r.final, r.pending, r.curves = metrics, None, curves
            r.step = metrics.get("steps", r.step)
            r.iou = metrics.get("iou_points", r.iou)
            r.loss = curves["loss"][-1] if curves.get("loss") else r.loss
        if mesh_unit is not None:
            self._draw(r, mesh_unit.vertices, mesh_unit.faces)
        self._refresh_panel()

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                jobs = [(r, r.pending) for r in self._runs.values() if r.pending is not None]
                for r, _ in jobs:
                    r.pending = None
            for r, snapshot in jobs:
                r.model.load_state_dict(snapshot)
                device = next(iter(snapshot.values())).device if snapshot else torch.device("cpu")
                grid = evaluate_grid(r.model, self.resolution, device)
                mesh = marching_cubes(np.nan_to_num(grid, nan=0.0), 0.0, inside_is_negative=(r.task == "sdf"))
                if r.final is None:  # the final mesh may have arrived meanwhile
                    self._draw(r, mesh.vertices, mesh.faces)
            if jobs:
                self._refresh_panel()

    def _draw(self, r: _Run, vertices: np.ndarray, faces: np.ndarray) -> None:
        r.faces = len(faces)
        if len(faces) == 0:
            return
        self.server.scene.add_mesh_simple(
            f"/fit/{r.label}/mesh", np.asarray(vertices, np.float32), np.asarray(faces, np.uint32),
            color=FIT_COLOR, position=(slot_x(r.slot), 0.0, 0.0))
        self._draws += 1

    # ------------------------------------------------------------------ panel
    def _refresh_panel(self) -> None:
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: r.slot)
            rows = [
                f"| {r.label} | {r.step}/{r.total_steps} | {_fmt(r.loss, '.4f')} | {_fmt(r.iou, '.4f')} | "
                f"{'done' if r.final else 'training'} |"
                for r in runs
            ]
            curves = {r.label: r.curves for r in runs}
            details = "; ".join(f"{r.label}: {r.detail}" for r in runs)
        self._status.content = (f"**Shape fit** of `{getattr(self, '_input_name', '?')}`: input (grey) and each "
                                f"field's mesh (orange), refreshed every few steps.  \n{details}")
        self._table.content = "| run | step | loss | IoU | |\n|---|---|---|---|---|\n" + "\n".join(rows)
        self._update_plot(curves)

    def _update_plot(self, curves: dict) -> None:
        try:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
        except ImportError:  # plotly comes with nerfstudio; without it the table still shows the numbers
            return
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
        for label, c in curves.items():
            loss = c.get("loss") or []
            if loss:
                stride = max(1, len(loss) // 300)
                xs = list(range(1, len(loss) + 1, stride))
                fig.add_trace(go.Scatter(x=xs, y=loss[::stride], name=f"{label} loss", mode="lines"), row=1, col=1)
            if c.get("eval_step"):
                fig.add_trace(go.Scatter(x=c["eval_step"], y=c["eval_iou"], name=f"{label} IoU",
                                         mode="lines+markers"), row=2, col=1)
        fig.update_yaxes(type="log", title_text="loss", row=1, col=1)
        fig.update_yaxes(title_text="IoU", range=list(IOU_RANGE), row=2, col=1)  # autorange: 0.5-1.5 for one point
        fig.update_xaxes(title_text="step", row=2, col=1)
        fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), height=380, legend=dict(orientation="h"))
        if self._plot is None:
            self._plot = self.server.gui.add_plotly(fig, aspect=1.0)
        else:
            self._plot.figure = fig

    def _set_input_visible(self, visible: bool) -> None:
        if self._input_handle is not None:
            self._input_handle.visible = visible

    def _frame_camera(self, client: viser.ClientHandle) -> None:
        """Look at the whole row (input + every run) from -z with a narrow field of view (little
        perspective, so every slot is seen from nearly the same side), leaving room for the
        panel on the right. (viser keeps look_at fixed relative to position: set position first.)"""
        n = max(1, len(self._runs))
        cx = slot_x(n) / 2 - 0.12 * (n + 1) * SPACING
        client.camera.fov = 0.5
        client.camera.position = (cx, 1.5, -(2.0 + 3.0 * (n + 1)))
        client.camera.look_at = (cx, 0.0, 0.0)
        client.camera.up_direction = (0.0, 1.0, 0.0)

    # ------------------------------------------------------------------ lifetime
    def wait_drawn(self, timeout: float = 60.0) -> bool:
        """Block until the worker has nothing pending (used after training, before lingering)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if all(r.pending is None for r in self._runs.values()):
                    return True
            time.sleep(0.1)
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the worker and the web server; False if the server has not stopped within
        ``timeout`` s (viser's stop waits for its handler threads, which a half-closed browser
        connection can hold): the caller then ends the process without waiting for them."""
        self._stop = True
        self._wake.set()
        self._worker.join(timeout=5)
        stopper = threading.Thread(target=self.server.stop, name="shape-viewer-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            print(f"warning: the viewer's web server did not stop within {timeout:g} s; not waiting for it",
                  file=sys.stderr, flush=True)
            return False
        return True


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)
