"""Spectral helpers for the layer-wise conditioning analysis (pure torch, float64).

Conventions (Huang et al., "Layer-wise Conditioning Analysis in Exploring the Learning
Dynamics of DNNs", ECCV 2020):

- Eigenvalues are sorted in *descending* order, ``lambda_1 >= ... >= lambda_d``.
- The generalized condition number for a fraction ``p`` in (0, 1] is
  ``kappa_p = lambda_1 / lambda_k`` with ``k = ceil(p * d)`` (1-based rank), so
  ``kappa_p100`` is the ordinary 2-norm condition number ``lambda_max / lambda_min``.
- Eigenvalues at or below ``rel_tol * lambda_1`` are numerically zero; a ``kappa_p`` whose
  ``lambda_k`` is zero is ``inf`` (the matrix is singular at that rank). If the whole matrix
  is zero, ``kappa_p`` is ``nan``.
- The default ``rel_tol`` is ``d * eps(float64)`` (``d`` = matrix size; ``eps`` = 2.2e-16), the
  rank rule of LAPACK / ``numpy.linalg.matrix_rank``: the second moments are accumulated and
  diagonalised in float64, so an eigenvalue below ``d * eps * lambda_1`` cannot be told apart
  from rounding of an exact zero (e.g. 20 features: 4.4e-15; 256 features: 5.7e-14).
- ``kappa_nz = lambda_1 / lambda_r`` over the *nonzero* eigenvalues only, ``lambda_r`` the
  smallest eigenvalue above ``rel_tol * lambda_1`` and ``r`` the numerical rank. A ReLU unit that
  is dead on the batch is an all-zero feature of the next layer's input, hence an exact zero
  eigenvalue of its second moment, which makes ``kappa_p100`` infinite; ``kappa_nz`` is the
  conditioning of the matrix on its range (the directions the data actually span), which is
  what a gradient step can move along. ``kappa_nz = nan`` for the zero matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_PS: tuple[float, ...] = (1.0, 0.9, 0.5)
"""Fractions ``p`` of the spectrum for the generalized condition numbers (100%, 90%, 50%)."""


def default_rel_tol(d: int) -> float:
    """Relative threshold below which an eigenvalue is treated as zero: ``d * eps(float64)``."""
    return max(d, 1) * torch.finfo(torch.float64).eps


def p_key(p: float) -> str:
    """Metric-key suffix for a fraction ``p``: ``1.0 -> "kappa_p100"``, ``0.9 -> "kappa_p90"``."""
    pct = p * 100.0
    if abs(pct - round(pct)) < 1e-9:
        return f"kappa_p{int(round(pct))}"
    return f"kappa_p{pct:g}".replace(".", "_")


def rank_index(p: float, d: int) -> int:
    """0-based index into a descending spectrum of length ``d`` for fraction ``p``.

    ``k = ceil(p * d)`` (1-based), clamped to ``[1, d]``. A small tolerance keeps
    ``ceil(0.9 * 10)`` at 9 despite floating point.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    k = math.ceil(p * d - 1e-9)
    return min(max(k, 1), d) - 1


def clean_spectrum(eigvals: Tensor, rel_tol: float | None = None) -> Tensor:
    """Sort descending (float64, CPU) and set eigenvalues ``<= rel_tol * lambda_1`` to zero."""
    ev = eigvals.detach().to(device="cpu", dtype=torch.float64).flatten()
    ev = torch.sort(ev, descending=True).values
    if ev.numel() == 0:
        return ev
    tol = default_rel_tol(ev.numel()) if rel_tol is None else rel_tol
    lam1 = ev[0].item()
    if lam1 <= 0.0:
        return torch.zeros_like(ev)
    return torch.where(ev > tol * lam1, ev, torch.zeros_like(ev))


def generalized_condition_numbers(
    eigvals: Tensor, ps: Sequence[float] = DEFAULT_PS, *, cleaned: bool = False, rel_tol: float | None = None
) -> dict[float, float]:
    """``{p: kappa_p}`` of a spectrum (any order; cleaned with :func:`clean_spectrum` unless ``cleaned``)."""
    ev = eigvals if cleaned else clean_spectrum(eigvals, rel_tol)
    d = ev.numel()
    out: dict[float, float] = {}
    if d == 0:
        return {p: math.nan for p in ps}
    lam1 = ev[0].item()
    for p in ps:
        lam_k = ev[rank_index(p, d)].item()
        if lam1 <= 0.0:
            out[p] = math.nan
        elif lam_k <= 0.0:
            out[p] = math.inf
        else:
            out[p] = lam1 / lam_k
    return out


def numerical_rank(eigvals: Tensor, rel_tol: float | None = None, *, cleaned: bool = False) -> int:
    """Number of eigenvalues above ``rel_tol * lambda_1`` (cleaned with :func:`clean_spectrum` unless ``cleaned``)."""
    ev = eigvals if cleaned else clean_spectrum(eigvals, rel_tol)
    return int((ev > 0).sum().item())


def nonzero_condition_number(eigvals: Tensor, rel_tol: float | None = None, *, cleaned: bool = False) -> float:
    """``lambda_1 / lambda_r``: the condition number over the nonzero eigenvalues (see module doc).

    ``lambda_r`` is the smallest eigenvalue above ``rel_tol * lambda_1`` (default rel_tol
    ``d * eps(float64)``). Equal to ``kappa_p100`` when the matrix is nonsingular; finite (>= 1)
    whenever the matrix is not zero; ``nan`` for the zero matrix or an empty spectrum.
    """
    ev = eigvals if cleaned else clean_spectrum(eigvals, rel_tol)
    pos = ev[ev > 0]
    if pos.numel() == 0:
        return math.nan
    return pos.max().item() / pos.min().item()


def second_moment_eigvals(gram_sum: Tensor, vec_sum: Tensor, count: int, *, scale: float = 1.0, centered: bool = False) -> Tensor:
    """Eigenvalues (descending, float64) of ``scale * E[v v^T]`` (or of the covariance if ``centered``).

    ``gram_sum = sum_i v_i v_i^T`` and ``vec_sum = sum_i v_i`` over ``count`` rows.
    """
    m = gram_sum.to(torch.float64) / count
    if centered:
        mu = vec_sum.to(torch.float64) / count
        m = m - torch.outer(mu, mu)
    m = 0.5 * (m + m.T) * scale
    ev = torch.linalg.eigvalsh(m.cpu())
    return torch.flip(ev, dims=(0,))


def kronecker_spectrum(ev_a: Tensor, ev_b: Tensor) -> Tensor:
    """Descending eigenvalues of ``A ⊗ B`` from cleaned (non-negative) spectra of ``A`` and ``B``."""
    prod = torch.outer(ev_a.to(torch.float64), ev_b.to(torch.float64)).flatten()
    return torch.sort(prod, descending=True).values
