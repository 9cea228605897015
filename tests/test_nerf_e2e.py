"""End to end through nerfstudio's command lines on fern (factor 8), with a tiny network:
``ns-train e-nerf`` is killed after its first checkpoints, resumed with ``--load-dir`` to the
end, and ``ns-eval`` writes the held-out metrics. Offline: no LPIPS weights anywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

import wcnerf  # noqa: E402

REPO = Path(wcnerf.__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FERN_CANDIDATES = [
    REPO / "data" / "llff" / "fern",
    *[Path(p) / "llff" / "fern" for p in os.environ.get("WCNERF_DATA", "").split(os.pathsep) if p],
    REPO.parent / "shared" / "data" / "llff" / "fern",
]
FERN = next((p for p in FERN_CANDIDATES if (p / "poses_bounds.npy").is_file() and (p / "images_8").is_dir()), None)

TINY = [
    "--vis", "tensorboard",
    "--steps-per-eval-batch", "3",
    "--steps-per-eval-image", "0",
    "--steps-per-eval-all-images", "0",
    "--logging.steps-per-log", "1",
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
    "--pipeline.datamanager.eval-num-rays-per-batch", "64",
    "--pipeline.model.base-mlp-num-layers", "3",
    "--pipeline.model.base-mlp-layer-width", "16",
    "--pipeline.model.skip-connections", "1",
    "--pipeline.model.head-mlp-layer-width", "8",
    "--pipeline.model.num-coarse-samples", "8",
    "--pipeline.model.num-importance-samples", "8",
    "--pipeline.model.eval-num-rays-per-chunk", "16384",
    "--pipeline.model.analysis-every", "2",
    "--pipeline.model.analysis-max-samples", "64",
]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["TORCH_HOME"] = str(tmp_path / "torch_home")  # empty hub cache: LPIPS must be omitted
    env.pop("WCNERF_LPIPS_WEIGHTS", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _steps(ckpt_dir: Path) -> list:
    return sorted(int(m.group(1)) for p in ckpt_dir.glob("step-*.ckpt") if (m := re.match(r"step-(\d+)\.ckpt$", p.name)))


def _scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return tags


@pytest.mark.slow
@pytest.mark.skipif(FERN is None, reason="fern (images_8) not found")
def test_train_kill_resume_eval(tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "outputs"
    common = ["--data", "llff/fern", "--output-dir", str(out), *TINY]
    log1 = tmp_path / "train1.log"

    # 1. A long run, killed (SIGKILL) once it has written a checkpoint past step 2.
    with open(log1, "w") as f:
        proc = subprocess.Popen(
            [str(BIN / "ns-train"), "e-nerf", *common, "--timestamp", "first", "--max-num-iterations", "100000",
             "--steps-per-save", "2"],
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
    res = subprocess.run(
        [str(BIN / "ns-train"), "e-nerf", *common, "--timestamp", "resumed", "--max-num-iterations", str(total),
         "--steps-per-save", "100", "--load-dir", str(ckpt_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    log2 = res.stdout + res.stderr
    assert res.returncode == 0, log2[-3000:]
    assert f"Done loading Nerfstudio checkpoint from {ckpt_dir}" in log2.replace("\n", "")
    assert "LPIPS omitted" in log2
    run2 = out / "fern" / "e-nerf" / "resumed"
    assert _steps(run2 / "nerfstudio_models") == [total - 1]

    tags = _scalars(run2)
    assert sorted(set(tags["Train Loss"])) == list(range(killed_at + 1, total))
    assert "Train Metrics Dict/psnr" in tags and "Eval Metrics Dict/psnr" in tags
    assert "analysis/coarse/mlp_base.layers.0/kappa_w" in tags
    assert "analysis/fine/field_heads.0.net/fim/kappa_p90" in tags
    assert all(s % 2 == 0 for s in tags["analysis/coarse/mlp_base.layers.0/kappa_w"])

    # 3. ns-eval on the finished run: PSNR and SSIM on the held-out images, no LPIPS offline.
    metrics = tmp_path / "metrics.json"
    res = subprocess.run(
        [str(BIN / "ns-eval"), "--load-config", str(run2 / "config.yml"), "--output-path", str(metrics)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    results = json.loads(metrics.read_text())["results"]
    assert {"psnr", "ssim"} <= set(results) and "lpips" not in results
    assert 5.0 < results["psnr"] < 60.0 and 0.0 < results["ssim"] <= 1.0
    assert json.loads(metrics.read_text())["checkpoint"].endswith(f"step-{total - 1:09d}.ckpt")
