"""EquiNorm (Defazio & Bottou): train vs eval behaviour, running statistics, equilibrium."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wcnerf.conditioning import EquiNormLinear, bake, condition, equinorm_weight

D = torch.float64


def layer(seed=0, momentum=0.1):
    torch.manual_seed(seed)
    return condition(nn.Linear(6, 4).to(D), "equinorm", momentum=momentum)


def relu_input(n=32, seed=1, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, 6, dtype=D, generator=g) + shift)


def test_train_mode_equilibrium_on_nonnegative_inputs():
    """Positive and negative weights' contributions to the batch-mean output cancel."""
    lin = layer().train()
    x = relu_input()
    y = lin(x) - lin.bias
    torch.testing.assert_close(y.mean(0), torch.zeros(4, dtype=D), atol=1e-12, rtol=0)
    W = equinorm_weight(lin.weight, lin.gain, x.mean(0), x.abs().mean(0), lin.eps)
    pos, neg = (W.clamp_min(0) @ x.mean(0)), (W.clamp_max(0) @ x.mean(0))
    torch.testing.assert_close(pos, -neg)
    assert (pos > 0).all()


def test_train_uses_batch_eval_uses_running_statistics():
    lin = layer().train()
    x = relu_input()
    other = relu_input(seed=5, shift=2.0)
    # train: a sample's output depends on the rest of the batch
    y_alone = lin(x[:8])
    y_mixed = lin(torch.cat([x[:8], other]))[:8]
    assert (y_alone - y_mixed).abs().max() > 1e-3
    # eval: a fixed affine map from the running estimates, batch-independent
    lin.eval()
    torch.testing.assert_close(lin(x[:8]), lin(torch.cat([x[:8], other]))[:8])
    expected = F.linear(x, equinorm_weight(lin.weight, lin.gain, lin.running_mean,
                                           lin.running_abs_mean, lin.eps), lin.bias)
    torch.testing.assert_close(lin(x), expected)


def test_running_statistics_update_only_in_train_mode():
    lin = layer(momentum=0.1)
    assert torch.equal(lin.running_mean, torch.zeros(6, dtype=D))
    assert torch.equal(lin.running_abs_mean, torch.ones(6, dtype=D))
    x = relu_input() - 0.2  # signed, so mean and mean-abs differ
    lin.eval()
    lin(x)
    assert torch.equal(lin.running_mean, torch.zeros(6, dtype=D)) and int(lin.num_batches_tracked) == 0
    lin.train()
    lin(x)
    torch.testing.assert_close(lin.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(lin.running_abs_mean, 0.9 + 0.1 * x.abs().mean(0))
    assert int(lin.num_batches_tracked) == 1
    for _ in range(200):
        lin(x)
    torch.testing.assert_close(lin.running_mean, x.mean(0))
    torch.testing.assert_close(lin.running_abs_mean, x.abs().mean(0))
    # momentum=None: cumulative average, as BatchNorm
    cum = layer(momentum=None).train()
    x2 = relu_input(seed=9)
    cum(x)
    cum(x2)
    torch.testing.assert_close(cum.running_mean, (x.mean(0) + x2.mean(0)) / 2)


def test_leading_dims_are_batch_and_signed_inputs_stay_finite():
    lin = layer().train()
    x = torch.randn(3, 5, 6, dtype=D)  # nerfstudio passes (..., in) tensors
    y = lin(x)
    assert y.shape == (3, 5, 4) and torch.isfinite(y).all()
    torch.testing.assert_close(y.reshape(15, 4), lin(x.reshape(15, 6)))
    sincos = torch.cat([torch.sin(torch.linspace(0, 6.283, 64, dtype=D))[:, None].expand(64, 3),
                        torch.cos(torch.linspace(0, 6.283, 64, dtype=D))[:, None].expand(64, 3)], 1)
    assert torch.isfinite(lin.train()(sincos)).all() and lin(sincos).abs().max() < 1e3


def test_bake_folds_eval_time_affine_and_keeps_training_flag():
    net = condition(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).to(D), "equinorm")
    net.train()
    for s in range(3):
        net(relu_input(seed=s))
    net.eval()
    x = relu_input(seed=11)
    y = net(x).detach()
    baked = bake(net)
    assert all(type(m) is nn.Linear for m in (baked[0], baked[2]))
    assert (baked(x) - y).abs().max() < 1e-6
    assert not baked.training


def test_equinorm_state_dict_has_buffers():
    lin = layer().train()
    lin(relu_input())
    sd = lin.state_dict()
    assert {"weight", "bias", "gain", "running_mean", "running_abs_mean", "num_batches_tracked"} <= set(sd)
    fresh = layer(seed=3)
    fresh.load_state_dict(sd)
    fresh.eval()
    lin.eval()
    x = relu_input(seed=4)
    torch.testing.assert_close(fresh(x), lin(x))
    assert isinstance(fresh, EquiNormLinear)
