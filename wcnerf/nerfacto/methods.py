"""nerfstudio method specifications: ``e-nerfacto``, ``nerfacto-plain``, ``e-nerfacto-small``,
``nerfacto-plain-small``.

Registered through ``[project.entry-points."nerfstudio.method_configs"]``::

    ns-train e-nerfacto --data llff/fern                  # nerfacto-sized (GPU)
    ns-train e-nerfacto-small --data llff/fern            # CPU-sized (run time: docs/results.md)
    ns-train nerfacto-plain --pipeline.model.conditioning weight-norm --data llff/fern
    ns-train e-nerfacto nerfstudio-data --data <nerfstudio scene>   # nerfstudio's datasets

``e-nerfacto`` and ``nerfacto-plain`` (likewise the ``-small`` pair) differ only in
``pipeline.model.conditioning`` (``"equilibrate"`` vs ``"none"``). Everything else is every
wcnerf method's (:mod:`wcnerf.plugin.presets`: trainer with atomic checkpoints and resume to the
end, LLFF dataparser by default, CUDA or CPU chosen at run time, viewer on 127.0.0.1), except that
the LLFF dataparser is set to ``ndc=False``: LLFF scenes are rendered in world space with
nerfacto's scene contraction (measured better and faster than NDC on fern, see
:mod:`wcnerf.nerfacto.model`); ``... llff --ndc True`` renders them in NDC instead.

Optimizers are nerfacto's (Adam, eps 1e-15, one group for the field, one for the proposal
networks, ``camera_opt`` for when ``--pipeline.model.camera-optimizer.mode`` is turned on
with non-NDC data).
"""

from __future__ import annotations

from wcnerf.nerfacto.model import ENerfactoModelConfig
from wcnerf.plugin.presets import Preset, adam_decay, method_pair, trainer_config
from wcnerf.plugin.trainer import WCTrainerConfig

__all__ = [
    "NERFACTO",
    "NERFACTO_SMALL",
    "e_nerfacto",
    "e_nerfacto_small",
    "make_nerfacto_config",
    "nerfacto_plain",
    "nerfacto_plain_small",
]

NERFACTO = Preset(
    max_num_iterations=30_000,
    rays=4096,
    downscale_factor=4,
    lr=1e-2,
    lr_final=1e-4,
    decay_steps=200_000,
    model=dict(eval_num_rays_per_chunk=1 << 15),  # otherwise nerfacto's model defaults
    steps_per_eval_batch=500,
    steps_per_eval_image=2500,
    steps_per_eval_all_images=25_000,
    steps_per_save=2000,
    vis="viewer+tensorboard",
)
"""nerfstudio's ``nerfacto`` method: 30k steps of 4096 rays, Adam 1e-2 decaying towards 1e-4
over 200k steps (nerfacto's schedule), 256 + 96 proposal and 48 field samples, 16-level
2^19 hash grid up to resolution 2048; images at factor 4 (the NeRF paper's LLFF protocol)."""

NERFACTO_SMALL = Preset(
    max_num_iterations=2000,
    rays=512,
    downscale_factor=8,
    lr=1e-2,
    lr_final=1e-3,
    decay_steps=None,
    model=dict(
        num_levels=10,
        log2_hashmap_size=16,
        max_res=512,
        num_proposal_samples_per_ray=(48, 24),
        num_nerf_samples_per_ray=24,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 64, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 14, "num_levels": 5, "max_res": 128, "use_linear": False},
        ],
        proposal_warmup=500,
        proposal_weights_anneal_max_num_iters=500,
        # On a CPU, chunks of 8192 rays spend part of the render in the kernel (page faults of
        # large temporaries, as for nerf-small); 512 does not (docs/results.md, "Where a
        # held-out render's time goes").
        eval_num_rays_per_chunk=512,
    ),
    steps_per_eval_batch=100,
    steps_per_eval_image=0,
    steps_per_eval_all_images=0,
    steps_per_save=500,
    vis="viewer+tensorboard",
)
"""CPU-sized: 10-level 2^16 grid up to 512, proposal nets 5 levels 2^14, 48 + 24 proposal and 24
field samples, 512 rays, Adam 1e-2 -> 1e-3 over 2000 steps. Run time, held-out PSNR and the
time of ``ns-eval`` on fern: see docs/results.md."""


def make_nerfacto_config(method_name: str, conditioning: str, preset: Preset) -> WCTrainerConfig:
    """TrainerConfig of one method; ``preset`` is :data:`NERFACTO` or :data:`NERFACTO_SMALL`."""
    model = ENerfactoModelConfig(conditioning=conditioning, **preset.model_options())
    group = lambda: adam_decay(preset.lr, preset.lr_final, eps=1e-15, max_steps=preset.decay_steps)  # noqa: E731
    optimizers = {
        "proposal_networks": group(),
        "fields": group(),
        "camera_opt": adam_decay(1e-3, 1e-4, eps=1e-15, max_steps=5000),
    }
    config = trainer_config(method_name, preset, model, optimizers)
    # LLFF in world space with nerfacto's scene contraction (see wcnerf.nerfacto.model); `llff --ndc True` for NDC.
    config.pipeline.datamanager.dataparser.ndc = False
    return config


e_nerfacto, nerfacto_plain = method_pair(
    make_nerfacto_config, NERFACTO,
    ("e-nerfacto", "E-nerfacto: nerfacto with every MLP of the field and proposal networks equilibrated."),
    ("nerfacto-plain", "nerfacto baseline identical to e-nerfacto but unconditioned; "
                       "--pipeline.model.conditioning picks any wcnerf conditioner."),
)
e_nerfacto_small, nerfacto_plain_small = method_pair(
    make_nerfacto_config, NERFACTO_SMALL,
    ("e-nerfacto-small", "CPU-sized E-nerfacto (fern at factor 8 on a CPU; run time: docs/results.md)."),
    ("nerfacto-plain-small", "CPU-sized nerfacto baseline, identical to e-nerfacto-small but unconditioned."),
)
