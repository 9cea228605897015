"""Slips a nerfstudio user sees, mended (issue 31, point 5); each test fails without its fix.

- the viewer panel of a finished run (``ns-viewer --load-config``) shows the last analysis the
  run logged, read from its tensorboard events (it said "first result at the next multiple of
  500 steps" and showed nothing);
- every LLFF run writes its spiral camera path (only ``wcnerf-summary`` did), and the docs say
  why ``ns-render spiral`` is wrong on forward-facing scenes (checked on fern's poses);
- the shape curve starts at step 0, once, also on resume, without changing training; the IoU
  axis of ``curves.png`` and of the shape viewer ends at 1 (the viewer drew it to 1.5);
- a released lease leaves no ``.lease.lock`` (finished runs kept it), and removing it keeps
  the lock exclusive between processes;
- the known deprecation notices of nerfstudio / torch / torchmetrics are filtered at our entry
  points, scoped by module, category and message; ours and unknown ones still show.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.helpers import BIN, REPO, ViserGui  # light: spawned lock workers import this module


# ----------------------------------------------------------------------------- (a) the viewer panel


def _installed_panel(model):
    panel = model.conditioning_panel
    panel.install(SimpleNamespace(gui=ViserGui()))
    return panel


def _wait_logged(panel, timeout=60.0):
    deadline = time.time() + timeout
    while panel.logged is None and time.time() < deadline:
        time.sleep(0.05)
    assert panel.logged is not None, "the panel never finished reading the run's logs"


def _set_up_by_viewer(panel, run_dir: Path, training: bool):
    """What nerfstudio's viewer does with a ViewerControl: ``_setup(viewer)``."""
    viewer = SimpleNamespace(log_filename=run_dir / "viewer_log_filename.txt", viser_server=None,
                             trainer=object() if training else None)
    panel._setup(viewer)


def test_panel_of_a_finished_run_shows_the_last_logged_analysis(tmp_path, request):
    """A tiny E-NeRF trains three steps with the analysis at steps 0 and 2, logged through
    nerfstudio's tensorboard writer; the model ns-viewer builds anew then shows step 2's tables,
    the same numbers as an independent reader of the event files (wcnerf.eval.ns_runner)."""
    pytest.importorskip("nerfstudio")
    from support.nerf_models import build, callback_train_step, training_callbacks  # nerfstudio's import order

    from nerfstudio.utils import writer

    from wcnerf.eval.ns_runner import read_scalars
    from wcnerf.plugin.viewer_panel import format_layer_table, last_logged_analysis

    request.getfixturevalue("offline_hub")
    run = tmp_path / "run"
    saved = list(writer.EVENT_WRITERS)
    writer.EVENT_WRITERS.clear()
    try:
        writer.setup_event_writer(False, True, False, log_dir=run, experiment_name="slips")
        trained = build(analysis_every=2, analysis_max_samples=64)
        trained.train()
        callbacks, opts = training_callbacks(trained)
        for step in range(3):
            callback_train_step(trained, callbacks, opts, step)
            writer.write_out_storage()
        for w in writer.EVENT_WRITERS:
            w.tb_writer.close()
    finally:
        writer.EVENT_WRITERS[:] = saved
    assert trained.conditioning_panel.step == 2

    panel = _installed_panel(build(analysis_every=2))  # a finished run, loaded again
    _set_up_by_viewer(panel, run, training=False)
    _wait_logged(panel)
    status = panel._handles["status"].content
    assert "Finished run" in status and "step **2**" in status, status
    assert "next multiple" not in status
    assert panel._handles["enabled"].disabled and panel._handles["every"].disabled  # nothing trains
    step, results = last_logged_analysis(run, panel.parts)
    scalars = read_scalars(run)
    assert step == 2 and set(results) == {"coarse", "fine"}
    for part, metrics in results.items():
        assert len(metrics) > 20 and not any(k.startswith("total/") for k in metrics)
        for key, value in metrics.items():
            s, v = scalars[f"analysis/{part}/{key}"][-1]
            assert s == 2 and (v == value or (v != v and value != value)), (part, key)
        assert panel._handles["parts"][part].content.endswith(format_layer_table(metrics))
    assert "κ(W)" in panel._handles["parts"]["coarse"].content

    # a finished run that logged no analysis says so; a run that trains keeps its old status
    quiet = _installed_panel(build(analysis_every=0))
    _set_up_by_viewer(quiet, tmp_path / "empty", training=False)
    _wait_logged(quiet)
    assert "logged no layer-wise analysis" in quiet._handles["status"].content
    resumed = _installed_panel(build(analysis_every=2))  # training again in its folder: until the first new one
    _set_up_by_viewer(resumed, run, training=True)
    _wait_logged(resumed)
    assert "shown: step 2 (logged earlier in this run folder)" in resumed._handles["status"].content
    fresh = _installed_panel(build(analysis_every=5))
    _set_up_by_viewer(fresh, tmp_path / "empty", training=True)
    _wait_logged(fresh)
    assert "first result at the next multiple of 5 steps" in fresh._handles["status"].content
    assert not fresh._handles["enabled"].disabled


