"""Tests for wcnerf.analysis (layer-wise conditioning analysis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from wcnerf.analysis import (
    LayerwiseAnalyzer,
    analyze,
    analyze_layers,
    generalized_condition_numbers,
    linear_layers,
    nonzero_condition_number,
    unit_activity,
)
from wcnerf.analysis.layerwise import count_units, unit_on_rows
from wcnerf.analysis.spectral import default_rel_tol, numerical_rank

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _whitened(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Rows z_i with (1/n) Z^T Z = I exactly (up to rounding)."""
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    return q * math.sqrt(n)


def _mlp(d_in: int = 5, width: int = 16, d_out: int = 3, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


# --------------------------------------------------------------------------- spectra
def test_input_spectrum_and_weight_kappa_match_numpy():
    gen = torch.Generator().manual_seed(0)
    n, d_in, d_out = 500, 7, 4
    # Anisotropic, non-centred inputs so that the uncentred moment matters.
    x = torch.randn(n, d_in, generator=gen) @ torch.randn(d_in, d_in, generator=gen) + 0.5
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=gen) * torch.tensor([3.0, 1.0, 0.3, 0.05])[:, None])
    layer.to(DEVICE)
    x = x.to(DEVICE)
    y = torch.randn(n, d_out, generator=gen).to(DEVICE)

    res = analyze_layers(layer, lambda: ((layer(x) - y) ** 2).mean(), max_samples=None)
    lc = res["root"]

    xn = _np(x)
    ev_np = np.sort(np.linalg.eigvalsh(xn.T @ xn / n))[::-1]
    np.testing.assert_allclose(lc.input.eigvals.numpy(), ev_np, rtol=1e-6, atol=1e-9)
    assert lc.input.lambda_max == pytest.approx(ev_np[0], rel=1e-6)
    assert lc.input.kappa[1.0] == pytest.approx(ev_np[0] / ev_np[-1], rel=1e-5)

    s_np = np.linalg.svd(_np(layer.weight), compute_uv=False)
    assert lc.sigma_max_w == pytest.approx(s_np[0], rel=1e-6)
    assert lc.kappa_w == pytest.approx(s_np[0] / s_np[-1], rel=1e-5)
    np.testing.assert_allclose(lc.weight_singular_values.numpy(), s_np, rtol=1e-6)

    # Centred variant: covariance instead of the second moment.
    lc_c = analyze_layers(layer, lambda: ((layer(x) - y) ** 2).mean(), max_samples=None, centered=True)["root"]
    xc = xn - xn.mean(0)
    ev_c = np.sort(np.linalg.eigvalsh(xc.T @ xc / n))[::-1]
    np.testing.assert_allclose(lc_c.input.eigvals.numpy(), ev_c, rtol=1e-6, atol=1e-9)
    assert not np.allclose(ev_c, ev_np, rtol=1e-3)


def test_whitened_inputs_have_unit_kappa_even_subsampled():
    gen = torch.Generator().manual_seed(1)
    n, d = 20000, 12
    x = _whitened(n, d, gen).float().to(DEVICE)
    layer = nn.Linear(d, 3).to(DEVICE)
    m_full = analyze(layer, lambda: layer(x).pow(2).mean(), max_samples=None)
    for p in (100, 90, 50):
        assert m_full[f"root/input/kappa_p{p}"] == pytest.approx(1.0, abs=1e-4)
    assert m_full["root/input/lambda_max"] == pytest.approx(1.0, abs=1e-4)
    # Subsampling 4096 of 20000 rows: a sample second moment of a whitened distribution.
    m_sub = analyze(layer, lambda: layer(x).pow(2).mean(), max_samples=4096)
    assert 1.0 < m_sub["root/input/kappa_p100"] < 1.5
    assert m_sub["root/input/kappa_p100"] != pytest.approx(1.0, abs=1e-4)


