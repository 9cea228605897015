"""Typed presets and the trainer config every wcnerf method is built from.

A method family (``wcnerf.nerf``, ``wcnerf.nerfacto``) declares its presets as :class:`Preset`
values in its own ``methods.py``, builds each method with :func:`trainer_config` around its
model config and optimizer groups (:func:`adam_decay`), and declares its methods in pairs
(:func:`method_pair`): the conditioned method and its plain baseline, which differ only in
``pipeline.model.conditioning``. What the builder fixes for every method:
wcnerf's trainer (:class:`wcnerf.plugin.trainer.WCTrainerConfig`: atomic checkpoints, resume to
the end), the LLFF dataparser, the device and mixed precision chosen at import time (CUDA when
``torch.cuda.is_available()``, else CPU: no ``--machine.device-type`` needed; mixed precision
only on CUDA), the viewer on 127.0.0.1 (``--viewer.websocket-host 0.0.0.0`` exposes it) and the
run exiting when training ends (``--viewer.quit-on-train-completion False`` keeps the viewer up).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from wcnerf.data.llff import LLFFDataParserConfig
from wcnerf.plugin.trainer import RunExponentialDecaySchedulerConfig, WCTrainerConfig

__all__ = ["CONDITIONED", "CUDA", "PLAIN", "Preset", "adam_decay", "method_pair", "trainer_config"]

CUDA = torch.cuda.is_available()
"""Whether the methods are configured for CUDA (decided once, at import)."""

CONDITIONED = "equilibrate"
"""The conditioner of a pair's conditioned method (the registry's alias of the default orientation)."""

PLAIN = "none"
"""The conditioner of a pair's baseline."""


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A method's schedule, ray batch, learning rates, evaluation cadence and model options.

    Frozen: ``model`` is stored read-only (a ``MappingProxyType``); :meth:`model_options` gives
    each model config its own deep copy, so no two configs share a mutable option value.
    """

    max_num_iterations: int
    """Training steps."""
    rays: int
    """Rays per training (and evaluation) batch."""
    downscale_factor: int
    """The LLFF dataparser's ``images_<factor>/``: 4 is the NeRF paper's LLFF protocol (1008 x 756
    images), 8 the CPU-sized one."""
    lr: float
    """Initial learning rate of the model's groups."""
    lr_final: float
    """Learning rate at the end of the decay (log-linear)."""
    decay_steps: Optional[int] = None
    """Steps of the decay; None: the run's ``max_num_iterations``."""
    model: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Options of the family's model config that differ from its defaults."""
    steps_per_eval_batch: int
    """Held-out ray batch (PSNR) every N steps."""
    steps_per_eval_image: int
    """One held-out image every N steps (0: never)."""
    steps_per_eval_all_images: int
    """All held-out images every N steps (0: never; ``ns-eval`` afterwards)."""
    steps_per_save: int
    """Checkpoint every N steps."""
    vis: str = "viewer+tensorboard"
    """nerfstudio's ``--vis``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))

    def model_options(self) -> Dict[str, Any]:
        """The model options as a new dict (values deep-copied)."""
        return copy.deepcopy(dict(self.model))


def adam_decay(lr: float, lr_final: float, eps: float = 1e-8, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """One optimizer group: Adam, log-linear decay from ``lr`` to ``lr_final`` over
    ``max_steps`` (None: over the run's ``max_num_iterations``)."""
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=eps),
        "scheduler": RunExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps),
    }


def trainer_config(
    method_name: str, preset: Preset, model: ModelConfig, optimizers: Dict[str, Any]
) -> WCTrainerConfig:
    """The wcnerf trainer around any model config: LLFF dataparser, device and mixed precision
    chosen at run time, viewer on 127.0.0.1; schedule, ray batch and image factor from ``preset``."""
    return WCTrainerConfig(
        method_name=method_name,
        max_num_iterations=preset.max_num_iterations,
        steps_per_eval_batch=preset.steps_per_eval_batch,
        steps_per_eval_image=preset.steps_per_eval_image,
        steps_per_eval_all_images=preset.steps_per_eval_all_images,
        steps_per_save=preset.steps_per_save,
        mixed_precision=CUDA,
        machine=MachineConfig(device_type="cuda" if CUDA else "cpu"),
        logging=LoggingConfig(),
        vis=preset.vis,
        viewer=ViewerConfig(websocket_host="127.0.0.1", quit_on_train_completion=True),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=LLFFDataParserConfig(downscale_factor=preset.downscale_factor),
                train_num_rays_per_batch=preset.rays,
                eval_num_rays_per_batch=preset.rays,
            ),
            model=model,
        ),
        optimizers=optimizers,
    )


def method_pair(
    make_config: Callable[[str, str, Preset], Any],
    preset: Preset,
    conditioned: Tuple[str, str],
    plain: Tuple[str, str],
) -> Tuple[MethodSpecification, MethodSpecification]:
    """The conditioned method (:data:`CONDITIONED`) and its plain baseline (:data:`PLAIN`) on one
    preset; ``conditioned`` and ``plain`` are ``(method name, description)`` and
    ``make_config(method name, conditioner, preset)`` is the family's config builder, so the two
    configs differ only in the method name and ``pipeline.model.conditioning``."""
    return tuple(  # type: ignore[return-value]
        MethodSpecification(config=make_config(name, conditioning, preset), description=description)
        for (name, description), conditioning in ((conditioned, CONDITIONED), (plain, PLAIN))
    )
