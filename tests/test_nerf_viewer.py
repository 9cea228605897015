"""The nerfstudio web viewer with our methods on a CPU machine: ``ns-train e-nerf-small``
serves the viewer on 127.0.0.1 while training, and (with headless Chromium) a browser
connecting to it makes the model render (``get_outputs_for_camera`` on the viewer's camera)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from test_nerf_e2e import BIN, FERN, TINY, _env, _scalars


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, proc) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.skipif(FERN is None, reason="fern (images_8) not found")
def test_viewer_serves_on_localhost_and_renders(tmp_path):
    port = _free_port()
    out = tmp_path / "outputs"
    tiny = [a for a in TINY]
    tiny[tiny.index("--vis") + 1] = "viewer+tensorboard"
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(BIN / "ns-train"), "e-nerf-small", "--data", "llff/fern", "--output-dir", str(out),
             "--timestamp", "viewer", "--max-num-iterations", "100000", "--steps-per-save", "100000",
             "--viewer.websocket-port", str(port), *tiny],
            cwd=tmp_path, env=_env(tmp_path), stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
    run_dir = out / "fern" / "e-nerf-small" / "viewer"
    try:
        banner = f"Viewer running locally at: http://127.0.0.1:{port}"
        assert _wait_for(lambda: banner in log.read_text(errors="replace"), 600, proc), log.read_text()[-3000:]
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode("utf8", "replace")
        assert "<!doctype html>" in page.lower()

        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium is None:
            pytest.skip("page served; headless Chromium not installed, render not triggered")
        shot = tmp_path / "viewer.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=800,600",
             "--virtual-time-budget=30000", f"--screenshot={shot}", f"http://127.0.0.1:{port}/"],
            capture_output=True, timeout=300,
        )
        assert shot.is_file() and shot.stat().st_size > 10_000
        # The viewer logs its render speed once it has rendered the browser's view.
        assert _wait_for(lambda: "Vis Rays / Sec" in _scalars(run_dir), 300, proc), log.read_text()[-3000:]
        assert proc.poll() is None  # still training
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