def test_known_spectrum_gives_known_kappa_p():
    gen = torch.Generator().manual_seed(2)
    n, d = 4000, 20
    lam = torch.arange(d, 0, -1, dtype=torch.float64)  # 20, 19, ..., 1
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    x = (_whitened(n, d, gen) * lam.sqrt()) @ q.T  # (1/n) X^T X = Q diag(lam) Q^T
    x = x.to(DEVICE)
    layer = nn.Linear(d, 2, dtype=torch.float64).to(DEVICE)
    m = analyze(layer, lambda: layer(x).pow(2).mean(), max_samples=None)
    # k = ceil(p d): p=1 -> 20 -> lam=1; p=0.9 -> 18 -> lam=3; p=0.5 -> 10 -> lam=11.
    assert m["root/input/lambda_max"] == pytest.approx(20.0, rel=1e-9)
    assert m["root/input/kappa_p100"] == pytest.approx(20.0, rel=1e-9)
    assert m["root/input/kappa_p90"] == pytest.approx(20.0 / 3.0, rel=1e-9)
    assert m["root/input/kappa_p50"] == pytest.approx(20.0 / 11.0, rel=1e-9)


@pytest.mark.parametrize(
    "p, d, k",
    [
        (0.9, 7, 7),  # p d = 6.3: ceil 7 (floor and round give 6)
        (0.5, 5, 3),  # 2.5: ceil 3 (floor 2; Python's round-half-even 2)
        (0.5, 7, 4),  # 3.5
        (0.1, 7, 1),  # 0.7: ceil 1 (floor 0, an index before the spectrum)
        (0.9, 21, 19),  # 18.9, e.g. a 7 x 3 Kronecker (FIM) spectrum
        (0.14, 50, 7),  # 0.14 * 50 = 7.000000000000001 in floating point: still 7, not 8
        (0.28, 25, 7),  # likewise
        (1.0, 7, 7),
    ],
)
def test_rank_rule_rounds_fractional_p_d_up(p, d, k):
    """kappa_p = lambda_1 / lambda_k with k = ceil(p d) (1-based), the rule wcnerf/analysis/
    spectral.py states for Huang et al.'s kappa_p (the top fraction p of the spectrum, rounded
    up to whole eigenvalues), with a 1e-9 tolerance so that a p d whole up to rounding is not
    pushed up a rank. The spectrum 2^(d-1), ..., 2, 1 gives every k its own kappa, 2^(k-1)."""
    ev = 2.0 ** torch.arange(d - 1, -1, -1, dtype=torch.float64)
    assert generalized_condition_numbers(ev, (p,))[p] == pytest.approx(2.0 ** (k - 1), rel=1e-12)


