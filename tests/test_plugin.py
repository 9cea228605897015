"""wcnerf.plugin: the nerfstudio plumbing shared by the method families (typed presets, the NDC
ray transform against the NeRF reference, the conditioned-model mixin), and the rule that the
families import the plugin, never each other."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("nerfstudio")

from wcnerf.nerf.methods import PAPER, SMALL  # noqa: E402
from wcnerf.nerfacto.methods import NERFACTO, NERFACTO_SMALL  # noqa: E402
from wcnerf.plugin.presets import Preset  # noqa: E402


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", [PAPER, SMALL, NERFACTO, NERFACTO_SMALL], ids=["paper", "small", "nerfacto", "nerfacto-small"])
def test_presets_are_frozen_and_hand_out_copies(preset):
    assert isinstance(preset, Preset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        preset.model["eval_num_rays_per_chunk"] = 1  # type: ignore[index]
    a, b = preset.model_options(), preset.model_options()
    assert a == b == dict(preset.model) and a is not b
    for key, value in a.items():
        if isinstance(value, (list, dict)):
            assert value is not preset.model[key]  # deep copies: no config shares a mutable value


def test_preset_fields_reach_the_trainer_config():
    from wcnerf.nerfacto.methods import e_nerfacto_small

    cfg = e_nerfacto_small.config
    p = NERFACTO_SMALL
    assert (cfg.max_num_iterations, cfg.steps_per_eval_batch, cfg.steps_per_eval_image,
            cfg.steps_per_eval_all_images, cfg.steps_per_save, cfg.vis) == (
        p.max_num_iterations, p.steps_per_eval_batch, p.steps_per_eval_image,
        p.steps_per_eval_all_images, p.steps_per_save, p.vis)
    dm = cfg.pipeline.datamanager
    assert dm.train_num_rays_per_batch == dm.eval_num_rays_per_batch == p.rays
    for group in ("fields", "proposal_networks"):
        spec = cfg.optimizers[group]
        assert (spec["optimizer"].lr, spec["scheduler"].lr_final, spec["scheduler"].max_steps) == (
            p.lr, p.lr_final, p.decay_steps)
    assert cfg.pipeline.model.num_levels == p.model["num_levels"]
