"""wcnerf-train: any nerfstudio method, weight-conditioned after it is built (issue 17).

For each built-in nerfstudio method that builds offline on a CPU: the conditioned model has the
expected number of parametrized layers, trains a few steps with a finite loss, and its config
differs from the plain one only in the conditioning. The methods that do not build here are
listed in ``DOES_NOT_BUILD`` with the reason (docs/any-method.md repeats them).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

from nerfstudio.cameras.rays import RayBundle  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation  # noqa: E402

from support import ns_server  # noqa: E402
from support.tiny import TINY_FACTOR, tiny_fern  # noqa: E402
from wcnerf.plugin.any_method import (  # noqa: E402
    AnyConditionedModel,
    AnyConditionedModelConfig,
    NothingToCondition,
    conditioned_trainer_config,
    plan,
)

# method -> {part: conditioned layers} under "equilibrate" (= equilibrate-out; no layer there is
# degenerate for it). Counted by hand from nerfstudio 1.1.5's fields: vanilla-NeRF / D-NeRF: per
# field 8 base + 1 density + 1 feature + 1 view + 1 rgb Linear; mip-NeRF: one field for both
# passes; nerfacto: field 2 (base MLP) + 3 (head) Linear, each proposal network 2; instant-ngp:
# nerfacto's field without proposals; TensoRF: the appearance basis B and the 3 MLP-head layers.
NERFACTO = {"field": 5, "proposal_networks.0": 2, "proposal_networks.1": 2}
EXPECTED = {
    "vanilla-nerf": {"field_coarse": 12, "field_fine": 12},
    "dnerf": {"field_coarse": 12, "field_fine": 12},
    "mipnerf": {"field": 12},
    "tensorf": {"field": 4},
    "nerfacto": NERFACTO,
    "nerfacto-big": NERFACTO,
    "nerfacto-huge": NERFACTO,
    "depth-nerfacto": NERFACTO,
    "phototourism": NERFACTO,
    "instant-ngp": {"field": 5},
    "instant-ngp-bounded": {"field": 5},
}
TRAINS_FAST = ["tensorf", "nerfacto"]
TRAINS_SLOW = ["vanilla-nerf", "dnerf", "mipnerf", "depth-nerfacto", "phototourism"]
DOES_NOT_TRAIN = {
    "instant-ngp": "nerfacc's occupancy-grid ray marching is a CUDA op (no CPU path)",
    "instant-ngp-bounded": "nerfacc's occupancy-grid ray marching is a CUDA op (no CPU path)",
    "nerfacto-big": "trains as nerfacto (same model class); its 2^19-2^21 hash tables make a step take a minute here",
    "nerfacto-huge": "as nerfacto-big",
}
NOTHING_TO_CONDITION = ["splatfacto", "splatfacto-big"]  # Gaussians: no MLP at all
DOES_NOT_BUILD = {
    "neus": "nerfstudio's SDFField builds a tinycudann hash grid (encoding_type 'hash') without a torch fallback",
    "neus-facto": "as neus",
    "generfacto": "needs the Stable Diffusion packages (nerfstudio[gen]) and downloads the diffusion model",
    "semantic-nerfw": "needs the dataparser's semantics metadata (a semantic dataset) to build",
}


def _all_methods():
    from nerfstudio.configs.method_configs import all_methods

    return all_methods


def _build(method, conditioning="equilibrate", **overrides):
    cfg = conditioned_trainer_config(_all_methods()[method], conditioning)
    for key, value in overrides.items():
        setattr(cfg.pipeline.model, key, value)
    torch.manual_seed(0)
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    return cfg.pipeline.model.setup(scene_box=box, num_train_data=4, metadata={}, device="cpu", grad_scaler=None)


def _parametrized(model):
    return [name for name, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


def test_every_builtin_method_is_accounted_for():
    from nerfstudio.configs.method_configs import method_configs  # nerfstudio's own, before plugins

    known = set(EXPECTED) | set(NOTHING_TO_CONDITION) | set(DOES_NOT_BUILD)
    assert set(method_configs) == known, set(method_configs) ^ known


BUILDS_SLOWLY = {"nerfacto-big", "nerfacto-huge", "depth-nerfacto", "phototourism", "instant-ngp-bounded"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.e2e) if m in BUILDS_SLOWLY else m
                                    for m in sorted(EXPECTED)])
def test_conditioned_layer_counts(method):
    model = _build(method)
    assert isinstance(model, AnyConditionedModel) and isinstance(model, _all_methods()[method].pipeline.model._target)
    report = model.conditioning_report
    assert report.parts == EXPECTED[method]
    assert sorted(_parametrized(model)) == sorted(report.conditioned)
    assert report.count == sum(EXPECTED[method].values())
    assert not report.not_conditionable and not report.left_plain
    if method == "dnerf":  # the deformation MLP is not a nerfstudio Field: named, left plain
        assert [n for n in report.outside if n.startswith("temporal_distortion")]
    # the analysis and the viewer panel: one part per field
    assert set(model.analysis_parts()) == {p.replace(".", "_") for p in EXPECTED[method]}
    assert model.conditioning_panel.conditioner == "equilibrate"
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    assert [v for _, v in parse_object(model, ViewerElement, "Custom Elements")] == [model.conditioning_panel]


def _bundle(n, g):
    o = (torch.rand(n, 3, generator=g) - 0.5) * 0.2 + torch.tensor([0.0, 0.0, 1.5])
    d = nn.functional.normalize(torch.tensor([0.0, 0.0, -1.0]) + 0.2 * torch.randn(n, 3, generator=g), dim=-1)
    return RayBundle(origins=o, directions=d, pixel_area=torch.full((n, 1), 1e-4),
                     camera_indices=torch.zeros(n, 1, dtype=torch.long), nears=torch.full((n, 1), 0.1),
                     fars=torch.full((n, 1), 3.0), metadata={"directions_norm": torch.ones(n, 1)},
                     times=torch.zeros(n, 1))


def _train(model, steps=3, rays=32):
    """The model's own loss, Adam on its param groups, its training callbacks (ours included)."""
    model.train()
    opts = {k: torch.optim.Adam(v, lr=1e-3) for k, v in model.get_param_groups().items() if v}

    class Optimizers:
        optimizers = opts

    callbacks = model.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=Optimizers(), grad_scaler=None, pipeline=None, trainer=None))
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        for where in (TrainingCallbackLocation.BEFORE_TRAIN_ITERATION,):
            for cb in callbacks:
                if where in cb.where_to_run:
                    cb.run_callback_at_location(step, where)
        batch = {"image": torch.rand(rays, 3, generator=g), "depth_image": torch.rand(rays, 1, generator=g)}
        outputs = model(_bundle(rays, g))
        loss = sum(model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch)).values())
        for o in opts.values():
            o.zero_grad()
        loss.backward()
        for o in opts.values():
            o.step()
        for cb in callbacks:
            if TrainingCallbackLocation.AFTER_TRAIN_ITERATION in cb.where_to_run:
                cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        losses.append(float(loss))
    return losses


