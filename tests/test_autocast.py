"""Mixed-precision numerics of every conditioner, on the CPU (issue 29, point 1).

Two settings, each against float32:

* **autocast** (nerfstudio's mixed precision): float32 parameters, the forward pass under
  ``torch.autocast("cpu", dtype)``. Autocast casts only the matmul's operands, so the
  conditioned weight must come out float32 and equal to the float32 one; the layer's output
  is a half-precision matmul. The input of a layer behind another Linear is half precision
  here (EquiNorm sums it).
* **half parameters** (``module.to(dtype)``): the conditioner's own input is half precision.
  Every reduction is taken in float32 and the result cast back once, so the effective weight
  is the float32 one rounded once to ``dtype``.

Every reduction (norm, sum, mean, variance) that ``wcnerf.conditioning`` takes is recorded
(:class:`ReductionDtypes`, a ``TorchFunctionMode``) and must have a float32 (or float64)
input, as ``torch.nn.utils.parametrizations.weight_norm`` computes its norm with float32
accumulation. Weights span 1e-4 to 1e4 per row or per column (a 1e4 row's sum of squares is
about 3e7, far over float16's 65504), or have an all-zero row or column.

Tolerances, with ``u = finfo(dtype).eps / 2`` the unit roundoff (bfloat16 ``2^-9``, float16
``2^-12``) and ``s = finfo(dtype).smallest_normal * finfo(dtype).eps`` the smallest subnormal
(float16 ``2^-24``; a rounding to a subnormal errs by up to ``s / 2`` in absolute terms):

* effective weight, half parameters: ``|E - E32| <= (u + 2^-20) |E32| + s / 2`` elementwise:
  one rounding of the float32 result (``2^-20``: float32 roundoff of the reference). torch's
  own ``weight-norm`` (kept as it is) meets it too: its norm accumulates in float32.
* effective weight under autocast: float32, ``|E - E32| <= 2^-16 |E32|`` (the same float32
  computation; the slack covers summation order only).
* layer output ``y = x E^T + b`` in half precision, float32 accumulation:
  ``|y - y32| <= 4u (|x| |E32|^T + |b|) + (s / 2)(sum|x| + sum|E32| + 2)``: the operands'
  rounding (2u), the bias' and the output's (2u), the subnormal floor of each rounding.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.nn.utils import parametrize

from wcnerf import conditioning as wc
from wcnerf.conditioning import EquiNormConv2d, EquiNormLinear, equinorm_weight


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast("cpu", dtype=dtype)`` runs a Linear in ``dtype`` (older torch
    warns and disables CPU autocast for float16)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast("cpu", dtype=dtype):
                y = nn.functional.linear(torch.ones(1, 2), torch.ones(1, 2))
        except (RuntimeError, ValueError):
            return False
    return y.dtype == dtype


FP16_OK = _cpu_autocast_supports(torch.float16)
HALF = [
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16", marks=pytest.mark.skipif(
        not FP16_OK, reason=f"torch {torch.__version__}: CPU autocast does not support float16")),
]
CONDITIONERS = sorted(wc.available())
PATTERNS = ("rows", "cols", "zero-row", "zero-col")
"""Weight patterns: rows (columns) scaled by ``logspace(-4, 4)``; one all-zero row (column)."""
IN, HIDDEN, OUT, BATCH = 16, 8, 4, 64
CONDITIONING = Path(wc.__file__).resolve().parent
TORCH = Path(torch.__file__).resolve().parent


def unit_roundoff(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def smallest_subnormal(dtype) -> float:
    return torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps


# ----------------------------------------------------------------------------- recording
REDUCTIONS = {"sum", "nansum", "mean", "nanmean", "var", "std", "var_mean", "std_mean", "norm",
              "linalg_vector_norm", "vector_norm", "norm_except_dim", "prod", "cumsum", "logsumexp"}
"""Reductions by ``__name__`` (``torch.x``, ``Tensor.x`` and ``torch.linalg.vector_norm``)."""


def _caller() -> str:
    """The file of the innermost frame outside torch and this recorder: who called the op."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(str(TORCH)) and frame.f_code.co_name != "__torch_function__":
            return name
        frame = frame.f_back
    return "?"


