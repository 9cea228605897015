"""EquiNorm: equilibrium normalization of weights (Defazio & Bottou, arXiv:1812.04549,
"Controlling covariate shift using equilibrium (v2: balanced) normalization of weights").

The paper normalises a layer through a transformation of its *weights* computed from sums of
the layer's *input*: a per-filter shift makes the positive and negative weights' contributions
to the output balance over the batch ("equilibrium", zero batch mean of the pre-activation for
non-negative inputs), and a per-filter scale fixes the size of those contributions; a
BatchNorm-style affine follows. BatchNorm's fast convergence without transforming the outputs.

Provenance. What is implemented is the project's specification (issue 11, part 5) of the
method, which attributes each part to the paper's method section: the shift, the two-pass
scale, the single-pass approximation used in its experiments, the running estimates and the
sign-balanced initialisation. The formulas below are that specification, written out; they are
not transcribed from numbered equations of the paper, and no section or equation number is
cited because the paper's body was not read for this docstring (what was read is its abstract:
the weights are transformed, from sums of the layer's input, so that the positive and negative
weights' contributions to the output stay balanced). What the tests check is the formulas as
stated here (``tests/test_conditioning_equinorm.py``: shift and scale against an explicit loop,
zero batch mean of the output on non-negative inputs, single-pass equal to two-pass when the
shift flips no sign, evaluation from the running estimates), not agreement with the paper.
Points where we had to choose are marked *choice*.

Notation, for one layer and one training batch. A ``nn.Conv2d`` weight ``w[d, c, j, k]``
(output ``d``, input channel ``c``, kernel tap ``(j, k)``, ``K = k_h k_w`` taps); a
``nn.Linear`` is the ``K = 1`` case (``w[d, c]``), its batch being all leading dimensions.

* input sums: ``v_c = sum of input channel c over the batch`` (and over all spatial
  positions for a convolution). Not detached: gradients flow through ``v`` into the input.
* ``r`` = number of output positions x squared stride: ``B * H_out * W_out * s_h * s_w`` for a
  convolution, ``B`` (the number of rows) for a Linear. ``r`` is the number of input
  positions the filters are swept over, so ``v_c / r`` is the per-position mean of channel
  ``c`` (exactly the per-element batch mean for a Linear and for a convolution whose output is
  the input size divided by the stride).
* shift: ``b_d = - (sum_c v_c sum_jk w[d,c,j,k]) / (K * sum_c v_c)``, added to every weight of
  filter ``d``. Then ``sum_c v_c sum_jk (w + b_d) = 0``: for a Linear the batch mean of the
  output ``(w + b) x`` is exactly zero; for a convolution it is zero up to the border (padding)
  and stride sub-sampling effects, exactly zero for stride 1 with circular padding or 1x1
  kernels (the paper's sums run over the input, not over im2col patches).
* scale, **two-pass** (``single_pass=False``): after the shift,
  ``s_d = r / sum_c v_c sum_jk max(w[d,c,j,k] + b_d, 0)``: the positive weights' contribution
  per output position, averaged over the batch, is 1 (and so, by the shift, is the negative
  weights'; for a Linear this holds exactly).
* scale, **single-pass** (``single_pass=True``, the default, as in the paper's experiments):
  the sum and the count of the *positive weights* are gathered in the same pass over ``w``
  as the shift's sum, so the positive set is that of ``w`` rather than of ``w + b``::

      P_d = sum_c v_c sum_jk [w > 0] w[d,c,j,k],   N_d = sum_c v_c #{jk : w[d,c,j,k] > 0},
      s_d = r / (P_d + b_d N_d)

  which equals the two-pass scale whenever the shift changes no weight's sign.
* effective weight ``s_d (w[d] + b_d)``; output ``gamma_d * (s_d (w + b) * x)_d + beta_d``
  with a learnable ``gamma`` (``gain``, initialised to 1) and ``beta`` (*choice*: the layer's
  own ``bias`` plays beta's role; it is set to 0 at conditioning time, as BatchNorm's beta;
  conditioning always gives the layer a bias, creating one if the original had none).

No epsilon (*choice*, the minimum that keeps a zero batch finite): a zero denominator, which
only an all-zero batch (``sum_c v_c = 0``, and then every ``P_d = 0``) produces for
non-negative inputs, leaves the shift at 0 and the scale at 1 (both via ``torch.where``, so no
inf/nan even in the gradient). The method assumes non-negative inputs (after a ReLU): on
signed inputs (e.g. a first layer fed with positional encodings) ``sum_c v_c`` can be near
zero or negative and the shift and scale are then ill-conditioned or sign-flipping; that is
the paper's formula, not guarded here -- exclude such layers (``condition(...,
exclude=[...])``).

Train vs eval (as BatchNorm): in training the batch's ``v`` and ``r`` are used and
differentiated through, and the running estimate ``running_mean`` of ``v / r`` (the
per-element input mean, see ``r``) is updated, ``running = (1 - momentum) * running +
momentum * v / r`` (``momentum=0.1``; ``None``: cumulative average; initialised to 0, where
the layer is its plain weight: shift 0, scale 1). In eval the shift and scale come from
``running_mean`` with ``r = 1`` (the formulas are homogeneous: only ``v / r`` matters), so the
layer is a fixed affine map that ``to_plain()`` (``to_linear()`` / ``to_conv()``) folds into a
plain ``nn.Linear`` / ``nn.Conv2d``.

Precision (*choice*): the input sums ``v`` and every sum of the shift and the scale are taken
in float32 when the input or the weight is half precision (``_common.reduction_dtype``), and
the effective weight is cast back to the weight's dtype once. Under ``torch.autocast`` a
layer behind another Linear receives a half-precision input; summed in float16, a feature
over a batch of tens of thousands of rows passes 65504 and the shift becomes inf / NaN. With
half-precision weights, the products ``v_c w[d, c]`` would overflow likewise.

Sign-balanced initialisation (*choice* of the detail): a filter whose weights are all positive
or all negative has no equilibrium (the shift maps it to ``w + b`` with a zero weighted sum and
the single-pass scale's denominator vanishes). At conditioning time (``sign_balance=True``)
every such filter with at least 2 weights has the signs of its ``floor(n/2)`` smallest-magnitude
weights flipped, so positive and negative counts differ by at most one; balanced filters are
left untouched. (A filter of one weight cannot be balanced; the registry leaves
``fan_in == 1`` layers plain.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import is_parametrized, reduction_dtype, set_submodule


# --------------------------------------------------------------------------- the formulas


def _rows(W: torch.Tensor, v: torch.Tensor, groups: int):
    """``W`` as (out, in/groups, K) and ``v`` broadcast to each filter's input channels, both
    in float32 if either is half precision."""
    out, cin_g = W.shape[0], W.shape[1]
    dtype = torch.promote_types(reduction_dtype(W.dtype), reduction_dtype(v.dtype))
    W3 = W.reshape(out, cin_g, -1).to(dtype)
    V = v.to(dtype).reshape(groups, cin_g).repeat_interleave(out // groups, dim=0)
    return W3, V


def input_sums(x: torch.Tensor, dim) -> torch.Tensor:
    """``x.sum(dim)``, accumulated and returned in float32 if ``x`` is half precision (an
    input under autocast)."""
    return x.sum(dim, dtype=reduction_dtype(x.dtype))


def _safe_div(num: torch.Tensor, den: torch.Tensor, when_zero: float) -> torch.Tensor:
    """``num / den``, or ``when_zero`` where ``den == 0`` (finite value and gradient)."""
    zero = den == 0
    q = num / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.full_like(q, when_zero), q)


def equinorm_shift(W: torch.Tensor, v: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``b_d = -(sum_c v_c sum_jk w[d,c,j,k]) / (K sum_c v_c)``; 0 where ``sum_c v_c = 0``."""
    W3, V = _rows(W, v, groups)
    K = W3.shape[2]
    return -_safe_div((V * W3.sum(2)).sum(1), K * V.sum(1), 0.0)