_SMALL = {"vanilla-nerf": dict(num_coarse_samples=8, num_importance_samples=8),
          "dnerf": dict(num_coarse_samples=8, num_importance_samples=8),
          "mipnerf": dict(num_coarse_samples=8, num_importance_samples=8)}


def _trains(method):
    model = _build(method, **_SMALL.get(method, {}))
    first = {n: model.get_submodule(n).parametrizations.weight.original.detach().clone()
             for n in model.conditioning_report.conditioned}
    losses = _train(model)
    assert all(math.isfinite(v) for v in losses), losses
    moved = [n for n, w in first.items() if not torch.equal(w, model.get_submodule(n).parametrizations.weight.original)]
    assert moved, "no conditioned layer was updated"


@pytest.mark.parametrize("method", TRAINS_FAST)
def test_trains_a_few_steps(method):
    _trains(method)


@pytest.mark.e2e
@pytest.mark.parametrize("method", TRAINS_SLOW)
def test_trains_a_few_steps_slow(method):
    _trains(method)


def test_enorm_post_step_runs_on_a_stock_model():
    model = _build("tensorf", conditioning="enorm")
    assert model.conditioning_report.count > 0
    losses = _train(model, steps=2)
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("method", NOTHING_TO_CONDITION[:1])
def test_nothing_to_condition_is_refused(method):
    with pytest.raises(NothingToCondition, match="nothing to condition.*Refusing to train a plain model"):
        _build(method)
    assert _build(method, conditioning="none").conditioning_report.count == 0  # the plain model builds


def test_method_weight_norm_is_listed_and_refused():
    """A field whose Linear layers the method weight-normalises itself (NeuS' SDFField does;
    NeuS does not build on a CPU here, so a stand-in)."""
    from nerfstudio.fields.base_field import Field

    from wcnerf.plugin.any_method import condition_model

    class WNField(Field):
        def __init__(self):
            super().__init__()
            self.lin = nn.utils.weight_norm(nn.Linear(4, 4))

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.field = WNField()

    with pytest.raises(NothingToCondition, match=r"weight_norm.*weight-norm False"):
        condition_model(Holder(), "equilibrate")


def test_tinycudann_modules_are_listed_by_name():
    from nerfstudio.fields.base_field import Field

    FusedMLP = type("Network", (nn.Module,), {"__module__": "tinycudann.modules"})

    class TinyField(Field):
        def __init__(self):
            super().__init__()
            self.mlp_base = FusedMLP()
            self.mlp_base.inner = nn.Linear(4, 4)  # inside the fused module: not ours to touch
            self.head = nn.Linear(4, 3)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.field = TinyField()
            self.other = nn.Linear(3, 3)

    selected, report = plan(Holder(), "equilibrate")
    assert selected == ["field.head"]
    assert [n for n, _ in report.not_conditionable] == ["field.mlp_base"]
    assert "tinycudann Network (fused MLP" in report.not_conditionable[0][1]
    assert report.outside == ["other"]
    assert any("could not be conditioned (1): field.mlp_base" in line for line in report.lines())


