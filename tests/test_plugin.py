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

from support.helpers import ViserGui  # noqa: E402


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
    assert dm.dataparser.downscale_factor == p.downscale_factor and dm.dataparser.ndc is False


@pytest.mark.parametrize("method, factor", [
    ("e-nerf", 4), ("nerf", 4), ("e-nerfacto", 4), ("nerfacto-plain", 4),
    ("e-nerf-small", 8), ("nerf-small", 8), ("e-nerfacto-small", 8), ("nerfacto-plain-small", 8),
])
def test_paper_sized_methods_read_factor_4_and_small_ones_factor_8(method, factor):
    """The NeRF paper's LLFF protocol is images_4 (1008 x 756); the CPU-sized presets use images_8."""
    from nerfstudio.plugins.registry import discover_methods

    configs, _ = discover_methods()
    assert configs[method].pipeline.datamanager.dataparser.downscale_factor == factor


def test_paper_methods_load_the_shipped_images_4_of_fern(repo_fern):
    """``ns-train e-nerf --data llff/fern`` works from a checkout: the repo ships fern's images_4."""
    from wcnerf.nerf.methods import e_nerf

    parser = e_nerf.config.pipeline.datamanager.dataparser.setup()
    outputs = parser.get_dataparser_outputs("train")
    assert all(p.parent == repo_fern / "images_4" for p in outputs.image_filenames)
    assert (int(outputs.cameras.width[0]), int(outputs.cameras.height[0])) == (1008, 756)


# ----------------------------------------------------------------------------- families
def _imported_modules(path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("family, other", [("nerf", "nerfacto"), ("nerfacto", "nerf")])
def test_method_families_import_the_plugin_never_each_other(family, other):
    from support.helpers import REPO

    imported = {m for path in (REPO / "wcnerf" / family).glob("*.py") for m in _imported_modules(path)}
    assert not any(m == f"wcnerf.{other}" or m.startswith(f"wcnerf.{other}.") for m in imported), sorted(imported)
    assert "wcnerf.plugin" in imported  # its __init__ applies compat.install() before any checkpoint
    plugin = {m for path in (REPO / "wcnerf" / "plugin").glob("*.py") for m in _imported_modules(path)}
    assert not any(m.startswith(("wcnerf.nerf.", "wcnerf.nerfacto")) or m == "wcnerf.nerf" for m in plugin)


def test_both_models_are_conditioned_models():
    from wcnerf.nerf.model import ENeRFModel, ENeRFModelConfig
    from wcnerf.nerfacto.model import ENerfactoModel, ENerfactoModelConfig
    from wcnerf.plugin.conditioned import ConditionedModel, ConditionedModelConfig

    shared = {f.name for f in dataclasses.fields(ConditionedModelConfig)}
    assert {"conditioning", "conditioning_options", "conditioning_exclude", "analysis_every",
            "analysis_max_samples", "lpips_weights"} <= shared
    for cfg, model in ((ENeRFModelConfig, ENeRFModel), (ENerfactoModelConfig, ENerfactoModel)):
        assert issubclass(cfg, ConditionedModelConfig) and issubclass(model, ConditionedModel)
        assert shared <= {f.name for f in dataclasses.fields(cfg)}
        for name in shared:  # one definition of each setting, the plugin's
            assert name not in cfg.__dict__.get("__annotations__", {}), (cfg, name)


def test_panel_shows_one_table_per_analysed_part():
    from types import SimpleNamespace

    from wcnerf.plugin.viewer_panel import ConditioningPanel

    panel = ConditioningPanel("equilibrate", enabled=True, every=3,
                              parts={"field": "field", "proposal_0": "proposal network 0"})
    panel.install(SimpleNamespace(gui=ViserGui()))
    metrics = {"mlp_head.layers.0/kappa_w": 2.0}
    panel.show(3, {"field": metrics, "proposal_0": metrics})
    handles = panel._handles["parts"]
    assert handles["field"].content.startswith("**field**\n\n| layer |")
    assert handles["proposal_0"].content.startswith("**proposal network 0**\n\n| layer |")
    assert "every 3 steps; shown: step 3" in panel._handles["status"].content


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["e-nerf", "e-nerfacto-small"])
def test_ns_train_help_lists_the_conditioning_settings(method):
    import os

    from support import ns_server
    from support.helpers import BIN

    res = ns_server.run([str(BIN / "ns-train"), method, "--help"], timeout=600,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
    for flag in ("--pipeline.model.conditioning ", "--pipeline.model.conditioning-options",
                 "--pipeline.model.conditioning-exclude", "--pipeline.model.analysis-every",
                 "--pipeline.model.lpips-weights"):
        assert flag in res.stdout, flag


# ----------------------------------------------------------------------------- the paper protocol on a CPU
def test_the_paper_protocol_on_a_cpu_starts_with_one_line_naming_the_cpu_sized_method():
    """Issue 29, point 4: the notice itself (no training run)."""
    import copy

    from wcnerf.nerf.methods import PAPER_CPU_SECONDS_PER_STEP, cpu_protocol_notice, e_nerf, e_nerf_small, nerf
    from wcnerf.plugin.trainer import START_NOTICES

    cfg = copy.deepcopy(e_nerf.config)
    cfg.machine.device_type = "cpu"
    line = cpu_protocol_notice(cfg)
    days = round(PAPER.max_num_iterations * PAPER_CPU_SECONDS_PER_STEP / 86400)
    assert line == (f"e-nerf is the NeRF paper's GPU protocol (200,000 steps of 4096 rays, images at factor 4): on the "
                    f"CPU here it would take about {days} days at the measured step cost of one thread "
                    "(docs/results.md); e-nerf-small is the CPU-sized method. Training as asked.")
    assert "\n" not in line
    cfg.max_num_iterations, cfg.pipeline.datamanager.train_num_rays_per_batch = 100, 1024  # the run as asked
    assert f"about {round(100 * PAPER_CPU_SECONDS_PER_STEP / 4 / 60)} minutes" in cpu_protocol_notice(cfg)
    plain = copy.deepcopy(nerf.config)
    plain.machine.device_type = "cpu"
    assert "nerf is the NeRF paper's GPU protocol" in cpu_protocol_notice(plain) and "nerf-small is" in cpu_protocol_notice(plain)
    cfg.machine.device_type = "cuda"
    assert cpu_protocol_notice(cfg) is None
    small = copy.deepcopy(e_nerf_small.config)
    small.machine.device_type = "cpu"
    assert cpu_protocol_notice(small) is None
    assert START_NOTICES["e-nerf"] is START_NOTICES["nerf"] is cpu_protocol_notice


def test_the_preflight_prints_the_notice_before_the_config(tmp_path, capsys):
    import copy

    from wcnerf.nerf.methods import e_nerf, e_nerf_small

    for spec, expected in ((e_nerf, 1), (e_nerf_small, 0)):
        cfg = copy.deepcopy(spec.config)
        cfg.machine.device_type = "cpu"
        cfg.output_dir = tmp_path / "outputs"
        cfg.set_timestamp()
        cfg.preflight()
        out = capsys.readouterr().out
        assert out.count("the NeRF paper's GPU protocol") == expected, out
