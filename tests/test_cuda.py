"""The ``cuda`` tier (issue 29, point 2): what only a GPU runs, on a GPU. Skipped, with the reason,
where ``torch.cuda.is_available()`` is False (``support.tiers``); ``pytest -m cuda`` runs the tier,
``python -m wcnerf.tools.gpu_check`` runs it as its first step (docs/setup.md).

In-process (conditioners, the conditioned-weight cache, ``bake``, a tiny E-NeRF step under
nerfstudio's mixed precision): each test runs on ``cuda:0`` with its peak memory reset first and
the device synchronized before anything is compared. Processes (``ns-train``, ``wcnerf-train``,
``shape_fit.py``, the harness): ``e2e`` as well, each a short run whose losses must be finite.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wcnerf.conditioning import REGISTRY, bake, cached, condition, post_step

from support.helpers import BIN, REPO, offline_env
from support.tiers import cuda_skip_reason
from support.tiny import tiny_fern, tiny_protocol

CONDITIONERS = list(REGISTRY)
ATOL = RTOL = 1e-4
"""float32 on CUDA (TF32 off) against float32 on the CPU: the same sums in another order."""
HALF_TOL = 2e-2
"""float16 autocast against float32, both on CUDA (fp16 keeps 11 bits: about 5e-4 per operation)."""


# ----------------------------------------------------------------------------- the tier itself
def test_the_tier_skips_with_a_reason_exactly_where_torch_sees_no_cuda():
    reason = cuda_skip_reason()
    if torch.cuda.is_available():
        assert reason is None
    else:
        assert reason.startswith("cuda tier: torch.cuda.is_available() is False") and torch.__version__ in reason


# ----------------------------------------------------------------------------- in-process, on the device
@pytest.fixture
def device(request, monkeypatch):
    """``cuda:0`` with TF32 matmuls off, its peak memory reset; synchronized at the end, the
    peak recorded as the test's ``peak_cuda_bytes`` property."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    yield torch.device("cuda", 0)
    torch.cuda.synchronize()
    request.node.user_properties.append(("peak_cuda_bytes", torch.cuda.max_memory_allocated()))
    torch.cuda.empty_cache()


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def _x(n: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))


def _step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One SGD step (and the method's post-step: ENorm's rebalancing); returns the loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    post_step(model, opt)
    return loss.detach()


@pytest.mark.cuda
@pytest.mark.parametrize("method", CONDITIONERS)
def test_conditioned_layers_on_cuda_equal_the_cpu(method, device):
    """Outputs (train and eval mode), gradients and one optimizer step with the post-step."""
    cpu = condition(_mlp(), method)
    gpu = copy.deepcopy(cpu).to(device)
    x = _x()
    y_cpu, y_gpu = cpu(x), gpu(x.to(device))  # train mode: EquiNorm's batch statistics
    y_cpu.square().mean().backward()
    y_gpu.square().mean().backward()
    torch.cuda.synchronize()
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=ATOL, rtol=RTOL)
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert p_gpu.device.type == "cuda", name
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, atol=ATOL, rtol=RTOL, msg=name)
    for m in (cpu, gpu):
        m.zero_grad()
    loss_cpu, loss_gpu = _step(cpu, x), _step(gpu, x.to(device))
    cpu.eval(), gpu.eval()
    with torch.no_grad():
        y_cpu, y_gpu = cpu(x), gpu(x.to(device))
    torch.cuda.synchronize()
    assert torch.isclose(loss_gpu.cpu(), loss_cpu, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=ATOL, rtol=RTOL)


@pytest.mark.cuda
@pytest.mark.parametrize("method", CONDITIONERS)
def test_conditioned_layers_under_cuda_float16_autocast(method, device):
    """nerfstudio's mixed precision on CUDA: finite, near float32, finite gradients."""
    model = condition(_mlp(), method).to(device)
    x = _x().to(device)
    with torch.no_grad():
        ref = model(x).float()
    with torch.autocast("cuda", dtype=torch.float16):
        y = model(x)
    y.float().square().mean().backward()
    torch.cuda.synchronize()
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, atol=HALF_TOL, rtol=HALF_TOL)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.cuda
@pytest.mark.parametrize("method", [m for m in CONDITIONERS if m != "none"])
def test_the_weight_cache_on_cuda_is_renewed_after_an_optimizer_step(method, device):
    model = condition(_mlp(), method).to(device)
    x = _x().to(device)
    model.eval()
    with torch.no_grad(), cached(model):
        before = model(x)
        assert torch.equal(model(x), before)  # cached: the same weights within the block
    model.train()
    _step(model, x)
    model.eval()
    with torch.no_grad():
        uncached = model(x)
        with cached(model):
            after = model(x)
    torch.cuda.synchronize()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, uncached, atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("method", CONDITIONERS)
