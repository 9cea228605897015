"""wcnerf.nerfacto: e-nerfacto / nerfacto-plain (nerfstudio's nerfacto with conditioned MLPs).

Model-level tests build small models offline on random rays; the end-to-end tests run
``ns-train`` for a few CPU iterations on fern (factor 8) and on a nerfstudio-format copy of
it, and ``ns-eval`` on the held-out views."""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

pytest.importorskip("nerfstudio")

from nerfstudio.data.scene_box import SceneBox  # noqa: E402
from nerfstudio.engine.callbacks import TrainingCallbackAttributes  # noqa: E402
from nerfstudio.field_components.encodings import HashEncoding  # noqa: E402

from wcnerf import conditioning as wc  # noqa: E402
from wcnerf.data.ndc import ndc_rays  # noqa: E402
from wcnerf.plugin import compat  # noqa: E402
from wcnerf.nerfacto import tcnn as nfa_tcnn  # noqa: E402
from wcnerf.nerfacto.methods import (  # noqa: E402
    e_nerfacto,
    e_nerfacto_small,
    nerfacto_plain,
    nerfacto_plain_small,
)
from wcnerf.nerfacto.model import ENerfactoModelConfig, mlp_linears  # noqa: E402
from wcnerf.plugin.ndc import NDCCollider  # noqa: E402

from support import ns_server  # noqa: E402
from support.helpers import BIN, differences, offline_env  # noqa: E402
from support.nerf_models import callback_train_step, rays, training_callbacks  # noqa: E402
from support.tiny import NERFACTO  # noqa: E402

LLFF_META = {"llff": {"ndc": True, "near": 1.0, "far": 1.0, "focal": 407.0, "width": 504, "height": 378}}
SMALL_MODEL = NERFACTO.model_kwargs(  # the tiny preset with tiny proposal grids (no command-line form)
    proposal_net_args_list=[
        {"hidden_dim": 16, "log2_hashmap_size": 10, "num_levels": 2, "max_res": 16, "use_linear": False},
        {"hidden_dim": 16, "log2_hashmap_size": 10, "num_levels": 2, "max_res": 32, "use_linear": False},
    ],
    eval_num_rays_per_chunk=256,
)


pytestmark = pytest.mark.usefixtures("offline_hub")  # no LPIPS weights anywhere (conftest.py)


@pytest.fixture
def no_tcnn(monkeypatch):
    """tinycudann not importable (whatever is installed), messages not yet said."""
    monkeypatch.setitem(sys.modules, "tinycudann", None)
    monkeypatch.setattr(compat, "_SAID", set())


def build(conditioning="equilibrate", metadata=LLFF_META, **overrides):
    cfg = ENerfactoModelConfig(conditioning=conditioning, **{**SMALL_MODEL, **overrides})
    scene_box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    return cfg.setup(scene_box=scene_box, num_train_data=4, metadata=metadata)


def train_step(model, optimizers, n=64, seed=0):
    model.train()
    for opt in optimizers:
        opt.zero_grad()
    outputs = model(rays(n, seed))
    batch = {"image": torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))}
    metrics = model.get_metrics_dict(outputs, batch)
    loss = sum(model.get_loss_dict(outputs, batch, metrics).values())
    loss.backward()
    for opt in optimizers:
        opt.step()
    wc.post_step(model, optimizers)
    return float(loss.detach())


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("pair", [(e_nerfacto, nerfacto_plain), (e_nerfacto_small, nerfacto_plain_small)],
                         ids=["full", "small"])
def test_pairs_differ_only_in_conditioning(pair):
    a, b = (spec.config for spec in pair)
    assert a.pipeline.model.conditioning == "equilibrate" and b.pipeline.model.conditioning == "none"
    assert sorted(differences(a, b)) == ["method_name", "pipeline.model.conditioning"]
    assert set(a.optimizers) == {"proposal_networks", "fields", "camera_opt"}
    assert a.pipeline.model.implementation == "auto"  # no flag needed for tinycudann
    assert type(a.pipeline.datamanager.dataparser).__name__ == "LLFFDataParserConfig"
    assert a.pipeline.datamanager.dataparser.ndc is False  # LLFF with nerfacto's scene contraction
    assert a.viewer.websocket_host == "127.0.0.1"
    assert a.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- layers