def test_fractional_rank_rule_through_the_analyzer():
    """d = 7 input features with eigenvalues 64, 32, ..., 1: kappa_p90 = 64 / 1 (k = ceil(6.3)
    = 7) and kappa_p50 = 64 / 8 (k = ceil(3.5) = 4)."""
    gen = torch.Generator().manual_seed(4)
    n, d = 2000, 7
    lam = 2.0 ** torch.arange(d - 1, -1, -1, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    x = ((_whitened(n, d, gen) * lam.sqrt()) @ q.T).to(DEVICE)
    layer = nn.Linear(d, 2, dtype=torch.float64).to(DEVICE)
    m = analyze(layer, lambda: layer(x).pow(2).mean(), max_samples=None)
    assert m["root/input/kappa_p90"] == pytest.approx(64.0, rel=1e-9)
    assert m["root/input/kappa_p50"] == pytest.approx(8.0, rel=1e-9)


def test_generalized_condition_numbers_rank_rule_and_singular():
    ev = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
    k = generalized_condition_numbers(ev, (1.0, 0.9, 0.5, 0.1))
    assert k[1.0] == pytest.approx(512.0)
    assert k[0.9] == pytest.approx(256.0)  # ceil(9.0) = 9 -> lambda_9 = 2
    assert k[0.5] == pytest.approx(16.0)  # ceil(5.0) = 5 -> lambda_5 = 32
    assert k[0.1] == pytest.approx(1.0)
    k0 = generalized_condition_numbers(torch.tensor([3.0, 1.0, 0.0, -1e-18]), (1.0, 0.5))
    assert k0[1.0] == math.inf and k0[0.5] == pytest.approx(3.0)
    assert math.isnan(generalized_condition_numbers(torch.zeros(3), (1.0,))[1.0])


# --------------------------------------------------------------------------- gradients
def test_output_grad_and_domination_match_hand_computation():
    gen = torch.Generator().manual_seed(3)
    n, d_in, d_out = 300, 6, 4
    x = torch.randn(n, d_in, generator=gen).to(DEVICE)
    y = torch.randn(n, d_out, generator=gen).to(DEVICE)
    layer = nn.Linear(d_in, d_out).to(DEVICE)

    res = analyze_layers(layer, lambda: nn.functional.mse_loss(layer(x), y), max_samples=None)
    lc = res["root"]

    # MSE (mean over n*d_out elements): dL/dh = 2 (h - y) / (n d_out); per-sample delta = n dL/dh.
    h = _np(layer(x))
    g = 2.0 * (h - _np(y)) / (n * d_out)
    delta = n * g
    ev_d = np.sort(np.linalg.eigvalsh(delta.T @ delta / n))[::-1]
    np.testing.assert_allclose(lc.output_grad.eigvals.numpy(), ev_d, rtol=1e-5, atol=1e-12)
    assert lc.output_grad.kappa[1.0] == pytest.approx(ev_d[0] / ev_d[-1], rel=1e-4)

    # FIM estimate: kappa of the Kronecker product = product of kappas.
    assert lc.fim.kappa[1.0] == pytest.approx(lc.input.kappa[1.0] * lc.output_grad.kappa[1.0], rel=1e-9)
    assert lc.fim.lambda_max == pytest.approx(lc.input.lambda_max * lc.output_grad.lambda_max, rel=1e-9)

    # Domination ratio against autograd's weight gradient.
    layer.zero_grad()
    nn.functional.mse_loss(layer(x), y).backward()
    dw = _np(layer.weight.grad)
    np.testing.assert_allclose(dw, g.T @ _np(x), rtol=1e-4, atol=1e-7)  # sanity of the hand computation
    expected = np.linalg.norm(dw, 2) / np.linalg.norm(_np(layer.weight), 2)
    assert lc.domination == pytest.approx(expected, rel=1e-4)

    # loss_reduction="sum": delta = dL/dh, i.e. lambda_max scaled by 1/n^2, kappas unchanged.
    lc_s = analyze_layers(layer, lambda: nn.functional.mse_loss(layer(x), y), max_samples=None, loss_reduction="sum")[
        "root"
    ]
    assert lc_s.output_grad.lambda_max == pytest.approx(lc.output_grad.lambda_max / n**2, rel=1e-9)
    assert lc_s.output_grad.kappa[1.0] == pytest.approx(lc.output_grad.kappa[1.0], rel=1e-9)


def test_analyze_restores_grads_and_matches_context_manager():
    torch.manual_seed(4)
    model = _mlp().to(DEVICE)
    x = torch.randn(256, 5, device=DEVICE)
    y = torch.randn(256, 3, device=DEVICE)
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    m1 = analyze(model, lambda: nn.functional.mse_loss(model(x), y), max_samples=100, seed=5)

    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), n
        assert torch.equal(p, params_before[n]), n
    assert _hook_count(model) == 0

    model.zero_grad(set_to_none=True)
    with LayerwiseAnalyzer(model, max_samples=100, seed=5) as a:
        nn.functional.mse_loss(model(x), y).backward()
    assert _hook_count(model) == 0
    m2 = a.compute()
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], rel=1e-9, abs=1e-30), k
    # The analyzed training step left ordinary gradients behind.
    assert all(p.grad is not None for p in model.parameters())