def test_bake_on_cuda(method, device):
    model = condition(_mlp(), method).to(device)
    x = _x().to(device)
    model(x)  # EquiNorm: running statistics away from their start
    model.eval()
    with torch.no_grad():
        y = model(x)
        baked = bake(model)
        y_baked = baked(x)
    torch.cuda.synchronize()
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert all(p.device.type == "cuda" for p in baked.parameters())
    torch.testing.assert_close(y_baked, y, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.usefixtures("offline_hub")
def test_enerf_mixed_precision_steps_and_the_per_image_cache_on_cuda(device):
    """A tiny E-NeRF on CUDA: nerfstudio's trainer step (fp16 autocast, GradScaler), then the
    per-image render (each conditioned weight once per image) follows the new weights and equals
    nerfstudio's uncached chunked render."""
    pytest.importorskip("nerfstudio")
    from nerfstudio.models.base_model import Model

    from support.nerf_models import build, rays

    model = build("equilibrate", eval_num_rays_per_chunk=32).to(device)
    camera = rays(132, seed=3).reshape((12, 11)).to(device)
    model.eval()
    before = model.get_outputs_for_camera_ray_bundle(camera)["rgb"]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    first = [p.detach().clone() for p in model.parameters()]
    for step in range(20):  # the scaler skips the steps whose fp16 gradients overflow
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(rays(64, seed=step).to(device))
            loss = (out["rgb"].float() - 0.5).square().mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if any(not torch.equal(a, p) for a, p in zip(first, model.parameters())):
            break
    else:
        pytest.fail("20 mixed-precision steps left every weight unchanged")
    model.eval()
    after = model.get_outputs_for_camera_ray_bundle(camera)["rgb"]
    stock = Model.get_outputs_for_camera_ray_bundle(model, camera)["rgb"]
    torch.cuda.synchronize()
    assert after.device.type == "cuda" and torch.isfinite(after).all()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, stock, atol=1e-5, rtol=0)
    assert torch.cuda.max_memory_allocated() > 0


# ----------------------------------------------------------------------------- processes on the device
def _run(argv, tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], cwd=tmp_path, env=offline_env(tmp_path), capture_output=True,
                         text=True, timeout=timeout)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-3000:] + res.stderr[-3000:])
    return res


