"""After training, as a nerfstudio user goes on (README "After training"), on tiny finished runs
of fern at 1/32 resolution:

- ``scripts/train_enerf.py`` ends with a summary: held-out PSNR/SSIM from ``ns-eval``, a PNG
  with ground truth, render and error map of the first held-out view, the spiral camera path
  and the next commands (evaluate, render the spiral, open the viewer, export);
- E-NeRF: ``ns-export pointcloud --normal-method open3d`` (the command the summary prints)
  writes a point cloud with normals estimated from the points; ``ns-export poisson`` without
  model normals stops with nerfstudio's "Normal output 'normals' not found";
- E-nerfacto trained with ``--pipeline.model.predict-normals True``: the summary prints
  ``ns-export poisson``, which writes a mesh (Poisson on the predicted normals) and a textured OBJ;
- ``ns-viewer --load-config ... --viewer.websocket-host 127.0.0.1`` (the printed command) serves
  the finished run on 127.0.0.1 only.

The summary's ``--obb-*`` crop box (what the cameras see) is left out when running the export
commands here: a model trained for 30 steps puts every depth beyond it, and nerfstudio's
``generate_point_cloud`` then samples forever (it stops only once ``--num-points`` points
passed the crop).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from support import ns_server
from support.helpers import BIN, REPO
from support.tiny import NERF, TINY_FACTOR, tiny_env, tiny_fern, train_tiny


def _train_enerf_module():
    spec = importlib.util.spec_from_file_location("train_enerf", REPO / "scripts" / "train_enerf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- fast
def test_train_enerf_splits_its_own_options():
    te = _train_enerf_module()
    args, summary, only = te._own_options(["--data", "x", "--no-summary", "--max-num-iterations", "5", "llff"])
    assert args == ["--data", "x", "--max-num-iterations", "5", "llff"] and summary is False and only is None
    args, summary, only = te._own_options(["--summary-only", "r/config.yml"])
    assert args == [] and summary is True and only == "r/config.yml"
    assert te._own_options(["--summary-only=a.yml"])[2] == "a.yml"
    assert te._option(["--output-dir", "o", "--timestamp=t", "--output-dir", "p"], "--output-dir") == "p"
    assert te._option(["--timestamp=t"], "--timestamp") == "t" and te._option([], "--timestamp") is None


def test_find_run_config(tmp_path):
    from wcnerf.tools.runs import find_run_config

    cfg = tmp_path / "fern" / "e-nerf-small" / "ts" / "config.yml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("x")
    assert find_run_config(tmp_path, "e-nerf-small", "ts") == cfg
    assert find_run_config(tmp_path, "e-nerf-small", "ts", "fern") == cfg
    assert find_run_config(tmp_path, "e-nerf-small", "other") is None
    assert find_run_config(tmp_path, "e-nerf-small", "ts", "flower") is None


def test_export_crop_box_holds_what_the_cameras_see(fern):
    """Every training camera's view between the near and far bounds lies in the box."""
    from wcnerf.data.llff_scene import load_llff_scene
    from wcnerf.tools.summary import export_crop_box

    scene = load_llff_scene(fern, 8)
    center, rot, scale = export_crop_box(scene)
    assert rot == (0.0, 0.0, 0.0)
    lo, hi = np.array(center) - np.array(scale) / 2 + 1e-9, np.array(center) + np.array(scale) / 2 - 1e-9
    u = 0.5 * scene.width / scene.focal
    v = 0.5 * scene.height / scene.focal
    for pose in scene.poses:
        for dx, dy in ((0, 0), (-u, -v), (-u, v), (u, -v), (u, v)):
            for depth in (scene.bounds.min(), scene.bounds.max()):
                p = pose[:, :3] @ (depth * np.array([dx, dy, -1.0])) + pose[:, 3]
                assert np.all(p > lo) and np.all(p < hi), (p, lo, hi)
    # fern: the box reaches ~7 deep (far bound 6.28), not the NDC background ~100 away
    assert 6.5 < -lo[2] < 8.0 and hi[2] < 0 and np.all(np.abs(lo[:2] + hi[:2]) < 1.0)


def test_format_summary_lists_metrics_picture_and_commands(tmp_path):
    from wcnerf.tools.summary import RunSummary, format_summary

    s = RunSummary(config=tmp_path / "config.yml", run_dir=tmp_path, method="e-nerf-small",
                   results={"psnr": 21.234, "ssim": 0.6543}, num_heldout=3, heldout_png=tmp_path / "h.png",
                   spiral=tmp_path / "s.json", commands=[("evaluate", "ns-eval --load-config x")])  # fmt: skip
    text = format_summary(s)
    assert "3 held-out views (ns-eval): PSNR 21.23 dB, SSIM 0.654 (LPIPS: AlexNet's weights could not be had offline)" in text
    assert f"ground truth | render | error map: {tmp_path / 'h.png'}" in text
    assert "  # evaluate\n  ns-eval --load-config x" in text