def equinorm_scale(W: torch.Tensor, v: torch.Tensor, b: torch.Tensor, r: float = 1.0,
                   groups: int = 1, single_pass: bool = True) -> torch.Tensor:
    """``s_d = r / sum_c v_c sum_jk max(w + b_d, 0)`` (two-pass) or, single-pass,
    ``r / (P_d + b_d N_d)`` from the sum ``P`` and ``v``-weighted count ``N`` of the positive
    weights of ``w``; 1 where the denominator is 0."""
    W3, V = _rows(W, v, groups)
    if single_pass:
        pos = (W3 > 0).to(W3.dtype)
        den = (V * (W3 * pos).sum(2)).sum(1) + b * (V * pos.sum(2)).sum(1)
    else:
        den = (V * (W3 + b[:, None, None]).clamp_min(0).sum(2)).sum(1)
    return _safe_div(torch.as_tensor(r, dtype=den.dtype, device=den.device).expand_as(den), den, 1.0)


def equinorm_weight(W: torch.Tensor, gain: torch.Tensor, v: torch.Tensor, r: float = 1.0,
                    groups: int = 1, single_pass: bool = True) -> torch.Tensor:
    """The effective weight ``gain_d * s_d * (w[d] + b_d)`` from the input sums ``v`` (``r``:
    output positions x squared stride; with ``v`` already divided by ``r``, ``r = 1``), in
    ``W``'s dtype (computed in float32 if ``W`` or ``v`` is half precision)."""
    b = equinorm_shift(W, v, groups)
    s = equinorm_scale(W, v, b, r, groups, single_pass)
    shape = (-1,) + (1,) * (W.dim() - 1)
    Wf = W.to(b.dtype)
    return ((gain.to(b.dtype) * s).reshape(shape) * (Wf + b.reshape(shape))).to(W.dtype)


