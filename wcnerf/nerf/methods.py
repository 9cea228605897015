"""nerfstudio method specifications: ``e-nerf``, ``nerf``, ``e-nerf-small``, ``nerf-small``.

Registered through ``[project.entry-points."nerfstudio.method_configs"]``, so after
``pip install -e .`` they appear in ``ns-train --help``::

    ns-train e-nerf --data llff/fern                      # paper protocol (GPU-sized)
    ns-train nerf-small --data llff/fern                  # ~10 min on 2 CPU cores
    ns-train nerf --pipeline.model.conditioning weight-norm --data llff/fern

``e-nerf`` and ``nerf`` (likewise the ``-small`` pair) differ only in
``pipeline.model.conditioning`` (``"equilibrate"`` vs ``"none"``).

Run-time defaults: the device is CUDA when ``torch.cuda.is_available()`` at import time, else
CPU (no ``--machine.device-type`` needed); mixed precision only on CUDA; the viewer binds
127.0.0.1 (``--viewer.websocket-host 0.0.0.0`` to expose it) and the run exits when training
ends (``--viewer.quit-on-train-completion False`` keeps the viewer up).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from wcnerf.data.llff import LLFFDataParserConfig
from wcnerf.nerf.model import ENeRFModelConfig
from wcnerf.plugin.trainer import RunExponentialDecaySchedulerConfig, WCTrainerConfig

__all__ = [
    "PAPER",
    "SMALL",
    "adam_decay",
    "e_nerf",
    "e_nerf_small",
    "make_config",
    "nerf",
    "nerf_small",
    "trainer_config",
]

CUDA = torch.cuda.is_available()

PAPER: Dict[str, Any] = dict(
    max_num_iterations=200_000,
    rays=4096,
    lr=5e-4,
    lr_final=5e-5,
    model=dict(analysis_every=5000),  # otherwise ENeRFModelConfig defaults: the paper's network
    steps_per_eval_batch=500,
    steps_per_eval_image=2500,
    steps_per_eval_all_images=50_000,
    steps_per_save=5000,
    vis="viewer+tensorboard",
)
"""NeRF paper, LLFF: 8x256 MLPs, 64 + 128 samples, 4096 rays, Adam 5e-4 -> 5e-5, 200k steps."""

SMALL: Dict[str, Any] = dict(
    max_num_iterations=3000,
    rays=512,
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
Measured on fern (factor 8), single thread: 755 (NeRF) / 852 (E-NeRF) CPU-seconds for the
whole run (start-up, one held-out image, analysis included), i.e. ~0.25 core-s per step:
about 10-14 minutes on one free core, held-out PSNR ~20 dB. Held-out PSNR every 100 steps on
a ray batch, one full held-out image at step 1500, all of them with ``ns-eval`` afterwards;
conditioning analysis every 500 steps."""


def make_config(method_name: str, conditioning: str, preset: Dict[str, Any]) -> WCTrainerConfig:
    """TrainerConfig of one method; ``preset`` is :data:`PAPER` or :data:`SMALL`."""
    model = ENeRFModelConfig(conditioning=conditioning, **preset["model"])
    return trainer_config(method_name, preset, model, {"fields": adam_decay(preset["lr"], preset["lr_final"])})


def adam_decay(lr: float, lr_final: float, eps: float = 1e-8, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """One optimizer group: Adam, log-linear decay from ``lr`` to ``lr_final`` over
    ``max_steps`` (None: over the run's ``max_num_iterations``)."""
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=eps),
        "scheduler": RunExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps),
    }


def trainer_config(
    method_name: str, preset: Dict[str, Any], model: ModelConfig, optimizers: Dict[str, Any]
) -> WCTrainerConfig:
    """The wcnerf trainer around any model config: LLFF dataparser, device and mixed precision
    chosen at run time, viewer on 127.0.0.1; schedule and ray batch from ``preset``."""
    return WCTrainerConfig(
        method_name=method_name,
        max_num_iterations=preset["max_num_iterations"],
        steps_per_eval_batch=preset["steps_per_eval_batch"],
        steps_per_eval_image=preset["steps_per_eval_image"],
        steps_per_eval_all_images=preset["steps_per_eval_all_images"],
        steps_per_save=preset["steps_per_save"],
        mixed_precision=CUDA,
        machine=MachineConfig(device_type="cuda" if CUDA else "cpu"),
        logging=LoggingConfig(),
        vis=preset["vis"],
        viewer=ViewerConfig(websocket_host="127.0.0.1", quit_on_train_completion=True),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=LLFFDataParserConfig(),
                train_num_rays_per_batch=preset["rays"],
                eval_num_rays_per_batch=preset["rays"],
            ),
            model=model,
        ),
        optimizers=optimizers,
    )


e_nerf = MethodSpecification(
    config=make_config("e-nerf", "equilibrate", PAPER),
    description="E-NeRF (ECCV 2024): NeRF (LLFF protocol) with every Linear of both MLPs equilibrated.",
)
nerf = MethodSpecification(
    config=make_config("nerf", "none", PAPER),
    description="NeRF (LLFF protocol) baseline; --pipeline.model.conditioning picks any wcnerf conditioner.",
)
e_nerf_small = MethodSpecification(
    config=make_config("e-nerf-small", "equilibrate", SMALL),
    description="CPU-sized E-NeRF (~10 min on 2 cores, fern at factor 8).",
)
nerf_small = MethodSpecification(
    config=make_config("nerf-small", "none", SMALL),
    description="CPU-sized NeRF baseline, identical to e-nerf-small but unconditioned.",
)
