"""wcnerf.nerf: method configs, model construction (offline), conditioning, NDC rays,
analysis callbacks, checkpoint compatibility. Small models on random rays; no data set."""

from __future__ import annotations

import dataclasses
import io
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

pytest.importorskip("nerfstudio")

from nerfstudio.cameras.cameras import Cameras, CameraType  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers  # noqa: E402

from wcnerf.plugin import compat  # noqa: E402
from wcnerf.nerf.methods import PAPER, e_nerf, e_nerf_small, nerf, nerf_small  # noqa: E402
from wcnerf.nerf.model import paper_encoding  # noqa: E402
from wcnerf.plugin.conditioned import parse_options  # noqa: E402
from wcnerf.plugin.trainer import RunExponentialDecaySchedulerConfig  # noqa: E402

from support.helpers import differences  # noqa: E402
from support.nerf_models import LLFF_META, build, callback_train_step, rays, training_callbacks  # noqa: E402

pytestmark = pytest.mark.usefixtures("offline_hub")  # no LPIPS weights anywhere (conftest.py)


def linears(model):
    return [m for f in (model.field_coarse, model.field_fine) for m in f.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("pair", [(e_nerf, nerf), (e_nerf_small, nerf_small)], ids=["paper", "small"])
def test_methods_differ_only_in_conditioning(pair):
    a, b = (spec.config for spec in pair)
    assert a.pipeline.model.conditioning == "equilibrate"
    assert b.pipeline.model.conditioning == "none"
    assert differences(a, b) == ["method_name", "pipeline.model.conditioning"]
    masked = [dataclasses.replace(c.pipeline.model, conditioning="masked") for c in (a, b)]
    assert masked[0] == masked[1]
    for f in dataclasses.fields(a):
        if f.name not in ("method_name", "pipeline"):
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_paper_protocol_settings():
    cfg = e_nerf.config
    m = cfg.pipeline.model
    assert (m.base_mlp_num_layers, m.base_mlp_layer_width, m.skip_connections) == (8, 256, (5,))
    assert (m.num_coarse_samples, m.num_importance_samples) == (64, 128)
    assert (m.position_frequencies, m.direction_frequencies, m.density_noise_std) == (10, 4, 1.0)
    assert cfg.pipeline.datamanager.train_num_rays_per_batch == 4096
    assert cfg.max_num_iterations == PAPER.max_num_iterations == 200_000
    fields = cfg.optimizers["fields"]
    assert fields["optimizer"].lr == 5e-4 and fields["scheduler"].lr_final == 5e-5
    assert cfg.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cfg.mixed_precision == torch.cuda.is_available()
    assert cfg.viewer.websocket_host == "127.0.0.1"
    assert cfg.pipeline.datamanager.dataparser.__class__.__name__ == "LLFFDataParserConfig"


def test_paper_encoding_frequencies_are_powers_of_two():
    enc = paper_encoding(10)
    x = torch.tensor([[0.3, -0.2, 0.1]])
    out = enc(x)
    freqs = 2.0 ** torch.arange(10)
    expected_sin = torch.sin(x[..., None] * freqs).reshape(1, -1)
    assert out.shape[-1] == 3 + 3 * 2 * 10
    torch.testing.assert_close(out[:, :30], expected_sin, atol=1e-4, rtol=1e-4)


def test_scheduler_decays_to_final_in_python_floats():
    param = nn.Parameter(torch.zeros(1))
    sched_cfg = RunExponentialDecaySchedulerConfig(lr_final=5e-5, max_steps=100)
    opts = Optimizers({"g": {"optimizer": AdamOptimizerConfig(lr=5e-4), "scheduler": sched_cfg}}, {"g": [param]})
    lrs = []
    for step in range(120):
        opts.scheduler_step_all(step)
        lrs.append(opts.optimizers["g"].param_groups[0]["lr"])
    assert type(lrs[0]) is float
    assert math.isclose(lrs[49], 5e-4 * (0.1 ** 0.5), rel_tol=1e-6)
    assert math.isclose(lrs[-1], 5e-5, rel_tol=1e-9)


# ----------------------------------------------------------------------------- construction
def test_enerf_is_parametrized_and_nerf_is_not():
    enerf = e_nerf.config.pipeline.model.setup(
        scene_box=SceneBox(aabb=torch.ones(2, 3)), num_train_data=4, metadata=LLFF_META
    )
    plain = nerf.config.pipeline.model.setup(scene_box=SceneBox(aabb=torch.ones(2, 3)), num_train_data=4, metadata=LLFF_META)
    assert len(linears(enerf)) == len(linears(plain)) == 24  # 12 per field, as the reference network
    assert all(parametrize.is_parametrized(m) for m in linears(enerf))
    assert not any(parametrize.is_parametrized(m) for m in enerf.modules() if m not in linears(enerf))
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert sum(p.numel() for p in enerf.parameters()) == sum(p.numel() for p in plain.parameters())


def test_conditioning_name_and_options_reach_the_fields():
    model = build("weight-norm")
    assert all(parametrize.is_parametrized(m) for m in linears(model))
    model = build("equilibrate", conditioning_options={"mode": "in", "detach": "True"})
    p = linears(model)[0].parametrizations.weight[0]
    assert "in" in repr(p) and "True" in repr(p)
    model = build("equilibrate", conditioning_exclude=("field_heads.*",))
    heads = [m.net for f in (model.field_coarse, model.field_fine) for m in f.field_heads]
    assert not any(parametrize.is_parametrized(h) for h in heads)
    with pytest.raises(ValueError, match="unknown conditioning"):
        build("no-such-conditioner")
    assert parse_options({"a": "8", "b": "true", "c": "in", "d": "0.5"}) == {"a": 8, "b": True, "c": "in", "d": 0.5}


def test_builds_offline_without_lpips_weights_and_reports_no_lpips():
    model = build()
    assert not model.has_lpips
    h, w = 12, 11  # SSIM's 11x11 window
    outputs = model.get_outputs_for_camera_ray_bundle(rays(h * w).reshape((h, w)))
    metrics, images = model.get_image_metrics_and_images(outputs, {"image": torch.rand(h, w, 3)})
    assert {"psnr", "ssim", "coarse_psnr"} <= set(metrics) and "lpips" not in metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert set(images) == {"img", "accumulation", "depth"}
    assert not any("lpips" in k for k in model.state_dict())


def test_lpips_uses_a_given_local_weights_file(tmp_path):
    tv = pytest.importorskip("torchvision")
    sd = tv.models.alexnet(weights=None).state_dict()
    path = tmp_path / "my_alexnet.pth"
    torch.save(sd, path)
    metric, why = compat.build_lpips(path)
    assert metric is not None, why
    first_conv = metric.net.net.slice1[0].weight
    torch.testing.assert_close(first_conv, sd["features.0.weight"])
    assert torch.hub.get_dir().startswith(str(tmp_path))  # hub dir restored
    missing, why = compat.build_lpips(tmp_path / "nope.pth")
    assert missing is None and "not a file" in why


# ----------------------------------------------------------------------------- forward
def test_training_step_never_touches_nerfacc_cuda(monkeypatch):
    monkeypatch.delitem(sys.modules, "nerfacc.cuda._backend", raising=False)
    monkeypatch.delenv("WCNERF_ALLOW_NERFACC_JIT", raising=False)
    assert compat.guard_nerfacc_cuda_jit(force=True)
    import nerfacc.cuda

    with pytest.raises(RuntimeError, match="CUDA is not available"):
        nerfacc.cuda.inclusive_sum(torch.zeros(1))
    model = build()
    model.train()
    out = model(rays(128))
    loss = sum(model.get_loss_dict(out, {"image": torch.rand(128, 3)}).values())
    loss.backward()
    assert all(p.grad is not None for p in model.field_coarse.parameters())
    assert all(p.grad is not None for p in model.field_fine.parameters())
    model.eval()
    with torch.no_grad():
        model(rays(32))


def test_density_noise_only_in_training():
    model = build(conditioning="none")
    rb = rays(32)
    model.eval()
    torch.manual_seed(0)
    a = model(rb)["rgb"]
    torch.manual_seed(1)
    b = model(rb)["rgb"]
    torch.testing.assert_close(a, b)
    field = model.field_coarse
    samples = model.sampler_uniform(model._sampling_bundle(rb)[0])
    field.train()
    raw_net = field.field_output_density
    base = field.mlp_base(field.position_encoding(samples.frustums.get_positions()))
    torch.manual_seed(0)
    noisy, _ = field.get_density(samples)
    assert not torch.allclose(noisy, torch.relu(raw_net(base)))


def test_ndc_and_arbitrary_viewer_cameras_give_finite_images():
    model = build()
    model.eval()
    out = model(rays(64, backwards=16))
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    # Sideways/backwards rays render as empty; forward rays sample [0, |d_ndc|].
    assert torch.all(out["accumulation"][:16] == 0)
    # A camera away from the training ones, rotated 120 degrees: renders, finite.
    angle = math.radians(120.0)
    rot = torch.tensor(
        [[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0], [-math.sin(angle), 0.0, math.cos(angle)]]
    )
    c2w = torch.cat([rot, torch.tensor([[0.2], [0.1], [0.5]])], dim=1)[None]
    cam = Cameras(camera_to_worlds=c2w, fx=20.0, fy=20.0, cx=8.0, cy=6.0, width=16, height=12,
                  camera_type=CameraType.PERSPECTIVE)
    images = model.get_outputs_for_camera(cam)
    assert images["rgb"].shape == (12, 16, 3)
    assert all(torch.isfinite(v).all() for v in images.values())


def test_world_mode_without_ndc_and_without_llff_metadata():
    meta = {"llff": {**LLFF_META["llff"], "ndc": False, "near": 0.5, "far": 4.0}}
    model = build(metadata=meta)
    out = model(rays(16))
    assert torch.isfinite(out["rgb"]).all()
    model = build(metadata={})  # another dataparser: collider_params near/far
    out = model(rays(16))
    assert torch.isfinite(out["depth"]).all()


# ----------------------------------------------------------------------------- callbacks
def test_analysis_logged_every_n_steps_and_free_otherwise(monkeypatch):
    from nerfstudio.utils import writer

    logged = []
    monkeypatch.setattr(writer, "put_scalar", lambda name, scalar, step: logged.append((name, scalar, step)))
    model = build(analysis_every=2, analysis_max_samples=64)
    model.train()
    callbacks, opts = training_callbacks(model)
    hooks = [callback_train_step(model, callbacks, opts, step) for step in range(4)]
    assert hooks[1] == hooks[3] == 0 and hooks[0] > 0 and hooks[2] > 0
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    steps = {s for _, _, s in logged}
    assert steps == {0, 2}
    names = {n for n, _, _ in logged}
    assert "analysis/coarse/mlp_base.layers.0/kappa_w" in names
    assert "analysis/fine/field_heads.0.net/input/kappa_p90" in names
    assert all(isinstance(v, float) for _, v, _ in logged)

    model_off = build(analysis_every=0)
    callbacks_off, opts_off = training_callbacks(model_off)
    assert not model_off.conditioning_panel.enabled
    assert callback_train_step(model_off, callbacks_off, opts_off, 0) == 0


def test_viewer_panel_switches_the_analysis_during_training(monkeypatch):
    """The panel's switch (what the viewer's checkbox sets) turns the analysis on and off between
    steps; off means no hook on any module during the step; on, the panel gets per-layer tables."""
    from nerfstudio.utils import writer

    monkeypatch.setattr(writer, "put_scalar", lambda name, scalar, step: None)
    model = build(analysis_every=0, analysis_max_samples=64)
    model.train()
    panel = model.conditioning_panel
    assert panel.conditioner == "equilibrate" and not panel.enabled and panel.every == 100
    callbacks, opts = training_callbacks(model)
    assert callback_train_step(model, callbacks, opts, 0) == 0 and panel.step is None
    panel._set_enabled(True)
    panel._set_every(3)
    hooks = [callback_train_step(model, callbacks, opts, step) for step in range(1, 7)]
    assert [h > 0 for h in hooks] == [False, False, True, False, False, True]  # steps 3 and 6
    assert panel.step == 6
    coarse = panel.tables["coarse"]
    assert coarse.startswith("| layer | κ(W) | κ₉₀(Σx) | κ₉₀(Σδ) |")
    assert "| base.0 |" in coarse and "| rgb |" in coarse and len(coarse.splitlines()) == 2 + len(
        [m for m in model.field_coarse.modules() if isinstance(m, torch.nn.Linear)])
    panel._set_enabled(False)
    assert callback_train_step(model, callbacks, opts, 9) == 0


def test_layer_table_formats_the_analysis_metrics():
    from wcnerf.plugin.viewer_panel import format_layer_table

    table = format_layer_table({"mlp_base.layers.0/kappa_w": 12.345, "mlp_base.layers.0/input/kappa_p90": float("inf"),
                                "mlp_base.layers.0/output_grad/kappa_p90": 2.5e6, "mlp_base.layers.0/input/kappa_p100": 3.0,
                                "mlp_base.layers.0/input/kappa_nz": 41.0, "mlp_base.layers.0/output_grad/kappa_nz": 7.25e5,
                                "mlp_base.layers.0/dead_units": 3.0, "mlp_base.layers.0/saturated_units": 3.0,
                                "head/kappa_w": 1.0})
    lines = table.splitlines()
    assert lines[0] == "| layer | κ(W) | κ₉₀(Σx) | κ₉₀(Σδ) | κ₊(Σx) | κ₊(Σδ) | dead | sat. |"
    assert lines[2] == "| base.0 | 12.3 | ∞ | 2.5e+06 | 41 | 7.2e+05 | 3 | 3 |"
    assert lines[3] == "| head | 1 | – | – | – | – | – | – |"


def test_post_step_called_after_every_step_with_the_optimizers(monkeypatch):
    import wcnerf.conditioning as wc

    calls = []
    real = wc.post_step
    monkeypatch.setattr(wc, "post_step", lambda module, optimizers=None: calls.append((module, optimizers)))
    model = build("enorm")
    callbacks, opts = training_callbacks(model)
    for step in range(3):
        callback_train_step(model, callbacks, opts, step)
    assert len(calls) == 3 and all(m is model for m, _ in calls)
    assert calls[0][1] == [opts.optimizers["fields"]]
    monkeypatch.setattr(wc, "post_step", real)
    callback_train_step(model, callbacks, opts, 3)  # the real ENorm rebalancing runs
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- checkpoints
def test_numpy_scalars_in_checkpoints_load_with_weights_only():
    compat.install()
    buf = io.BytesIO()
    torch.save({"lr": np.float64(1e-3), "lrs": [np.float32(2.0)], "step": np.int64(3)}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == {"lr": 1e-3, "lrs": [2.0], "step": 3}
    clean = compat.sanitize({"a": np.float64(1.5), "b": (np.int64(2), [np.ones(2)]), "c": "x"})
    assert type(clean["a"]) is float and type(clean["b"][0]) is int and torch.is_tensor(clean["b"][1][0])


def test_atomic_save_leaves_no_partial_file(tmp_path):
    ckpt_dir = tmp_path / "run" / "nerfstudio_models"
    ckpt_dir.mkdir(parents=True)
    target = ckpt_dir / "step-000000001.ckpt"
    compat.atomic_torch_save({"x": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["x"].sum() == 2

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        compat.atomic_torch_save({"x": Boom()}, ckpt_dir / "step-000000002.ckpt")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000000001.ckpt"]
    assert not any(".tmp" in p.name for p in (tmp_path / "run").iterdir())


def test_per_input_equilibration_leaves_the_density_heads_plain():
    """Issue 11, part 1: E-NeRF follows the degenerate-layer rule (Linear(n, 1) stays plain)."""
    model = build("equilibrate-in")
    for field in (model.field_coarse, model.field_fine):
        assert not parametrize.is_parametrized(field.field_output_density.net)
    single = [m for m in linears(model) if m.out_features == 1]
    assert single and not any(parametrize.is_parametrized(m) for m in single)
    assert all(parametrize.is_parametrized(m) for m in linears(model) if m.out_features > 1)


def test_run_configs_written_before_the_trainer_moved_still_load(tmp_path):
    """config.yml of runs trained when the trainer was wcnerf.nerf.trainer (now wcnerf.plugin.trainer)
    load as nerfstudio's ns-eval / ns-render load them: yaml first, in a fresh interpreter."""
    import subprocess

    import yaml

    text = yaml.dump(e_nerf_small.config)
    assert "wcnerf.plugin.trainer.WCTrainerConfig" in text
    old = tmp_path / "config.yml"
    old.write_text(text.replace("wcnerf.plugin.trainer.", "wcnerf.nerf.trainer."))
    code = ("import sys, yaml; c = yaml.load(open(sys.argv[1]).read(), Loader=yaml.Loader); "
            "print(type(c).__module__, type(c.optimizers['fields']['scheduler']).__module__, c._target.__module__)")
    res = subprocess.run([sys.executable, "-c", code, str(old)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["wcnerf.plugin.trainer"] * 3


def test_ndc_sampling_uses_the_plugin_collider_and_world_view_directions():
    """E-NeRF's NDC rays come from wcnerf.plugin.ndc.NDCCollider (as E-nerfacto's); the field's
    colour is conditioned on the normalised world direction, not the NDC one."""
    from wcnerf.plugin.ndc import NDCCollider

    model = build()
    rb = rays(32, backwards=4)
    bundle, collider = model._sampling_bundle(rb)
    assert isinstance(collider, NDCCollider) and collider is model.ndc_collider
    ref = collider(rb)
    for key in ("origins", "directions", "nears", "fars"):
        torch.testing.assert_close(getattr(bundle, key), getattr(ref, key))
    torch.testing.assert_close(bundle.metadata["viewdirs"], rb.directions / rb.directions.norm(dim=-1, keepdim=True))
    world, none = build(metadata={})._sampling_bundle(rb)
    assert none is None and "viewdirs" not in world.metadata
