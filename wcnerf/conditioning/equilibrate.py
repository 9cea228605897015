"""Equilibration ("E" of Saratchandran, Wang & Lucey, ECCV 2024) as a weight parametrization.

The effective weight of a conditioned layer is ``E(W)``, a diagonal rescaling of the stored
weight ``W`` recomputed at every forward pass (``torch.nn.utils.parametrize``), so the
optimiser works on ``W`` while the layer always uses a well-scaled matrix.

Modes, named by what they normalise in torch's ``(out, in)`` weight layout:

``out``
    each output neuron's incoming weights (the rows) get unit 2-norm: ``E(W) = D_r^{-1} W``
    with ``D_r = diag(||W[i, :]||)``. This is weight normalization with the gain fixed at 1.
``in``
    each input feature's outgoing weights (the columns) get unit 2-norm: ``W D_c^{-1}``.
``both``
    row-column equilibration: ``iters`` alternating Ruiz-style scalings (divide the rows by
    the square root of their norms, then the columns likewise), then an exact row
    normalisation. Rows end with unit norm, columns with nearly equal norms (about
    ``sqrt(out/in)``; the spread shrinks with ``iters``). Fully differentiable (unrolled).
    Default ``iters=8``, chosen by the column-norm spread it leaves on 64..256-wide matrices
    (docs/results.md, "Row-column equilibration: how many iterations").

Which orientation is the paper's. The paper (arXiv:2409.03424, its definition of weight
conditioning) writes a layer's matrix ``W_k`` as ``(n_{k-1} x n_k)``, inputs by outputs, and
makes ``E_k`` an ``n_{k-1} x n_{k-1}`` diagonal of ``1 / ||(W_k)_{i,:}||``, its row
equilibration: in its own notation each *input* unit's outgoing weights get unit norm, which is
our ``in`` (registry name ``equilibrate-in``). The paper's *column* equilibration, which it
lists among the equilibration variants its results cover, gives unit norm to the columns of its
``W_k``, each *output* unit's incoming weights: our ``out`` (``equilibrate-out``), the rows of
torch's ``(out, in)`` ``nn.Linear.weight``, which is weight normalization with the gain fixed at
1. The two are different methods; the paper's NeRF details are in a supplement we do not have,
so which one its authors ran for NeRF is unknown. The registry's ``equilibrate`` is an alias of
the orientation chosen by measurement (``DEFAULT_MODE`` below); the study and its figures are in
``docs/results.md`` ("Which E is E-NeRF? The orientation study").

Degenerate shapes. Normalising vectors of length 1 leaves only their sign: ``in`` on a layer
with one output (a density or occupancy head ``Linear(n, 1)``), ``out`` on a layer with one
input, ``both`` on either, give ``E(W) = sign(W)``, whose gradient is zero: such a layer would
never train. ``degenerate`` names these cases; ``condition`` leaves them plain (and says so)
unless forced.

What is guaranteed. For the 2-norm, van der Sluis: a matrix whose rows have equal norm is
within ``sqrt(m)`` (m = number of rows scaled) of the best row scaling,
``kappa_2(E W) <= sqrt(m) min_D kappa_2(D W)``; taking ``D = I``,
``kappa_2(E W) <= sqrt(m) kappa_2(W)`` for every shape (the same for columns with ``in``).
The paper's unconditional ``kappa(E W) <= kappa(W)`` is *not* a theorem:
``python -m wcnerf.conditioning.kappa_study`` measures how often it holds. For ``both``
(two-sided scaling) we know of no comparable bound; it is measured, not promised.

Choices the paper leaves open, made here:

* The norm is differentiated through by default (as weight normalization does);
  ``detach=True`` treats the scaling as a constant in the backward pass.
* A zero row (column) is left at zero: norms are clamped below by ``eps`` (1e-12).
* Conv2d weights are read as the ``(out, in/groups*kh*kw)`` im2col matrix (see
  ``_common.as_matrix``): ``out`` normalises each filter, ``in`` each (channel, tap) column.
* Biases are not touched. Nothing is stored: ``E(W)`` is recomputed from the stored ``W`` at
  every forward, so the layer's function changes when it is conditioned (its rows get unit
  norm, whatever the initialisation gave them).
* Half-precision weights (float16, bfloat16) are equilibrated in float32 and the result cast
  back once (``_common.reduction_dtype``): ``E(W)`` is the float32 result rounded once. Under
  ``torch.autocast`` the stored ``W`` is float32 and so is ``E(W)``; autocast casts it for
  the matmul.
* ``W`` is parametrized, not projected: the optimiser updates ``W`` and the gradient flows
  through ``E`` (unlike a post-step renormalisation of the stored weights).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._common import as_matrix, upcast

MODES = ("out", "in", "both")

#: The orientation the registry's ``equilibrate`` (and so ``e-nerf``, ``e-nerfacto`` and the
#: shape trainer's default) stands for; chosen by the orientation study (docs/results.md).
DEFAULT_MODE = "out"


def _norms(M: torch.Tensor, dim: int, eps: float, detach: bool) -> torch.Tensor:
    n = torch.linalg.vector_norm(M, dim=dim, keepdim=True).clamp_min(eps)
    return n.detach() if detach else n


def equilibrate(
    W: torch.Tensor, mode: str = "out", *, detach: bool = False, eps: float = 1e-12, iters: int = 8
) -> torch.Tensor:
    """Return the equilibrated matrix ``E(W)`` (any weight shape, see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"equilibrate: mode must be one of {MODES}, got {mode!r}")
    M = upcast(as_matrix(W))  # float32 for half-precision weights
    if mode == "out":
        E = M / _norms(M, 1, eps, detach)
    elif mode == "in":
        E = M / _norms(M, 0, eps, detach)
    else:
        E = M
        for _ in range(int(iters)):
            E = E / _norms(E, 1, eps, detach).sqrt()
            E = E / _norms(E, 0, eps, detach).sqrt()
        E = E / _norms(E, 1, eps, detach)
    return E.to(W.dtype).reshape(W.shape)


