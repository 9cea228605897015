"""nerfstudio method specifications: ``e-nerf``, ``nerf``, ``e-nerf-small``, ``nerf-small``.

Registered through ``[project.entry-points."nerfstudio.method_configs"]``, so after
``pip install -e .`` they appear in ``ns-train --help``::

    ns-train e-nerf --data llff/fern                      # paper protocol (GPU-sized)
    ns-train nerf-small --data llff/fern                  # CPU-sized (run time: docs/results.md)
    ns-train nerf --pipeline.model.conditioning weight-norm --data llff/fern

``e-nerf`` and ``nerf`` (likewise the ``-small`` pair) differ only in
``pipeline.model.conditioning`` (``"equilibrate"`` vs ``"none"``).

Trained on a CPU, ``e-nerf`` / ``nerf`` start with one line (:func:`cpu_protocol_notice`): the
paper's GPU protocol, how long it would take here at the measured step cost, and the CPU-sized
method; then they train as asked.

Run-time defaults (device, mixed precision, viewer on 127.0.0.1, exit when training ends)
are every wcnerf method's, see :mod:`wcnerf.plugin.presets`.
"""

from __future__ import annotations

from typing import Optional

from wcnerf.nerf.model import ENeRFModelConfig
from wcnerf.plugin.presets import Preset, adam_decay, method_pair, trainer_config
from wcnerf.plugin.trainer import START_NOTICES, WCTrainerConfig

__all__ = ["PAPER", "PAPER_CPU_SECONDS_PER_STEP", "SMALL", "cpu_protocol_notice", "e_nerf", "e_nerf_small",
           "make_config", "nerf", "nerf_small"]

PAPER = Preset(
    max_num_iterations=200_000,
    rays=4096,
    downscale_factor=4,
    lr=5e-4,
    lr_final=5e-5,
    # Otherwise ENeRFModelConfig defaults: the paper's network. On a CPU, chunks of 128 rays keep
    # each layer's activations (128 x 192 samples x 319 wide) under glibc's 32 MiB mmap ceiling;
    # larger chunks fault their pages in anew (measured: docs/results.md, "The lean evaluation
    # path and CPU chunk sizes"). On a GPU, the preset's 4096.
    model=dict(analysis_every=5000, cpu_eval_num_rays_per_chunk=128),
    steps_per_eval_batch=500,
    steps_per_eval_image=2500,
    steps_per_eval_all_images=50_000,
    steps_per_save=5000,
    vis="viewer+tensorboard",
)
"""NeRF paper, LLFF: 8x256 MLPs, 64 + 128 samples, 4096 rays, Adam 5e-4 -> 5e-5, 200k steps,
images at factor 4."""

SMALL = Preset(
    max_num_iterations=3000,
    rays=512,
    downscale_factor=8,
    lr=5e-3,
    lr_final=5e-4,
    model=dict(
        base_mlp_num_layers=4,
        base_mlp_layer_width=64,
        skip_connections=(),
        head_mlp_layer_width=32,
        num_coarse_samples=32,
        num_importance_samples=32,
        # On a CPU, chunks of 8192 rays spend most of the render in the kernel (large
        # temporary tensors are mmap'd and page-faulted anew for every chunk); 512 does not.
        eval_num_rays_per_chunk=512,
        analysis_every=500,
    ),
    steps_per_eval_batch=100,
    steps_per_eval_image=1500,
    steps_per_eval_all_images=0,
    steps_per_save=500,
    vis="viewer+tensorboard",
)
"""CPU-sized: 4 x 64 MLPs, 32 + 32 samples, 512 rays, Adam 5e-3 -> 5e-4 over 3000 steps.
Held-out PSNR every 100 steps on a ray batch, one full held-out image at step 1500, all of them
with ``ns-eval`` afterwards; conditioning analysis every 500 steps. Run time and PSNR on fern:
see docs/results.md."""


def make_config(method_name: str, conditioning: str, preset: Preset) -> WCTrainerConfig:
    """TrainerConfig of one method; ``preset`` is :data:`PAPER` or :data:`SMALL`."""
    model = ENeRFModelConfig(conditioning=conditioning, **preset.model_options())
    optimizers = {"fields": adam_decay(preset.lr, preset.lr_final, max_steps=preset.decay_steps)}
    return trainer_config(method_name, preset, model, optimizers)


e_nerf, nerf = method_pair(
    make_config, PAPER,
    ("e-nerf", "E-NeRF (ECCV 2024): NeRF (LLFF protocol) with every Linear of both MLPs equilibrated."),
    ("nerf", "NeRF (LLFF protocol) baseline; --pipeline.model.conditioning picks any wcnerf conditioner."),
)
e_nerf_small, nerf_small = method_pair(
    make_config, SMALL,
    ("e-nerf-small", "CPU-sized E-NeRF (fern at factor 8 on a CPU; run time: docs/results.md)."),
    ("nerf-small", "CPU-sized NeRF baseline, identical to e-nerf-small but unconditioned."),
)


# The paper network's training step on a CPU, in seconds, for the paper's batch of rays
# (PAPER.rays), at one torch thread: PAPER.rays divided by the training rays per CPU-second
# that docs/results.md measured for e-nerf (section "The lean evaluation path and CPU chunk
# sizes", the e-nerf / nerf row of its table of the three pairs).
PAPER_CPU_SECONDS_PER_STEP = 93.0

CPU_SIZED = {"e-nerf": "e-nerf-small", "nerf": "nerf-small"}
"""The CPU-sized method of each paper-protocol method."""


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:,.0f} seconds"


def cpu_protocol_notice(config: WCTrainerConfig) -> Optional[str]:
    """The line ``ns-train e-nerf`` / ``nerf`` starts with when it trains on the CPU: the
    paper's GPU protocol, its duration here (steps x rays at :data:`PAPER_CPU_SECONDS_PER_STEP`
    per ``PAPER.rays`` rays), the CPU-sized method. None for any other method or device."""
    small = CPU_SIZED.get(config.method_name)
    if small is None or str(config.machine.device_type) != "cpu":
        return None
    steps = int(config.max_num_iterations)
    rays = int(config.pipeline.datamanager.train_num_rays_per_batch)
    factor = getattr(config.pipeline.datamanager.dataparser, "downscale_factor", None)
    seconds = steps * PAPER_CPU_SECONDS_PER_STEP * rays / PAPER.rays
    return (f"{config.method_name} is the NeRF paper's GPU protocol ({steps:,} steps of {rays} rays, images at "
            f"factor {factor}): on the CPU here it would take about {_duration(seconds)} at the measured step cost "
            f"of one thread (docs/results.md); {small} is the CPU-sized method. Training as asked.")


START_NOTICES.update({name: cpu_protocol_notice for name in CPU_SIZED})
