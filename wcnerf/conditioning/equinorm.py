"""EquiNorm: equilibrium normalization of weights (Defazio & Bottou, arXiv:1812.04549,
"Controlling covariate shift using equilibrium (v2: balanced) normalization of weights").

The idea: normalise a layer through a transformation of its *weights* computed from the sums
of the layer's *input*, so that "the contribution of positive and negative weights to the
layer output" stays in equilibrium (the pre-activation has zero mean over the batch) and has
a controlled scale, with BatchNorm's fast convergence but no transformation of the outputs.

Provenance, honestly: the paper's full text could not be retrieved while writing this (only
its abstract); the formulas below are our reconstruction from that description. Every
constant is our choice and is stated here. Re-check against the paper before citing results.

Formulas, for ``nn.Linear`` with stored weight ``W`` (out x n), input batch ``x`` (B x n):

* input sums, divided by the batch size: ``s_j = mean_b x_bj`` and ``a_j = mean_b |x_bj|``;
* per-output shift: ``mu_i = (sum_j W_ij s_j) / max(sum_j a_j, eps)``, ``V_ij = W_ij - mu_i``;
* per-output scale: ``sigma_i = max((sum_j |V_ij| a_j) / sqrt(n), eps)`` (``eps = 1e-5``);
* effective weight ``W_hat_ij = g_i V_ij / sigma_i`` (learnable gain ``g``, initialised to 1)
  and ``y = W_hat x + b``.

For non-negative inputs (after a ReLU: the paper's setting) ``s = a`` and
``sum_j V_ij s_j = 0`` exactly: the positive and negative weights' contributions to the mean
output cancel, and ``sigma_i`` is their total contribution. Using ``a`` (mean of ``|x|``) in
the denominators keeps both steps well defined for signed inputs (e.g. a first layer fed with
positional encodings, whose means are near zero), where the mean is only approximately
removed. ``sqrt(n)`` makes the pre-activation O(1) for inputs whose std is comparable to their
mean.

Mapping from convolutions (the paper) to Linear layers: a convolution's sums run over the
batch *and* the spatial positions, and over input channels *and* kernel taps; a Linear layer
is the 1x1, no-spatial case: sums over the batch (all leading dimensions flattened), over the
``n`` input features. Only ``nn.Linear`` is conditioned here.

Train vs eval (as BatchNorm): in training the current batch's ``s`` and ``a`` are used (and
differentiated through) and the running estimates are updated,
``running = (1 - momentum) * running + momentum * batch`` (``momentum=0.1``; ``None`` gives a
cumulative average); in eval the running estimates are used, so the layer is a fixed affine
map. ``bake`` folds that eval-time map into a plain ``nn.Linear``. Running estimates start at
``s = 0``, ``a = 1``. Not a pure weight parametrization (it needs the input), hence a Linear
subclass swapped in by ``condition``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import is_parametrized, set_submodule


def equinorm_weight(W: torch.Tensor, gain: torch.Tensor, s: torch.Tensor, a: torch.Tensor,
                    eps: float = 1e-5) -> torch.Tensor:
    """The effective weight ``W_hat`` from the input sums ``s`` (mean x) and ``a`` (mean |x|)."""
    n = W.shape[1]
    mu = (W @ s) / a.sum().clamp_min(eps)
    V = W - mu[:, None]
    sigma = ((V.abs() @ a) / math.sqrt(max(n, 1))).clamp_min(eps)
    return V * (gain / sigma)[:, None]


class EquiNormLinear(nn.Linear):
    """``nn.Linear`` whose weight is equilibrium-normalised from its input's sums."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 momentum: float | None = 0.1, eps: float = 1e-5, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        kw = {"device": device, "dtype": dtype}
        self.momentum, self.eps = momentum, float(eps)
        self.gain = nn.Parameter(torch.ones(out_features, **kw))
        self.register_buffer("running_mean", torch.zeros(in_features, **kw))
        self.register_buffer("running_abs_mean", torch.ones(in_features, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    @classmethod
    def from_linear(cls, lin: nn.Linear, **options) -> "EquiNormLinear":
        w = lin.weight
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None,
                  device=w.device, dtype=w.dtype, **options)
        with torch.no_grad():
            new.weight.copy_(w)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        new.weight.requires_grad_(w.requires_grad)
        new.train(lin.training)
        return new

    def _batch_stats(self, x: torch.Tensor):
        flat = x.reshape(-1, self.in_features)
        if not self.training or flat.shape[0] == 0:
            return self.running_mean, self.running_abs_mean
        s, a = flat.mean(0), flat.abs().mean(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(s.detach().to(self.running_mean.dtype), m)
            self.running_abs_mean.lerp_(a.detach().to(self.running_abs_mean.dtype), m)
        return s, a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, a = self._batch_stats(x)
        return F.linear(x, equinorm_weight(self.weight, self.gain, s, a, self.eps), self.bias)

    @torch.no_grad()
    def folded_weight(self) -> torch.Tensor:
        """The eval-time effective weight (from the running estimates)."""
        return equinorm_weight(self.weight, self.gain, self.running_mean, self.running_abs_mean, self.eps)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing this layer's eval-time function."""
        w = self.weight
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        lin.weight.copy_(self.folded_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}, eps={self.eps}"


def apply(root, targets, *, momentum: float | None = 0.1, eps: float = 1e-5):
    for name, layer in targets:
        if isinstance(layer, EquiNormLinear):
            raise ValueError(f"equinorm: layer {name or '<root>'!r} is already an EquiNormLinear")
        if is_parametrized(layer):
            raise ValueError(f"equinorm: layer {name or '<root>'!r} is parametrized; apply equinorm "
                             "to plain nn.Linear layers (before other conditioners)")
        new = EquiNormLinear.from_linear(layer, momentum=momentum, eps=eps)
        if name == "":
            root = new
        else:
            set_submodule(root, name, new)
    return root
