"""ENorm (Stock et al. 2019): exact function preservation with biases, energy descent,
convergence, optimizer-state rescaling, pair inference (incl. NeRF skip concatenation)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wcnerf.conditioning import ENorm, condition, infer_pairs, post_step

D = torch.float64


def skew(net: nn.Module, seed: int = 0) -> nn.Module:
    """Badly balance every hidden unit (function changes, but balancing has work to do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(10 ** (2 * torch.rand(m.out_features, 1, generator=g, dtype=D) - 1))
                m.bias.normal_(0, 0.5, generator=g)
    return net


def chain(seed=0, widths=(6, 16, 12, 16, 3), act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return skew(nn.Sequential(*layers).to(D), seed)


class NerfLikeMLP(nn.Module):
    """Same attributes and forward as nerfstudio.field_components.mlp.MLP (torch path)."""

    def __init__(self, in_dim=7, num_layers=6, layer_width=16, out_dim=5, skip_connections=(3,)):
        super().__init__()
        self.skip_connections = skip_connections
        self._skip_connections = set(skip_connections)
        self.activation = nn.ReLU()
        self.out_activation = None
        layers = [nn.Linear(in_dim, layer_width)]
        for i in range(1, num_layers - 1):
            extra = in_dim if i in self._skip_connections else 0
            layers.append(nn.Linear(layer_width + extra, layer_width))
        layers.append(nn.Linear(layer_width, out_dim))
        self.layers = nn.ModuleList(layers)

    def forward(self, in_tensor):
        x = in_tensor
        for i, layer in enumerate(self.layers):
            if i in self._skip_connections:
                x = torch.cat([in_tensor, x], -1)
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def inputs(n=32, d=6, seed=1):
    return torch.randn(n, d, dtype=D, generator=torch.Generator().manual_seed(seed))


def attached(m) -> ENorm:
    (enorm,) = m.__dict__["_wcnerf_post_step"]
    return enorm


# ------------------------------------------------------------------------------ function, energy


def test_rebalancing_preserves_function_with_biases():
    net = condition(chain(act=lambda: nn.LeakyReLU(0.1)), "enorm")
    x = inputs()
    y0 = net(x).detach()
    dev = attached(net).step()
    assert dev > 0.1  # the step really rescaled something
    assert (net(x) - y0).abs().max() < 1e-10


def test_reference_behaviour_without_bias_rescaling_would_change_output():
    """Sanity check of the test above: leaving biases alone (reference code) breaks it."""
    net = condition(chain(), "enorm")
    x = inputs()
    y0 = net(x).detach()
    biases = [m.bias.detach().clone() for m in net if isinstance(m, nn.Linear)]
    attached(net).step()
    with torch.no_grad():
        for m, b in zip([m for m in net if isinstance(m, nn.Linear)], biases):
            m.bias.copy_(b)
    assert (net(x) - y0).abs().max() > 1e-3


def test_nerf_like_mlp_with_skip_concatenation():
    mlp = skew(NerfLikeMLP().to(D))
    pairs = infer_pairs(mlp)
    assert len(pairs) == 5  # (0,1), (1,2), (2,3: last 16 of 23 columns), (3,4), (4,5)
    A, B, cols = pairs[2]
    assert A is mlp.layers[2] and B is mlp.layers[3] and cols == slice(7, 23)
    condition(mlp, "enorm")
    x = inputs(d=7)
    y0 = mlp(x).detach()
    w_in, b = mlp.layers[3].weight[:, :7].detach().clone(), mlp.layers[3].bias.detach().clone()
    post_step(mlp)
    assert (mlp(x) - y0).abs().max() < 1e-10
    # the raw-input columns are not rescaled as columns: they only follow their rows' factor
    # (layer 3 is itself a producer), the same factor as the row's bias
    row_factor = (mlp.layers[3].bias / b)[:, None]
    torch.testing.assert_close(mlp.layers[3].weight[:, :7], w_in * row_factor)
    assert (row_factor - 1).abs().max() > 0.01
    for _ in range(3):
        post_step(mlp)
    assert (mlp(x) - y0).abs().max() < 1e-10


def test_real_nerfstudio_mlp_pairs():
    mlp_mod = pytest.importorskip("nerfstudio.field_components.mlp")
    torch.manual_seed(0)
    mlp = skew(mlp_mod.MLP(in_dim=9, num_layers=8, layer_width=32, out_dim=4, skip_connections=(4,),
                           implementation="torch").to(D))
    pairs = infer_pairs(mlp)
    assert [(list(mlp.layers).index(p[0]), list(mlp.layers).index(p[1])) for p in pairs] == [(i, i + 1) for i in range(7)]
    assert pairs[3][2] == slice(9, 41)
    condition(mlp, "enorm")
    x = inputs(d=9)
    y0 = mlp(x).detach()
    post_step(mlp)
    assert (mlp(x) - y0).abs().max() < 1e-10


@pytest.mark.parametrize("c", [1.0, 0.7, 1.5])
def test_energy_never_increases_and_cycles_converge(c):
    net = condition(chain(seed=3), "enorm", c=c)
    enorm = attached(net)
    x = inputs()
    y0 = net(x).detach()
    energies, devs = [enorm.energy()], []
    for _ in range(300):
        devs.append(enorm.step())
        energies.append(enorm.energy())
    assert all(b <= a * (1 + 1e-12) for a, b in zip(energies, energies[1:]))
    assert energies[-1] < 0.5 * energies[0]
    assert devs[0] > 0.1 and devs[-1] < 1e-8  # the update tends to the identity
    assert (net(x) - y0).abs().max() < 1e-9
    # at the fixed point every hidden unit satisfies ||outgoing|| = c * ||incoming||
    lin = [m for m in net if isinstance(m, nn.Linear)]
    for A, B in zip(lin, lin[1:]):
        torch.testing.assert_close(B.weight.norm(dim=0), c * A.weight.norm(dim=1), rtol=1e-6, atol=0)


def _hidden_norm_ratios(net):
    """Per hidden unit: ||outgoing weights|| / ||incoming weights|| (a plain chain)."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    return [B.weight.norm(dim=0) / A.weight.norm(dim=1) for A, B in zip(lin, lin[1:])]


@pytest.mark.parametrize("rule, per_level", [("reference", 1.3), ("depth-weighted", 1.3 ** -0.5)])
def test_c_rules_fixed_point_and_energy(rule, per_level):
    """reference: ||out|| = c ||in|| at balance (the authors' code); depth-weighted: the minimiser
    of sum_L c^depth ||W_L||^2, so ||out|| = c^(-1/2) ||in||. Both descend their own energy."""
    net = condition(chain(seed=5), "enorm", c=1.3, c_rule=rule)
    enorm = attached(net)
    assert enorm.r == pytest.approx(1.3 ** -2 if rule == "reference" else 1.3)
    energies = [enorm.energy()]
    for _ in range(300):
        enorm.step()
        energies.append(enorm.energy())
    assert all(b <= a * (1 + 1e-12) for a, b in zip(energies, energies[1:]))
    assert enorm.imbalance() < 1e-9
    for ratio in _hidden_norm_ratios(net):
        torch.testing.assert_close(ratio, torch.full_like(ratio, per_level), rtol=1e-8, atol=0)


def test_c_rules_are_one_family():
    """reference with c equals depth-weighted with c^-2, update for update."""
    a = condition(chain(seed=6), "enorm", c=1.25)
    b = condition(chain(seed=6), "enorm", c=1.25 ** -2, c_rule="depth-weighted")
    for _ in range(3):
        attached(a).step(), attached(b).step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_more_cycles_converge_further_toward_balance():
    """cycles=k in one step = k one-cycle steps; each extra cycle lowers the imbalance
    (max |log(r^(1/2) ||out|| / ||in||)|) and the energy; one cycle alone leaves work undone."""
    nets = {k: condition(chain(seed=7), "enorm", cycles=k) for k in (1, 2, 4, 16)}
    x = inputs()
    y0 = nets[1](x).detach()
    start = attached(nets[1]).imbalance()
    imb, energy = {}, {}
    for k, net in nets.items():
        attached(net).step()
        imb[k], energy[k] = attached(net).imbalance(), attached(net).energy()
        assert (net(x) - y0).abs().max() < 1e-9
    assert start > 1.0 and imb[1] > 0.05
    assert start > imb[1] > imb[2] > imb[4] > imb[16]
    assert energy[1] > energy[2] > energy[4] > energy[16]
    assert imb[16] < 1e-3 * imb[1]
    stepped = condition(chain(seed=7), "enorm")
    for _ in range(4):
        attached(stepped).step()
    for p, q in zip(stepped.parameters(), nets[4].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_include_restricts_inferred_pairs():
    net = condition(chain(), "enorm", include=["2", "4"])
    (pair,) = attached(net).groups
    assert pair[0] is net[2] and pair[1][0][0] is net[4]
    w0 = net[0].weight.detach().clone()
    post_step(net)
    assert torch.equal(net[0].weight, w0)


def test_explicit_pairs_several_consumers_by_name():
    """NeRF's last base layer feeds a density head and a colour head: balanced only when
    both consumers are given; then both heads' columns are rescaled together."""
    torch.manual_seed(0)

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(4, 8)
            self.density = nn.Linear(8, 1)
            self.color = nn.Linear(8 + 3, 3)  # cat([features, direction])

        def forward(self, x, d):
            h = torch.relu(self.base(x))
            return torch.cat([self.density(h), self.color(torch.cat([h, d], -1))], -1)

    field = skew(Field().to(D))
    x, d = inputs(d=4), inputs(d=3, seed=2)
    y0 = field(x, d).detach()
    with pytest.raises(ValueError, match="no pair"):
        condition(field, "enorm")  # nothing inferable: the graph is not visible
    condition(field, "enorm", pairs=[("base", "density"), ("base", "color", range(8))])
    e0 = attached(field).energy()
    post_step(field)
    assert (field(x, d) - y0).abs().max() < 1e-10
    assert attached(field).energy() < e0
    col = torch.cat([field.density.weight, field.color.weight[:, :8]]).norm(dim=0)
    torch.testing.assert_close(col, field.base.weight.norm(dim=1))


# ------------------------------------------------------------------------------ optimizer state


def _train_step(net, opt, x):
    opt.zero_grad()
    net(x).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_rescaled_in_gradient_units(kind):
    net = condition(chain(), "enorm")
    x = inputs()
    if kind == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        keys = {"momentum_buffer": 1}
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        keys = {"exp_avg": 1, "exp_avg_sq": 2}
    for _ in range(2):
        _train_step(net, opt, x)
    params = [p for p in net.parameters()]
    before = {id(p): (p.detach().clone(), {k: opt.state[p][k].clone() for k in keys}) for p in params}
    post_step(net, opt)
    changed = False
    for p in params:
        w0, st0 = before[id(p)]
        ratio = torch.where(w0 != 0, p.detach() / w0, torch.ones_like(w0))  # the factor d (or 1/d)
        changed |= bool((ratio - 1).abs().max() > 0.1)
        for k, power in keys.items():  # state * d^power is invariant
            torch.testing.assert_close(opt.state[p][k], st0[k] / ratio ** power, rtol=1e-10, atol=1e-300)
    assert changed
    # the convention is the gradient's own transformation: a fresh gradient after the
    # rebalancing equals the old one divided by the same factor
    ref = copy.deepcopy(net)
    for p, q in zip(params, ref.parameters()):
        q.data.copy_(before[id(p)][0])
    net.zero_grad()
    net(x).pow(2).mean().backward()
    ref(x).pow(2).mean().backward()
    for p, q in zip(params, ref.parameters()):
        torch.testing.assert_close(p.grad * p.detach(), q.grad * q.detach(), rtol=1e-8, atol=1e-12)


def test_adam_step_after_rebalancing_uses_rescaled_state():
    """Several optimizers, and training keeps running and the function stays exact."""
    net = condition(chain(), "enorm")
    lin = [m for m in net if isinstance(m, nn.Linear)]
    opt1 = torch.optim.Adam([p for m in lin[:2] for p in m.parameters()], lr=1e-3)
    opt2 = torch.optim.SGD([p for m in lin[2:] for p in m.parameters()], lr=1e-3, momentum=0.9)
    x = inputs()
    for _ in range(5):
        opt1.zero_grad()
        opt2.zero_grad()
        net(x).pow(2).mean().backward()
        opt1.step()
        opt2.step()
        y = net(x).detach()
        post_step(net, [opt1, opt2])
        assert (net(x) - y).abs().max() < 1e-10


def test_unknown_optimizer_state_is_an_error():
    net = condition(chain(), "enorm")
    opt = torch.optim.ASGD(net.parameters(), lr=1e-3)  # keeps 'ax', an averaged parameter
    _train_step(net, opt, inputs())
    with pytest.raises(NotImplementedError, match="'ax'"):
        post_step(net, opt)


# ------------------------------------------------------------------------------ errors


def test_errors_are_clear():
    with pytest.raises(ValueError, match="parametrized"):
        condition(condition(chain(), "equilibrate"), "enorm")
    with pytest.raises(ValueError, match="no pair"):
        condition(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), "enorm")
    net = condition(chain(), "enorm")
    with pytest.raises(ValueError, match="already"):
        condition(net, "enorm")
    a, b = nn.Linear(3, 4), nn.Linear(6, 2)
    with pytest.raises(ValueError, match="4 output units"):
        ENorm([(a, b)])
    with pytest.raises(ValueError, match="overlap"):
        ENorm([(a, b, [0, 1, 2, 3]), (nn.Linear(3, 4), b, [2, 3, 4, 5])])
    c, d = nn.Linear(4, 4), nn.Linear(8, 2)  # a -> c -> d and a -> d (skipping a level)
    skip_pairs = [(a, c), (c, d, range(4)), (a, d, range(4, 8))]
    with pytest.raises(ValueError, match="c_rule"):
        ENorm([(a, nn.Linear(4, 2))], c_rule="paper")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="cycles"):
            ENorm([(a, nn.Linear(4, 2))], cycles=bad)
    ENorm(skip_pairs, c=1.0)  # fine when the objective is unweighted
    with pytest.raises(ValueError, match="one level"):
        ENorm(skip_pairs, c=0.5)
    # a layer parametrized after enorm was attached is caught at step time
    net2 = condition(chain(), "enorm")
    condition(net2, "weight-norm", include=["0"])
    with pytest.raises(ValueError, match="parametrized"):
        post_step(net2)
