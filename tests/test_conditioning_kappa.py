"""Equilibration and the 2-norm condition number.

Asserted (van der Sluis, with D = I): ``kappa(E W) <= sqrt(m) kappa(W)``, m = number of rows
(mode out) or columns (mode in) scaled. NOT asserted: the paper's unconditional
``kappa(E W) <= kappa(W)``, which is false in general (``kappa_study`` measures how often it
holds). For ``both`` (two-sided scaling) no bound is known to us: only the fixed example.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wcnerf.conditioning import equilibrate
from wcnerf.conditioning.kappa_study import kappa, measure

D = torch.float64


@st.composite
def matrices(draw):
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, dtype=D, generator=g)
    row_exp = draw(st.floats(0, 4))  # rows and columns scaled over up to 10^(+-4)
    col_exp = draw(st.floats(0, 4))
    W = W * 10 ** (row_exp * (2 * torch.rand(m, 1, generator=g, dtype=D) - 1))
    W = W * 10 ** (col_exp * (2 * torch.rand(1, n, generator=g, dtype=D) - 1))
    if draw(st.booleans()) and min(m, n) > 1:  # nearly rank-deficient
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        S[-1] = S[0] * 10 ** -draw(st.floats(3, 9))
        W = U @ torch.diag(S) @ Vh
    W = W * 10 ** draw(st.floats(-6, 6))  # overall scale is irrelevant
    return W


@pytest.mark.parametrize("mode", ["out", "in"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(W=matrices())
def test_van_der_sluis_bound(mode, W):
    k0 = float(kappa(W))
    assume(math.isfinite(k0) and k0 < 1e12)  # beyond that the float64 SVD itself is unreliable
    m = W.shape[0] if mode == "out" else W.shape[1]
    k1 = float(kappa(equilibrate(W, mode)))
    assert k1 <= math.sqrt(m) * k0 * (1 + 1e-6)


@pytest.mark.parametrize("mode", ["out", "in", "both"])
def test_fixed_badly_scaled_example_gains_orders_of_magnitude(mode):
    g = torch.Generator().manual_seed(0)
    G = torch.randn(9, 9, dtype=D, generator=g)
    rows = torch.logspace(-4, 4, 9, dtype=D)[:, None]
    cols = torch.logspace(4, -4, 9, dtype=D)[None, :]
    W = {"out": rows * G, "in": G * cols, "both": rows * G * cols}[mode]
    k0, k1 = float(kappa(W)), float(kappa(equilibrate(W, mode)))
    assert k0 > 1e7
    assert k1 < 1e-4 * k0 and k1 < 1e4


def test_paper_inequality_fails_sometimes_kappa_study():
    """The unconditional kappa(EW) <= kappa(W) is not a theorem: it fails for some Gaussian
    matrices, and holds for all row-scaled ones under row equilibration (out)."""
    res = measure(n=150, seed=0, modes=("out",), families=("gaussian", "rows-scaled"))
    frac_gauss, _ = res[("out", "gaussian")]
    frac_rows, median_rows = res[("out", "rows-scaled")]
    assert 0.5 < frac_gauss < 1.0
    assert frac_rows == 1.0 and median_rows < 1e-2