class ReductionDtypes(TorchFunctionMode):
    """Within the block, record ``(op, dtype it reduces in, caller file)`` of every reduction
    (``dtype=`` given to the op counts as the dtype it reduces in)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, torch.dtype, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in REDUCTIONS:
            t = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input")
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.calls.append((name, kwargs.get("dtype") or t.dtype, _caller()))
        return func(*args, **kwargs)

    def conditioning(self) -> list[tuple[str, torch.dtype, str]]:
        """The reductions called from ``wcnerf/conditioning``."""
        return [c for c in self.calls if Path(c[2]).resolve().is_relative_to(CONDITIONING)]

    def in_half(self) -> list[tuple[str, torch.dtype, str]]:
        """The conditioning's reductions taken in less than float32."""
        return [c for c in self.conditioning() if c[1] not in (torch.float32, torch.float64)]


def test_the_recorder_sees_a_half_precision_norm_and_its_caller():
    with ReductionDtypes() as rec:
        torch.linalg.vector_norm(torch.ones(3, dtype=torch.bfloat16))
        torch.ones(3, dtype=torch.float16).pow(2).sum(0)
        torch.ones(3, dtype=torch.float16).sum(0, dtype=torch.float32)
        torch.ones(3).norm()
    assert [(n, d) for n, d, _ in rec.calls] == [
        ("linalg_vector_norm", torch.bfloat16), ("sum", torch.float16), ("sum", torch.float32), ("norm", torch.float32)]
    assert all(Path(f).resolve() == Path(__file__).resolve() for *_, f in rec.calls)