def test_key_scheme_qualified_names_and_multiple_fields():
    class TwoFields(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.coarse = _mlp(depth=2)
            self.fine = nn.ModuleDict({"mlp": _mlp(depth=3)})
            self.unused = nn.Linear(3, 3)  # never called: no capture, no keys

        def forward(self, x):
            return self.coarse(x) + self.fine["mlp"](x)

    torch.manual_seed(6)
    model = TwoFields().to(DEVICE)
    x = torch.randn(64, 5, device=DEVICE)
    m = analyze(model, lambda: model(x).pow(2).mean(), prefix="cond/")
    layers = {k.split("/")[1] for k in m}
    assert layers == {"coarse.0", "coarse.2", "fine.mlp.0", "fine.mlp.2", "fine.mlp.4"}
    per_layer = sorted(k.split("/", 2)[2] for k in m if k.startswith("cond/fine.mlp.2/"))
    assert per_layer == sorted(
        ["sigma_max_w", "sigma_min_w", "kappa_w", "sigma_max_grad_w", "domination"]
        + [f"{g}/{s}" for g in ("input", "output_grad", "fim")
           for s in ("lambda_max", "kappa_p100", "kappa_p90", "kappa_p50", "kappa_nz", "rank")]
        + ["dead_units", "saturated_units"]  # _mlp: every hidden Linear feeds an nn.Tanh
    )
    assert "dead_units" not in {k.rsplit("/", 1)[1] for k in m if k.startswith("cond/fine.mlp.4/")}  # linear head
    assert all(isinstance(v, float) for v in m.values())
    # A layer called on two chunks accumulates both calls: same result as one call on the whole batch.
    chunked = analyze(model, lambda: model(x[:40]).pow(2).sum() + model(x[40:]).pow(2).sum(), loss_reduction="sum")
    whole = analyze(model, lambda: model(x).pow(2).sum(), loss_reduction="sum")
    assert chunked.keys() == whole.keys()
    for k in whole:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-4), k
    lc = analyze_layers(model, lambda: model(x[:40]).pow(2).sum() + model(x[40:]).pow(2).sum())
    assert lc["coarse.0"].n_rows == lc["coarse.0"].n_sampled == 64


# --------------------------------------------------------------------------- parametrizations / hooks
def test_parametrized_linear_layers_and_no_hooks_left():
    torch.manual_seed(7)
    model = _mlp(d_in=4, width=8, d_out=2, depth=3)
    for m in model:
        if isinstance(m, nn.Linear):
            weight_norm(m)
    with torch.no_grad():  # make the effective weights differ from a plain re-initialisation
        model[2].parametrizations.weight.original0.mul_(3.0)
    model.to(DEVICE)
    assert parametrize.is_parametrized(model[0])
    assert set(linear_layers(model)) == {"0", "2", "4"}
    x = torch.randn(128, 4, device=DEVICE)
    y = torch.randn(128, 2, device=DEVICE)
    hooks_before = _hook_count(model)

    loss_fn = lambda: nn.functional.mse_loss(model(x), y)  # noqa: E731
    res = analyze_layers(model, loss_fn, max_samples=None)
    assert _hook_count(model) == hooks_before == 0

    for name, idx in (("0", 0), ("2", 2), ("4", 4)):
        w_eff = model[idx].weight  # computed by the parametrization
        s_np = np.linalg.svd(_np(w_eff), compute_uv=False)
        assert res[name].kappa_w == pytest.approx(s_np[0] / s_np[-1], rel=1e-5)
        assert res[name].sigma_max_w == pytest.approx(s_np[0], rel=1e-6)
    # Gradient w.r.t. the *effective* weight (not the parametrization's originals).
    with parametrize.cached():
        w2 = model[2].weight
        (gw,) = torch.autograd.grad(loss_fn(), w2)
    expected = np.linalg.norm(_np(gw), 2) / np.linalg.norm(_np(w2), 2)
    assert res["2"].domination == pytest.approx(expected, rel=1e-4)

    # Detached analyzer: later forwards capture nothing.
    a = LayerwiseAnalyzer(model)
    with a:
        loss_fn().backward()
    before = a.compute()
    loss_fn().backward()
    assert a.compute() == before
    assert _hook_count(model) == 0


def test_hooks_removed_on_exception_and_errors():
    model = _mlp()
    x = torch.randn(8, 5)

    def bad_loss():
        model(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        analyze(model, bad_loss)
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="no nn.Linear"):
        LayerwiseAnalyzer(nn.Sequential(nn.Tanh())).attach()
    with pytest.raises(RuntimeError, match="nothing captured"):
        LayerwiseAnalyzer(model).compute()


def test_analysis_does_not_import_nerfstudio():
    """No module of wcnerf.analysis imports nerfstudio (or any other wcnerf package); every
    one is pure torch: it imports only the stdlib, torch and itself."""
    import ast
    from pathlib import Path

    import wcnerf.analysis

    pure = {"__init__.py", "layerwise.py", "spectral.py", "hessian.py", "curves.py"}
    allowed = {"torch", "math", "statistics", "weakref", "collections", "dataclasses", "typing", "__future__"}
    files = sorted(Path(wcnerf.analysis.__file__).parent.glob("*.py"))
    assert pure <= {f.name for f in files}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & {"nerfstudio", "wcnerf"}, f"{f.name} imports {roots & {'nerfstudio', 'wcnerf'}}"
            assert roots <= allowed, f"{f.name} imports {roots - allowed}"