def test_conditioned_mlps_parametrized_plain_not(no_tcnn):
    cond, plain = build("equilibrate"), build("none")
    for model in (cond, plain):
        names = [n for n, _ in mlp_linears(model)]
        # every MLP of the field and of both proposal networks, nothing else
        assert any(n.startswith("field.mlp_base.") for n in names)
        assert any(n.startswith("field.mlp_head.") for n in names)
        assert any(n.startswith("proposal_networks.0.") for n in names)
        assert any(n.startswith("proposal_networks.1.") for n in names)
        assert len(names) == 9
        assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 9
    assert all(parametrize.is_parametrized(m, "weight") for _, m in mlp_linears(cond))
    assert not any(parametrize.is_parametrized(m) for _, m in mlp_linears(plain))
    # equilibrated rows: unit norm in the conditioned model, not in the plain one
    w = cond.field.mlp_head.layers[0].weight
    assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-5)
    assert not torch.allclose(plain.field.mlp_head.layers[0].weight.norm(dim=1), torch.ones(w.shape[0]), atol=1e-2)
    # plain: nerfstudio's torch MLPs, same shapes as the conditioned model
    shapes = lambda m: [tuple(l.weight.shape) for _, l in mlp_linears(m)]  # noqa: E731
    assert shapes(cond) == shapes(plain)


def test_exclude_patterns_are_relative_to_the_model(no_tcnn):
    model = build("weight-norm", conditioning_exclude=("proposal_networks.*",))
    for name, layer in mlp_linears(model):
        assert parametrize.is_parametrized(layer) == name.startswith("field."), name


@pytest.mark.parametrize("method", sorted(wc.available()))
def test_every_conditioner_trains(method, no_tcnn):
    torch.manual_seed(0)
    model = build(method)
    optimizers = [torch.optim.Adam(p, lr=1e-2, eps=1e-15) for p in model.get_param_groups().values()]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = [train_step(model, optimizers, seed=s) for s in range(3)]
    assert all(math.isfinite(x) for x in losses)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(before[k], v)]
    assert any("mlp_head" in k for k in changed) and any("proposal_networks.1" in k for k in changed)


def test_post_step_callback_runs_enorm(no_tcnn):
    from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers

    model = build("enorm")
    opts = Optimizers(
        {g: {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None} for g in ("fields", "proposal_networks")},
        model.get_param_groups(),
    )
    callbacks = model.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=opts, grad_scaler=None, pipeline=None, trainer=None)  # type: ignore[arg-type]
    )
    layer = model.field.mlp_head.layers[0]
    w_before = layer.weight.detach().clone()
    model.train()
    assert len(callbacks) == 3  # nerfacto's two (proposal annealing) are kept, plus post_step
    for cb in callbacks:
        for where in cb.where_to_run:
            cb.run_callback_at_location(0, where)
    assert not torch.equal(w_before, layer.weight.detach())  # ENorm rebalanced the stored weights


# ----------------------------------------------------------------------------- tinycudann
def test_falls_back_to_torch_without_tcnn_and_says_so_once(no_tcnn, capsys):
    assert nfa_tcnn.tcnn_available() is False
    a, b = build("equilibrate"), build("none")
    out = capsys.readouterr().out
    assert out.count(nfa_tcnn.FALLBACK_MESSAGE) == 1, out
    for model in (a, b):
        assert model.grid_implementation == "torch" and model.config.implementation == "torch"
        grids = [m for m in model.modules() if isinstance(m, HashEncoding)]
        assert len(grids) == 3 and all(g.tcnn_encoding is None and g.hash_table.numel() > 0 for g in grids)
        assert not any(isinstance(m, nfa_tcnn.TcnnHashGrid) for m in model.modules())
    with pytest.raises(RuntimeError, match="tinycudann not found"):
        build("none", implementation="tcnn")