# ----------------------------------------------------------------------------- models
def mlp(pattern: str, where: int) -> nn.Sequential:
    """``Linear(16, 8), ReLU, Linear(8, 4)``, the weight of layer ``where`` (0 or 2) in ``pattern``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    W = net[where].weight
    with torch.no_grad():
        if pattern == "rows":
            W.mul_(torch.logspace(-4, 4, W.shape[0])[:, None])
        elif pattern == "cols":
            W.mul_(torch.logspace(-4, 4, W.shape[1])[None, :])
        elif pattern == "zero-row":
            W[1] = 0
        elif pattern == "zero-col":
            W[:, 1] = 0
        else:
            raise ValueError(pattern)
    return net


def conditioned(name: str, net: nn.Module) -> nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left plain as degenerate (none here) would warn
        return wc.condition(net, name, force_degenerate=True).train()


def inputs(dtype=torch.float32) -> torch.Tensor:
    """Non-negative inputs (EquiNorm's assumption), as after a ReLU."""
    return torch.rand(BATCH, IN, generator=torch.Generator().manual_seed(1)).to(dtype)


def linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def record_layers(net: nn.Module) -> dict:
    """Forward hooks storing each Linear's (input, output); returns the dict and the handles."""
    seen: dict = {}

    def hook(layer, args, out):
        seen[layer] = (args[0].detach(), out.detach())

    return seen, [m.register_forward_hook(hook) for m in linears(net)]


def batch_weight(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The weight a training forward of ``layer`` on ``x`` multiplies by (EquiNorm: from the
    batch's input sums)."""
    if isinstance(layer, EquiNormLinear):
        flat = x.reshape(-1, layer.in_features)
        return equinorm_weight(layer.weight, layer.gain, flat.sum(0), flat.shape[0], 1, layer.single_pass)
    return layer.weight


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The conditioned weight (EquiNorm: the eval-time weight from the running estimates)."""
    return layer.eval_weight() if isinstance(layer, EquiNormLinear) else layer.weight


def assert_output_within(y, y32, E32, x32, b32, dtype, what):
    u, s = unit_roundoff(dtype), smallest_subnormal(dtype)
    mag = x32.abs() @ E32.abs().T + (0 if b32 is None else b32.abs())
    floor = (x32.abs().sum(1, keepdim=True) + E32.abs().sum(1) + 2) * s / 2
    assert torch.isfinite(y).all(), f"{what}: non-finite output"
    err = (y.float() - y32).abs()
    worst = float((err / (4 * u * mag + floor)).max())
    assert worst <= 1.0, f"{what}: output error {worst:.3g} x the bound 4u(|x||E|+|b|) + subnormal floor"


def assert_rounded_once(E, E32, dtype, what):
    u, s = unit_roundoff(dtype), smallest_subnormal(dtype)
    assert E.dtype == dtype, f"{what}: effective weight is {E.dtype}, not {dtype}"
    assert torch.isfinite(E).all(), f"{what}: non-finite effective weight"
    bound = (u + 2 ** -20) * E32.abs() + s / 2
    worst = float(((E.float() - E32).abs() / bound).max())
    assert worst <= 1.0, f"{what}: off by {worst:.3g} x the bound (u + 2^-20)|E32| + s/2 of one rounding"


WEIGHT_NORM_ZERO_ROW = ("torch's weight_norm computes g v / ||v|| with no epsilon: an all-zero row is 0 / 0 = NaN "
                        "in float32 as well (a float32 matter, not a mixed-precision one; see docs/conditioners.md)")


def check_outputs(net, ref, seen, handles, y, rec, dtype, what, where=""):
    """The checks both precision tests share: a finite half output, no half reduction, and each
    layer's output within the rounding bound of its float32 twin on the same input (which
    also gives an EquiNorm twin the same update of its running estimates)."""
    for h in handles:
        h.remove()
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert not rec.in_half(), f"{what}: reductions in half precision {where}: {rec.in_half()}".replace("  ", " ")
    for i, (layer, layer32) in enumerate(zip(linears(net), linears(ref))):
        x, out = seen[layer]
        x32 = x.float()
        with torch.no_grad():
            E32 = batch_weight(layer32, x32)
            y32 = layer32(x32)
            assert torch.isfinite(y32).all() and float(y32.abs().max()) < torch.finfo(dtype).max / 4
            assert_output_within(out, y32, E32, x32, layer32.bias, dtype, f"{what} layer {i} {dtype}")


def skip_where_float32_is_nan(name: str, pattern: str) -> None:
    """The one case whose float32 reference is itself NaN: say so (and check it) instead."""
    if name == "weight-norm" and pattern == "zero-row":
        assert not torch.isfinite(conditioned(name, mlp(pattern, 0))[0].weight).all()
        pytest.skip(WEIGHT_NORM_ZERO_ROW)


# ----------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("where", [0, 2], ids=["first", "second"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", CONDITIONERS)
def test_autocast_matches_float32(name, dtype, pattern, where):
    skip_where_float32_is_nan(name, pattern)
    net = conditioned(name, mlp(pattern, where))
    ref = copy.deepcopy(net)
    seen, handles = record_layers(net)
    with torch.autocast("cpu", dtype=dtype), ReductionDtypes() as rec:
        y = net(inputs())
        weights = {layer: effective_weight(layer) for layer in linears(net)}
    check_outputs(net, ref, seen, handles, y, rec, dtype, f"{name} {pattern}", "under autocast")
    for i, (layer, layer32) in enumerate(zip(linears(net), linears(ref))):
        what = f"{name} {pattern} layer {i} {dtype}"
        with torch.no_grad():
            E, Eref = weights[layer], effective_weight(layer32)
        assert E.dtype == torch.float32, f"{what}: conditioned weight computed in {E.dtype} under autocast"
        torch.testing.assert_close(E, Eref, rtol=2 ** -16, atol=0, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------- half parameters
@pytest.mark.parametrize("where", [0, 2], ids=["first", "second"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", CONDITIONERS)
def test_half_parameters_match_float32_rounded_once(name, dtype, pattern, where):
    skip_where_float32_is_nan(name, pattern)
    net = conditioned(name, mlp(pattern, where).to(dtype))  # conditioned in half: gains initialised from half weights
    torch.manual_seed(2)
    with torch.no_grad():  # as after some training: gains off their initial values
        for p in net.parameters():
            p.mul_(1 + 0.25 * torch.rand(p.shape, dtype=dtype))
    ref = copy.deepcopy(net).float()  # the same parameters, exactly, in float32
    seen, handles = record_layers(net)
    with ReductionDtypes() as rec:
        y = net(inputs(dtype))
    check_outputs(net, ref, seen, handles, y, rec, dtype, f"{name} {pattern}")
    for i, (layer, layer32) in enumerate(zip(linears(net), linears(ref))):
        what = f"{name} {pattern} layer {i} {dtype}"
        with torch.no_grad():
            if isinstance(layer, EquiNormLinear):  # the same running estimates: only the final cast differs
                layer32.running_mean.copy_(layer.running_mean.float())
            with ReductionDtypes() as rec:
                E = effective_weight(layer)
            assert not rec.in_half(), f"{what}: reductions in half precision: {rec.in_half()}"
            assert_rounded_once(E, effective_weight(layer32), dtype, what)


def extreme_mlp() -> nn.Sequential:
    """The first layer's rows scaled by ``logspace(-4, 4)`` (a 1e4 row's squares sum to about
    3e7, over float16's 65504; a 1e-4 row's squares lie below its smallest subnormal), the
    second layer's columns by ``logspace(4, -4)`` (the 1e-4 unit's outgoing weights are 1e4),
    so that the plain network's float32 output stays within float16's range (ENorm's test)."""
    net = mlp("rows", 0)
    with torch.no_grad():
        net[2].weight.mul_(torch.logspace(4, -4, HIDDEN)[None, :])
    return net


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", CONDITIONERS)
def test_half_weights_spanning_eight_decades_train(name, dtype):
    """Half-precision parameters, the first layer's rows scaled 1e-4 .. 1e4 (a 1e4 row's
    squares sum to about 3e7, past float16's 65504): a forward, a backward and a post-step
    give finite outputs, gradients and effective weights. (ENorm's consumer columns of 1e4:
    ``test_enorm_step_in_half_precision``; a model whose float32 output leaves float16's range,
    as a second 1e4-scaled layer would make it, cannot be finite in float16 and is not asked.)"""
    net = conditioned(name, mlp("rows", 0).to(dtype))
    y = net(inputs(dtype))
    assert torch.isfinite(y).all()
    y.float().mean().backward()
    for n, p in net.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    wc.post_step(net)
    for layer in linears(net):
        assert torch.isfinite(effective_weight(layer)).all()


# ----------------------------------------------------------------------------- ENorm's step
def enorm_mlp(pattern: str) -> nn.Sequential:
    """:func:`extreme_mlp`, or a zero row / column in both layers."""
    if pattern == "extreme":
        return extreme_mlp()
    net = mlp(pattern, 0)
    with torch.no_grad():
        net[2].weight.copy_(mlp(pattern, 2)[2].weight)
    return net


@pytest.mark.parametrize("pattern", ["extreme", "zero-row", "zero-col"])
@pytest.mark.parametrize("dtype", HALF)
def test_enorm_step_in_half_precision(dtype, pattern):
    """The rebalancing of half-precision weights: norms in float32, each weight (bias,
    gradient) rescaled in float32 and rounded once; with float32 weights, a step taken under
    autocast is the float32 step."""
    net = conditioned("enorm", enorm_mlp(pattern).to(dtype))
    net(inputs(dtype)).float().mean().backward()
    ref = copy.deepcopy(net).float()
    for p, q in zip(net.parameters(), ref.parameters()):
        q.grad = p.grad.float()
    with ReductionDtypes() as rec:
        wc.post_step(net)
    wc.post_step(ref)
    assert rec.conditioning(), "ENorm took no norm"
    assert not rec.in_half(), f"enorm: reductions in half precision: {rec.in_half()}"
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        assert_rounded_once(p.detach(), q.detach(), dtype, f"enorm {pattern} {n}")
        assert_rounded_once(p.grad, q.grad, dtype, f"enorm {pattern} {n}.grad")
    net32 = conditioned("enorm", enorm_mlp(pattern))
    twin = copy.deepcopy(net32)
    with torch.autocast("cpu", dtype=dtype):
        wc.post_step(net32)
    wc.post_step(twin)
    for p, q in zip(net32.parameters(), twin.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q)


# ----------------------------------------------------------------------------- EquiNorm's sums
@pytest.mark.parametrize("dtype", HALF)
def test_equinorm_sums_large_half_batches_in_float32(dtype):
    """A half-precision batch whose per-feature sums (about 40000 x 2) exceed float16's 65504: the
    shift and scale stay finite and equal to float32's on the same input; Conv2d too."""
    torch.manual_seed(0)
    lin = conditioned("equinorm", nn.Linear(IN, OUT))
    ref = copy.deepcopy(lin)
    x = (4 * torch.rand(40_000, IN)).to(dtype)
    with torch.autocast("cpu", dtype=dtype), ReductionDtypes() as rec:
        y = lin(x)
    assert not rec.in_half(), f"equinorm: reductions in half precision: {rec.in_half()}"
    with torch.no_grad():
        x32 = x.float()
        assert_output_within(y, ref(x32), batch_weight(ref, x32), x32, ref.bias, dtype, "equinorm 40000 rows")
    torch.testing.assert_close(lin.running_mean, ref.running_mean, rtol=2 ** -16, atol=0)

    conv = EquiNormConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1))
    conv_ref = copy.deepcopy(conv)
    img = (4 * torch.rand(2, 3, 160, 160)).to(dtype)  # 2 x 160 x 160 x ~2 per channel > 65504
    with torch.autocast("cpu", dtype=dtype), ReductionDtypes() as rec:
        out = conv(img)
    assert not rec.in_half(), f"equinorm conv: reductions in half precision: {rec.in_half()}"
    out32 = conv_ref(img.float())
    assert torch.isfinite(out).all()
    u = unit_roundoff(dtype)
    torch.testing.assert_close(out.float(), out32, rtol=8 * u, atol=8 * u * float(out32.abs().max()))