@torch.no_grad()
def sign_balance_(weight: torch.Tensor) -> int:
    """In place: in every filter (row of the ``(out, fan_in)`` view) with ``fan_in >= 2`` whose
    weights are all >= 0 or all <= 0, flip the sign of the ``floor(fan_in/2)`` smallest-magnitude
    weights. Returns the number of filters changed."""
    M = weight.reshape(weight.shape[0], -1)
    n = M.shape[1]
    if n < 2:
        return 0
    bad = ~((M > 0).any(1) & (M < 0).any(1))
    rows = bad.nonzero().flatten().tolist()
    for i in rows:
        idx = M[i].abs().argsort()[: n // 2]
        M[i, idx] = -M[i, idx]
    if M.data_ptr() != weight.data_ptr():  # reshape copied (non-contiguous weight)
        weight.copy_(M.reshape(weight.shape))
    return len(rows)


# --------------------------------------------------------------------------- the layers


class _EquiNormMixin:
    """Shared state and running estimates of ``EquiNormLinear`` / ``EquiNormConv2d``."""

    def _init_equinorm(self, n_in: int, n_out: int, momentum, single_pass, device, dtype):
        kw = {"device": device, "dtype": dtype}
        self.momentum, self.single_pass = momentum, bool(single_pass)
        self.gain = nn.Parameter(torch.ones(n_out, **kw))
        self.register_buffer("running_mean", torch.zeros(n_in, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def _groups(self) -> int:
        return getattr(self, "groups", 1)

    def _track(self, v: torch.Tensor, r: float) -> None:
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_((v.detach() / r).to(self.running_mean.dtype), m)

    def eval_weight(self) -> torch.Tensor:
        """The eval-time effective weight (from ``running_mean``), differentiable in the
        parameters."""
        return equinorm_weight(self.weight, self.gain, self.running_mean, 1.0, self._groups(),
                               self.single_pass)

    @torch.no_grad()
    def folded_weight(self) -> torch.Tensor:
        """The eval-time effective weight, detached."""
        return self.eval_weight()

    def _equinorm_repr(self) -> str:
        return f", momentum={self.momentum}, single_pass={self.single_pass}"


class EquiNormLinear(_EquiNormMixin, nn.Linear):
    """``nn.Linear`` whose weight is equilibrium-normalised from its input's sums."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 momentum: float | None = 0.1, single_pass: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_equinorm(in_features, out_features, momentum, single_pass, device, dtype)

    @classmethod
    def from_linear(cls, lin: nn.Linear, **options) -> "EquiNormLinear":
        """Same weight; gain 1 and bias (beta) 0, always present."""
        w = lin.weight
        new = cls(lin.in_features, lin.out_features, bias=True, device=w.device, dtype=w.dtype, **options)
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.zero_()
        new.weight.requires_grad_(w.requires_grad)
        new.train(lin.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.training and flat.shape[0] > 0:
            r = flat.shape[0]
            v = input_sums(flat, 0)
            self._track(v, r)
            W = equinorm_weight(self.weight, self.gain, v, r, 1, self.single_pass)
        else:
            W = self.eval_weight()
        return F.linear(x, W, self.bias)

    @torch.no_grad()
    def to_plain(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing this layer's eval-time function."""
        w = self.weight
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        lin.weight.copy_(self.folded_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    to_linear = to_plain

    def extra_repr(self) -> str:
        return super().extra_repr() + self._equinorm_repr()


class EquiNormConv2d(_EquiNormMixin, nn.Conv2d):
    """``nn.Conv2d`` whose filters are equilibrium-normalised from its input's sums."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 momentum: float | None = 0.1, single_pass: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self._init_equinorm(in_channels, out_channels, momentum, single_pass, device, dtype)

    def _plain_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, padding_mode=self.padding_mode)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> "EquiNormConv2d":
        """Same weight and geometry; gain 1 and bias (beta) 0, always present."""
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                  padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype, **options)
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.zero_()
        new.weight.requires_grad_(w.requires_grad)
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.numel() > 0):
            return self._conv_forward(x, self.eval_weight(), self.bias)
        batched = x.dim() == 4
        v = input_sums(x, (0, 2, 3) if batched else (1, 2))
        W, g = self.weight, self.groups
        b = equinorm_shift(W, v, g)
        y = self._conv_forward(x, (W.to(b.dtype) + b.reshape(-1, 1, 1, 1)).to(W.dtype), None)
        # r = output positions x squared stride, read off the output (any padding mode)
        r = (x.shape[0] if batched else 1) * y.shape[-2] * y.shape[-1] * self.stride[0] * self.stride[1]
        self._track(v, r)
        s = equinorm_scale(W, v, b, r, g, self.single_pass)
        y = y * (self.gain.to(s.dtype) * s).to(W.dtype).reshape(-1, 1, 1)
        return y if self.bias is None else y + self.bias.reshape(-1, 1, 1)

    @torch.no_grad()
    def to_plain(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` computing this layer's eval-time function."""
        w = self.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                         bias=self.bias is not None, device=w.device, dtype=w.dtype,
                         **self._plain_kwargs())
        conv.weight.copy_(self.folded_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv

    to_conv = to_plain

    def extra_repr(self) -> str:
        return super().extra_repr() + self._equinorm_repr()


#: Every EquiNorm layer class (``bake`` folds them with ``to_plain()``).
EQUINORM_LAYERS = (EquiNormLinear, EquiNormConv2d)


def apply(root, targets, *, momentum: float | None = 0.1, single_pass: bool = True,
          sign_balance: bool = True):
    """Replace every target ``nn.Linear`` / ``nn.Conv2d`` by its EquiNorm layer (same weight,
    sign-balanced if ``sign_balance``; gain 1, bias 0)."""
    for name, layer in targets:
        label = name or "<root>"
        if isinstance(layer, EQUINORM_LAYERS):
            raise ValueError(f"equinorm: layer {label!r} is already an EquiNorm layer")
        if is_parametrized(layer):
            raise ValueError(f"equinorm: layer {label!r} is parametrized; apply equinorm "
                             "to plain nn.Linear / nn.Conv2d layers (before other conditioners)")
        if isinstance(layer, nn.Linear):
            new = EquiNormLinear.from_linear(layer, momentum=momentum, single_pass=single_pass)
        elif isinstance(layer, nn.Conv2d):
            new = EquiNormConv2d.from_conv(layer, momentum=momentum, single_pass=single_pass)
        else:
            raise TypeError(f"equinorm: layer {label!r} is a {type(layer).__name__}, "
                            "not an nn.Linear or nn.Conv2d")
        if sign_balance:
            sign_balance_(new.weight)
        if name == "":
            root = new
        else:
            set_submodule(root, name, new)
    return root
