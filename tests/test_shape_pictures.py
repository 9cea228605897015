"""Pictures of shape fits and opening finished runs again (issue 16, point 5).

- every finished run has ``fit.png`` (input | fit, same cameras, IoU/Chamfer in the title),
  written before ``metrics.json`` (a run killed while drawing is not finished and draws it on
  the next invocation); a run finished before pictures existed gets one when run again;
- ``--compare`` writes ``fits.png`` (input | each conditioner's fit) and ``comparison.md``
  embeds it and the curves by relative links;
- ``--view RUN_DIR`` loads a finished run (or a comparison, or an unfinished run at its last
  checkpoint) into the shape viewer without training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import tyro

from support.browser import free_port
from wcnerf.shape import cli
from wcnerf.shape.train import FitConfig, fit

TINY = ["--field.conditioning", "none", "--field.width", "32", "--field.depth", "2", "--field.n-freqs", "4",
        "--optim.steps", "30", "--optim.batch-size", "512", "--optim.lr", "1e-2", "--sampling.n-near", "4000",
        "--sampling.n-uniform", "2000", "--sampling.n-eval", "4000", "--evaluation.resolution", "24",
        "--evaluation.surface-points", "4000", "--evaluation.every", "10", "--evaluation.curve-points", "2000",
        "--ckpt-every", "10", "--no-progress", "--threads", "1"]


def tiny(tmp_path: Path, mesh: Path, *extra: str) -> FitConfig:
    """The tiny settings of the shape tests, as on the command line."""
    return tyro.cli(FitConfig, args=[str(mesh), *TINY, "--output-dir", str(tmp_path / "out"), *extra])


def colours(png: Path):
    """(orange pixels, grey pixels, distinct colours) of a picture."""
    import imageio.v3 as iio

    img = iio.imread(png)[..., :3].astype(int)
    orange = (img[..., 0] > img[..., 2] + 60) & (img[..., 0] > 120)
    grey = (np.abs(img - img.mean(-1, keepdims=True)).max(-1) < 6) & (img.mean(-1) > 40) & (img.mean(-1) < 220)
    return int(orange.sum()), int(grey.sum()), len(np.unique(img.reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_mesh) -> Path:
    """A finished tiny run of the ellipsoid."""
    res = fit(tiny(tmp_path_factory.mktemp("run"), small_mesh))
    assert "iou_points" in res.metrics
    return res.run_dir


def test_fit_png_shows_input_and_fit(finished):
    png = finished / "fit.png"
    assert png.is_file()
    orange, grey, n_colours = colours(png)
    assert orange > 2000 and grey > 2000 and n_colours > 20  # both meshes drawn, shaded
    import imageio.v3 as iio

    img = iio.imread(png)[..., :3].astype(int)
    h, w = img.shape[:2]
    orange_mask = (img[..., 0] > img[..., 2] + 60) & (img[..., 0] > 120)
    assert orange_mask[:, : w // 2].sum() < 0.01 * orange_mask.sum()  # the fit on the right, the input on the left
    assert not list(finished.glob(".*.tmp*"))  # written atomically: no temporary left behind


def test_picture_comes_before_the_finished_mark(tmp_path, small_mesh, monkeypatch):
    """Killed while drawing: no metrics.json (not finished); the same command again draws it
    (from the final checkpoint, without training again) and only then finishes."""
    import wcnerf.shape.render as render

    cfg = tiny(tmp_path, small_mesh, "--optim.steps", "10")

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_fit", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    run_dir = next((tmp_path / "out" / "blob").glob("none-*"))
    assert (run_dir / "mesh.ply").is_file() and not (run_dir / "metrics.json").exists()
    assert not (run_dir / "fit.png").exists()
    trained = torch.load(run_dir / "checkpoint.pt", weights_only=False)["state"]["train_seconds"]
    monkeypatch.undo()
    res = fit(cfg)
    assert (run_dir / "fit.png").is_file() and (run_dir / "metrics.json").is_file()
    assert res.metrics["train_seconds"] == trained  # not trained again


def test_run_finished_without_picture_gets_one(tmp_path, small_mesh):
    cfg = tiny(tmp_path, small_mesh, "--optim.steps", "5")
    first = fit(cfg)
    (first.run_dir / "fit.png").unlink()  # as a run finished before runs drew their fit
    again = fit(cfg)
    assert (first.run_dir / "fit.png").is_file()
    assert again.metrics == first.metrics


def test_fit_png_without_surface(tmp_path):
    """A field that never crosses its level set: the input, and a panel that says so."""
    from wcnerf.shape.render import render_fit

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    png = render_fit(sphere, None, {"iou_points": 0.0}, tmp_path / "fit.png", name="sphere", label="none")
    orange, grey, _ = colours(png)
    assert orange == 0 and grey > 2000


def test_cluster_decimate_keeps_the_shape():
    from wcnerf.shape.render import cluster_decimate

    big = trimesh.creation.icosphere(subdivisions=6, radius=0.8)  # 81920 faces
    v, f = cluster_decimate(big.vertices, big.faces, max_faces=5000)
    assert 1000 < len(f) <= 5000
    r = np.linalg.norm(v, axis=1)
    assert np.allclose(r, 0.8, atol=0.05)  # vertices stay on the surface
    small = trimesh.creation.icosphere(subdivisions=1)
    v2, f2 = cluster_decimate(small.vertices, small.faces, max_faces=5000)
    assert np.array_equal(f2, small.faces)  # small meshes are left alone


def test_compare_embeds_the_fits(tmp_path, small_mesh):
    from wcnerf.shape.compare import run_compare

    cfg = tiny(tmp_path, small_mesh, "--optim.steps", "5", "--evaluation.resolution", "16",
               "--evaluation.surface-points", "500", "--compare", "none", "equilibrate")
    summary = run_compare(cfg)
    out = Path(summary["dir"])
    md = (out / "comparison.md").read_text()
    assert "![Input and each conditioner's fit](fits.png)" in md
    assert "](comparison.png)" in md
    orange, grey, _ = colours(out / "fits.png")
    assert orange > 2000 and grey > 1000
    assert json.loads((out / "comparison.json").read_text())["figures"] == {"fits": "fits.png",
                                                                           "curves": "comparison.png"}
    # --view of the comparison: each conditioner's chosen run, labelled by its conditioner
    from wcnerf.shape.view import load_runs

    runs = load_runs(out)
    assert [r.label for r in runs] == ["none", "equilibrate"]
    assert all(r.metrics is not None for r in runs)


# ---------------------------------------------------------------------------------------- --view
class Recorder:
    """A FitMonitor that records the calls (what the viewer would be told)."""

    def __init__(self):
        self.calls = []

    def started(self, run, cfg, shape, model):
        self.calls.append(("started", run, shape.name))

    def progress(self, run, step, loss, curves, model):
        self.calls.append(("progress", run, step))

    def finished(self, run, metrics, curves, mesh_unit):
        self.calls.append(("finished", run, len(mesh_unit.faces) if mesh_unit is not None else 0))


def test_view_loads_a_finished_run(finished, small_mesh):
    from wcnerf.shape.view import load_input, load_runs, show

    (run,) = load_runs(finished)
    assert run.label == "none" and run.step == 30 and run.metrics["steps"] == 30
    assert len(run.curves["loss"]) == 30
    # the field is the trained one
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(v, ckpt[k]) for k, v in run.model.state_dict().items())
    shape = load_input(run)
    assert shape.path == small_mesh
    rec = Recorder()
    show([run], rec, shape)
    assert rec.calls[0] == ("started", "none", "blob")
    assert rec.calls[1][:2] == ("finished", "none") and rec.calls[1][2] > 100


def test_view_shows_an_unfinished_run_at_its_checkpoint(tmp_path, small_mesh):
    from wcnerf.shape.view import load_input, load_runs, show

    cfg = tiny(tmp_path, small_mesh)
    import dataclasses

    fit(dataclasses.replace(cfg, stop_after=15))  # killed: checkpoint at step 10
    run_dir = next((tmp_path / "out" / "blob").glob("none-*"))
    (run,) = load_runs(run_dir)
    assert run.metrics is None and run.step == 10
    rec = Recorder()
    show([run], rec, load_input(run))
    assert rec.calls[1] == ("progress", "none", 10)


def test_view_option_opens_the_viewer_without_training(finished, monkeypatch, capsys):
    import wcnerf.shape.train as train
    import wcnerf.shape.view as view

    def no_training(*a, **k):
        raise AssertionError("--view trained")

    monkeypatch.setattr(train, "fit", no_training)
    monkeypatch.setattr(cli, "fit", no_training)
    made = []
    real = view._viewer_class()

    def viewer(**kw):
        made.append(real(**kw))
        return made[-1]

    monkeypatch.setattr(view, "_viewer_class", lambda: viewer)
    port = free_port()
    cfg = tyro.cli(FitConfig, args=["--view", str(finished), "--viewer.port", str(port), "--viewer.no-keep-open"])
    assert cfg.viewer.view == finished and not cfg.viewer.enabled
    assert cli.run(cfg) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}" in out and "finished" in out
    (v,) = made
    r = v._runs["none"]
    assert r.final is not None and r.step == 30 and r.faces > 100  # the final mesh was drawn


def test_view_of_a_folder_that_is_no_run(tmp_path, capsys):
    cfg = tyro.cli(FitConfig, args=["--view", str(tmp_path), "--viewer.no-keep-open"])
    assert cli.run(cfg) == 2
    err = capsys.readouterr().err
    assert "neither a shape run" in err and "Traceback" not in err
    cfg = tyro.cli(FitConfig, args=["--view", str(tmp_path / "missing"), "--viewer.no-keep-open"])
    assert cli.run(cfg) == 2
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.browser
def test_view_page_shows_the_finished_run(finished, tmp_path):
    """As a person uses it: ``shape_fit.py --view RUN_DIR`` serves the page, headless Chromium
    sees the run listed as done and the input (grey) and fitted (orange) meshes drawn; Ctrl+C
    ends it with exit code 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from support.browser import Browser, find_chromium
    from support.helpers import REPO

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not installed (apt install chromium): the browser test of --view is skipped")
    port = free_port()
    log = tmp_path / "view.log"
    cmd = [sys.executable, str(REPO / "scripts" / "shape_fit.py"), "--view", str(finished), "--viewer.port", str(port)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 120
        while "serving until Ctrl+C" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with Browser(chromium, width=1280, height=800) as b:
            b.goto(f"http://127.0.0.1:{port}/")
            assert b.wait_for("!!document.body && document.body.innerText.includes('done')", 120), b.text()
            assert "30/30" in b.text()
            time.sleep(3)  # let three.js draw the meshes
            shot = b.screenshot(tmp_path / "view.png")
        import imageio.v3 as iio

        img = iio.imread(shot)[..., :3].astype(int)
        canvas = img[:, : int(img.shape[1] * 0.68)]
        orange = (np.abs(canvas - [240, 140, 40]).max(-1) < 60) & (canvas[..., 0] > canvas[..., 2] + 80)
        assert orange.sum() > 500, orange.sum()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not list(finished.glob(".*.tmp*")) and "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
