"""Full loss Hessian of a small model w.r.t. its *stored* parameters, and its spectrum (pure torch).

For checking the weight-conditioning paper's central claim (Saratchandran, Wang & Lucey,
ECCV 2024: weight conditioning / equilibration lowers the condition number of the loss
Hessian) on models small enough for a dense ``d x d`` Hessian (``d`` up to a few thousand).

What is differentiated. The parameters are ``module.named_parameters()``: for a layer
conditioned with ``torch.nn.utils.parametrize`` (``wcnerf.conditioning``'s equilibration,
weight normalization, ...) these are the *stored* tensors (``...parametrizations.weight.original``,
``original0``/``original1``), the ones the optimizer updates, not the effective weight the
forward pass multiplies by. They are flattened in ``named_parameters()`` order into one vector
``theta`` (float64 by default); the loss is evaluated at ``theta`` with
:func:`torch.func.functional_call`, so the module itself is never modified.

- :func:`loss_hessian`: ``H = d²L/dθ²`` (``d x d``), row by row by double backward (exact up
  to rounding; the same as ``torch.autograd.functional.hessian`` without vectorisation, which
  also works for parametrizations without forward-mode AD, e.g. torch's weight norm), then
  symmetrised ``(H + H^T) / 2``.

  torch's weight-norm parametrization (``torch.nn.utils.parametrizations.weight_norm``, the
  registry's ``weight-norm``) computes ``W = g v / ||v||`` with the fused ``torch._weight_norm``,
  whose *second* derivative is wrong on the CPU (torch 2.14: Hessians off by O(1) even for a
  loss linear in ``W``, while first derivatives are right; ``torch.autograd.functional.hessian``
  and ``torch.func.jacrev(grad)`` give the same wrong matrix). While a Hessian is computed, such
  parametrizations are therefore swapped for the same formula written with ``vector_norm``
  (restored afterwards); tests/test_hessian.py checks the result against finite differences.
- :func:`gauss_newton`: ``G = scale · J^T J`` with ``J = d vec(module(x)) / dθ``; for a squared
  error ``L = c Σ_i ||f(x_i) - y_i||²`` the Gauss-Newton matrix is ``G`` with ``scale = 2c``
  (``L = ||f - y||² / (2n)``: ``scale = 1/n``). ``H = G + Σ_i r_i ∇²f_i`` (residual term), so
  ``G`` is the positive semi-definite part of the curvature that does not depend on the residual.

Spectrum of an indefinite matrix (:class:`HessianSpectrum`). Away from a minimum the Hessian
has negative eigenvalues, so the condition number is taken over ``|λ|``:

- tolerance: ``tol = rel_tol · max|λ|`` with ``rel_tol = d · eps(dtype)`` by default
  (``d`` = matrix size; the rank rule of LAPACK / ``numpy.linalg.matrix_rank``: an eigenvalue
  below it cannot be told apart from the rounding of an exact zero). ``|λ| <= tol`` is zero.
- ``kappa_abs = max|λ| / min{|λ| : |λ| > tol}``: condition number over the nonzero ``|λ|``;
  ``rank`` = their number.
- ``kappa_pos = λ_max / min{λ : λ > tol}``: the positive part alone.
- ``n_negative`` = ``#{λ < -tol}``, ``n_positive`` = ``#{λ > tol}``.
- ``min_nonzero_abs / tol`` says whether ``kappa_abs`` is a property of the matrix or of the
  tolerance: a spectrum that decays continuously into the rounding floor has its smallest
  "nonzero" ``|λ|`` just above ``tol``, and ``kappa_abs ≈ 1 / rel_tol`` then only bounds the
  true value from below.
- generalised ``kappa_abs_p = max|λ| / |λ|_(k)``, ``k = ceil(p · d)`` over ``|λ|`` sorted in
  descending order (Huang et al.'s ``kappa_p``; ``inf`` when ``|λ|_(k)`` is zero), and the
  quantiles of ``|λ|`` over all ``d`` eigenvalues: the spread without the tolerance's influence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from .spectral import rank_index

__all__ = [
    "HessianSpectrum",
    "ParamLayout",
    "flat_parameters",
    "gauss_newton",
    "hessian_spectrum",
    "loss_gradient",
    "loss_hessian",
]

ModelFn = Callable[..., Tensor]
LossFn = Callable[[ModelFn], Tensor]


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a module's stored parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``theta`` (``d``) -> ``{name: tensor}`` views, for :func:`torch.func.functional_call`."""
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}

    def slices(self) -> dict[str, tuple[int, int]]:
        """``{name: (start, stop)}`` of each parameter in the flat vector."""
        out, start = {}, 0
        for n, k in zip(self.names, self.sizes):
            out[n] = (start, start + k)
            start += k
        return out