def _losses(run: Path) -> list:
    """Every logged ``Train Loss`` of a run (tensorboard events)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(run.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "Train Loss" in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars("Train Loss")]
    return values


def _train(method: str, scene: Path, factor: int, tmp_path: Path, iterations: int, *extra: str) -> Path:
    out = tmp_path / "outputs"
    _run([BIN / "ns-train", method, "--output-dir", out, "--experiment-name", "fern", "--timestamp", "cuda",
          "--max-num-iterations", iterations, "--steps-per-save", iterations, "--machine.seed", 0,
          "--vis", "tensorboard", "--logging.steps-per-log", 10, *extra,
          "llff", "--data", scene, "--downscale-factor", factor], tmp_path)  # fmt: skip
    return out / "fern" / method / "cuda"


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.parametrize("method", ["e-nerf", "e-nerfacto"])
def test_100_iterations_on_fern(method, tmp_path, fern4):
    """The GPU presets as they are (e-nerf: the paper's network, 4096 rays, factor 4, mixed precision)."""
    run = _train(method, fern4, 4, tmp_path, 100)
    config = (run / "config.yml").read_text()
    assert "mixed_precision: true" in config and "device_type: cuda" in config
    losses = _losses(run)
    assert len(losses) >= 10 and all(math.isfinite(v) for v in losses), losses
    assert min(losses[-3:]) < losses[0]
    assert list((run / "nerfstudio_models").glob("step-*.ckpt"))


@pytest.mark.cuda
@pytest.mark.e2e
def test_wcnerf_train_nerfacto_on_cuda(tmp_path, fern):
    out = tmp_path / "outputs"
    res = _run([BIN / "wcnerf-train", "nerfacto", "--conditioning", "equilibrate", "--",
                "--data", fern, "--output-dir", out, "--max-num-iterations", 20, "--steps-per-save", 20,
                "--vis", "tensorboard", "--logging.steps-per-log", 5, "--pipeline.model.implementation", "torch",
                "llff", "--ndc", "False", "--downscale-factor", 8], tmp_path)  # fmt: skip
    assert "'equilibrate' conditioned" in res.stdout
    (config,) = out.rglob("config.yml")
    assert "device_type: cuda" in config.read_text()
    losses = _losses(config.parent)
    assert losses and all(math.isfinite(v) for v in losses), losses


@pytest.mark.cuda
@pytest.mark.e2e
def test_shape_fit_on_cuda(tmp_path, small_mesh):
    import json

    _run([sys.executable, REPO / "scripts" / "shape_fit.py", small_mesh, "--field.conditioning", "equilibrate",
          "--field.width", 32, "--field.depth", 2, "--field.n-freqs", 4, "--optim.steps", 60,
          "--optim.batch-size", 2048, "--optim.lr", 1e-2, "--sampling.n-near", 4000, "--sampling.n-uniform", 2000,
          "--sampling.n-eval", 4000, "--evaluation.resolution", 24, "--evaluation.surface-points", 4000,
          "--evaluation.every", 20, "--evaluation.curve-points", 2000, "--ckpt-every", 30, "--no-progress",
          "--output-dir", tmp_path / "out"], tmp_path)  # fmt: skip
    (metrics,) = (tmp_path / "out").rglob("metrics.json")
    m = json.loads(metrics.read_text())
    assert m["device"] == "cuda" and m["steps"] == 60
    assert 0.0 < m["iou_points"] <= 1.0 and math.isfinite(m["chamfer_l1"])


@pytest.mark.cuda
@pytest.mark.e2e
def test_the_harness_local_executor_with_one_gpu_worker(tmp_path, fern):
    """A tiny sweep with the local executor's default: one worker per visible GPU (on one GPU: one)."""
    import csv

    from wcnerf.eval.execution import visible_gpus

    scene = tiny_fern(tmp_path / "data", fern)
    proto = tmp_path / "tiny.yaml"
    proto.write_text(tiny_protocol(6))
    _run([sys.executable, REPO / "scripts" / "compare_llff.py", "--protocol", proto, "--scenes", scene,
          "--methods", "nerf", "e-nerf", "--seeds", 0, "--output-root", tmp_path / "out", "--executor", "local",
          "--workers", 1, "--device", "cuda"], tmp_path)  # fmt: skip
    assert visible_gpus()
    d = tmp_path / "out" / "tiny"
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [(r["method"], r["status"]) for r in rows] == [("nerf", "done"), ("e-nerf", "done")]
    for r in rows:
        assert math.isfinite(float(r["psnr"]))
        configs = list((d / r["run_dir"]).rglob("config.yml"))
        assert configs and all("device_type: cuda" in c.read_text() for c in configs)


# ----------------------------------------------------------------------------- the prepared device check
@pytest.mark.e2e
def test_the_gpu_check_dry_run_runs_every_step_and_writes_every_key(tmp_path):
    """``scripts/gpu_check.sh --dry-run`` (issue 29, point 3): every step at toy size on the CPU,
    one JSON file with the keys the GPU run fills."""
    import json

    from wcnerf.tools.gpu_check import JSON_KEYS, PAIR, RUN_KEYS, TOY_ITERATIONS

    out = tmp_path / "check"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out-dir", str(out)],
                         cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(JSON_KEYS) <= set(report) and report["mode"] == "dry-run" and report["ok"], report["problems"]
    env = report["environment"]
    assert {"torch", "torch_cuda", "device", "tinycudann"} <= set(env) and "imports" in env["tinycudann"]
    tier = report["cuda_tier"]
    assert tier["ran"] and tier["returncode"] == 0 and tier["tests"] > 0 and tier["skipped"] == tier["tests"]
    assert all(c["reason"].startswith("cuda tier: torch.cuda.is_available() is False") for c in tier["cases"])
    assert list(report["runs"]) == list(PAIR)
    for method, run in report["runs"].items():
        assert set(RUN_KEYS) <= set(run), method
        assert run["train_returncode"] == run["eval_returncode"] == 0 and run["device"] == "cpu"
        assert run["steps_done"] == TOY_ITERATIONS and run["sec_per_iter"] > 0 and run["loss_finite"]
        assert run["peak_gpu_memory_bytes"] is None and math.isfinite(run["heldout"]["psnr"])
    assert report["ratio"]["sec_per_iter_e_nerf_over_nerf"] > 0
    log = (out / "e-nerf.log").read_text()
    assert "e-nerf is the NeRF paper's GPU protocol" in log and "e-nerf-small is the CPU-sized method" in log
    for line in ("seconds per iteration", "tinycudann:", "cuda tier:", "e-nerf / nerf seconds per iteration"):
        assert line in res.stdout, line
