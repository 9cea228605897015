"""EquiNorm (Defazio & Bottou, arXiv:1812.04549): the shift and scale against a direct loop over
the formulas, equilibrium, gradients, running estimates, bake, zero batch, sign balance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wcnerf.conditioning import EquiNormLinear, bake, condition, equinorm_weight
from wcnerf.conditioning import equinorm as E

D = torch.float64


def linear(seed=0, n_in=6, n_out=4, **options):
    torch.manual_seed(seed)
    return condition(nn.Linear(n_in, n_out).to(D), "equinorm", **options)


def conv(c_in, c_out, k, seed=0, **conv_kwargs):
    """Conditioned through ``equinorm.apply`` (the registry entry is Linear-only for now)."""
    torch.manual_seed(seed)
    layer = nn.Conv2d(c_in, c_out, k, **conv_kwargs).to(D)
    return E.apply(layer, [("", layer)])


def relu_input(*shape, seed=1, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, dtype=D, generator=g) + shift)


# ------------------------------------------------------------------ the formulas, by a direct loop


def loop_shift_scale(w, x, r, single_pass):
    """b_d and s_d written out element by element (no tensor ops on the formulas)."""
    w4 = w.reshape(w.shape[0], w.shape[1], -1).tolist()  # [d][c][tap]
    C = len(w4[0])
    v = [float(x[:, c].sum()) for c in range(C)]
    V = sum(v)
    bs, ss = [], []
    for d in range(len(w4)):
        K = len(w4[d][0])
        num = 0.0
        for c in range(C):
            for t in range(K):
                num += v[c] * w4[d][c][t]
        b = -num / (K * V)
        den = 0.0
        for c in range(C):
            for t in range(K):
                wt = w4[d][c][t]
                if single_pass:
                    if wt > 0:
                        den += v[c] * (wt + b)  # sum and count of the positive weights of w
                else:
                    den += v[c] * max(wt + b, 0.0)
        bs.append(b)
        ss.append(r / den)
    return torch.tensor(bs, dtype=D), torch.tensor(ss, dtype=D)


@pytest.mark.parametrize("single_pass", [True, False])
def test_linear_shift_and_scale_match_loop(single_pass):
    B = 32
    lin = linear(n_in=16, n_out=8, single_pass=single_pass).train()
    x = relu_input(B, 16)
    b, s = loop_shift_scale(lin.weight.detach(), x, r=B, single_pass=single_pass)  # r = B for a Linear
    expected = F.linear(x, s[:, None] * (lin.weight.detach() + b[:, None]))
    torch.testing.assert_close(lin(x), expected)
    if not single_pass:  # per sample, the positive weights contribute 1 on average
        W = s[:, None] * (lin.weight.detach() + b[:, None])
        torch.testing.assert_close((W.clamp_min(0) @ x.T).mean(1), torch.ones(8, dtype=D))


@pytest.mark.parametrize("single_pass", [True, False])
@pytest.mark.parametrize("c_in,c_out,stride", [(16, 16, 1), (16, 32, 2)])  # CIFAR ResNet stage widths
def test_conv_shift_and_scale_match_loop(c_in, c_out, stride, single_pass):
    layer = conv(c_in, c_out, 3, stride=stride, padding=1)
    layer.single_pass = single_pass
    x = relu_input(2, c_in, 8, 8)
    y = layer(x)
    r = 2 * y.shape[-2] * y.shape[-1] * stride * stride  # output positions x squared stride
    assert r == 2 * 8 * 8
    b, s = loop_shift_scale(layer.weight.detach(), x, r, single_pass)
    W = s[:, None, None, None] * (layer.weight.detach() + b[:, None, None, None])
    torch.testing.assert_close(y, F.conv2d(x, W, stride=stride, padding=1))


def test_single_pass_equals_two_pass_when_the_shift_flips_no_sign():
    W = torch.tensor([[0.5, -0.25, 1.0, -1.0]], dtype=D)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    b = E.equinorm_shift(W, v)
    assert ((W > 0) == (W + b > 0)).all()
    torch.testing.assert_close(E.equinorm_scale(W, v, b, 7.0, single_pass=True),
                               E.equinorm_scale(W, v, b, 7.0, single_pass=False))


# ------------------------------------------------------------------ equilibrium


@pytest.mark.parametrize("single_pass", [True, False])
def test_linear_output_has_zero_batch_mean_on_nonnegative_inputs(single_pass):
    lin = linear(single_pass=single_pass).train()
    y = lin(relu_input(32, 6)) - lin.bias
    torch.testing.assert_close(y.mean(0), torch.zeros(4, dtype=D), atol=1e-12, rtol=0)


@pytest.mark.parametrize("k,padding_mode", [(3, "circular"), (1, "zeros")])
def test_conv_output_has_zero_batch_mean_on_nonnegative_inputs(k, padding_mode):
    """Exact where every tap sweeps every input position once (stride 1, circular / 1x1)."""
    layer = conv(3, 5, k, padding=k // 2, padding_mode=padding_mode).train()
    y = layer(relu_input(4, 3, 6, 6)) - layer.bias[:, None, None]
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(5, dtype=D), atol=1e-12, rtol=0)


# ------------------------------------------------------------------ gradients


def test_gradients_reach_weight_gain_and_input_through_the_sums():
    lin = linear().train()
    x = relu_input(16, 6).requires_grad_(True)
    (lin(x) ** 2).sum().backward()
    assert lin.weight.grad.abs().max() > 0 and lin.gain.grad.abs().max() > 0
    assert x.grad.abs().max() > 0
    # v is not detached: detaching it changes the input gradient
    x2 = x.detach().clone().requires_grad_(True)
    W = equinorm_weight(lin.weight, lin.gain, x2.detach().sum(0), 16, 1, lin.single_pass)
    (F.linear(x2, W, lin.bias) ** 2).sum().backward()
    assert (x2.grad - x.grad).abs().max() > 1e-6

    layer = conv(3, 4, 3, padding=1).train()
    xc = relu_input(2, 3, 5, 5).requires_grad_(True)
    layer(xc).pow(2).sum().backward()
    assert layer.weight.grad.abs().max() > 0 and xc.grad.abs().max() > 0


# ------------------------------------------------------------------ train vs eval, running estimates


def test_eval_uses_running_estimates_of_the_per_element_mean():
    lin = linear(momentum=0.1).train()
    assert torch.equal(lin.running_mean, torch.zeros(6, dtype=D))
    x, other = relu_input(32, 6), relu_input(24, 6, seed=5, shift=2.0)
    lin(x)
    torch.testing.assert_close(lin.running_mean, 0.1 * x.mean(0))
    # train: a sample's output depends on the rest of the batch
    assert (lin(x[:8]) - lin(torch.cat([x[:8], other]))[:8]).abs().max() > 1e-3
    lin.eval()
    before = lin.running_mean.clone()
    y = lin(x[:8])
    assert torch.equal(lin.running_mean, before)  # no update in eval
    torch.testing.assert_close(y, lin(torch.cat([x[:8], other]))[:8])  # batch-independent
    W = equinorm_weight(lin.weight, lin.gain, lin.running_mean, 1.0, 1, lin.single_pass)
    torch.testing.assert_close(y, F.linear(x[:8], W, lin.bias))
    # converged running estimate: eval equals train on the same batch
    lin.train()
    for _ in range(300):
        lin(x)
    lin.eval()
    y_eval = lin(x)
    lin.train()
    torch.testing.assert_close(y_eval, lin(x))
    cum = linear(momentum=None).train()  # cumulative average, as BatchNorm
    cum(x)
    cum(other)
    torch.testing.assert_close(cum.running_mean, (x.mean(0) + other.mean(0)) / 2)


def test_conv_running_estimate_is_sum_over_r():
    layer = conv(3, 4, 3, stride=2, padding=1).train()
    x = relu_input(2, 3, 8, 8)
    layer(x)
    r = 2 * 4 * 4 * 2 * 2
    torch.testing.assert_close(layer.running_mean, 0.1 * x.sum((0, 2, 3)) / r)
    torch.testing.assert_close(layer.running_mean, 0.1 * x.mean((0, 2, 3)))  # = per-element mean here


def test_bake_gives_identical_eval_outputs():
    net = condition(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).to(D), "equinorm").train()
    for s in range(3):
        net(relu_input(32, 6, seed=s))
    net.eval()
    x = relu_input(16, 6, seed=11)
    y = net(x).detach()
    baked = bake(net)
    assert all(type(m) is nn.Linear for m in (baked[0], baked[2])) and not baked.training
    assert (baked(x) - y).abs().max() < 1e-12

    layer = conv(3, 4, 3, stride=2, padding=1, padding_mode="reflect").train()
    for s in range(3):
        layer(relu_input(2, 3, 8, 8, seed=s))
    layer.eval()
    xc = relu_input(2, 3, 8, 8, seed=11)
    plain = layer.to_conv()
    assert type(plain) is nn.Conv2d and plain.padding_mode == "reflect" and plain.stride == (2, 2)
    assert (plain(xc) - layer(xc).detach()).abs().max() < 1e-12
    assert E.EquiNormConv2d.to_conv is E.EquiNormConv2d.to_plain
    assert EquiNormLinear.to_linear is EquiNormLinear.to_plain


# ------------------------------------------------------------------ zero batch, leading dims


def test_zero_batch_stays_finite():
    lin = linear().train()
    x = torch.zeros(8, 6, dtype=D, requires_grad=True)
    y = lin(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in lin.parameters())
    torch.testing.assert_close(y, lin.bias.expand(8, 4))
    layer = conv(3, 4, 3, padding=1).train()
    xc = torch.zeros(2, 3, 5, 5, dtype=D, requires_grad=True)
    yc = layer(xc)
    yc.sum().backward()
    assert torch.isfinite(yc).all() and torch.isfinite(xc.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert torch.isfinite(lin(torch.zeros(0, 6, dtype=D))).all()  # empty batch: running estimates


def test_leading_dims_are_the_batch():
    lin = linear().train()
    x = relu_input(3, 5, 6)
    y = lin(x)
    assert y.shape == (3, 5, 4)
    torch.testing.assert_close(y.reshape(15, 4), lin(x.reshape(15, 6)))


# ------------------------------------------------------------------ initialisation, state


def test_sign_balanced_init_leaves_no_one_signed_filter():
    torch.manual_seed(0)
    lin = nn.Linear(3, 64).to(D)
    with torch.no_grad():
        lin.weight[:5] = lin.weight[:5].abs()  # all positive
        lin.weight[5:9] = -lin.weight[5:9].abs()  # all negative
    original = lin.weight.detach().clone()
    new = condition(lin, "equinorm")
    W = new.weight.detach()
    assert ((W > 0).any(1) & (W < 0).any(1)).all()
    mixed = (original > 0).any(1) & (original < 0).any(1)
    assert torch.equal(W[mixed], original[mixed])  # balanced filters untouched
    torch.testing.assert_close(W.abs(), original.abs())  # only signs flipped
    assert torch.equal(new.gain.detach(), torch.ones(64, dtype=D))
    assert torch.equal(new.bias.detach(), torch.zeros(64, dtype=D))
    c = nn.Conv2d(2, 3, 3).to(D)
    with torch.no_grad():
        c.weight.abs_()
    Wc = E.apply(c, [("", c)]).weight.detach().flatten(1)
    assert ((Wc > 0).any(1) & (Wc < 0).any(1)).all()


def test_sign_balance_can_be_disabled():
    torch.manual_seed(0)
    lin = nn.Linear(3, 4).to(D)
    with torch.no_grad():
        lin.weight.abs_()
    w = lin.weight.detach().clone()
    assert torch.equal(condition(lin, "equinorm", sign_balance=False).weight.detach(), w)


def test_state_dict_round_trip():
    lin = linear().train()
    lin(relu_input(32, 6))
    sd = lin.state_dict()
    assert {"weight", "bias", "gain", "running_mean", "num_batches_tracked"} == set(sd)
    fresh = linear(seed=3)
    fresh.load_state_dict(sd)
    fresh.eval()
    lin.eval()
    x = relu_input(8, 6, seed=4)
    torch.testing.assert_close(fresh(x), lin(x))
    assert isinstance(fresh, EquiNormLinear)