# ----------------------------------------------------------------------------- the weight cache
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", [n for n in CONDITIONERS if n not in ("none", "equinorm", "enorm")])
def test_cached_weights_under_autocast_are_the_float32_ones(name, dtype):
    net = conditioned(name, mlp("rows", 0)).eval()
    x = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        plain = net(x)
        with wc.cached(net):
            first, again = net(x), net(x)
            weights = [layer.weight for layer in linears(net)]
    assert all(w.dtype == torch.float32 for w in weights)
    assert torch.equal(first, plain) and torch.equal(again, plain)
    assert all(parametrize.is_parametrized(layer) for layer in linears(net))


# ----------------------------------------------------------------------------- one training step
@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("method", ["e-nerf-small", "e-nerfacto-small"])
def test_one_training_step_under_cpu_autocast(method, monkeypatch):
    """One step of the tiny model of ``method`` (tests/support/tiny.py) under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, as nerfstudio's trainer runs it with
    mixed precision: finite loss, finite gradients reaching every conditioned layer, every
    reduction of the conditioning in float32, finite parameters after the step."""
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.scene_box import SceneBox

    from support.nerf_models import LLFF_META, rays
    from support.tiny import NERF, NERFACTO

    monkeypatch.setitem(sys.modules, "tinycudann", None)  # nerfstudio's torch grids (no GPU here)
    config = (NERFACTO if "nerfacto" in method else NERF).config(method)
    torch.manual_seed(0)
    model = config.pipeline.model.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])),
                                        num_train_data=4, metadata=LLFF_META)
    model.train()
    optimizers = [torch.optim.Adam(p, lr=1e-3, eps=1e-15) for p in model.get_param_groups().values()]
    conditioned_layers = [m for m in model.modules() if isinstance(m, nn.Linear) and parametrize.is_parametrized(m)]
    assert conditioned_layers
    batch = {"image": torch.rand(64, 3, generator=torch.Generator().manual_seed(0))}
    with torch.autocast("cpu", dtype=torch.bfloat16), ReductionDtypes() as rec:
        outputs = model(rays(64))
        loss_dict = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
        loss = sum(loss_dict.values())
    assert rec.conditioning(), "no conditioner ran"
    assert not rec.in_half(), f"{method}: conditioning reductions in half precision: {rec.in_half()}"
    assert math.isfinite(float(loss)), loss_dict
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if not torch.isfinite(g).all()]
    originals = [layer.parametrizations.weight.original for layer in conditioned_layers]
    assert all(w.dtype == torch.float32 and w.grad is not None for w in originals)
    assert any(w.grad.abs().sum() > 0 for w in originals)  # (nerfacto's proposal MLPs get 0 at step 0, in float32 too)
    for opt in optimizers:
        opt.step()
    wc.post_step(model, optimizers)
    assert all(torch.isfinite(p).all() for p in model.parameters())