# --------------------------------------------------------------------------- nonzero spectrum, dead units
def test_kappa_over_nonzero_eigenvalues_with_a_known_zero_eigenvalue():
    """Σx = Q diag(4, 2, 0.5, 0) Q^T: kappa_p100 = inf, kappa_nz = 4 / 0.5 = 8, rank 3."""
    gen = torch.Generator().manual_seed(10)
    n, d = 2000, 4
    lam = torch.tensor([4.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    x = (_whitened(n, d, gen) * lam.sqrt()) @ q.T  # (1/n) X^T X = Q diag(lam) Q^T, one exact null direction
    layer = nn.Linear(d, 3, dtype=torch.float64)
    lc = analyze_layers(layer, lambda: layer(x).pow(2).mean(), max_samples=None)["root"]
    assert lc.input.kappa[1.0] == math.inf
    assert lc.input.kappa_nz == pytest.approx(8.0, rel=1e-9)
    assert lc.input.rank == 3
    assert lc.input.kappa[0.5] == pytest.approx(2.0, rel=1e-9)  # k = ceil(0.5 * 4) = 2 -> lambda_2 = 2
    m = lc.metrics()
    assert m["root/input/kappa_nz"] == pytest.approx(8.0, rel=1e-9) and m["root/input/rank"] == 3.0
    # The FIM estimate's nonzero spectrum is the product of the nonzero spectra.
    assert lc.fim.kappa_nz == pytest.approx(lc.input.kappa_nz * lc.output_grad.kappa_nz, rel=1e-9)
    assert lc.fim.rank == lc.input.rank * lc.output_grad.rank

    # Tolerance rule: an eigenvalue counts as nonzero iff it is above rel_tol * lambda_1,
    # rel_tol = d * eps(float64) by default.
    ev = torch.tensor([4.0, 2.0, 0.5, 1e-20], dtype=torch.float64)
    assert default_rel_tol(4) == 4 * torch.finfo(torch.float64).eps
    assert nonzero_condition_number(ev) == pytest.approx(8.0)
    assert numerical_rank(ev) == 3
    assert nonzero_condition_number(ev, rel_tol=1e-22) == pytest.approx(4e20)
    assert numerical_rank(ev, rel_tol=1e-22) == 4
    tiny_but_real = torch.tensor([4.0, 4.0 * 5 * torch.finfo(torch.float64).eps], dtype=torch.float64)
    assert nonzero_condition_number(tiny_but_real) == pytest.approx(1.0 / (5 * torch.finfo(torch.float64).eps))
    assert math.isnan(nonzero_condition_number(torch.zeros(3)))


def test_dead_and_saturated_units_of_constructed_layers():
    """ReLU layer with 2 dead units (zero weights, negative bias) and one unit alive on a single
    row; tanh layer with 2 units pinned in the flat region; counts, and the next layer's input rank."""
    d_in, width, n = 3, 6, 50
    x = torch.rand(n, d_in, dtype=torch.float64)  # inputs in [0, 1)
    x[0] = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)  # the only row with x_0 = 1
    model = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, 4), nn.Tanh(), nn.Linear(4, 1))
    model.double()
    with torch.no_grad():
        l0, l2 = model[0], model[2]
        l0.weight.copy_(torch.rand(width, d_in, dtype=torch.float64) + 0.1)
        l0.bias.fill_(0.0)
        for dead in (1, 4):  # output relu(0 * x - 1) = 0 on every row
            l0.weight[dead].zero_()
            l0.bias[dead] = -1.0
        l0.weight[5] = torch.tensor([1.0, 0.0, 0.0])  # h = x_0 - 0.9999: positive on row 0 only
        l0.bias[5] = -0.9999
        l2.weight.mul_(0.01)
        l2.bias.copy_(torch.tensor([10.0, -10.0, 0.0, 0.5]))  # units 0, 1: |h| ~ 10 > 2.99 always
    x[1:, 0] = x[1:, 0].clamp(max=0.99)
    res = analyze_layers(model, lambda: model(x).pow(2).mean(), max_samples=None)
    assert res["0"].activation == "relu"
    assert res["0"].dead_units == 2 and res["0"].saturated_units == 2  # unit 5 lives (on one row)
    assert res["2"].activation == "tanh"
    assert res["2"].dead_units == 0 and res["2"].saturated_units == 2
    assert res["4"].activation is None and res["4"].dead_units is None
    # The two dead ReLUs are two zero features of layer 2's input: rank 6 - 2, kappa_p100 = inf.
    assert res["2"].input.rank == width - 2 and res["2"].input.kappa[1.0] == math.inf
    assert math.isfinite(res["2"].input.kappa_nz)
    m = analyze(model, lambda: model(x).pow(2).mean(), max_samples=8)  # counts use all rows anyway
    assert m["0/dead_units"] == 2.0 and m["2/saturated_units"] == 2.0 and "4/dead_units" not in m
    assert _hook_count(model) == 0

    # A functional activation is not seen; `activations=` names it.
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = model[0]
            self.head = nn.Linear(width, 1, dtype=torch.float64)

        def forward(self, z):
            return self.head(torch.relu(self.lin(z)))

    f = Functional()
    assert analyze_layers(f, lambda: f(x).sum())["lin"].dead_units is None
    lc = analyze_layers(f, lambda: f(x).sum(), activations={"lin": "relu"})["lin"]
    assert lc.dead_units == 2 and lc.activation == "relu"
    with pytest.raises(ValueError, match="unknown activation"):
        LayerwiseAnalyzer(f, activations={"lin": "swish"})


