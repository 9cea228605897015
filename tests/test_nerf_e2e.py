"""End to end through nerfstudio's command lines on tiny fern (factor 32), with the tiny network:
``ns-train e-nerf`` (the paper method, at the tiny preset's render chunk) is killed
after its first checkpoints, resumed with ``--load-dir`` to the end, and ``ns-eval`` writes the
held-out metrics. Offline: no LPIPS weights anywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

from support import ns_server  # noqa: E402
from support.helpers import BIN, offline_env, tb_scalars  # noqa: E402
from support.tiny import NERF, TINY_FACTOR, tiny_fern  # noqa: E402


def _steps(ckpt_dir: Path) -> list:
    return sorted(int(m.group(1)) for p in ckpt_dir.glob("step-*.ckpt") if (m := re.match(r"step-(\d+)\.ckpt$", p.name)))


@pytest.mark.e2e
def test_train_kill_resume_eval(tmp_path, fern):
    env = offline_env(tmp_path)
    out = tmp_path / "outputs"
    scene = tiny_fern(tmp_path / "data", fern)
    common = ["--output-dir", str(out), "--experiment-name", "fern", *NERF.args()]
    scene_args = ["llff", "--data", str(scene), "--downscale-factor", str(TINY_FACTOR)]
    log1 = tmp_path / "train1.log"

    # 1. A long run, killed (SIGKILL) once it has written a checkpoint past step 2.
    with open(log1, "w") as f:
        proc = subprocess.Popen(
            [str(BIN / "ns-train"), "e-nerf", *common, "--timestamp", "first", "--max-num-iterations", "100000",
             "--steps-per-save", "2", *scene_args],
            cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
    ckpt_dir = out / "fern" / "e-nerf" / "first" / "nerfstudio_models"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt_dir.is_dir() and any(s >= 4 for s in _steps(ckpt_dir)):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log1.read_text()[-3000:]
    steps = _steps(ckpt_dir)
    assert steps and steps[-1] >= 4, log1.read_text()[-3000:]
    # Only complete checkpoints (atomic writes): no partial or temporary file among them.
    assert not [p for p in ckpt_dir.iterdir() if not p.name.endswith(".ckpt")]
    killed_at = steps[-1]

    import torch

    state = torch.load(ckpt_dir / f"step-{killed_at:09d}.ckpt", map_location="cpu", weights_only=True)
    assert state["step"] == killed_at
    assert any(".parametrizations.weight.original" in k for k in state["pipeline"])  # equilibrated

    # 2. Resume from the killed run's checkpoints up to max_num_iterations in total.
    total = killed_at + 4
    res = ns_server.run(
        [str(BIN / "ns-train"), "e-nerf", *common, "--timestamp", "resumed", "--max-num-iterations", str(total),
         "--steps-per-save", "100", "--load-dir", str(ckpt_dir), *scene_args],
        cwd=tmp_path, env=env, timeout=900,
    )
    log2 = res.stdout + res.stderr
    assert res.returncode == 0, log2[-3000:]
    assert f"Done loading Nerfstudio checkpoint from {ckpt_dir}" in log2.replace("\n", "")
    assert "LPIPS omitted" not in log2  # no image metric computed while training: nothing to warn about
    run2 = out / "fern" / "e-nerf" / "resumed"
    assert _steps(run2 / "nerfstudio_models") == [total - 1]

    tags = tb_scalars(run2)
    assert sorted(set(tags["Train Loss"])) == list(range(killed_at + 1, total))
    assert "Train Metrics Dict/psnr" in tags and "Eval Metrics Dict/psnr" in tags
    assert "analysis/coarse/mlp_base.layers.0/kappa_w" in tags
    assert "analysis/fine/field_heads.0.net/fim/kappa_p90" in tags
    assert all(s % 2 == 0 for s in tags["analysis/coarse/mlp_base.layers.0/kappa_w"])

    # 3. ns-eval on the finished run: PSNR and SSIM on the held-out images, no LPIPS offline.
    metrics = tmp_path / "metrics.json"
    res = ns_server.run(
        [str(BIN / "ns-eval"), "--load-config", str(run2 / "config.yml"), "--output-path", str(metrics)],
        cwd=tmp_path, env=env, timeout=900,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (res.stdout + res.stderr).count("LPIPS omitted") == 1  # offline: said once, where metrics are computed
    results = json.loads(metrics.read_text())["results"]
    assert {"psnr", "ssim"} <= set(results) and "lpips" not in results
    assert 5.0 < results["psnr"] < 60.0 and 0.0 < results["ssim"] <= 1.0
    assert json.loads(metrics.read_text())["checkpoint"].endswith(f"step-{total - 1:09d}.ckpt")
