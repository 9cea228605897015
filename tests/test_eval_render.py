"""Evaluation renders: conditioned weights computed once per image (``wcnerf.conditioning.cached``),
no gradients, and renders equal to nerfstudio's stock chunked render."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from wcnerf import conditioning as wc
from wcnerf.conditioning.equilibrate import Equilibrate

pytest.importorskip("nerfstudio")

from nerfstudio.models.base_model import Model  # noqa: E402

from support.nerf_models import build, rays  # noqa: E402

pytestmark = pytest.mark.usefixtures("offline_hub")


def _mlp():
    torch.manual_seed(0)
    return wc.condition(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), "equilibrate")


def _count_calls(monkeypatch):
    calls = []
    original = Equilibrate.forward

    def counting(self, W):
        calls.append(id(self))
        return original(self, W)

    monkeypatch.setattr(Equilibrate, "forward", counting)
    return calls


def test_cached_computes_each_weight_once_and_equals_uncached(monkeypatch):
    mlp = _mlp()
    x = torch.randn(5, 3)
    ref = mlp(x)
    calls = _count_calls(monkeypatch)
    with torch.no_grad(), wc.cached(mlp):
        outs = [mlp(x) for _ in range(3)]
    assert len(calls) == 2  # two layers, once each for three forward passes
    for out in outs:
        assert torch.equal(out, ref.detach())
    # After the block: the instance-level hooks are gone and weights are recomputed per forward.
    assert all("forward" not in plist.__dict__ for plist in wc.cache.parametrization_lists(mlp))
    calls.clear()
    mlp(x)
    mlp(x)
    assert len(calls) == 4


def test_cached_is_per_thread_and_nests():
    mlp = _mlp()
    layer = mlp[0]
    with torch.no_grad(), wc.cached(mlp):
        before = layer.weight.clone()
        with wc.cached(mlp):  # nested: same values, still cached afterwards
            assert torch.equal(layer.weight, before)
        layer.parametrizations.weight.original.mul_(2.0).add_(1.0)  # W changes (a training step elsewhere)
        assert torch.equal(layer.weight, before)  # this thread: the cached E(W)
        seen = {}
        t = threading.Thread(target=lambda: seen.setdefault("w", layer.weight.detach().clone()))
        t.start()
        t.join()
        assert not torch.equal(seen["w"], before)  # another thread: E(W) of the new W
    assert not torch.equal(layer.weight.detach(), before)  # after the block: recomputed
    with wc.cached(nn.Linear(2, 2)):  # nothing parametrized: a no-op
        pass


def _camera_bundle(h=12, w=11):
    return rays(h * w, seed=3).reshape((h, w))


@pytest.mark.parametrize("conditioning", ["equilibrate", "none"])
def test_render_equals_stock_render_and_is_plain_tensors(conditioning, monkeypatch):
    model = build(conditioning, eval_num_rays_per_chunk=32)
    model.eval()
    bundle = _camera_bundle()
    stock = Model.get_outputs_for_camera_ray_bundle(model, bundle)  # nerfstudio's own chunked render
    calls = _count_calls(monkeypatch)
    ours = model.get_outputs_for_camera_ray_bundle(bundle)
    assert set(ours) == set(stock)
    for key, value in stock.items():
        assert ours[key].shape == value.shape, key
        assert torch.allclose(ours[key], value, atol=1e-5, rtol=0), key
        assert not ours[key].requires_grad, key
    n_layers = sum(isinstance(m, Equilibrate) for m in model.modules())
    assert len(calls) == n_layers  # once per layer per image, not once per chunk (132 rays / 32 = 5 chunks)
    # The outputs are usable downstream (metrics, in-place edits by callers).
    metrics, _ = model.get_image_metrics_and_images(ours, {"image": torch.rand(12, 11, 3)})
    assert torch.isfinite(torch.tensor(metrics["psnr"]))
    ours["rgb"].add_(0.0)


def test_render_then_train_step_in_same_process():
    model = build("equilibrate", eval_num_rays_per_chunk=64)
    model.eval()
    model.get_outputs_for_camera_ray_bundle(_camera_bundle())
    model.train()
    out = model(rays(32))
    loss = out["rgb"].sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def test_direction_encoded_once_per_ray_gives_the_per_sample_values():
    from nerfstudio.field_components.field_heads import FieldHeadNames
    from nerfstudio.model_components.ray_samplers import UniformSampler

    model = build("equilibrate")
    model.eval()
    bundle, _ = model._sampling_bundle(rays(16, seed=5))
    samples = UniformSampler(num_samples=7)(bundle)
    assert samples.metadata["viewdirs"].stride(-2) == 0  # one direction per ray, broadcast
    field = model.field_coarse
    per_ray = field(samples)[FieldHeadNames.RGB]
    samples.metadata["viewdirs"] = samples.metadata["viewdirs"].contiguous()  # per-sample path
    per_sample = field(samples)[FieldHeadNames.RGB]
    assert torch.allclose(per_ray, per_sample, atol=1e-6, rtol=0)


def test_mlp_inference_equals_nerfstudio_mlp_forward():
    from nerfstudio.field_components.mlp import MLP

    from wcnerf.nerf.field import mlp_inference

    torch.manual_seed(3)
    mlp = wc.condition(MLP(in_dim=7, num_layers=5, layer_width=16, out_dim=4, skip_connections=(2,),
                           out_activation=nn.ReLU()), "equilibrate")
    x = torch.randn(2, 9, 7)
    ref = mlp(x)
    with torch.no_grad():
        out = mlp_inference(mlp, x)
    assert torch.equal(out, ref.detach())  # in-place activations: the same values, bit for bit
    assert torch.count_nonzero(out == 0) > 0  # the ReLUs were applied


@pytest.mark.parametrize("conditioning", ["equilibrate", "none"])
def test_lean_inference_path_equals_the_training_forward(conditioning):
    from nerfstudio.field_components.field_heads import FieldHeadNames
    from nerfstudio.model_components.ray_samplers import UniformSampler

    model = build(conditioning)
    model.eval()
    bundle, _ = model._sampling_bundle(rays(32, seed=2))
    samples = UniformSampler(num_samples=9)(bundle)
    field = model.field_fine
    ref = field(samples)  # autograd on: nerfstudio's forward
    with torch.no_grad():
        lean = field(samples)
        field.lean_inference = False
        plain = field(samples)
        del field.lean_inference
    for key in (FieldHeadNames.RGB, FieldHeadNames.DENSITY):
        assert torch.equal(plain[key], ref[key].detach()), key
        # the view layer's direction part per ray: the same sum in another order
        assert torch.allclose(lean[key], ref[key], atol=1e-6, rtol=0), key
    assert torch.equal(lean[FieldHeadNames.DENSITY], ref[FieldHeadNames.DENSITY].detach())


def test_cpu_chunk_size_renders_the_same_image_in_more_chunks(monkeypatch):
    model = build("equilibrate", eval_num_rays_per_chunk=64, cpu_eval_num_rays_per_chunk=16)
    model.eval()
    bundle = _camera_bundle()
    stock = Model.get_outputs_for_camera_ray_bundle(model, bundle)  # 64-ray chunks
    chunks = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, ray_bundle: chunks.append(len(ray_bundle)) or forward(self, ray_bundle))
    ours = model.get_outputs_for_camera_ray_bundle(bundle)
    assert chunks == [16] * (len(bundle) // 16) + ([len(bundle) % 16] if len(bundle) % 16 else [])
    assert set(ours) == set(stock)
    for key, value in stock.items():
        assert ours[key].shape == value.shape, key
        assert torch.allclose(ours[key], value, atol=1e-5, rtol=0), key


def test_negative_cpu_chunk_is_refused():
    with pytest.raises(ValueError, match="cpu_eval_num_rays_per_chunk must be >= 0"):
        build("equilibrate", cpu_eval_num_rays_per_chunk=-8)