def test_unit_activity_flat_regions():
    h = torch.tensor([[-1.0, 0.0, 3.5, -7.0, 0.2], [-2.0, 0.0, 4.0, -6.5, 0.1]])
    alive, live = unit_activity("relu", h)
    assert alive.tolist() == [0, 0, 2, 0, 2] and live.tolist() == alive.tolist()
    alive, live = unit_activity("tanh", h)  # 1 - tanh^2 < 0.01 iff |h| > 2.993
    assert alive.tolist() == [2, 0, 2, 2, 2] and live.tolist() == [2, 2, 0, 0, 2]
    alive, live = unit_activity("sigmoid", h)  # 4 s (1 - s) < 0.01 iff |h| > 5.99
    assert alive.tolist() == [2] * 5 and live.tolist() == [2, 2, 2, 0, 2]
    alive, live = unit_activity("leaky_relu", h, negative_slope=0.001)
    assert alive.tolist() == [2, 0, 2, 2, 2] and live.tolist() == [0, 2, 2, 0, 2]
    _, live = unit_activity("leaky_relu", h, negative_slope=0.2)
    assert live.tolist() == [2] * 5
    _, live = unit_activity("softplus", h)  # sigmoid(h) < 0.01 iff h < -4.6
    assert live.tolist() == [2, 2, 2, 0, 2]


def _relu_probe(kind: nn.Module = None) -> nn.Sequential:
    """Linear(2, 5) + activation with hand-set units: 0 dead (h = -1), 1 full (h = +1), 2 h = x0,
    3 h = -x0, 4 h = x1; then a linear head."""
    model = nn.Sequential(nn.Linear(2, 5), kind if kind is not None else nn.ReLU(), nn.Linear(5, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0]))
    return model


# x0 > 0 on every row of b1, of both signs in b2; x1 of both signs in both.
_B1 = torch.tensor([[0.5, -1.0], [2.0, 1.0], [0.1, 0.3]], dtype=torch.float64)
_B2 = torch.tensor([[-0.5, 1.0], [1.0, -2.0]], dtype=torch.float64)