def test_tcnn_installed_without_cuda_uses_torch(monkeypatch, capsys):
    monkeypatch.setattr(compat, "_SAID", set())
    fake = types.ModuleType("tinycudann")
    fake.__spec__ = importlib.machinery.ModuleSpec("tinycudann", None)
    monkeypatch.setitem(sys.modules, "tinycudann", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build("none").grid_implementation == "torch"
    assert "CUDA is not available" in capsys.readouterr().out


def test_tinycudann_never_imported_at_module_level():
    import ast

    import wcnerf.nerfacto

    for path in Path(wcnerf.nerfacto.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level statements only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "tinycudann" for n in names), path
    # ... and the lazy imports are where they should be
    lines = Path(nfa_tcnn.__file__).read_text().splitlines()
    assert sum(line.startswith("        import tinycudann") for line in lines) == 2


class _StandInEncoding(nn.Module):
    """tinycudann.Encoding's interface, computed with nerfstudio's torch hash grid."""

    def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
        super().__init__()
        assert n_input_dims == 3 and encoding_config["otype"] == "HashGrid"
        c = encoding_config
        self.config = dict(c)
        max_res = c["base_resolution"] * c["per_level_scale"] ** (c["n_levels"] - 1)
        self.grid = HashEncoding(
            num_levels=c["n_levels"], min_res=c["base_resolution"], max_res=round(max_res),
            log2_hashmap_size=c["log2_hashmap_size"], features_per_level=c["n_features_per_level"],
            implementation="torch",
        )

    def forward(self, x):
        return self.grid(x).half()  # tinycudann's default output precision


def test_tcnn_path_swaps_only_the_grids(monkeypatch, capsys):
    """The CUDA path's wiring, on CPU, with a stand-in tinycudann module."""
    monkeypatch.setattr(compat, "_SAID", set())
    fake = types.ModuleType("tinycudann")
    fake.__spec__ = importlib.machinery.ModuleSpec("tinycudann", None)
    fake.Encoding = _StandInEncoding
    monkeypatch.setitem(sys.modules, "tinycudann", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = build("equilibrate")
    assert "tinycudann found" in capsys.readouterr().out
    assert model.grid_implementation == "tcnn"
    grids = {id(m): m for m in model.modules() if isinstance(m, nfa_tcnn.TcnnHashGrid)}
    assert len(grids) == 3
    base = model.field.mlp_base.model[0]
    assert isinstance(base, nfa_tcnn.TcnnHashGrid) and base.encoding.config["n_levels"] == SMALL_MODEL["num_levels"]
    for net in model.proposal_networks:
        assert net.encoding is net.mlp_base[0] and isinstance(net.encoding, nfa_tcnn.TcnnHashGrid)
    assert all(parametrize.is_parametrized(m) for _, m in mlp_linears(model))  # MLPs stay torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    optimizers = [torch.optim.Adam(p, lr=1e-2, eps=1e-15) for p in model.get_param_groups().values()]
    assert math.isfinite(train_step(model, optimizers))  # fp16 grid output feeds the fp32 MLPs


# ----------------------------------------------------------------------------- scenes
def test_ndc_collider_and_world_depth():
    meta = LLFF_META["llff"]
    col = NDCCollider(meta["focal"], meta["width"], meta["height"], near=1.0)
    bundle = rays(32, backwards=4)
    out = col(bundle)
    o, d = ndc_rays(bundle.origins[4:], bundle.directions[4:], focal=meta["focal"], width=meta["width"],
                    height=meta["height"], near=1.0)
    assert torch.allclose(out.origins[4:], o, atol=1e-5)
    assert torch.allclose(out.directions[4:], d / d.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(out.fars[4:], d.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.all(out.fars[:4] == 0) and torch.all(out.nears == 0)
    # a world point at distance s along the ray maps to NDC depth that converts back to s
    s = torch.full((28, 1), 3.0)
    p = bundle.origins[4:] + s * bundle.directions[4:]
    p_ndc = torch.stack([-meta["focal"] / (meta["width"] / 2) * p[:, 0] / p[:, 2],
                         -meta["focal"] / (meta["height"] / 2) * p[:, 1] / p[:, 2], 1 + 2 / p[:, 2]], -1)
    depth_ndc = ((p_ndc - out.origins[4:]) * out.directions[4:]).sum(-1, keepdim=True)
    assert torch.allclose(col.world_depth(depth_ndc, out[4:]), s, atol=1e-3)


def test_llff_uses_ndc_other_data_uses_contraction(no_tcnn):
    ndc = build("none")
    assert isinstance(ndc.collider, NDCCollider) and ndc.field.spatial_distortion is None
    assert ndc.config.use_appearance_embedding is False and ndc.field.embedding_appearance is None
    assert ndc.config.proposal_initial_sampler == "uniform"
    assert ndc.field.aabb.tolist()[0][:2] == [-1.5, -1.5]
    world = build("none", metadata={})
    assert type(world.collider).__name__ == "NearFarCollider" and world.field.spatial_distortion is not None
    assert world.config.use_appearance_embedding is True and world.field.embedding_appearance is not None
    assert world.config.proposal_initial_sampler == "piecewise"
    for model in (ndc, world):
        model.eval()
        with torch.no_grad():
            out = model(rays(16, backwards=3))
        assert torch.isfinite(out["rgb"]).all() and torch.isfinite(out["depth"]).all()
    with pytest.raises(ValueError, match="camera optimisation"):
        from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

        build("none", camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"))


# ----------------------------------------------------------------------------- end to end
def _ckpt_keys(run: Path) -> list:
    ckpts = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts
    return list(torch.load(ckpts[-1], map_location="cpu", weights_only=True)["pipeline"])


@pytest.mark.e2e
@pytest.mark.usefixtures("fern")  # skipped without fern (ns-train looks up llff/fern itself)
def test_train_on_fern_cpu_then_eval(tmp_path):
    env = offline_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "outputs"
    runs = {}
    # conditioned: the methods' default (LLFF with scene contraction); plain: LLFF in NDC
    for method, iters, extra in (("e-nerfacto-small", 6, []), ("nerfacto-plain-small", 3, ["llff", "--ndc", "True"])):
        res = ns_server.run(
            [str(BIN / "ns-train"), method, "--data", "llff/fern", "--output-dir", str(out), "--timestamp", "t",
             "--max-num-iterations", str(iters), "--steps-per-save", "100", *NERFACTO.args(), *extra],
            cwd=tmp_path, env=env, timeout=600,
        )
        log = res.stdout + res.stderr
        assert res.returncode == 0, log[-3000:]
        if not nfa_tcnn.tcnn_available():
            assert log.count(nfa_tcnn.FALLBACK_MESSAGE.split(":")[0]) == 1, log[-3000:]
        runs[method] = out / "fern" / method / "t"
    cond_keys, plain_keys = _ckpt_keys(runs["e-nerfacto-small"]), _ckpt_keys(runs["nerfacto-plain-small"])
    assert any("field.mlp_head.layers.0.parametrizations.weight.original" in k for k in cond_keys)
    assert any("proposal_networks.1.mlp_base.1.layers.0.parametrizations.weight.original" in k for k in cond_keys)
    assert not any("parametrizations" in k for k in plain_keys)
    assert "_model.field.mlp_head.layers.0.weight" in plain_keys
    assert "ndc: false" in (runs["e-nerfacto-small"] / "config.yml").read_text()
    assert "ndc: true" in (runs["nerfacto-plain-small"] / "config.yml").read_text()

    metrics = tmp_path / "metrics.json"
    res = ns_server.run(
        [str(BIN / "ns-eval"), "--load-config", str(runs["e-nerfacto-small"] / "config.yml"),
         "--output-path", str(metrics)],
        cwd=tmp_path, env=env, timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    results = json.loads(metrics.read_text())["results"]
    assert {"psnr", "ssim"} <= set(results) and "lpips" not in results
    assert 5.0 < results["psnr"] < 60.0


def _nerfstudio_scene(root: Path, fern: Path) -> Path:
    """fern in nerfstudio's format (transforms.json, OpenGL camera-to-world, pixels)."""
    import numpy as np

    from wcnerf.data.llff_scene import load_llff_scene

    scene = load_llff_scene(fern, 8)
    root.mkdir()
    frames = []
    for i, (path, pose) in enumerate(zip(scene.image_paths, scene.poses)):
        (root / path.name).symlink_to(path)
        c2w = np.concatenate([pose[:3, :4], [[0, 0, 0, 1]]], 0)
        frames.append({"file_path": path.name, "transform_matrix": c2w.tolist()})
    (root / "transforms.json").write_text(json.dumps({
        "fl_x": scene.focal, "fl_y": scene.focal, "cx": scene.width / 2, "cy": scene.height / 2,
        "w": scene.width, "h": scene.height, "camera_model": "OPENCV", "frames": frames,
    }))
    return root


@pytest.mark.e2e
def test_train_on_nerfstudio_data(tmp_path, fern):
    data = _nerfstudio_scene(tmp_path / "fern-ns", fern)
    env = offline_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    res = ns_server.run(
        [str(BIN / "ns-train"), "e-nerfacto-small", "--output-dir", str(tmp_path / "outputs"), "--timestamp", "t",
         "--max-num-iterations", "3", "--steps-per-save", "100", *NERFACTO.args(), "nerfstudio-data", "--data", str(data)],
        cwd=tmp_path, env=env, timeout=600,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    run_dirs = list((tmp_path / "outputs").glob("*/e-nerfacto-small/t"))  # experiment "unnamed" in 1.1.5
    assert len(run_dirs) == 1, log[-3000:]
    assert "NerfstudioDataParserConfig" in (run_dirs[0] / "config.yml").read_text()
    keys = _ckpt_keys(run_dirs[0])
    assert any("field.embedding_appearance" in k for k in keys)  # appearance embedding on off-LLFF
    assert any("field.mlp_head.layers.0.parametrizations" in k for k in keys)


def test_per_input_equilibration_leaves_single_output_layers_plain():
    """Issue 11, part 1: E-nerfacto follows the degenerate-layer rule."""
    model = build("equilibrate-in")
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    single = [m for m in lins if m.out_features == 1]
    assert single and not any(parametrize.is_parametrized(m) for m in single)
    assert any(parametrize.is_parametrized(m) for m in lins if m.out_features > 1)


def test_layerwise_analysis_of_the_field_and_the_proposal_networks(no_tcnn, monkeypatch):
    """E-nerfacto has every conditioned model's analysis (wcnerf.plugin.conditioned): off by
    default (no hook during a step); switched on from the panel, the field and each proposal
    network are analysed on the due steps and shown in the panel."""
    from nerfstudio.utils import writer

    logged = []
    monkeypatch.setattr(writer, "put_scalar", lambda name, scalar, step: logged.append((name, scalar, step)))
    model = build("equilibrate", analysis_max_samples=64)
    panel = model.conditioning_panel
    assert model.config.analysis_every == 0 and not panel.enabled
    assert panel.parts == {"field": "field", "proposal_0": "proposal network 0", "proposal_1": "proposal network 1"}
    callbacks, opts = training_callbacks(model)

    def step(i):
        return callback_train_step(model, callbacks, opts, i)

    model.train()
    assert step(0) == 0 and not logged and panel.step is None
    panel._set_enabled(True)
    panel._set_every(2)
    assert [step(i) > 0 for i in (1, 2)] == [False, True]
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert {s for _, _, s in logged} == {2} and all(isinstance(v, float) for _, v, _ in logged)
    names = {n for n, _, _ in logged}
    for part in ("field", "proposal_0", "proposal_1"):
        assert any(n.startswith(f"analysis/{part}/") and n.endswith("/kappa_w") for n in names), part
        assert f"analysis/{part}/total/dead_units" in names, part
    assert panel.step == 2 and set(panel.tables) == {"field", "proposal_0", "proposal_1"}
    assert panel.tables["field"].startswith("| layer | κ(W) |")