# ----------------------------------------------------------------------------- a real tiny ns-train run
TINY_FACTOR = 32


@pytest.fixture(scope="module")
def ns_run(tmp_path_factory, fern):
    """``ns-train e-nerf-small`` on tiny fern, 30 steps, analysis every 2 steps, as a fresh
    process (warnings are printed at import: a forked server would hide them): (run, stderr)."""
    from support.tiny import NERF, tiny_env, tiny_fern

    tmp = tmp_path_factory.mktemp("slips")
    scene = tiny_fern(tmp / "data", fern)
    env = tiny_env(tmp)
    env.pop("PYTHONWARNINGS", None)  # what a user's shell has
    cmd = [str(BIN / "ns-train"), "e-nerf-small", "--output-dir", str(tmp / "outputs"), "--experiment-name", "fern",
           "--timestamp", "tiny", "--max-num-iterations", "30", "--steps-per-save", "1000", "--machine.seed", "0",
           *NERF.args(), "llff", "--data", str(scene), "--downscale-factor", str(TINY_FACTOR)]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return tmp / "outputs" / "fern" / "e-nerf-small" / "tiny", res.stderr


@pytest.mark.e2e
def test_every_llff_run_writes_its_spiral_camera_path(ns_run):
    """ns-train itself (no wcnerf-summary) leaves <run>/camera_paths/spiral.json: the reference
    spiral of the run's scene, as wcnerf-spiral computes it, and no temporary file beside it."""
    from wcnerf.data.spiral import SPIRAL_FRAMES, spiral_camera_path
    from wcnerf.tools.runs import scene_of_run

    run, _ = ns_run
    path = run / "camera_paths" / "spiral.json"
    assert path.is_file(), sorted(p.name for p in run.iterdir())
    written = json.loads(path.read_text())
    scene, _ = scene_of_run(run / "config.yml")
    assert written == json.loads(json.dumps(spiral_camera_path(scene)))
    assert len(written["camera_path"]) == SPIRAL_FRAMES and written["render_width"] == scene.width
    assert sorted(p.name for p in path.parent.iterdir()) == ["spiral.json"]


def test_after_training_docs_say_why_not_ns_render_spiral(fern):
    """docs/after-training.md names ``ns-render spiral``, says it is rolled and off-axis on
    forward-facing scenes and what to run instead; the claim holds on fern: nerfstudio's spiral
    (from the first held-out camera) is rolled by tens of degrees, the reference one is not."""
    pytest.importorskip("nerfstudio")
    import numpy as np
    from nerfstudio.cameras.camera_paths import get_spiral_path

    from wcnerf.data.llff import LLFFDataParserConfig
    from wcnerf.data.spiral import llff_spiral

    doc = (REPO / "docs" / "after-training.md").read_text()
    section = doc[doc.index("ns-render spiral"):][:1500]
    for words in ("forward-facing", "rolled", "off", "wcnerf-spiral", "camera_paths/spiral.json",
                  "ns-render camera-path"):
        assert words in section, words

    parser = LLFFDataParserConfig(data=fern, downscale_factor=8).setup()
    first_heldout = parser.get_dataparser_outputs("test").cameras[0:1]
    theirs = get_spiral_path(first_heldout, steps=40, radius=0.1).camera_to_worlds.numpy()
    scene = parser.load_scene()
    ours = llff_spiral(scene.poses, scene.bounds, 40)
    up = scene.poses[:, :3, 1].sum(0)
    up /= np.linalg.norm(up)

    def roll_degrees(c2w):  # angle between each frame's up axis and the scene's up, seen along the view axis
        y, z = c2w[:, :3, 1], c2w[:, :3, 2]
        level = up[None] - (z @ up)[:, None] * z
        level /= np.linalg.norm(level, axis=1, keepdims=True)
        return np.degrees(np.arccos(np.clip((y * level).sum(1), -1, 1)))

    assert roll_degrees(theirs).min() > 30 and roll_degrees(ours).max() < 1
    centre_offset = np.linalg.norm(theirs[:, :3, 3].mean(0) - scene.poses[:, :3, 3].mean(0))
    assert centre_offset > 0.1 and np.linalg.norm(ours[:, :3, 3].mean(0) - scene.poses[:, :3, 3].mean(0)) < 1e-6


