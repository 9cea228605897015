"""Weight standardization and centred weight normalization, as weight parametrizations.

Both work per output row of the ``(out, fan_in)`` matrix (Conv2d: per filter, over
``in/groups*kh*kw``) and carry a learnable per-output gain ``g``, stored in the
parametrization module (``parametrizations.weight.0.gain``).

weight-standardization (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization", arXiv:1903.10520)
    ``W_hat[i] = g_i * (W[i] - mean(W[i])) / sqrt(var(W[i]) + eps)``; population variance
    (``unbiased=False``), ``eps = 1e-8`` inside the square root. Without ``g`` this is the
    paper's definition as the Papers with Code method page "Weight Standardization" quotes it
    (mean and ``1/I`` variance over the ``I = in * kh * kw`` weights of each output channel, no
    affine transformation); the paper's own equation numbers are not cited. Qiao et al. have
    no gain because a normalisation layer always follows; a neural-field MLP has none, and a
    plain WS Linear with fan_in 256 has rows of norm sqrt(256) = 16 instead of about 1, which blows
    activations up with depth. So, as in Brock et al.'s scaled WS, a learnable gain is added,
    initialised to the original row's standard deviation: the initial effective weight is
    ``W - row mean``, i.e. the original layer's function scale (only the row means, usually
    near zero at initialisation, are lost).
centered-weight-norm (Huang et al., "Centered weight normalization in accelerating training of
deep neural networks", ICCV 2017)
    ``W_hat[i] = g_i * C[i] / ||C[i]||`` with ``C[i] = W[i] - mean(W[i])``, i.e.
    ``w = g (v - 1 1^T v / d) / ||v - 1 1^T v / d||`` per neuron (``d`` = fan-in): the
    re-parameterization the paper's abstract states (each neuron's input weight normalised to
    zero mean and unit norm, then a learnable scalar that adjusts its norm); norms clamped
    below by ``eps = 1e-12``. No section or equation number is cited: the paper's body was not
    read for this docstring. ``gain_init="one"`` (default): ``g = 1`` at conditioning time, so
    every effective row starts with zero mean and unit 2-norm. The authors' code
    (github.com/huangleiBuaa/CenteredWN, read for this) differs between its modules:
    ``module/WeightNorm_Center.lua`` fills ``g`` with 1 (learnable with ``flag_adjustScale``,
    its row-norm initialisation commented out; the stored version does not centre); ``module/Linear_Weight_CenteredBN_Row.lua`` centres and
    normalises each row with no scale at all; ``module_pytorch/CWN.py`` (``CWN_Conv2d``) adds
    ``1e-5`` to the norm and multiplies by a per-output scale ``NScale = 1.414``, fixed unless
    ``adjustScale=True``. ``g = 1`` follows the first.
    ``gain_init="row-norm"``: the project's earlier start, ``g`` = the original centred row
    norm (about 0.58 for torch's default Linear init), so the initial effective weight is
    ``W - row mean`` (the original layer's scale, row means dropped).

The invariants (zero mean and unit std, resp. zero mean and unit norm) hold for the
normalised weight *before* the gain: see ``standardize`` and ``center_normalize``.

Half-precision weights (float16, bfloat16): the means, variances and norms, the centring, the
scaling and the gain are computed in float32 and the effective weight cast back once
(``_common.reduction_dtype``); in float16 a row's squares past 65504 would overflow and the
centring of a large-mean row would lose its digits. The gains are kept in the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._common import as_matrix, upcast


def _standardized(W: torch.Tensor, eps: float) -> torch.Tensor:
    """``standardize`` in float32 for half-precision ``W`` (the (out, fan_in) matrix, not cast back)."""
    M = upcast(as_matrix(W))
    C = M - M.mean(dim=1, keepdim=True)
    var = C.pow(2).mean(dim=1, keepdim=True)
    return C * torch.rsqrt(var + eps)


def _centre_normalized(W: torch.Tensor, eps: float) -> torch.Tensor:
    """``center_normalize`` in float32 for half-precision ``W`` (the matrix, not cast back)."""
    M = upcast(as_matrix(W))
    C = M - M.mean(dim=1, keepdim=True)
    return C / torch.linalg.vector_norm(C, dim=1, keepdim=True).clamp_min(eps)


def standardize(W: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-row zero mean, unit (population) std of the (out, fan_in) matrix view of W."""
    return _standardized(W, eps).to(W.dtype).reshape(W.shape)


def center_normalize(W: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-row zero mean, unit 2-norm of the (out, fan_in) matrix view of W."""
    return _centre_normalized(W, eps).to(W.dtype).reshape(W.shape)


def _with_gain(gain: torch.Tensor, N: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``gain_i * N[i]`` (``N``: the normalised matrix, float32 for half ``W``), cast to
    ``W``'s dtype once, in ``W``'s shape."""
    return (upcast(gain)[:, None] * N).to(W.dtype).reshape(W.shape)


class WeightStandardization(nn.Module):
    """Parametrization ``W -> g * standardize(W)``; ``g`` initialised from ``weight``."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-8):
        super().__init__()
        self.eps = float(eps)
        with torch.no_grad():
            M = upcast(as_matrix(weight))
            std = (M.var(dim=1, unbiased=False) + self.eps).sqrt()
        self.gain = nn.Parameter(std.to(weight.dtype))

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return _with_gain(self.gain, _standardized(W, self.eps), W)


CWN_GAIN_INITS = ("one", "row-norm")


class CenteredWeightNorm(nn.Module):
    """Parametrization ``W -> g * center_normalize(W)``; ``g`` initialised to 1 (Huang et al.
    2017) or, with ``gain_init="row-norm"``, to the centred row norms of ``weight``."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12, gain_init: str = "one"):
        super().__init__()
        if gain_init not in CWN_GAIN_INITS:
            raise ValueError(f"centered-weight-norm: gain_init must be one of {CWN_GAIN_INITS}, "
                             f"got {gain_init!r}")
        self.eps, self.gain_init = float(eps), gain_init
        with torch.no_grad():
            M = upcast(as_matrix(weight))
            if gain_init == "one":
                g = torch.ones(M.shape[0], dtype=M.dtype, device=M.device)
            else:
                g = torch.linalg.vector_norm(M - M.mean(dim=1, keepdim=True), dim=1)
        self.gain = nn.Parameter(g.to(weight.dtype))

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return _with_gain(self.gain, _centre_normalized(W, self.eps), W)


def apply_ws(root, targets, *, eps: float = 1e-8):
    for _, layer in targets:
        parametrize.register_parametrization(layer, "weight", WeightStandardization(layer.weight, eps))
    return root


def apply_cwn(root, targets, *, eps: float = 1e-12, gain_init: str = "one"):
    for _, layer in targets:
        cwn = CenteredWeightNorm(layer.weight, eps, gain_init)
        parametrize.register_parametrization(layer, "weight", cwn)
    return root
