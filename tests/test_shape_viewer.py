"""The shape-fitting viewer: ``scripts/shape_fit.py mesh.obj --viewer [--compare ...]``.

1. Training never waits for the page: with mesh extraction blocked, ``progress`` (the training
   thread's only call) still returns, and stale snapshots are dropped, not queued.
2. As a person uses it: the script serves the page on a free local port, headless Chromium
   opens it during training, sees the panel (runs, steps, loss, IoU) and the meshes drawn
   (grey input, orange fits, counted in the screenshot), and the page still shows the
   finished runs after training. The screenshot is the README's
   (``WCNERF_SCREENSHOTS=viewer/screenshots``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from support.browser import Browser, find_chromium, free_port, keep_screenshot
from support.helpers import REPO

CHROMIUM = find_chromium()


def test_progress_never_waits_for_mesh_extraction(monkeypatch):
    import wcnerf.viewer.shape_viewer as sv
    from wcnerf.shape.field import FieldConfig, build_field
    from wcnerf.shape.mesh import Normalization, ShapeMesh
    from wcnerf.shape.train import FitConfig, OptimConfig

    release, extracted = threading.Event(), []
    real_grid = sv.evaluate_grid

    def blocked_grid(model, resolution, device, **kw):
        release.wait()
        extracted.append(sum(float(p.detach().sum()) for p in model.parameters()))  # which snapshot it draws
        return real_grid(model, resolution, device, **kw)

    monkeypatch.setattr(sv, "evaluate_grid", blocked_grid)
    viewer = sv.ShapeViewer(port=free_port(), resolution=16)
    try:
        sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
        shape = ShapeMesh(Path("sphere.obj"), sphere, sphere, Normalization(np.zeros(3), 1.0), "x")
        model = build_field(FieldConfig(width=16, depth=2), "equilibrate", 0)
        viewer.started("equilibrate", FitConfig(optim=OptimConfig(steps=20)), shape, model)

        def train():
            for step in range(1, 21):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01)
                viewer.progress("equilibrate", step, 1.0 / step, {"loss": [1.0] * step}, model)

        trainer = threading.Thread(target=train)
        trainer.start()
        trainer.join(timeout=60)
        assert not trainer.is_alive(), "progress() waited for the blocked mesh extraction"
        run = viewer._runs["equilibrate"]
        assert run.step == 20 and run.loss == pytest.approx(0.05)
        release.set()
        assert viewer.wait_drawn(timeout=60)
        time.sleep(0.5)
        # the snapshot the worker had picked up when it blocked, then only the latest one
        assert 1 <= len(extracted) <= 2
        assert extracted[-1] == pytest.approx(sum(float(p.detach().sum()) for p in model.parameters()))
    finally:
        release.set()
        viewer.close()


@pytest.mark.e2e
@pytest.mark.browser
def test_shape_viewer_page_shows_meshes_and_progress(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (apt install chromium): the browser test of the shape viewer is skipped")
    port = free_port()
    log = tmp_path / "fit.log"
    cmd = [sys.executable, str(REPO / "scripts" / "shape_fit.py"), "--viewer", "--viewer.port", str(port),
           "--compare", "none", "equilibrate", "--optim.steps", "200", "--viewer.every", "20",
           "--evaluation.every", "50", "--sampling.n-near", "20000", "--sampling.n-uniform", "5000",
           "--sampling.n-eval", "5000", "--evaluation.resolution", "48", "--evaluation.surface-points", "5000",
           "--threads", "1", "--no-progress", "--output-dir", str(tmp_path / "out")]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 300
        while f"viewer: http://127.0.0.1:{port}" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with Browser(CHROMIUM, width=1600, height=900) as b:
            b.goto(f"http://127.0.0.1:{port}/")
            assert b.wait_for("!!document.body && document.body.innerText.includes('training')", 300), b.text()
            text = b.text()
            for element in ("Shape fit", "spot", "run", "step", "loss", "IoU", "Show input mesh", "none"):
                assert element in text, element
            assert b.evaluate("!!document.querySelector('canvas')")
            # Both runs finish while the page is open; the page keeps showing them.
            assert b.wait_for("document.body.innerText.split('done').length - 1 >= 2", 900), \
                b.text() + log.read_text()[-3000:]
            deadline = time.time() + 300  # the script then writes its comparison report
            while "training done" not in log.read_text():
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            time.sleep(3)  # let three.js draw the last meshes
            shot = b.screenshot(tmp_path / "shape_viewer.png")
        import imageio.v3 as iio

        img = iio.imread(shot)[..., :3].astype(int)
        orange = (np.abs(img - [240, 140, 40]).max(-1) < 60) & (img[..., 0] > img[..., 2] + 80)
        grey = (np.abs(img - img.mean(-1, keepdims=True)).max(-1) < 8) & (img.mean(-1) > 90) & (img.mean(-1) < 200)
        canvas = np.s_[:, : int(img.shape[1] * 0.68)]  # left of the panel
        assert orange[canvas].sum() > 2000, orange[canvas].sum()  # the fitted meshes are drawn
        assert grey[canvas].sum() > 1000, grey[canvas].sum()  # and the input mesh
        keep_screenshot(shot, "shape_viewer.png")
        assert proc.poll() is None  # --viewer.keep-open: still serving after training
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_viewer_that_cannot_stop_ends_the_process_with_the_runs_exit_code():
    """viser's stop can hang on a half-closed connection: the CLI then exits at once, with its code."""
    import subprocess
    import sys

    code = ("from wcnerf.shape.view import close_viewer\n"
            "class Stuck:\n    def close(self): return False\n"
            "class Fine:\n    def close(self): return True\n"
            "close_viewer(Fine(), 5); print('after a clean close', flush=True)\n"
            "close_viewer(Stuck(), 3); print('not reached')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 3 and "after a clean close" in res.stdout and "not reached" not in res.stdout
