"""The bounds of every number ``ns-train`` takes for wcnerf's methods and for ``wcnerf-train``.

One table (:data:`NS_TRAIN_BOUNDS`) over the dotted paths of nerfstudio's ``TrainerConfig``:
the trainer, machine, logging and viewer; the datamanager and its dataparser (the llff one's
own table, :data:`wcnerf.data.llff.LLFF_BOUNDS`, and nerfstudio-data's / blender-data's); the
NeRF and nerfacto model families; every optimizer and scheduler. ``WCTrainerConfig.preflight``
checks it before nerfstudio prints or writes anything, and the harness checks each run's config
with it at planning. A bound follows what nerfstudio does with the value: ``steps_per_*`` go
through ``step_check`` (0: never), ``logging.steps_per_log`` divides (0 is a ZeroDivisionError),
nerfacto's ``proposal_weights_anneal_max_num_iters`` divides. Where a value's meaning at 0 was
not read in the code (layer, sample and frequency counts), 0 is refused rather than guessed.
An option of another method's model that no pattern covers is not checked.
"""

from __future__ import annotations

from wcnerf.bounds import (COUNT, EVERY, EVERY_OR_OFF, LEARNING_RATE, PORT, SEED, WEIGHT, Bounds, at_least, between,
                           positive, tyro_flag)
from wcnerf.data.llff import LLFF_BOUNDS

__all__ = ["NS_TRAIN_BOUNDS", "ns_train_flag"]

DATAPARSER = "pipeline.datamanager.dataparser."

SAMPLES = at_least(1, warn_above=4096)
LAYERS = at_least(1, warn_above=64)
WIDTH = at_least(1, warn_above=8192)
SCALE = positive(warn_above=1e6)
EACH_IMAGE = at_least(1, special=(-1,), warn_above=1e7, note="-1: every image")
DISTANCE = at_least(0, warn_above=1e9)


def ns_train_flag(path: str) -> str:
    """How ns-train spells an option: the dataparser's after its subcommand (``llff --downscale-factor``)."""
    if path.startswith(DATAPARSER):
        return tyro_flag(path[len(DATAPARSER):])
    return tyro_flag(path)