# ----------------------------------------------------------------------------- (c) the shape curve
SHAPE_TINY = ["--field.conditioning", "none", "--field.width", "32", "--field.depth", "2", "--field.n-freqs", "4",
              "--optim.steps", "30", "--optim.batch-size", "512", "--optim.lr", "1e-2", "--sampling.n-near", "4000",
              "--sampling.n-uniform", "2000", "--sampling.n-eval", "4000", "--evaluation.resolution", "24",
              "--evaluation.surface-points", "4000", "--evaluation.every", "10", "--evaluation.curve-points", "2000",
              "--ckpt-every", "10", "--no-progress", "--threads", "1"]
"""The tiny shape fit of tests/test_shape_pictures.py."""


def _tiny_fit(tmp_path, mesh, *extra):
    import tyro

    from wcnerf.shape.train import FitConfig

    return tyro.cli(FitConfig, args=[str(mesh), *SHAPE_TINY, "--output-dir", str(tmp_path / "out"), *extra])


def test_shape_curve_starts_at_step_0_once_also_on_resume(tmp_path, small_mesh):
    """A run of fewer steps than --evaluation.every has two IoU points (step 0 and its end, was
    one); a run killed after its step-10 checkpoint and resumed records step 0 once, and the
    same curve and losses as the run never interrupted."""
    from wcnerf.shape.train import fit

    short = fit(_tiny_fit(tmp_path, small_mesh, "--optim.steps", "5", "--evaluation.every", "100", "--run-name", "short"))
    assert short.curves["eval_step"] == [0, 5] and len(short.curves["eval_iou"]) == 2
    assert 0.0 <= short.curves["eval_iou"][0] <= 1.0

    full = fit(_tiny_fit(tmp_path, small_mesh, "--run-name", "full"))
    cfg = _tiny_fit(tmp_path, small_mesh, "--run-name", "killed")
    assert fit(dataclasses.replace(cfg, stop_after=17)).metrics == {"interrupted_at": 17}
    resumed = fit(cfg)
    assert full.curves["eval_step"] == resumed.curves["eval_step"] == [0, 10, 20, 30]
    assert full.curves["eval_iou"] == resumed.curves["eval_iou"]
    assert full.curves["loss"] == resumed.curves["loss"]


def test_comparison_statistics_leave_out_the_untrained_point(tmp_path, small_mesh):
    """--compare's early IoU (the curve's point nearest 15% of the steps) and steps to target
    measure training: on a 6-step run the point nearest step 0.9 is the trained one at step 6,
    not the step-0 point the curve now starts with."""
    import torch

    from wcnerf.shape.compare import run_compare

    cfg = _tiny_fit(tmp_path, small_mesh, "--compare", "none", "--optim.steps", "6", "--evaluation.every", "100")
    summary = run_compare(cfg)
    entry = summary["methods"]["none"]
    run = Path(summary["dir"]) / "runs" / f"none-lr{entry['lr']:g}-s0"
    state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]
    assert state["eval_step"] == [0, 6]
    assert entry["per_seed"]["0"]["iou_early"] == state["eval_iou"][1]
    assert summary["steps_to_target"]["none"] == 1.0  # its own final value, reached at its last point