class Equilibrate(nn.Module):
    """Parametrization ``W -> E(W)``; register with ``torch.nn.utils.parametrize``."""

    def __init__(self, mode: str = "out", detach: bool = False, eps: float = 1e-12, iters: int = 8):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"equilibrate: mode must be one of {MODES}, got {mode!r}")
        self.mode, self.detach, self.eps, self.iters = mode, bool(detach), float(eps), int(iters)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return equilibrate(W, self.mode, detach=self.detach, eps=self.eps, iters=self.iters)

    def extra_repr(self) -> str:
        extra = f", iters={self.iters}" if self.mode == "both" else ""
        return f"mode={self.mode!r}, detach={self.detach}{extra}"


def degenerate(layer: nn.Module, mode: str | None = None, **_options) -> str | None:
    """Why ``E`` in this ``mode`` would freeze ``layer`` (vectors of length 1), or None."""
    fan_out, fan_in = as_matrix(layer.weight).shape
    mode = mode or DEFAULT_MODE
    if mode in ("in", "both") and fan_out == 1:
        return f"equilibrate mode {mode!r} on a single-output layer gives sign(W) (zero gradient)"
    if mode in ("out", "both") and fan_in == 1:
        return f"equilibrate mode {mode!r} on a single-input layer gives sign(W) (zero gradient)"
    return None


def make_apply(fixed_mode: str | None):
    """Registry entry point: ``equilibrate-<fixed_mode>``, or (None) the ``equilibrate``
    alias, which uses ``DEFAULT_MODE`` and accepts a ``mode`` option."""

    def apply(root, targets, *, mode: str | None = None, detach: bool = False, eps: float = 1e-12,
              iters: int = 8):
        if fixed_mode is not None and mode is not None and mode != fixed_mode:
            raise ValueError(f"equilibrate-{fixed_mode}: conflicting mode={mode!r}")
        m = fixed_mode or mode or DEFAULT_MODE
        for _, layer in targets:
            parametrize.register_parametrization(layer, "weight", Equilibrate(m, detach, eps, iters))
        return root

    return apply


def make_degenerate(fixed_mode: str | None):
    """The ``degenerate`` check of a registry entry (see ``make_apply``)."""
    return lambda layer, mode=None, **options: degenerate(layer, fixed_mode or mode, **options)