_TRAINER = (
    ("max_num_iterations", COUNT), ("load_step", at_least(0, warn_above=1e9)),
    ("steps_per_save", at_least(0, warn_above=1e9, note="0: only at the end")),
    ("steps_per_eval_*", EVERY_OR_OFF),
    ("machine.seed", SEED), ("machine.num_devices", at_least(1, warn_above=1024)),
    ("machine.num_machines", at_least(1, warn_above=1e5)), ("machine.machine_rank", at_least(0, warn_above=1e5)),
    ("logging.steps_per_log", EVERY), ("logging.max_buffer_size", COUNT),
    ("logging.local_writer.max_log_size", at_least(0, warn_above=1e6, note="0: every line")),
    ("viewer.websocket_port*", PORT), ("viewer.num_rays_per_chunk", COUNT),
    ("viewer.max_num_display_images", at_least(0, warn_above=1e6)), ("viewer.jpeg_quality", between(1, 100)),
    ("viewer.camera_frustum_scale", positive(warn_above=1e3)),
)
_OPTIMIZERS = (
    ("optimizers.*.optimizer.lr", LEARNING_RATE), ("optimizers.*.optimizer.eps", positive(warn_above=1)),
    ("optimizers.*.optimizer.weight_decay", at_least(0, warn_above=1)),
    ("optimizers.*.optimizer.max_norm", positive(warn_above=1e6)),
    ("optimizers.*.scheduler.lr_final", LEARNING_RATE), ("optimizers.*.scheduler.lr_pre_warmup", at_least(0, warn_above=10)),
    ("optimizers.*.scheduler.warmup_steps", EVERY_OR_OFF), ("optimizers.*.scheduler.max_steps", COUNT),
)
_DATAMANAGER = (
    ("pipeline.datamanager.*_num_rays_per_batch", COUNT), ("pipeline.datamanager.pixel_sampler.num_rays_per_batch", COUNT),
    ("pipeline.datamanager.pixel_sampler.max_num_iterations", COUNT),
    ("pipeline.datamanager.pixel_sampler.fisheye_crop_radius", SCALE),
    ("pipeline.datamanager.*_num_images_to_sample_from", EACH_IMAGE),
    ("pipeline.datamanager.*_num_times_to_repeat_images", at_least(1, special=(-1,), warn_above=1e9,
                                                                    note="-1: never pick new images")),
    ("pipeline.datamanager.camera_res_scale_factor", positive(warn_above=100)),
    ("pipeline.datamanager.patch_size", at_least(1, warn_above=1e4)),
    ("pipeline.datamanager.eval_image_indices", at_least(0, warn_above=1e7)),
    ("pipeline.datamanager.max_thread_workers", at_least(1, warn_above=1024)),
    ("pipeline.datamanager.num_processes", at_least(1, warn_above=1024)),
    ("pipeline.datamanager.queue_size", at_least(1, warn_above=1e4)),
)
_OTHER_DATAPARSERS = tuple((DATAPARSER + p, b) for p, b in (  # nerfstudio-data and blender-data
    ("scale_factor", SCALE), ("scene_scale", SCALE), ("depth_unit_scale_factor", SCALE),
    ("downscale_factor", at_least(1, warn_above=64)), ("train_split_fraction", between(0, 1, strict_low=True)),
    ("eval_interval", at_least(1, warn_above=1e6)), ("mask_color", between(0, 1)),
))
_MODELS = (
    ("pipeline.model.collider_params.near_plane", DISTANCE), ("pipeline.model.collider_params.far_plane", DISTANCE),
    ("pipeline.model.loss_coefficients.*", WEIGHT), ("pipeline.model.eval_num_rays_per_chunk", COUNT),
    # wcnerf's conditioned models
    ("pipeline.model.analysis_every", EVERY_OR_OFF), ("pipeline.model.analysis_max_samples", COUNT),
    ("pipeline.model.cpu_eval_num_rays_per_chunk", at_least(0, warn_above=1e9,
                                                            note="0: --pipeline.model.eval-num-rays-per-chunk")),
    # the NeRF family
    ("pipeline.model.num_coarse_samples", SAMPLES), ("pipeline.model.num_importance_samples", SAMPLES),
    ("pipeline.model.*_num_layers", LAYERS), ("pipeline.model.*_layer_width", WIDTH),
    ("pipeline.model.position_frequencies", at_least(1, warn_above=32)),
    ("pipeline.model.direction_frequencies", at_least(1, warn_above=32)),
    ("pipeline.model.density_noise_std", at_least(0, warn_above=1e3)),
    ("pipeline.model.skip_connections", at_least(0, warn_above=64)),
    # the nerfacto family
    ("pipeline.model.near_plane", DISTANCE), ("pipeline.model.far_plane", DISTANCE),
    ("pipeline.model.hidden_dim*", WIDTH), ("pipeline.model.num_levels", at_least(1, warn_above=64)),
    ("pipeline.model.base_res", at_least(1, warn_above=1e5)), ("pipeline.model.max_res", at_least(1, warn_above=1e6)),
    ("pipeline.model.log2_hashmap_size", between(1, 32)),
    ("pipeline.model.features_per_level", at_least(1, warn_above=64)),
    ("pipeline.model.num_nerf_samples_per_ray", SAMPLES), ("pipeline.model.num_proposal_samples_per_ray", SAMPLES),
    ("pipeline.model.proposal_update_every", at_least(1, warn_above=1e6)),
    ("pipeline.model.proposal_warmup", EVERY_OR_OFF), ("pipeline.model.num_proposal_iterations", LAYERS),
    ("pipeline.model.*_loss_mult", WEIGHT), ("pipeline.model.proposal_weights_anneal_slope", at_least(0, warn_above=1e6)),
    ("pipeline.model.proposal_weights_anneal_max_num_iters", COUNT),
    ("pipeline.model.appearance_embed_dim", at_least(1, warn_above=8192)),
    ("pipeline.model.average_init_density", SCALE),
    ("pipeline.model.camera_optimizer.*_l2_penalty", WEIGHT), ("pipeline.model.ndc_xy_bound", positive(warn_above=1e3)),
)

NS_TRAIN_BOUNDS = (Bounds(_TRAINER + _OPTIMIZERS + _DATAMANAGER + _MODELS, flag=ns_train_flag)
                   + LLFF_BOUNDS.prefixed(DATAPARSER) + Bounds(_OTHER_DATAPARSERS))
"""Every number of ``ns-train e-nerf`` / ``nerf`` / ``e-nerfacto`` ... and of ``wcnerf-train``'s nerfstudio methods."""