def test_evaluating_the_untrained_field_changes_no_training_state():
    """What the step-0 point does (the field in eval mode on the curve's points, then back to
    train mode) leaves every parameter and buffer and torch's random state as they were, for
    every conditioner: the training that follows is the one without it."""
    import numpy as np
    import torch

    from wcnerf.conditioning import available
    from wcnerf.shape.extract import evaluate_points
    from wcnerf.shape.field import FieldConfig, build_field

    points = np.random.default_rng(0).uniform(-1, 1, (500, 3)).astype(np.float32)
    for name in available():
        model = build_field(FieldConfig(width=16, depth=2, n_freqs=4), name, 0)
        model.train()
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        model.eval()
        evaluate_points(model, points, torch.device("cpu"), 128)
        model.train()
        after = model.state_dict()
        assert before.keys() == after.keys(), name
        assert all(torch.equal(before[k], after[k]) for k in before), name
        assert torch.equal(rng, torch.get_rng_state()), name


def test_curves_png_iou_axis_ends_at_1(tmp_path):
    """One IoU point at 1.0: matplotlib's autoscale would draw the axis to 1.05."""
    from wcnerf.shape.plot import plot_curves

    fig = plot_curves({"none": {"loss": [1.0, 0.5, 0.25], "eval_step": [3], "eval_iou": [1.0]}}, tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    assert fig.axes[1].get_ylim() == (0.0, 1.0)


def test_shape_viewer_iou_axis_ends_at_1():
    """The viewer's plotly figure fixes the IoU axis to [0, 1] (autorange drew a finished run's
    points on an axis to 1.5)."""
    from support.browser import free_port

    import wcnerf.viewer.shape_viewer as sv

    viewer = sv.ShapeViewer(port=free_port(), resolution=16)
    try:
        viewer._update_plot({"none": {"loss": [1.0, 0.5], "eval_step": [0, 30], "eval_iou": [0.2, 0.97]}})
        layout = viewer._plot.figure.layout
        assert tuple(layout.yaxis2.range) == (0, 1) and layout.yaxis2.title.text == "IoU"
    finally:
        viewer.close()


# ----------------------------------------------------------------------------- (d) no lock files
def test_a_finished_shape_run_leaves_no_lock_file(tmp_path, small_mesh):
    from wcnerf.lease import LEASE_FILE, LOCK_FILE
    from wcnerf.shape.train import fit

    res = fit(_tiny_fit(tmp_path, small_mesh, "--optim.steps", "5"))
    names = {p.name for p in res.run_dir.iterdir()}
    assert "metrics.json" in names and LOCK_FILE not in names and LEASE_FILE not in names, names


def test_released_lease_leaves_no_lock_file_unless_another_holds_the_folder(tmp_path):
    import socket

    from wcnerf.lease import LEASE_FILE, LOCK_FILE, Lease

    d = tmp_path / "run"
    lease = Lease(d).acquire()
    assert (d / LOCK_FILE).exists()  # created by the acquisition
    lease.release()
    assert not (d / LOCK_FILE).exists() and not (d / LEASE_FILE).exists()
    # a lease taken over meanwhile (a stalled holder): the release leaves the new holder's files
    lease = Lease(d).acquire()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time(), "stale_after": 60,
              "token": "other"}
    (d / LEASE_FILE).write_text(json.dumps(record))
    lease.release()
    assert json.loads((d / LEASE_FILE).read_text())["token"] == "other" and (d / LOCK_FILE).exists()


def _hold_folder_lock(folder: str, go, log: str) -> None:
    """Spawned: wait for ``go``, take the folder lock, write when it held it."""
    from wcnerf.lease import _folder_lock

    go.wait(60)
    with _folder_lock(Path(folder)):
        start = time.time()
        time.sleep(0.3)
        Path(log).write_text(json.dumps([start, time.time()]))


def test_a_waiter_on_a_removed_lock_file_does_not_share_the_lock(tmp_path):
    """Process W waits on the lock file; the holder removes it (as a release does) and at once
    locks the folder again (a new file) for 1.5 s. W must not hold the lock meanwhile: it sees
    its file is gone and locks the new one (without that check W holds the old file's lock
    while the holder holds the new one's)."""
    from wcnerf.lease import LOCK_FILE, _folder_lock

    folder, log = tmp_path / "run", tmp_path / "w.json"
    folder.mkdir()
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    waiter = ctx.Process(target=_hold_folder_lock, args=(str(folder), go, str(log)))
    waiter.start()
    try:
        with _folder_lock(folder) as lock:
            go.set()
            time.sleep(2.0)  # W has opened the lock file and waits on it
            lock.remove()
        with _folder_lock(folder):
            start_mine = time.time()
            time.sleep(1.5)
            mine = (start_mine, time.time())
        waiter.join(60)
        assert waiter.exitcode == 0
    finally:
        if waiter.is_alive():
            os.kill(waiter.pid, signal.SIGKILL)
    start, end = json.loads(log.read_text())
    assert end <= mine[0] or start >= mine[1], (mine, (start, end))  # never both at once
    assert (folder / LOCK_FILE).exists()  # nobody removed it since (only a lease's release does)