def flat_parameters(module: nn.Module, dtype: torch.dtype = torch.float64, *, trainable_only: bool = True) -> tuple[Tensor, ParamLayout]:
    """The stored parameters of ``module`` as one detached vector (``dtype``) and their layout."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad or not trainable_only]
    if not named:
        raise ValueError("module has no (trainable) parameter")
    layout = ParamLayout(tuple(n for n, _ in named), tuple(p.shape for _, p in named))
    theta = torch.cat([p.detach().reshape(-1).to(dtype) for _, p in named])
    return theta, layout


class _DecomposedWeightNorm(nn.Module):
    """``W = v · g / ||v||`` (norm over all dims but ``dim``; whole tensor for ``dim = -1``), as
    torch's ``_WeightNorm`` computes it, but from differentiable primitives (correct 2nd derivatives)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        if self.dim == -1:
            norm = torch.linalg.vector_norm(weight_v)
        else:
            keep = self.dim % weight_v.ndim
            dims = [i for i in range(weight_v.ndim) if i != keep]
            norm = torch.linalg.vector_norm(weight_v, dim=dims, keepdim=True)
        return weight_v * (weight_g / norm)


def _swap_fused_weight_norm(module: nn.Module) -> list[tuple[nn.ModuleList, int, nn.Module]]:
    """Replace torch's ``_WeightNorm`` parametrizations by :class:`_DecomposedWeightNorm`;
    returns what to put back (see the module docstring)."""
    fused = getattr(torch.nn.utils.parametrizations, "_WeightNorm", None)
    if fused is None:
        return []
    swapped = []
    for m in module.modules():
        if isinstance(m, torch.nn.utils.parametrize.ParametrizationList):
            for i, par in enumerate(m):
                if type(par) is fused:
                    m[i] = _DecomposedWeightNorm(par.dim)
                    swapped.append((m, i, par))
    return swapped


def _restore(swapped: list[tuple[nn.ModuleList, int, nn.Module]]) -> None:
    for m, i, par in swapped:
        m[i] = par


def _model_at(module: nn.Module, layout: ParamLayout, theta: Tensor, dtype: torch.dtype) -> ModelFn:
    params = layout.unflatten(theta)

    def model(*args, **kwargs):
        args = tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
        return functional_call(module, params, args, kwargs)

    return model