def _fields(obj, prefix=""):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            out.update(_fields(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_fields(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


@pytest.mark.parametrize("method", sorted(EXPECTED) + NOTHING_TO_CONDITION)
def test_conditioned_and_plain_configs_differ_only_in_the_conditioning(method):
    plain = _all_methods()[method]
    cond = conditioned_trainer_config(plain, "equilibrate")
    a, b = _fields(plain), _fields(cond)
    own = {f"pipeline.model.{f.name}" for f in dataclasses.fields(AnyConditionedModelConfig)}
    assert set(b) - set(a) == own
    assert {k for k in a if k in b and not _same(a[k], b[k])} == set()
    assert type(cond.pipeline.model).__bases__ == (AnyConditionedModelConfig, type(plain.pipeline.model))
    assert cond.method_name == plain.method_name  # ns-eval looks it up in nerfstudio's registry


def _same(x, y):
    try:
        return bool(x == y)
    except Exception:
        return repr(x) == repr(y)


def test_config_yml_rebuilds_the_conditioned_model():
    import yaml

    cfg = conditioned_trainer_config(_all_methods()["tensorf"], "weight-norm")
    cfg.pipeline.model.analysis_every = 7
    text = yaml.dump(cfg)
    assert "wcnerf.plugin.any_method.ConditionedConfig_" in text
    back = yaml.load(text, Loader=yaml.Loader)
    assert type(back.pipeline.model) is type(cfg.pipeline.model)
    assert (back.pipeline.model.conditioning, back.pipeline.model.analysis_every) == ("weight-norm", 7)
    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    model = back.pipeline.model.setup(scene_box=box, num_train_data=2, metadata={}, device="cpu")
    assert model.conditioning_report.count == 4 and model.state_dict().keys() == _build("tensorf", "weight-norm").state_dict().keys()


def test_cli_refuses_an_already_conditioned_method_and_an_uninstalled_one():
    from wcnerf.plugin.any_method_cli import main

    assert main(["e-nerf", "--", "--help"]) == 2
    assert main(["kplanes", "--", "--help"]) == 2


@pytest.mark.e2e
def test_wcnerf_train_then_ns_eval(tmp_path, fern):
    """A tiny conditioned vanilla-NeRF run on tiny fern (1/32) through the command line, then
    ns-eval (evaluation at 1/32: what is tested is that ns-eval rebuilds the conditioned model)."""
    py = Path(sys.executable)
    scene = tiny_fern(tmp_path / "data", fern)
    args = [str(py), "-m", "wcnerf.plugin.any_method_cli", "vanilla-nerf", "--conditioning", "equilibrate", "--",
            "--data", str(scene), "--output-dir", str(tmp_path / "out"), "--max-num-iterations", "3",
            "--steps-per-save", "3", "--vis", "tensorboard", "--machine.device-type", "cpu",
            "--pipeline.model.num-coarse-samples", "4", "--pipeline.model.num-importance-samples", "4",
            "--pipeline.datamanager.train-num-rays-per-batch", "32", "--pipeline.datamanager.eval-num-rays-per-batch", "32",
            "--pipeline.model.eval-num-rays-per-chunk", "8192", "--pipeline.model.analysis-every", "2",
            "llff", "--ndc", "False", "--downscale-factor", str(TINY_FACTOR)]
    run = ns_server.run(args, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "'equilibrate' conditioned 24 layer(s) in field_coarse (12), field_fine (12)" in run.stdout
    configs = list((tmp_path / "out").rglob("config.yml"))
    assert len(configs) == 1 and configs[0].parent.parent.name == "vanilla-nerf"
    events = list(configs[0].parent.rglob("events.out.tfevents*"))
    assert events
    metrics = tmp_path / "metrics.json"
    ev = ns_server.run([str(py.parent / "ns-eval"), "--load-config", str(configs[0]), "--output-path", str(metrics)],
                        timeout=1200)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    import json

    results = json.loads(metrics.read_text())["results"]
    assert math.isfinite(results["psnr"])
    # the reduced-resolution evaluation at scale 1 is ns-eval's evaluation (reference check)
    from wcnerf.tools.scaled_eval import evaluate_scaled

    same = evaluate_scaled(configs[0], 1.0)
    assert same["views"] == 3 and same["evaluated_resolution_hw"] == same["full_resolution_hw"] == [94, 126]
    assert same["results"]["psnr"] == pytest.approx(results["psnr"], abs=1e-4)
    small = evaluate_scaled(configs[0], 0.25, tmp_path / "scaled.json")
    assert small["evaluated_resolution_hw"] == [23, 31] and math.isfinite(small["results"]["psnr"])  # floored, as nerfstudio
    assert json.loads((tmp_path / "scaled.json").read_text())["image_scale"] == 0.25