# ----------------------------------------------------------------------------- (e) warnings
KNOWN_AFTER_PLUGIN = ("`torch.cuda.amp.GradScaler(args...)` is deprecated",
                      "Using a non-tuple sequence for multidimensional indexing is deprecated",
                      "Converting a tensor with requires_grad=True to a scalar")
"""Known notices printed after nerfstudio loads the plugin (ns-train prints them while training)."""


@pytest.mark.e2e
def test_ns_train_prints_none_of_the_known_deprecation_warnings(ns_run):
    _, stderr = ns_run
    for message in KNOWN_AFTER_PLUGIN:
        assert message not in stderr, message


@pytest.mark.e2e
def test_wcnerf_spiral_prints_no_known_warning(ns_run, tmp_path):
    """Our console script imports nerfstudio after the plugin's filters: not even the notices
    nerfstudio prints at import (``torch.jit.script``) show."""
    run, _ = ns_run
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    res = subprocess.run([str(BIN / "wcnerf-spiral"), str(run)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Warning" not in res.stderr and "deprecated" not in res.stderr, res.stderr[-2000:]


_PROBE = """
import warnings
import wcnerf.plugin
known = "`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead."
warnings.warn_explicit(known, FutureWarning, "trainer.py", 137, module="nerfstudio.engine.trainer")
warnings.warn_explicit(known + " [from our code]", FutureWarning, "mine.py", 1, module="wcnerf.plugin.trainer")
warnings.warn_explicit("something new", FutureWarning, "trainer.py", 138, module="nerfstudio.engine.trainer")
warnings.warn_explicit("Using a non-tuple sequence for multidimensional indexing is deprecated", FutureWarning,
                       "cameras.py", 601, module="nerfstudio.cameras.cameras")  # known as a UserWarning
"""


def test_only_the_known_warnings_are_filtered_and_w_options_win():
    """The filters name module, category and message: the same message from our module, another
    message from nerfstudio's module and the known message in another category still show; with
    ``-W default`` (the user's choice) the known one shows too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    err = res.stderr
    assert "trainer.py:137" not in err
    assert "mine.py:1" in err and "trainer.py:138" in err and "cameras.py:601" in err
    res = subprocess.run([sys.executable, "-W", "default", "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "trainer.py:137" in res.stderr, res.stderr[-2000:]


# ----------------------------------------------------------------------------- (a) in the browser
@pytest.mark.e2e
@pytest.mark.browser
def test_ns_viewer_on_a_finished_run_shows_its_logged_kappa(ns_run, tmp_path):
    """``ns-viewer --load-config`` of the tiny run (analysis every 2 of 30 steps): the page's
    Weight conditioning panel shows step 28's tables of both fields."""
    from support.browser import Browser, find_chromium, free_port
    from support.tiny import tiny_env

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not installed (apt install chromium): the browser check is skipped")
    run, _ = ns_run
    port = free_port()
    log = tmp_path / "viewer.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(BIN / "ns-viewer"), "--load-config", str(run / "config.yml"),
                                 "--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"],
                                cwd=tmp_path, env=tiny_env(tmp_path), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while f"127.0.0.1:{port}" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        with Browser(chromium, width=1600, height=1500) as b:
            b.goto(f"http://127.0.0.1:{port}/")
            has = "!!document.body && document.body.innerText.includes({!r})"
            assert b.wait_for(has.format("the last analysis it logged"), 180), b.text()[-3000:]
            text = b.text()
            assert "step 28" in text and "coarse field" in text and "fine field" in text, text[-3000:]
            assert "κ(W)" in text and "base.0" in text and "next multiple" not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