def test_full_units_beside_dead_ones_hand_built():
    """On b1 alone units 0 and 3 are dead and 1 and 2 full; over b1 and b2 only unit 0 is dead
    and only unit 1 full: a unit is dead / full only if so on every row of every batch."""
    model = _relu_probe()
    lc = analyze_layers(model, lambda: model(_B1).sum(), max_samples=None)["0"]
    assert (lc.dead_units, lc.full_units, lc.saturated_units) == (2, 2, 2)  # ReLU: saturated = dead
    assert analyze(model, lambda: model(_B1).sum())["0/full_units"] == 2.0
    lc2 = analyze_layers(model, lambda: model(_B2).sum(), max_samples=None)["0"]
    assert (lc2.dead_units, lc2.full_units) == (1, 1)
    both = count_units(model, [_B1, _B2])
    assert set(both) == {"0"}  # the head has no activation
    u = both["0"]
    assert (u.activation, u.units, u.rows, u.dead_units, u.full_units, u.saturated_units) == ("relu", 5, 5, 1, 1, 1)
    assert u.metrics("cond/") == {"cond/0/dead_units": 1.0, "cond/0/saturated_units": 1.0, "cond/0/full_units": 1.0}
    assert (count_units(model, [_B1])["0"].dead_units, count_units(model, [_B1])["0"].full_units) == (2, 2)
    assert _hook_count(model) == 0
    # The same accumulation with an attached analyzer over two forward passes (spectra included).
    with LayerwiseAnalyzer(model, max_samples=None) as a:
        model(_B1).sum().backward()
        model(_B2).sum().backward()
    lc12 = a.compute_layers()["0"]
    assert (lc12.dead_units, lc12.full_units, lc12.n_rows) == (1, 1, 5)
    # count_units with a custom forward (batches as dicts) and a functional activation.
    f = lambda batch: model[2](torch.relu(model[0](batch["x"])))  # noqa: E731
    got = count_units(model, [{"x": _B1}, {"x": _B2}], forward=f, activations={"0": "relu"})["0"]
    assert (got.dead_units, got.full_units) == (1, 1)


def test_full_units_only_for_relu_like_activations():
    """Leaky ReLU: full = h > 0 on every row (its identity piece), dead needs h == 0; tanh and
    sigmoid have no identity piece: no full_units."""
    leaky = _relu_probe(nn.LeakyReLU(0.1))
    u = count_units(leaky, [_B1, _B2])["0"]
    assert (u.activation, u.full_units, u.dead_units) == ("leaky_relu", 1, 0)
    for act, kind in ((nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid")):
        model = _relu_probe(act)
        u = count_units(model, [_B1, _B2])["0"]
        assert u.activation == kind and u.full_units is None
        m = analyze(model, lambda: model(_B1).sum())
        assert "0/full_units" not in m and "0/dead_units" in m
    h = torch.tensor([[1.0, -1.0, 0.0], [2.0, 3.0, 0.0]])
    assert unit_on_rows("relu", h).tolist() == [2, 1, 0]  # h == 0 is not on the identity piece
    assert unit_on_rows("leaky_relu", h).tolist() == [2, 1, 0]
    assert unit_on_rows("softplus", h) is None


def test_enerf_model_writes_kappa_nz_and_dead_units(monkeypatch, request):
    """The E-NeRF model's analysis callback sends kappa_nz and the dead / saturated unit counts
    (per layer and per-field totals) to nerfstudio's writer, and the panel tables show them."""
    pytest.importorskip("nerfstudio")
    from support.nerf_models import build, callback_train_step, training_callbacks  # first: nerfstudio's import order

    from nerfstudio.utils import writer

    request.getfixturevalue("offline_hub")  # no LPIPS weights (conftest.py), once nerfstudio is there
    logged = {}
    monkeypatch.setattr(writer, "put_scalar", lambda name, scalar, step: logged.__setitem__(name, scalar))
    model = build(analysis_every=1, analysis_max_samples=64)
    model.train()
    callbacks, opts = training_callbacks(model)
    callback_train_step(model, callbacks, opts, 0)
    for field in ("coarse", "fine"):
        assert f"analysis/{field}/mlp_base.layers.1/input/kappa_nz" in logged
        assert f"analysis/{field}/mlp_base.layers.0/dead_units" in logged  # nn.ReLU after it
        assert f"analysis/{field}/field_heads.0.net/saturated_units" in logged  # nn.Sigmoid rgb head
        assert "analysis/{}/field_output_density.net/dead_units".format(field) not in logged  # functional
        per_layer = sum(v for k, v in logged.items() if k.startswith(f"analysis/{field}/") and k.endswith("/dead_units")
                        and "/total/" not in k)
        assert logged[f"analysis/{field}/total/dead_units"] == per_layer
    table = model.conditioning_panel.tables["coarse"]
    assert table.splitlines()[0].endswith("| κ₊(Σx) | κ₊(Σδ) | dead | sat. |")
    assert all(isinstance(v, float) for v in logged.values())
