"""Two shape_fit.py processes on the same run folder (issue 15, point 4; the lease of issue 14):
the second refuses, naming the folder and the holder's host and pid, or with --wait waits for
the first and then reuses its finished run; neither writes over the other's files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.helpers import REPO


def _cmd(mesh: Path, out: Path, steps: int, *extra: str) -> list:
    return [
        sys.executable, str(REPO / "scripts" / "shape_fit.py"), str(mesh), "--run-name", "same", "--output-dir", str(out),
        "--field.conditioning", "none", "--field.width", "32", "--field.depth", "2", "--field.n-freqs", "4",
        "--optim.steps", str(steps), "--optim.batch-size", "512", "--sampling.n-near", "4000",
        "--sampling.n-uniform", "2000", "--sampling.n-eval", "4000", "--evaluation.resolution", "24",
        "--evaluation.surface-points", "4000", "--evaluation.every", "50", "--evaluation.curve-points", "2000",
        "--ckpt-every", "50", "--no-progress", "--threads", "1", *extra,
    ]  # fmt: skip


@pytest.mark.e2e
def test_second_fit_of_the_same_run_folder_refuses_or_waits(tmp_path, small_mesh):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = tmp_path / "out"
    run = out / "blob" / "same"
    first = subprocess.Popen(_cmd(small_mesh, out, 3000), env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "lease.json").is_file():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first fit never claimed its folder"
            time.sleep(0.2)
        holder = json.loads((run / "lease.json").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        # both started while the first one trains
        refused = subprocess.Popen(_cmd(small_mesh, out, 3000), env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = subprocess.Popen(_cmd(small_mesh, out, 3000, "--wait"), env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r_out, r_err = refused.communicate(timeout=300)
        assert refused.returncode == 2, r_out + r_err
        assert str(run) in r_err and f"pid {first.pid}" in r_err and f"host {socket.gethostname()}" in r_err
        assert "--wait" in r_err
        assert first.poll() is None, "the first fit must still be training (make it longer)"
        f_out, f_err = first.communicate(timeout=900)
        assert first.returncode == 0, f_out + f_err
        metrics_after_first = (run / "metrics.json").read_text()
        w_out, w_err = waiting.communicate(timeout=600)
        assert waiting.returncode == 0, w_out + w_err
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert f"waiting for {run}" in w_err and f"pid {first.pid}" in w_err
    # the waiting one found the run finished and reused it: nothing rewritten, no lease left
    assert (run / "metrics.json").read_text() == metrics_after_first
    assert json.loads(metrics_after_first)["steps"] == 3000
    assert not (run / "lease.json").exists()
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["step"] == 3000
