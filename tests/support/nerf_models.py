"""Small E-NeRF models on random rays, and training steps with a model's callbacks around them
(any conditioned model: E-NeRF, E-nerfacto), shared by the nerfstudio test modules. It imports
nerfstudio: import it only after ``pytest.importorskip("nerfstudio")``."""

from __future__ import annotations

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers

from wcnerf.nerf.model import ENeRFModelConfig

from support.tiny import NERF

LLFF_META = {"llff": {"ndc": True, "near": 1.0, "far": 1.0, "focal": 407.0, "width": 63, "height": 47}}
TINY = NERF.model_kwargs(eval_num_rays_per_chunk=256)
"""ENeRFModelConfig settings of the tiny model (:data:`support.tiny.NERF`), rendering in chunks of 256."""


def build(conditioning="equilibrate", metadata=LLFF_META, **overrides):
    """A tiny E-NeRF model (LLFF NDC metadata unless given)."""
    cfg = ENeRFModelConfig(conditioning=conditioning, **{**TINY, **overrides})
    scene_box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    return cfg.setup(scene_box=scene_box, num_train_data=4, metadata=metadata)


def rays(n=64, seed=0, backwards=0):
    """n random rays near the origin looking into -z; the first ``backwards`` look sideways/backwards."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g) * 0.1
    dirs = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -1.0])
    dirs[:backwards, 2] = torch.rand(backwards, generator=g)  # looking sideways/backwards
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return RayBundle(
        origins=origins,
        directions=dirs,
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def training_callbacks(model):
    """The model's training callbacks and an Adam ``Optimizers`` over its parameters (one group
    per parameter group of the model)."""
    groups = model.get_param_groups()
    opts = Optimizers({g: {"optimizer": AdamOptimizerConfig(lr=1e-3), "scheduler": None} for g in groups}, groups)
    attrs = TrainingCallbackAttributes(optimizers=opts, grad_scaler=None, pipeline=None, trainer=None)
    return model.get_training_callbacks(attrs), opts


def callback_train_step(model, callbacks, opts, step):
    """One training step on random rays with the callbacks around it, as nerfstudio's trainer
    runs them; returns the number of forward hooks during the forward pass."""
    for cb in callbacks:
        cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    hooked = sum(len(m._forward_hooks) for m in model.modules())
    out = model(rays(64, seed=step))
    batch = {"image": torch.rand(64, 3)}
    loss = sum(model.get_loss_dict(out, batch, model.get_metrics_dict(out, batch)).values())
    opts.zero_grad_all()
    loss.backward()
    opts.optimizer_step_all()
    for cb in callbacks:
        cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    return hooked