# ----------------------------------------------------------------------------- tiny runs
pytestmark = pytest.mark.xdist_group(__name__)  # enerf_run is trained once: its tests on one worker


@pytest.fixture(scope="module")
def enerf_run(tmp_path_factory, fern):
    """``scripts/train_enerf.py`` on tiny fern (30 steps): ``(run folder, its output)``."""
    tmp = tmp_path_factory.mktemp("enerf")
    scene = tiny_fern(tmp / "data", fern)
    res = ns_server.run(
        [sys.executable, str(REPO / "scripts" / "train_enerf.py"), "--data", str(scene),
         "--output-dir", str(tmp / "outputs"), "--max-num-iterations", "30", "--steps-per-save", "1000",
         *NERF.args(), "llff", "--downscale-factor", str(TINY_FACTOR)],
        cwd=tmp, env=tiny_env(tmp), timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = list((tmp / "outputs" / "fern").glob("e-nerf*/*/config.yml"))
    assert len(runs) == 1, runs
    return runs[0].parent, res.stdout


def _command(stdout: str, start: str) -> list:
    """The printed command line starting with ``start``, as argv (the binary from this venv)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith(start)]
    assert lines, f"no '{start}' command in:\n{stdout[-3000:]}"
    argv = shlex.split(lines[-1])
    return [str(BIN / argv[0]), *argv[1:]]


def _without(argv: list, option: str, nargs: int) -> list:
    i = argv.index(option)
    return argv[:i] + argv[i + 1 + nargs:]


@pytest.mark.e2e
def test_train_enerf_ends_with_a_summary(enerf_run):
    import imageio.v3 as iio

    run, out = enerf_run
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["results"]
    assert {"psnr", "ssim"} <= set(metrics) and "lpips" not in metrics  # offline: no AlexNet weights
    assert 5.0 < metrics["psnr"] < 60.0 and 0.0 < metrics["ssim"] <= 1.0
    assert (f"3 held-out views (ns-eval): PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
            " (LPIPS: AlexNet's weights could not be had offline)") in out  # fmt: skip
    png = run / "heldout_view.png"
    assert f"ground truth | render | error map: {png}" in out
    img = iio.imread(png)
    assert img.shape[1] == 3 * 126 + 2 * 4 and img.shape[0] > 94  # three 126-px panels, labels above
    assert img[:, :126].std() > 5 and img[:, -126:].std() > 1  # ground truth and error map drawn
    spiral = json.loads((run / "camera_paths" / "spiral.json").read_text())
    assert len(spiral["camera_path"]) == 120 and (spiral["render_width"], spiral["render_height"]) == (126, 94)
    cfg = str(run / "config.yml")
    for cmd in (f"ns-eval --load-config {cfg} --output-path {run / 'eval' / 'metrics.json'}",
                f"ns-render camera-path --load-config {cfg} --camera-path-filename {run / 'camera_paths' / 'spiral.json'}",
                f"ns-viewer --load-config {cfg} --viewer.websocket-host 127.0.0.1",
                f"ns-export pointcloud --load-config {cfg} --output-dir exports/fern/e-nerf-small --normal-method open3d"):  # fmt: skip
        assert cmd in out, cmd
    assert re.search(r"--obb-center -?[\d.]+ -?[\d.]+ -4\.\d+ --obb-rotation 0\.0 0\.0 0\.0 --obb-scale [\d.]+ [\d.]+ [\d.]+", out)


@pytest.mark.e2e
def test_the_tools_on_the_finished_run(enerf_run, tmp_path, capsys):
    """``wcnerf-summary`` (run folder, --no-evaluate: what ns-eval left), ``wcnerf-heldout`` (another
    view) and ``wcnerf-spiral`` (--load-config) in-process on the run train_enerf.py summarised."""
    import imageio.v3 as iio

    from wcnerf.tools import heldout, spiral, summary

    run, out = enerf_run
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["results"]
    assert summary.main([str(run), "--no-evaluate"]) == 0
    text = capsys.readouterr().out
    assert f"3 held-out views (ns-eval): PSNR {metrics['psnr']:.2f} dB" in text and "evaluating" not in text
    assert f"ns-eval --load-config {run / 'config.yml'}" in text
    assert heldout.main([str(run / "config.yml"), "--view", "2", "--no-evaluate"]) == 0
    img = iio.imread(run / "heldout_view_2.png")
    assert img.shape[1] == 3 * 126 + 2 * 4 and img.shape[0] > 94
    assert heldout.main([str(run), "--view", "3", "--no-evaluate"]) == 2  # 3 held-out views: 0, 1, 2
    assert "no view 3" in capsys.readouterr().err
    assert spiral.main(["--load-config", str(run / "config.yml"), "--frames", "3", "--output", str(tmp_path / "s.json")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["camera_path"]) == 3


@pytest.mark.e2e
def test_enerf_point_cloud_with_estimated_normals(enerf_run, tmp_path):
    import open3d as o3d

    run, out = enerf_run
    argv = _command(out, "ns-export pointcloud")
    for opt in ("--obb-center", "--obb-rotation", "--obb-scale"):  # see the module docstring
        argv = _without(argv, opt, 3)
    argv = _without(argv, "--output-dir", 1) + ["--output-dir", str(tmp_path / "pc"), "--num-points", "5000"]
    res = ns_server.run(argv, cwd=tmp_path, env=tiny_env(tmp_path), timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    pcd = o3d.io.read_point_cloud(str(tmp_path / "pc" / "point_cloud.ply"))
    pts, normals = np.asarray(pcd.points), np.asarray(pcd.normals)
    assert len(pts) >= 4000 and pcd.has_colors() and pcd.has_normals()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-3)
    assert np.median(pts[:, 2]) < 0  # in front of the cameras (they look down -z)

    # Poisson needs normals: E-NeRF predicts none, so nerfstudio's default stops early.
    res = ns_server.run(
        [str(BIN / "ns-export"), "poisson", "--load-config", str(run / "config.yml"), "--output-dir", str(tmp_path / "m")],
        cwd=tmp_path, env=tiny_env(tmp_path), timeout=600,
    )  # fmt: skip
    assert res.returncode == 1 and "Normal output 'normals' not found" in res.stdout + res.stderr


def _listening(port: int) -> set:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


@pytest.mark.e2e
def test_viewer_serves_the_finished_run_on_localhost(enerf_run, tmp_path):
    from support.browser import free_port

    run, out = enerf_run
    port = free_port()
    argv = _command(out, "ns-viewer") + ["--viewer.websocket-port", str(port)]
    log = tmp_path / "viewer.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=tiny_env(tmp_path), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        banner = f"http://127.0.0.1:{port}"  # viser's table (ns-viewer disables nerfstudio's banner)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and banner not in log.read_text(errors="replace"):
            time.sleep(0.5)
        assert banner in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode("utf8", "replace")
        assert "<!doctype html>" in page.lower()
        assert _listening(port) == {"0100007F"}, _listening(port)  # 127.0.0.1 only, not 0.0.0.0 / ::
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.e2e
def test_nerfacto_with_predicted_normals_exports_a_poisson_mesh(tmp_path, fern):
    scene = tiny_fern(tmp_path / "data", fern)
    run = train_tiny(tmp_path, scene, "e-nerfacto-small", iterations=30,
                     extra=["--pipeline.model.predict-normals", "True"])  # fmt: skip
    res = ns_server.run(
        [sys.executable, str(REPO / "scripts" / "train_enerf.py"), "--summary-only", str(run / "config.yml")],
        cwd=tmp_path, env=tiny_env(tmp_path), timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "held-out views (ns-eval): PSNR" in res.stdout and "--normal-method open3d" not in res.stdout
    argv = _command(res.stdout, "ns-export poisson")
    for opt in ("--obb-center", "--obb-rotation", "--obb-scale"):  # see the module docstring
        argv = _without(argv, opt, 3)
    argv = _without(argv, "--output-dir", 1) + ["--output-dir", str(tmp_path / "mesh"), "--num-points", "5000",
                                                 "--num-pixels-per-side", "128", "--target-num-faces", "2000"]  # fmt: skip
    res = ns_server.run(argv, cwd=tmp_path, env=tiny_env(tmp_path), timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "Checking that the pipeline has a normal output." in log and "Normal output 'normals' not found" not in log
    import trimesh

    mesh = trimesh.load(tmp_path / "mesh" / "poisson_mesh.ply", process=False)
    assert len(mesh.faces) > 100
    assert (tmp_path / "mesh" / "mesh.obj").is_file() and (tmp_path / "mesh" / "material_0.png").is_file()
