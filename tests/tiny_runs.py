"""Tiny finished nerfstudio runs for the "after training" tests (render, export, view, summary).
A plain module, not a test module; no nerfstudio import here.

- :func:`tiny_fern`: fern in the nerf_llff_data layout with ``images_32/`` (126 x 94), made
  from the ``fern`` fixture's ``images_8/`` (a run's rays, renders and exports are then cheap);
- :func:`train_tiny`: ``ns-train <method> ... llff --data <scene> --downscale-factor 32`` for a
  few iterations with a tiny network, one torch thread, offline (:func:`helpers.offline_env`);
  returns the run folder (``config.yml``, ``nerfstudio_models/``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

from helpers import BIN, NERF_TINY_ARGS, offline_env

TINY_FACTOR = 32
"""images_<factor>/ of :func:`tiny_fern` (126 x 94)."""

NERFACTO_TINY_ARGS = [
    "--vis", "tensorboard",
    "--steps-per-eval-batch", "0",
    "--steps-per-eval-image", "0",
    "--steps-per-eval-all-images", "0",
    "--logging.steps-per-log", "10",
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.datamanager.eval-num-rays-per-batch", "256",
    "--pipeline.model.num-levels", "4",
    "--pipeline.model.log2-hashmap-size", "12",
    "--pipeline.model.max-res", "64",
    "--pipeline.model.num-proposal-samples-per-ray", "8", "8",
    "--pipeline.model.num-nerf-samples-per-ray", "8",
    "--pipeline.model.eval-num-rays-per-chunk", "16384",
]
"""``ns-train e-nerfacto*`` arguments for a tiny model (as tests/test_nerfacto.py's)."""


def tiny_fern(root: Path, fern: Path) -> Path:
    """``root/fern`` with fern's ``poses_bounds.npy`` and ``images_32/`` made from ``images_8/``."""
    from PIL import Image

    scene = Path(root) / "fern"
    if (scene / f"images_{TINY_FACTOR}").is_dir():
        return scene
    (scene / f"images_{TINY_FACTOR}").mkdir(parents=True)
    (scene / "poses_bounds.npy").write_bytes((fern / "poses_bounds.npy").read_bytes())
    for p in sorted((fern / "images_8").iterdir()):
        with Image.open(p) as im:
            im.convert("RGB").resize((126, 94), Image.BOX).save(scene / f"images_{TINY_FACTOR}" / f"{p.stem}.png")
    return scene


def tiny_env(tmp_path: Path) -> dict:
    """:func:`helpers.offline_env` with one torch thread."""
    env = offline_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def train_tiny(
    tmp_path: Path,
    scene: Path,
    method: str = "e-nerf-small",
    iterations: int = 30,
    extra: Sequence[str] = (),
    timestamp: str = "tiny",
) -> Path:
    """Train ``method`` for ``iterations`` steps on ``scene`` (factor 32); the run folder."""
    tiny = NERFACTO_TINY_ARGS if "nerfacto" in method else NERF_TINY_ARGS
    out = Path(tmp_path) / "outputs"
    cmd = [
        str(BIN / "ns-train"), method, "--output-dir", str(out), "--experiment-name", "fern",
        "--timestamp", timestamp, "--max-num-iterations", str(iterations), "--steps-per-save", "1000",
        "--machine.seed", "0", *tiny, *extra,
        "llff", "--data", str(scene), "--downscale-factor", str(TINY_FACTOR),
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=tiny_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run = out / "fern" / method / timestamp
    assert (run / "config.yml").is_file() and list((run / "nerfstudio_models").glob("step-*.ckpt")), res.stdout[-2000:]
    return run
