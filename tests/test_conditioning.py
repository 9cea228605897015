"""wcnerf.conditioning: API, parametrization invariants, gradcheck, bake, state_dict."""

from __future__ import annotations

import copy
import runpy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wcnerf.conditioning import (
    EquiNormLinear,
    available,
    bake,
    center_normalize,
    condition,
    equilibrate,
    post_step,
    standardize,
)
from wcnerf.conditioning.standardize import CenteredWeightNorm, WeightStandardization

NAMES = ["none", "equilibrate", "equilibrate-out", "equilibrate-in", "equilibrate-both", "weight-norm",
         "weight-standardization", "centered-weight-norm", "equinorm", "enorm"]
CONV_METHODS = ["equilibrate", "equilibrate-out", "equilibrate-in", "equilibrate-both", "weight-norm",
                "weight-standardization", "centered-weight-norm"]
D = torch.float64


def mlp(seed=0, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).to(D)


def x_in(n=64, d=5, seed=1):
    return torch.randn(n, d, dtype=D, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ registry / API


def test_registry_names_and_main(capsys):
    assert list(available()) == NAMES
    assert all(isinstance(v, str) and v for v in available().values())
    runpy.run_module("wcnerf.conditioning", run_name="__main__")
    printed = capsys.readouterr().out
    for name, desc in available().items():
        assert name in printed and desc in printed


def test_unknown_method_lists_available():
    with pytest.raises(ValueError, match="unknown conditioning method 'equilibrated'") as e:
        condition(mlp(), "equilibrated")
    for name in NAMES:
        assert name in str(e.value)


def test_options_are_checked():
    with pytest.raises(ValueError, match="conflicting mode"):
        condition(mlp(), "equilibrate-in", mode="out")
    with pytest.raises(ValueError, match="mode must be one of"):
        condition(mlp(), "equilibrate", mode="rows")
    with pytest.raises(TypeError, match="detatch"):
        condition(mlp(), "equilibrate", detatch=True)
    m = condition(mlp(), "equilibrate", mode="in", detach=True)
    assert m[0].parametrizations.weight[0].mode == "in" and m[0].parametrizations.weight[0].detach


def test_none_returns_module_unchanged():
    m = mlp()
    before = copy.deepcopy(m.state_dict())
    assert condition(m, "none") is m
    assert not any(parametrize.is_parametrized(x) for x in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def _conditioned(m):
    return {n for n, x in m.named_modules()
            if parametrize.is_parametrized(x) or isinstance(x, EquiNormLinear)}


def test_include_exclude_patterns_and_predicate():
    m = condition(mlp(), "equilibrate", include=["2", "4"])
    assert _conditioned(m) == {"2", "4"}
    m = condition(mlp(), "equilibrate", exclude=["0"])
    assert _conditioned(m) == {"2", "4"}
    m = condition(mlp(), "equilibrate", include=lambda name, mod: mod.out_features == 3)
    assert _conditioned(m) == {"4"}
    # a pattern selects everything below a matching name; fnmatch wildcards work
    outer = nn.Sequential()
    outer.add_module("mlp_base", mlp())
    outer.add_module("head", nn.Linear(3, 2).to(D))
    assert _conditioned(condition(copy.deepcopy(outer), "equinorm", include=["mlp_base"])) == {
        "mlp_base.0", "mlp_base.2", "mlp_base.4"}
    assert _conditioned(condition(copy.deepcopy(outer), "weight-norm", include=["mlp_base.*"],
                                  exclude=["*.4"])) == {"mlp_base.0", "mlp_base.2"}
    with pytest.raises(ValueError, match="no Linear"):
        condition(mlp(), "equinorm", include=["nothing*"])


def test_root_linear_is_conditioned():
    lin = nn.Linear(4, 3).to(D)
    assert condition(lin, "equilibrate") is lin and parametrize.is_parametrized(lin, "weight")
    new = condition(nn.Linear(4, 3).to(D), "equinorm")
    assert isinstance(new, EquiNormLinear)
    assert type(bake(new)) is nn.Linear


def test_post_step_is_noop_without_enorm():
    m = condition(mlp(), "equilibrate")
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    post_step(m, opt)
    post_step(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


# ------------------------------------------------------------------------------ invariants


def _w(shape=(7, 5), seed=0):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def test_equilibrate_out_rows_unit():
    W = _w() * torch.logspace(-3, 3, 7, dtype=D)[:, None]
    E = equilibrate(W, "out")
    torch.testing.assert_close(E.norm(dim=1), torch.ones(7, dtype=D))
    # out-mode equals weight normalization with gain 1: rows keep their direction
    torch.testing.assert_close(E, W / W.norm(dim=1, keepdim=True))


def test_equilibrate_in_columns_unit():
    W = _w() * torch.logspace(-3, 3, 5, dtype=D)[None, :]
    torch.testing.assert_close(equilibrate(W, "in").norm(dim=0), torch.ones(5, dtype=D))


def test_equilibrate_both_rows_unit_columns_balanced():
    W = _w((12, 6)) * torch.logspace(-3, 3, 12, dtype=D)[:, None] * torch.logspace(2, -2, 6, dtype=D)
    E = equilibrate(W, "both", iters=40)
    torch.testing.assert_close(E.norm(dim=1), torch.ones(12, dtype=D))
    cols = E.norm(dim=0)
    torch.testing.assert_close(cols, torch.full_like(cols, (12 / 6) ** 0.5), rtol=1e-4, atol=0)
    spread = lambda M: float(M.norm(dim=0).max() / M.norm(dim=0).min())  # noqa: E731
    assert spread(equilibrate(W, "both")) < 0.1 * spread(equilibrate(W, "out"))


@pytest.mark.parametrize("mode", ["out", "in", "both"])
def test_equilibrate_zero_row_guarded(mode):
    W = _w()
    W[2] = 0.0
    E = equilibrate(W, mode)
    assert torch.isfinite(E).all() and torch.equal(E[2], torch.zeros(5, dtype=D))
    W.requires_grad_(True)
    equilibrate(W, mode).sum().backward()
    assert torch.isfinite(W.grad).all()


def test_equilibrate_detach_stops_norm_gradient():
    W = _w().requires_grad_(True)
    G = _w(seed=3)
    (equilibrate(W, "out", detach=True) * G).sum().backward()
    torch.testing.assert_close(W.grad, G / W.detach().norm(dim=1, keepdim=True))
    W.grad = None
    (equilibrate(W, "out") * G).sum().backward()
    # through the norm: the gradient is orthogonal to each row (scale invariance)
    torch.testing.assert_close((W.grad * W.detach()).sum(1), torch.zeros(7, dtype=D), atol=1e-12, rtol=0)


def test_weight_standardization_invariant_and_gain_init():
    W = _w((6, 256)) * 0.05 + 0.01
    Z = standardize(W)
    torch.testing.assert_close(Z.mean(1), torch.zeros(6, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(Z.std(1, unbiased=False), torch.ones(6, dtype=D), rtol=1e-5, atol=0)
    p = WeightStandardization(W)
    torch.testing.assert_close(p(W), W - W.mean(1, keepdim=True), rtol=1e-6, atol=1e-9)


def test_weight_standardization_gain_keeps_deep_mlp_scale():
    """Without the gain, fan_in 256 rows have norm 16 and activations explode with depth."""
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    net = nn.Sequential(*layers).to(D)
    x = torch.randn(64, 256, dtype=D)
    plain = net(x).detach().std()
    ws = condition(copy.deepcopy(net), "weight-standardization")
    assert 0.5 < float(ws(x).detach().std() / plain) < 2.0
    for m in ws.modules():  # the gain-free variant of Qiao et al.
        if parametrize.is_parametrized(m):
            m.parametrizations.weight[0].gain.data.fill_(1.0)
    assert float(ws(x).detach().std() / plain) > 1e3


def test_centered_weight_norm_invariant_and_init():
    W = _w((6, 9)) + 0.3
    C = center_normalize(W)
    torch.testing.assert_close(C.mean(1), torch.zeros(6, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(C.norm(dim=1), torch.ones(6, dtype=D))
    torch.testing.assert_close(CenteredWeightNorm(W)(W), C)  # gain 1 (Huang et al.)
    p = CenteredWeightNorm(W, gain_init="row-norm")
    torch.testing.assert_close(p(W), W - W.mean(1, keepdim=True))


def test_weight_norm_is_torch_and_keeps_function():
    m = mlp()
    y0 = m(x_in())
    condition(m, "weight-norm")
    assert hasattr(m[0].parametrizations.weight, "original0")  # torch's g
    torch.testing.assert_close(m(x_in()), y0)


def test_conv2d_filters_equilibrated():
    conv = nn.Conv2d(3, 4, 3).to(D)
    condition(conv, "equilibrate")
    torch.testing.assert_close(conv.weight.flatten(1).norm(dim=1), torch.ones(4, dtype=D))
    conv = condition(nn.Conv2d(3, 4, 3).to(D), "weight-standardization")
    Z = standardize(conv.parametrizations.weight.original)
    torch.testing.assert_close(Z.flatten(1).mean(1), torch.zeros(4, dtype=D), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("mode", ["out", "in", "both"])
def test_gradcheck_equilibrate(mode):
    W = _w((4, 3)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: equilibrate(w, mode, iters=3), (W,))


def test_gradcheck_standardize_and_cwn_with_gain():
    W = _w((4, 5)).requires_grad_(True)
    g = torch.rand(4, dtype=D).add(0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, g: g[:, None] * standardize(w), (W, g))
    assert torch.autograd.gradcheck(lambda w, g: g[:, None] * center_normalize(w), (W, g))


@pytest.mark.parametrize("method", ["weight-norm", "weight-standardization", "centered-weight-norm",
                                    "equilibrate", "equinorm"])
def test_gradcheck_conditioned_layer(method):
    """Through the registered layer, w.r.t. the input and every stored parameter."""
    torch.manual_seed(0)
    layer = condition(nn.Linear(4, 3).to(D), method).train()
    params = dict(layer.named_parameters())
    names = list(params)
    x = torch.randn(6, 4, dtype=D, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_(True) for p in params.values()]))


# ------------------------------------------------------------------------------ bake / state_dict


@pytest.mark.parametrize("method", NAMES)
def test_bake_same_outputs_and_plain_layers(method):
    m = condition(mlp(), method)
    x = x_in()
    m.train()
    m(x)  # EquiNorm: move the running statistics away from their initial values
    m.eval()
    y = m(x).detach()
    baked = bake(m)
    assert (baked(x) - y).abs().max() < 1e-6
    for sub in baked.modules():
        assert not parametrize.is_parametrized(sub)
        assert type(sub) in (nn.Sequential, nn.Linear, nn.ReLU)
        assert "_wcnerf_post_step" not in sub.__dict__
    plain = mlp(seed=5)
    plain.load_state_dict(baked.state_dict())
    assert (plain(x) - y).abs().max() < 1e-6


@pytest.mark.parametrize("method", CONV_METHODS)
def test_bake_conv2d(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)).to(D)
    m = condition(net, method)
    x = torch.randn(2, 2, 6, 6, dtype=D)
    y = m(x).detach()
    assert (bake(m)(x) - y).abs().max() < 1e-6


def test_equinorm_conditions_and_bakes_conv2d():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)).to(D)
    m = condition(net, "equinorm")
    assert type(m[2]).__name__ == "EquiNormConv2d"
    x = torch.randn(2, 2, 6, 6, dtype=D)
    m.train()
    m(x)  # running estimates
    m.eval()
    y = m(x).detach()
    baked = bake(m)
    assert type(baked[2]) is nn.Conv2d
    assert (baked(x) - y).abs().max() < 1e-6


@pytest.mark.parametrize("method", NAMES)
def test_state_dict_round_trip(method):
    m1 = condition(mlp(seed=0), method)
    with torch.no_grad():  # make the state differ from a fresh conditioning
        for p in m1.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = x_in()
    m1.train()
    m1(x)
    m1.eval()
    m2 = condition(mlp(seed=7), method)
    m2.load_state_dict(m1.state_dict())
    m2.eval()
    torch.testing.assert_close(m2(x), m1(x), rtol=0, atol=1e-12)


def test_bake_of_a_deep_copy_leaves_the_original_working():
    """torch shares the generated Parametrized* class between deep copies; bake must not
    strip the original's parametrized weight when it bakes the copy."""
    import copy

    torch.manual_seed(0)
    m = condition(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "equilibrate")
    x = torch.randn(5, 4)
    before = m(x).detach()
    baked = bake(copy.deepcopy(m))
    assert torch.allclose(m(x), before)
    assert torch.allclose(baked(x), before, atol=1e-6)