def _scalar(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    return loss.reshape(())


def loss_gradient(module: nn.Module, loss_fn: LossFn, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``dL/dθ`` (``d``) w.r.t. the stored parameters; ``loss_fn(model)`` calls ``model`` like the module."""
    theta, layout = flat_parameters(module, dtype)
    th = theta.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = _scalar(loss_fn(_model_at(module, layout, th, dtype)))
        (g,) = torch.autograd.grad(loss, th, allow_unused=True)
    return torch.zeros_like(theta) if g is None else g.detach()


def loss_hessian(
    module: nn.Module,
    loss_fn: LossFn,
    *,
    dtype: torch.dtype = torch.float64,
    symmetrize: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Dense Hessian ``d²L/dθ²`` (``d x d``, ``dtype``) w.r.t. the stored parameters of ``module``.

    ``loss_fn(model)`` must compute the scalar loss by calling ``model(*inputs)`` in place of
    the module (floating-point tensor arguments are cast to ``dtype``; the parameters are
    ``dtype`` copies, so the module's own dtype does not matter). Example::

        H = loss_hessian(mlp, lambda f: ((f(x) - y) ** 2).mean() / 2)

    ``progress(i, d)`` is called every 64 rows. ``symmetrize`` returns ``(H + H^T) / 2`` (the
    rows come from separate backward passes; their asymmetry is at rounding level).
    """
    theta, layout = flat_parameters(module, dtype)
    d = theta.numel()
    th = theta.clone().requires_grad_(True)
    H = torch.zeros(d, d, dtype=dtype, device=theta.device)
    swapped = _swap_fused_weight_norm(module)
    try:
        with torch.enable_grad():
            loss = _scalar(loss_fn(_model_at(module, layout, th, dtype)))
            (g,) = torch.autograd.grad(loss, th, create_graph=True, allow_unused=True)
            if g is None or not g.requires_grad:  # loss at most linear in theta
                return H
            for i in range(d):
                (row,) = torch.autograd.grad(g[i], th, retain_graph=i < d - 1, allow_unused=True)
                if row is not None:
                    H[i] = row.detach()
                if progress is not None and (i % 64 == 0 or i == d - 1):
                    progress(i + 1, d)
    finally:
        _restore(swapped)
    return 0.5 * (H + H.T) if symmetrize else H


def gauss_newton(
    module: nn.Module,
    *inputs: Tensor,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = 128,
) -> Tensor:
    """``scale · J^T J`` with ``J = d vec(module(*inputs)) / dθ`` (stored parameters; see module doc)."""
    theta, layout = flat_parameters(module, dtype)

    def outputs(th: Tensor) -> Tensor:
        return _model_at(module, layout, th, dtype)(*inputs).reshape(-1)

    swapped = _swap_fused_weight_norm(module)  # first derivatives are right; this one vmaps faster
    try:
        J = jacrev(outputs, chunk_size=chunk_size)(theta)
    finally:
        _restore(swapped)
    return scale * (J.T @ J)


@dataclass
class HessianSpectrum:
    """Spectrum summary of a symmetric (possibly indefinite) matrix; definitions in the module doc."""

    eigvals: Tensor  # descending, float64, CPU
    d: int
    rel_tol: float
    tol: float  # rel_tol * max|λ|
    lambda_max: float
    lambda_min: float
    abs_max: float
    min_nonzero_abs: float  # smallest |λ| above tol (nan if none)
    rank: int  # #{|λ| > tol}
    n_positive: int
    n_negative: int
    kappa_abs: float
    kappa_pos: float
    kappa_abs_p: dict[float, float] = field(default_factory=dict)
    abs_quantiles: dict[float, float] = field(default_factory=dict)

    @classmethod
    def from_eigvals(
        cls,
        eigvals: Tensor,
        *,
        rel_tol: float | None = None,
        ps: Sequence[float] = (0.9, 0.5, 0.25),
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        eps_dtype: torch.dtype = torch.float64,
    ) -> HessianSpectrum:
        ev = torch.sort(eigvals.detach().to("cpu", torch.float64).flatten(), descending=True).values
        d = ev.numel()
        if d == 0:
            raise ValueError("empty spectrum")
        rtol = d * torch.finfo(eps_dtype).eps if rel_tol is None else float(rel_tol)
        a = ev.abs()
        amax = a.max().item()
        tol = rtol * amax
        nz = a[a > tol]
        pos = ev[ev > tol]
        kappa_abs = amax / nz.min().item() if nz.numel() else math.nan
        kappa_pos = pos.max().item() / pos.min().item() if pos.numel() else math.nan
        a_desc = torch.where(a > tol, a, torch.zeros_like(a)).sort(descending=True).values
        kp = {}
        for p in ps:
            ak = a_desc[rank_index(p, d)].item()
            kp[p] = math.nan if amax == 0 else (math.inf if ak == 0 else amax / ak)
        qs = {q: torch.quantile(a, q).item() for q in quantiles}
        return cls(
            eigvals=ev,
            d=d,
            rel_tol=rtol,
            tol=tol,
            lambda_max=ev[0].item(),
            lambda_min=ev[-1].item(),
            abs_max=amax,
            min_nonzero_abs=nz.min().item() if nz.numel() else math.nan,
            rank=int(nz.numel()),
            n_positive=int(pos.numel()),
            n_negative=int((ev < -tol).sum().item()),
            kappa_abs=kappa_abs,
            kappa_pos=kappa_pos,
            kappa_abs_p=kp,
            abs_quantiles=qs,
        )

    def summary(self) -> dict[str, float]:
        """Flat ``dict[str, float]`` (no eigenvalues) for JSON / tables."""
        out = {
            "d": float(self.d),
            "rel_tol": self.rel_tol,
            "tol": self.tol,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "abs_max": self.abs_max,
            "min_nonzero_abs": self.min_nonzero_abs,
            "rank": float(self.rank),
            "n_positive": float(self.n_positive),
            "n_negative": float(self.n_negative),
            "kappa_abs": self.kappa_abs,
            "kappa_pos": self.kappa_pos,
        }
        for p, k in self.kappa_abs_p.items():
            out[f"kappa_abs_p{round(p * 100)}"] = k
        for q, v in self.abs_quantiles.items():
            out[f"abs_q{round(q * 100)}"] = v
        return out


def hessian_spectrum(H: Tensor, *, rel_tol: float | None = None, **kwargs) -> HessianSpectrum:
    """:class:`HessianSpectrum` of a symmetric matrix (``eigvalsh`` in float64 on the CPU).

    The default tolerance uses ``eps`` of ``H``'s dtype when it is float32/float64."""
    eps_dtype = H.dtype if H.dtype in (torch.float32, torch.float64) else torch.float64
    M = H.detach().to("cpu", torch.float64)
    ev = torch.linalg.eigvalsh(0.5 * (M + M.T))
    return HessianSpectrum.from_eigvals(ev, rel_tol=rel_tol, eps_dtype=eps_dtype, **kwargs)
