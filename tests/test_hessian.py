"""Tests for wcnerf.analysis.hessian (full loss Hessian w.r.t. stored parameters, its spectrum)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from wcnerf.analysis.hessian import (
    flat_parameters,
    gauss_newton,
    hessian_spectrum,
    loss_gradient,
    loss_hessian,
)

EPS = torch.finfo(torch.float64).eps


def _least_squares(n=40, p=5, rank_deficient=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    if rank_deficient:
        X[:, 4] = X[:, 0] - 2.0 * X[:, 1]  # exact linear dependence: X^T X has one zero eigenvalue
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    lin = nn.Linear(p, 1, bias=False, dtype=torch.float64)
    return X, y, lin


def test_linear_least_squares_hessian_is_xtx_over_n_with_closed_form_kappa():
    X, y, lin = _least_squares()
    n = X.shape[0]
    H = loss_hessian(lin, lambda f: ((f(X) - y) ** 2).sum() / (2 * n))
    torch.testing.assert_close(H, X.T @ X / n, rtol=1e-12, atol=1e-14)
    ev = torch.linalg.eigvalsh(X.T @ X)  # closed form: kappa = lambda_max / lambda_min of X^T X
    s = hessian_spectrum(H)
    assert s.kappa_abs == pytest.approx((ev.max() / ev.min()).item(), rel=1e-9)
    assert s.kappa_pos == pytest.approx(s.kappa_abs, rel=1e-12)
    assert s.lambda_max == pytest.approx(ev.max().item() / n, rel=1e-12)
    assert s.n_negative == 0 and s.rank == 5 and s.n_positive == 5
    assert s.rel_tol == 5 * EPS  # d * eps(float64)
    # Gauss-Newton of a linear model is its Hessian (no residual term): J = X, scale 1/n.
    torch.testing.assert_close(gauss_newton(lin, X, scale=1.0 / n), H, rtol=1e-12, atol=1e-14)


def test_rank_deficient_least_squares_uses_the_tolerance_rule():
    X, y, lin = _least_squares(rank_deficient=True)
    n = X.shape[0]
    H = loss_hessian(lin, lambda f: ((f(X) - y) ** 2).sum() / (2 * n))
    ev = torch.sort(torch.linalg.eigvalsh(X.T @ X / n), descending=True).values
    tol = 5 * EPS * ev.abs().max()
    assert ev[-1].abs() <= tol  # the dependent column: a numerically zero eigenvalue
    s = hessian_spectrum(H)
    assert s.rank == 4 and s.n_negative == 0
    assert s.kappa_abs == pytest.approx((ev[0] / ev[3]).item(), rel=1e-8)  # over the 4 nonzero
    assert s.kappa_abs_p[0.9] == math.inf  # k = ceil(0.9 * 5) = 5: the zero eigenvalue
    # A looser tolerance drops the smallest nonzero eigenvalue too.
    loose = hessian_spectrum(H, rel_tol=1.01 * (ev[3] / ev[0]).item())
    assert loose.rank == 3 and loose.kappa_abs == pytest.approx((ev[0] / ev[2]).item(), rel=1e-8)


def test_indefinite_spectrum_counts_and_kappas():
    ev = torch.tensor([8.0, 2.0, 1e-20, -0.5, -4.0], dtype=torch.float64)
    s = hessian_spectrum(torch.diag(ev))
    assert (s.lambda_max, s.lambda_min, s.abs_max) == (8.0, -4.0, 8.0)
    assert (s.rank, s.n_positive, s.n_negative) == (4, 2, 2)
    assert s.kappa_abs == pytest.approx(16.0)  # 8 / 0.5
    assert s.kappa_pos == pytest.approx(4.0)  # 8 / 2
    assert s.kappa_abs_p[0.5] == pytest.approx(4.0)  # |λ| desc 8, 4, 2, .5, 0: k = 3 -> 8 / 2
    assert s.abs_quantiles[0.5] == pytest.approx(2.0)
    assert set(s.summary()) >= {"kappa_abs", "kappa_pos", "n_negative", "rank", "abs_q50", "kappa_abs_p90"}


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)).double()


def _fd_hessian(module, x, y, h=1e-5):
    """Central differences of the autograd gradient of the module itself (no functional_call)."""
    params = [p for p in module.parameters()]

    def grad_at(theta):
        torch.nn.utils.vector_to_parameters(theta, params)
        module.zero_grad()
        (((module(x) - y) ** 2).mean() / 2).backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    theta0 = torch.nn.utils.parameters_to_vector(params).detach().clone()
    cols = []
    for j in range(theta0.numel()):
        e = torch.zeros_like(theta0)
        e[j] = h
        cols.append((grad_at(theta0 + e) - grad_at(theta0 - e)) / (2 * h))
    torch.nn.utils.vector_to_parameters(theta0, params)
    return torch.stack(cols, 1)


@pytest.mark.parametrize("conditioner", ["none", "equilibrate-out", "equilibrate-in", "equilibrate-both", "weight-norm"])
def test_mlp_hessian_matches_finite_differences_of_the_gradient(conditioner):
    from wcnerf.conditioning import available, condition

    if conditioner not in available():
        pytest.skip(f"{conditioner} not registered")
    mlp = _tiny_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = condition(mlp, conditioner)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.rand(16, 1, generator=g, dtype=torch.float64)
    loss = lambda f: ((f(x) - y) ** 2).mean() / 2  # noqa: E731
    theta, layout = flat_parameters(mlp)
    if conditioner != "none":  # the stored parameters, not the effective weight
        assert any(".parametrizations.weight.original" in n for n in layout.names)
    assert layout.numel == theta.numel() == sum(p.numel() for p in mlp.parameters())

    H = loss_hessian(mlp, loss)
    Hfd = _fd_hessian(mlp, x, y)
    torch.testing.assert_close(H, 0.5 * (Hfd + Hfd.T), rtol=1e-6, atol=1e-8)
    # The gradient through functional_call is the module's own autograd gradient.
    mlp.zero_grad()
    loss(mlp).backward()
    torch.testing.assert_close(loss_gradient(mlp, loss), torch.cat([p.grad.reshape(-1) for p in mlp.parameters()]))
    # Nothing of the module changed (torch's fused weight norm is swapped back after the Hessian).
    torch.testing.assert_close(flat_parameters(mlp)[0], theta, rtol=0, atol=0)
    if conditioner == "weight-norm":
        fused = torch.nn.utils.parametrizations._WeightNorm
        assert all(type(m.parametrizations.weight[0]) is fused for m in mlp if isinstance(m, nn.Linear))


def test_float32_module_gives_float64_hessian_and_gauss_newton_is_psd():
    mlp = _tiny_mlp().float()
    x = torch.rand(32, 2)
    y = torch.rand(32, 1)
    H = loss_hessian(mlp, lambda f: ((f(x) - y) ** 2).mean() / 2)
    assert H.dtype == torch.float64 and torch.equal(H, H.T)
    G = gauss_newton(mlp, x, scale=1.0 / 32)
    assert G.dtype == torch.float64
    s = hessian_spectrum(G)
    assert s.n_negative == 0 and s.rank <= min(32, G.shape[0])
    # Residual term: H - G vanishes when the targets are the model's own outputs.
    with torch.no_grad():
        y_fit = mlp.double()(x.double())
    H0 = loss_hessian(mlp, lambda f: ((f(x) - y_fit) ** 2).mean() / 2)
    torch.testing.assert_close(H0, gauss_newton(mlp, x, scale=1.0 / 32), rtol=1e-10, atol=1e-13)


def test_hessian_study_script_smoke(tmp_path, capsys):
    """scripts/hessian_study.py end to end on a toy size: table printed, JSON and PNG written."""
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "scripts" / "hessian_study.py"
    spec = importlib.util.spec_from_file_location("hessian_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "h"
    assert mod.main(["--seeds", "2", "--steps", "3", "--grid", "4", "--width", "4", "--hidden", "1",
                     "--conditioners", "none,equilibrate-out,weight-norm", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| none | init |" in text and "| equilibrate-out | trained |" in text and "Paired against `none`" in text
    data = json.loads((out / "hessian_study.json").read_text())
    assert len(data["runs"]) == 2 * 3 * 2  # seeds x conditioners x phases
    r = data["runs"][0]
    assert r["d"] == 4 * 2 + 4 + 4 + 1 and len(r["eigvals"]) == r["d"] and "gauss_newton" in r
    assert (out / "hessian_spectra.png").stat().st_size > 10_000


def test_hessian_study_cells_give_one_finite_seed_no_spread():
    """A κ column where two of three seeds are singular: the one finite value alone, with the
    infinite ones counted; never "± 0.00", which would claim a spread that one seed cannot show."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "hessian_study.py"
    spec = importlib.util.spec_from_file_location("hessian_study_cells", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.fmt_ms([11.23, math.inf, math.inf]) == "11.23 (+2×∞)"
    assert mod.fmt_ms([1.0, 2.0, math.inf]) == f"1.50 ± {math.sqrt(0.5):.2f} (+1×∞)"  # sample std, n-1
    assert mod.fmt_ms([math.inf, math.inf]) == "∞"
