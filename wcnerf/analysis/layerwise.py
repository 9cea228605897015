"""Layer-wise conditioning analysis of every ``nn.Linear`` in a module.

After Huang et al., "Layer-wise Conditioning Analysis in Exploring the Learning Dynamics of
DNNs" (ECCV 2020). For a linear layer ``h = W x + b`` the Fisher information block of ``W`` is
``F = E[(x x^T) ⊗ (δ δ^T)]``, which the paper (Proposition 1) approximates by the Kronecker
product ``Σx ⊗ Σδ`` of the layer-input second moment ``Σx = E[x x^T]`` and the output-gradient
second moment ``Σδ = E[δ δ^T]``; hence ``κ(F) ≈ κ(Σx) κ(Σδ)``.

Definitions used here (all spectra in float64):

- **rows**: a layer's input / output is flattened to ``(-1, features)``; every row is a sample
  (a ray sample, a point, ...). ``N`` is the number of rows the layer processed in the capture
  (summed over calls if the layer is called several times).
- **effective weight** ``W``: ``weight_fn(layer)``, by default ``layer.weight``, which for a
  ``torch.nn.utils.parametrize``-d layer is the weight the parametrization computes (the one the
  forward pass multiplies by). Captured (detached) at the layer's first call.
- ``Σx = (1/n) Σ_i x_i x_i^T`` over the ``n`` sampled rows: the **uncentred** second moment, as
  the FIM uses (``centered=True`` subtracts the mean instead). The bias is not included.
- ``δ_i``: the gradient of the loss w.r.t. the layer's output row ``h_i`` *as a per-sample
  quantity*. Torch losses averaged over the batch scale ``dL/dh_i`` by ``1/N``, so with
  ``loss_reduction="mean"`` (default) ``δ_i = N · dL/dh_i``; with ``"sum"`` ``δ_i = dL/dh_i``.
  ``Σδ = (1/n) Σ_i δ_i δ_i^T`` over the same sampled rows as ``Σx`` (uncentred unless
  ``centered``). The scale only affects ``lambda_max``, never a ``kappa``.
- **FIM** estimate: the spectrum of ``Σx ⊗ Σδ`` (products of the two spectra); its
  ``kappa_p100`` equals ``kappa_p100(Σx) · kappa_p100(Σδ)`` exactly, ``kappa_p90``/``kappa_p50``
  are read off the product spectrum with the same rank rule.
- ``kappa_p = λ_1 / λ_k``, ``k = ceil(p · d)`` in descending order (``p`` = 100 %, 90 %, 50 %
  by default); eigenvalues ``<= rel_tol · λ_1`` count as zero and give ``inf``. The default
  ``rel_tol`` is ``d · eps(float64)`` (``d`` = matrix size), LAPACK's / ``numpy``'s rank rule.
- ``kappa_nz = λ_1 / λ_r`` over the **nonzero** eigenvalues (``λ_r`` the smallest one above
  ``rel_tol · λ_1``) and ``rank = r``, reported next to the ``kappa_p``: the condition number
  of the matrix on its range. Huang et al. (Sec. 1) leave the zero-eigenvalue directions of an
  over-parameterised model out of the analysis ("whether the direction with respect to
  small/zero eigenvalues contributes to the optimization progress is unclear"); a zero
  eigenvalue of ``Σx`` is an input feature that is zero on every sample (e.g. a dead ReLU of
  the previous layer), along which the loss does not change, and it makes ``kappa_p100``
  infinite without saying anything about how well the rest is conditioned. (Their released
  code, ``LayerwiseCA/Cifar/module/Linear_AllMode.lua``, instead adds 1e-100 to every
  eigenvalue before taking ``λ_max / λ_min``, which turns a singular matrix into ~1e100.)
  For the FIM estimate ``Σx ⊗ Σδ`` the nonzero eigenvalues are the products of nonzero ones,
  so ``kappa_nz(FIM) = kappa_nz(Σx) · kappa_nz(Σδ)`` and ``rank(FIM) = rank(Σx) · rank(Σδ)``.
- **dead / saturated units** of a layer, counted on *all* rows of the capture (not subsampled),
  for the activation applied to the layer's output (its units = ``out_features``):

  * ``dead_units``: units whose activation *output* is zero for every row ("dying ReLU": a
    ReLU unit whose pre-activation is ``<= 0`` on every sample, Lu, Shin, Su & Karniadakis,
    "Dying ReLU and initialization", 2019/2020). Only ReLU (``h <= 0``) and leaky ReLU / tanh
    (``h == 0`` exactly) can have one; sigmoid and softplus outputs are never exactly zero.
  * ``saturated_units``: units that are in the activation's *flat region* for every row, i.e.
    whose activation derivative is below ``saturation_tol`` (default 0.01) times its maximum
    on every sample, so no gradient reaches the unit's incoming weights from any sample:
    ReLU ``h <= 0`` (for ReLU the flat region is where it outputs zero, so saturated = dead:
    the dying neurons); leaky ReLU ``h < 0`` only if its slope ``< saturation_tol``; tanh
    ``1 - tanh²(h) < tol`` (``|h| > 2.99`` at tol 0.01); sigmoid ``4 σ(h)(1 - σ(h)) < tol``
    (``|h| > 5.99``); softplus ``σ(β h) < tol``.
  * ``full_units``: the dual of dead, for ReLU and leaky ReLU only: units whose pre-activation
    is ``> 0`` for every row, i.e. that sit on the activation's identity piece on every sample
    (always active): on the data such a unit is linear, so it and its consumer compose to a
    linear map and it adds no nonlinearity. Tanh, sigmoid and softplus have no piece on which
    a unit is exactly linear or exactly "on" (a unit pinned at one end is *saturated* instead),
    so their layers get no ``full_units`` key.

  Counts accumulate over every call captured while attached: run several batches through the
  module (or use :func:`count_units`, forward only) and a unit is dead (full, saturated) only
  if it is so on every row of every batch. That is how the dying-ReLU definition reads over a
  training set; one batch can only over-count dead and full units.

  The activation is found automatically: an ``nn.ReLU`` / ``nn.LeakyReLU`` / ``nn.Tanh`` /
  ``nn.Sigmoid`` / ``nn.Softplus`` *module* inside the analyzed module whose input is the very
  tensor the layer returned (as in nerfstudio's ``MLP`` and field heads, or an
  ``nn.Sequential``). A functional activation (``torch.relu(h)``), or one applied after other
  operations, is not seen: pass ``activations={layer name: kind}`` for those. Layers with no
  known activation (linear heads) get no ``dead_units`` / ``saturated_units`` / ``full_units``
  keys.
- **weight**: singular values of ``W`` (``min(out, in)`` of them); ``kappa_w = σ_max / σ_min``.
  A layer whose effective weight is not ``layer.weight`` (e.g. ``wcnerf.conditioning``'s
  ``EquiNormLinear``, which computes it from the batch inside ``forward``) needs ``weight_fn``
  (e.g. ``lambda m: m.folded_weight()`` for its running-estimate weight). ``Σx``, ``Σδ``,
  ``dL/dW`` and the FIM never depend on ``weight_fn``: they come from the layer's input and
  output, i.e. they are w.r.t. whatever weight ``forward`` applied.
- **domination** ratio ``σ_max(dL/dW) / σ_max(W)`` where ``dL/dW = Σ_rows (dL/dh_i) x_i^T`` is
  the gradient of the loss *as given* (its own reduction, no ``N`` rescaling) w.r.t. the
  effective weight, computed on all rows (not subsampled).

Metric keys (``compute()``), with ``L`` the qualified module name (``"root"`` if the analyzed
module is itself a Linear) and an optional ``prefix``::

    {prefix}{L}/sigma_max_w          {prefix}{L}/sigma_min_w        {prefix}{L}/kappa_w
    {prefix}{L}/input/lambda_max     {prefix}{L}/input/kappa_p100   .../input/kappa_p90   .../input/kappa_p50
    {prefix}{L}/input/kappa_nz       {prefix}{L}/input/rank
    {prefix}{L}/output_grad/lambda_max   {prefix}{L}/output_grad/kappa_p100 ...  .../output_grad/kappa_nz  .../rank
    {prefix}{L}/fim/lambda_max       {prefix}{L}/fim/kappa_p100     ...  .../fim/kappa_nz  .../fim/rank
    {prefix}{L}/sigma_max_grad_w     {prefix}{L}/domination
    {prefix}{L}/dead_units           {prefix}{L}/saturated_units    {prefix}{L}/full_units

``output_grad/*``, ``fim/*``, ``sigma_max_grad_w`` and ``domination`` are present only for
layers that received a gradient in the capture; ``dead_units`` / ``saturated_units`` only for
layers whose activation is known (see above), ``full_units`` only for ReLU / leaky ReLU ones.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .spectral import (
    DEFAULT_PS,
    clean_spectrum,
    generalized_condition_numbers,
    kronecker_spectrum,
    nonzero_condition_number,
    numerical_rank,
    p_key,
    second_moment_eigvals,
)

LossReduction = Literal["mean", "sum"]
LayerFilter = Callable[[str, nn.Module], bool]
WeightFn = Callable[[nn.Module], Tensor]

__all__ = [
    "ACTIVATION_KINDS",
    "LayerwiseAnalyzer",
    "LayerConditioning",
    "SpectrumStats",
    "UnitCounts",
    "analyze",
    "analyze_layers",
    "count_units",
    "linear_layers",
    "unit_activity",
    "unit_on_rows",
]


def _default_weight_fn(layer: nn.Module) -> Tensor:
    return layer.weight  # type: ignore[return-value]


def linear_layers(module: nn.Module, include: LayerFilter | None = None) -> dict[str, nn.Linear]:
    """Qualified name -> ``nn.Linear`` (parametrized ones included) inside ``module``."""
    out: dict[str, nn.Linear] = {}
    for name, m in module.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        # Modules inside a parametrization (``<layer>.parametrizations.weight.<i>``) are not layers of the model.
        if ".parametrizations." in f".{name}.":
            continue
        key = name or "root"
        if include is not None and not include(key, m):
            continue
        out[key] = m
    return out


# --------------------------------------------------------------------------- activations
ACTIVATION_KINDS: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus")
"""Activations whose dead / saturated units are counted (see the module docstring)."""

FULL_KINDS: tuple[str, ...] = ("relu", "leaky_relu")
"""Activations with an identity piece (``h > 0``), whose *full* units are counted."""

DEFAULT_SATURATION_TOL = 1e-2


def _activation_of(module: nn.Module) -> tuple[str, dict[str, float]] | None:
    """``(kind, parameters)`` of a recognised activation module, else ``None``."""
    if isinstance(module, nn.ReLU):
        return "relu", {}
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", {"negative_slope": float(module.negative_slope)}
    if isinstance(module, nn.Tanh):
        return "tanh", {}
    if isinstance(module, nn.Sigmoid):
        return "sigmoid", {}
    if isinstance(module, nn.Softplus):
        return "softplus", {"beta": float(module.beta), "threshold": float(module.threshold)}
    return None


def unit_activity(
    kind: str, h: Tensor, *, saturation_tol: float = DEFAULT_SATURATION_TOL, **params: float
) -> tuple[Tensor, Tensor]:
    """Per-unit counts of rows on which a unit is *alive* and *not flat*, for pre-activations ``h``.

    ``h`` is ``(rows, units)`` (float). Returns two int64 tensors of length ``units``: the
    number of rows whose activation output is nonzero, and the number of rows whose activation
    derivative is at least ``saturation_tol`` times the activation's maximal derivative. A unit
    with a zero first count is *dead*, one with a zero second count is *saturated* (definitions
    in the module docstring). ``params``: ``negative_slope`` (leaky ReLU), ``beta`` /
    ``threshold`` (softplus).
    """
    h = h.detach()
    if kind == "relu":
        alive = h > 0
        live_grad = alive
    elif kind == "leaky_relu":
        alive = h != 0
        slope = abs(params.get("negative_slope", 0.01))
        live_grad = torch.ones_like(alive) if slope >= saturation_tol else h >= 0
    elif kind == "tanh":
        alive = h != 0
        live_grad = 1.0 - torch.tanh(h.double()).square() >= saturation_tol
    elif kind == "sigmoid":
        alive = torch.ones_like(h, dtype=torch.bool)
        sg = torch.sigmoid(h.double())
        live_grad = 4.0 * sg * (1.0 - sg) >= saturation_tol
    elif kind == "softplus":
        alive = torch.ones_like(h, dtype=torch.bool)
        bh = params.get("beta", 1.0) * h.double()
        # torch's softplus is linear (derivative 1) above ``threshold``; sigmoid(bh) ~ 1 there too.
        live_grad = torch.sigmoid(bh) >= saturation_tol
    else:
        raise ValueError(f"unknown activation kind {kind!r}; known: {ACTIVATION_KINDS}")
    return alive.sum(0, dtype=torch.int64), live_grad.sum(0, dtype=torch.int64)


def unit_on_rows(kind: str, h: Tensor) -> Tensor | None:
    """Per-unit count of rows with pre-activation ``h > 0`` (the identity piece) for the kinds in
    :data:`FULL_KINDS`, else ``None``; a unit whose count equals the number of rows is *full*."""
    if kind not in FULL_KINDS:
        return None
    return (h.detach() > 0).sum(0, dtype=torch.int64)


def _f64(t: Tensor) -> Tensor:
    """float64 copy, on the tensor's device where float64 is supported (not MPS)."""
    if t.device.type == "mps":
        t = t.cpu()
    return t.to(torch.float64)


@dataclass
class SpectrumStats:
    """Spectrum (descending, float64, CPU, numerically-zero entries set to 0) and its summary."""

    eigvals: Tensor
    lambda_max: float
    kappa: dict[float, float]  # p -> kappa_p
    kappa_nz: float = math.nan  # over the nonzero eigenvalues
    rank: int = 0  # number of nonzero eigenvalues

    @classmethod
    def from_eigvals(cls, ev: Tensor, ps: Sequence[float], *, cleaned: bool = False, rel_tol: float | None = None) -> SpectrumStats:
        ev = ev if cleaned else clean_spectrum(ev, rel_tol)
        lam = ev[0].item() if ev.numel() else math.nan
        return cls(
            eigvals=ev,
            lambda_max=lam,
            kappa=generalized_condition_numbers(ev, ps, cleaned=True),
            kappa_nz=nonzero_condition_number(ev, cleaned=True),
            rank=numerical_rank(ev, cleaned=True),
        )

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/lambda_max": float(self.lambda_max)}
        for p, k in self.kappa.items():
            out[f"{prefix}/{p_key(p)}"] = float(k)
        out[f"{prefix}/kappa_nz"] = float(self.kappa_nz)
        out[f"{prefix}/rank"] = float(self.rank)
        return out


@dataclass
class LayerConditioning:
    """Structured result for one layer (see the module docstring for definitions)."""

    name: str
    in_features: int
    out_features: int
    n_rows: int  # rows processed in the forward pass(es)
    n_sampled: int  # rows used for the covariances
    weight_singular_values: Tensor  # descending, float64
    sigma_max_w: float
    sigma_min_w: float
    kappa_w: float
    input: SpectrumStats
    output_grad: SpectrumStats | None = None
    fim: SpectrumStats | None = None
    sigma_max_grad_w: float | None = None
    domination: float | None = None
    activation: str | None = None  # kind of the activation applied to the output, if known
    dead_units: int | None = None
    saturated_units: int | None = None
    full_units: int | None = None  # ReLU / leaky ReLU only

    def metrics(self, prefix: str = "") -> dict[str, float]:
        base = f"{prefix}{self.name}"
        out = {
            f"{base}/sigma_max_w": float(self.sigma_max_w),
            f"{base}/sigma_min_w": float(self.sigma_min_w),
            f"{base}/kappa_w": float(self.kappa_w),
        }
        out.update(self.input.metrics(f"{base}/input"))
        if self.output_grad is not None:
            out.update(self.output_grad.metrics(f"{base}/output_grad"))
        if self.fim is not None:
            out.update(self.fim.metrics(f"{base}/fim"))
        if self.sigma_max_grad_w is not None:
            out[f"{base}/sigma_max_grad_w"] = float(self.sigma_max_grad_w)
        if self.domination is not None:
            out[f"{base}/domination"] = float(self.domination)
        if self.dead_units is not None:
            out[f"{base}/dead_units"] = float(self.dead_units)
        if self.saturated_units is not None:
            out[f"{base}/saturated_units"] = float(self.saturated_units)
        if self.full_units is not None:
            out[f"{base}/full_units"] = float(self.full_units)
        return out


@dataclass
class _Accumulator:
    """Running sums for one layer over the calls captured while attached."""

    weight: Tensor | None = None
    n_rows: int = 0
    x_gram: Tensor | None = None
    x_sum: Tensor | None = None
    x_count: int = 0
    g_rows: int = 0
    g_gram: Tensor | None = None
    g_sum: Tensor | None = None
    g_count: int = 0
    grad_w: Tensor | None = None
    act_kind: str | None = None
    act_alive: Tensor | None = None  # per unit: rows with a nonzero activation output
    act_live_grad: Tensor | None = None  # per unit: rows outside the activation's flat region
    act_on: Tensor | None = None  # per unit: rows with h > 0 (ReLU-like kinds only)
    act_rows: int = 0  # rows seen by the activity counts

    @staticmethod
    def _add(acc: Tensor | None, val: Tensor) -> Tensor:
        return val if acc is None else acc + val

    def add_input(self, xs: Tensor, n_rows: int) -> None:
        self.x_gram = self._add(self.x_gram, xs.T @ xs)
        self.x_sum = self._add(self.x_sum, xs.sum(0))
        self.x_count += xs.shape[0]
        self.n_rows += n_rows

    def add_grad(self, gs: Tensor, n_rows: int, grad_w: Tensor) -> None:
        self.g_gram = self._add(self.g_gram, gs.T @ gs)
        self.g_sum = self._add(self.g_sum, gs.sum(0))
        self.g_count += gs.shape[0]
        self.g_rows += n_rows
        self.grad_w = self._add(self.grad_w, grad_w)

    def add_activity(self, kind: str, alive: Tensor, live_grad: Tensor, on: Tensor | None, rows: int) -> None:
        if self.act_kind is not None and self.act_kind != kind:
            # Outputs of one layer fed to different activations: no single definition applies.
            self.act_kind = "mixed"
            return
        if self.act_kind == "mixed":
            return
        self.act_kind = kind
        self.act_alive = self._add(self.act_alive, alive)
        self.act_live_grad = self._add(self.act_live_grad, live_grad)
        if on is not None:
            self.act_on = self._add(self.act_on, on)
        self.act_rows += rows

    def unit_counts(self) -> tuple[int, int, int | None] | None:
        """``(dead, saturated, full)`` over every row seen (``full`` None for smooth kinds)."""
        if self.act_kind is None or self.act_kind == "mixed":
            return None
        assert self.act_alive is not None and self.act_live_grad is not None
        full = None if self.act_on is None else int((self.act_on == self.act_rows).sum().item())
        return int((self.act_alive == 0).sum().item()), int((self.act_live_grad == 0).sum().item()), full


class LayerwiseAnalyzer:
    """Capture per-layer inputs and output gradients of every ``nn.Linear`` in ``module``.

    Hooks exist only while attached (``attach()``/``detach()`` or ``with``); a detached analyzer
    costs nothing. Usage during an ordinary training step::

        with LayerwiseAnalyzer(model, max_samples=4096) as a:
            loss = loss_fn(model(x), y)
            loss.backward()
        metrics = a.compute(prefix="cond/")   # dict[str, float]

    Entering the context clears earlier captures. The forward hook keeps a reference to the
    layer input (no copy: autograd saves it anyway) and registers a hook on the layer output
    tensor; the backward pass then accumulates ``dL/dW``, and ``Σδ`` on the sampled rows. A
    forward taken while attached completes its capture on backward even if the analyzer was
    detached in between. Several calls of one layer accumulate. Nothing keeps a grad graph.

    Args:
        module: any ``nn.Module``; every ``nn.Linear`` in it (parametrized ones too) is analyzed.
        max_samples: rows sampled (uniformly, without replacement, per call) for ``Σx``/``Σδ``;
            ``None`` uses all rows.
        ps: fractions for the generalized condition numbers ``kappa_p``.
        centered: use covariances (mean removed) instead of uncentred second moments.
        loss_reduction: ``"mean"`` (δ = N · dL/dh) or ``"sum"`` (δ = dL/dh); see module docstring.
        rel_tol: eigenvalues ``<= rel_tol · λ_max`` count as zero (default ``d · eps64``).
        seed: seed of the row sampler (a private CPU generator; global RNG untouched).
        include: optional ``(name, layer) -> bool`` filter on qualified layer names.
        weight_fn: ``layer -> effective weight``; default ``layer.weight``.
        activations: ``{layer name: kind}`` (kinds in :data:`ACTIVATION_KINDS`, or ``"none"``)
            for layers whose activation is not an activation module fed with the layer's output
            (functional activations); overrides the automatic detection for those layers.
        saturation_tol: a unit is in the activation's flat region on a row when the derivative
            there is below ``saturation_tol`` times the activation's maximal derivative.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        max_samples: int | None = 4096,
        ps: Sequence[float] = DEFAULT_PS,
        centered: bool = False,
        loss_reduction: LossReduction = "mean",
        rel_tol: float | None = None,
        seed: int = 0,
        include: LayerFilter | None = None,
        weight_fn: WeightFn | None = None,
        activations: Mapping[str, str] | None = None,
        saturation_tol: float = DEFAULT_SATURATION_TOL,
    ) -> None:
        bad = {k: v for k, v in (activations or {}).items() if v not in ACTIVATION_KINDS + ("none",)}
        if bad:
            raise ValueError(f"unknown activation kinds {bad}; known: {ACTIVATION_KINDS + ('none',)}")
        if not 0.0 < saturation_tol < 1.0:
            raise ValueError(f"saturation_tol must be in (0, 1), got {saturation_tol}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if max_samples is not None and max_samples < 1:
            raise ValueError("max_samples must be >= 1 or None")
        self.module = module
        self.max_samples = max_samples
        self.ps = tuple(float(p) for p in ps)
        self.centered = centered
        self.loss_reduction = loss_reduction
        self.rel_tol = rel_tol
        self.seed = seed
        self.include = include
        self.weight_fn = weight_fn or _default_weight_fn
        self.activations = dict(activations or {})
        self.saturation_tol = float(saturation_tol)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stats: dict[str, _Accumulator] = {}
        # id(layer output) -> (weak reference to it, its accumulator): lets an activation
        # module's pre-hook recognise its input as the output of an analyzed layer.
        self._outputs: dict[int, tuple[weakref.ref, _Accumulator]] = {}
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(seed)
        self._units_only = False  # count_units: unit activity only, no spectra

    # ------------------------------------------------------------------ attach / detach
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> LayerwiseAnalyzer:
        """Register a forward hook on every analyzed Linear and a forward pre-hook on every
        recognised activation module (no-op if already attached)."""
        if self._handles:
            return self
        layers = linear_layers(self.module, self.include)
        if not layers:
            raise ValueError("module contains no nn.Linear layer to analyze")
        for name, layer in layers.items():
            h = layer.register_forward_hook(self._make_forward_hook(name), with_kwargs=True)
            self._handles.append(h)
        seen: set[int] = set()
        for m in self.module.modules():
            act = _activation_of(m)
            if act is None or id(m) in seen:
                continue
            seen.add(id(m))
            self._handles.append(m.register_forward_pre_hook(self._make_activation_hook(*act), with_kwargs=True))
        return self

    def detach(self) -> None:
        """Remove every hook this analyzer registered on modules."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outputs.clear()

    def reset(self) -> None:
        """Forget captured statistics (and restart the row sampler from ``seed``)."""
        self._stats = {}
        self._outputs.clear()
        self._gen.manual_seed(self.seed)

    def __enter__(self) -> LayerwiseAnalyzer:
        self.reset()
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ hooks
    def _sample_rows(self, n: int, device: torch.device) -> Tensor | None:
        if self.max_samples is None or n <= self.max_samples:
            return None
        idx = torch.randperm(n, generator=self._gen)[: self.max_samples]
        idx = torch.sort(idx).values
        return idx.to(device)

    def _make_forward_hook(self, name: str):
        def hook(layer: nn.Module, args: tuple, kwargs: dict, output):
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor) or not isinstance(output, Tensor):
                return None
            st = self._stats.setdefault(name, _Accumulator())
            with torch.no_grad():
                x2 = x.detach().reshape(-1, x.shape[-1])
                idx = None if self._units_only else self._sample_rows(x2.shape[0], x2.device)
                if not self._units_only:
                    xs = x2 if idx is None else x2.index_select(0, idx)
                    st.add_input(_f64(xs), x2.shape[0])
                if st.weight is None and not self._units_only:
                    st.weight = _f64(self.weight_fn(layer).detach()).clone()
                kind = self.activations.get(name)
                if kind is None:  # automatic: an activation module fed with this very tensor
                    self._outputs[id(output)] = (weakref.ref(output), st)
                elif kind != "none":
                    h2 = output.detach().reshape(-1, output.shape[-1])
                    st.add_activity(kind, *unit_activity(kind, h2, saturation_tol=self.saturation_tol),
                                    unit_on_rows(kind, h2), h2.shape[0])
            if output.requires_grad and not self._units_only:
                output.register_hook(self._make_grad_hook(st, x2, idx))
            return None

        return hook

    def _make_activation_hook(self, kind: str, params: dict[str, float]):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor):
                return None
            entry = self._outputs.get(id(x))
            if entry is None or entry[0]() is not x:
                return None
            del self._outputs[id(x)]  # counted once, even if fed to a second activation
            st = entry[1]
            with torch.no_grad():
                h2 = x.detach().reshape(-1, x.shape[-1])
                st.add_activity(kind, *unit_activity(kind, h2, saturation_tol=self.saturation_tol, **params),
                                unit_on_rows(kind, h2), h2.shape[0])
            return None

        return hook

    @staticmethod
    def _make_grad_hook(st: _Accumulator, x2: Tensor, idx: Tensor | None):
        def hook(grad: Tensor):
            with torch.no_grad():
                g2 = grad.detach().reshape(-1, grad.shape[-1])
                grad_w = _f64(g2.T @ x2.to(g2.dtype))
                gs = g2 if idx is None else g2.index_select(0, idx)
                st.add_grad(_f64(gs), g2.shape[0], grad_w)
            return None

        return hook

    # ------------------------------------------------------------------ results
    def compute_layers(self) -> dict[str, LayerConditioning]:
        """Structured per-layer results, in module order."""
        if not self._stats:
            raise RuntimeError("nothing captured: run a forward (and backward) pass while the analyzer is attached")
        order = list(linear_layers(self.module, self.include))
        names = [n for n in order if n in self._stats] + [n for n in self._stats if n not in order]
        return {n: self._compute_one(n, self._stats[n]) for n in names}

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Flat ``dict[str, float]`` of all metrics (keys in the module docstring)."""
        out: dict[str, float] = {}
        for lc in self.compute_layers().values():
            out.update(lc.metrics(prefix))
        return out

    def _compute_one(self, name: str, st: _Accumulator) -> LayerConditioning:
        assert st.weight is not None and st.x_gram is not None and st.x_sum is not None
        w = st.weight
        sv = torch.linalg.svdvals(w.cpu())
        s_max, s_min = sv[0].item(), sv[-1].item()
        kappa_w = s_max / s_min if s_min > 0 else (math.inf if s_max > 0 else math.nan)

        ev_x = second_moment_eigvals(st.x_gram, st.x_sum, st.x_count, centered=self.centered)
        in_stats = SpectrumStats.from_eigvals(ev_x, self.ps, rel_tol=self.rel_tol)
        lc = LayerConditioning(
            name=name,
            in_features=w.shape[1],
            out_features=w.shape[0],
            n_rows=st.n_rows,
            n_sampled=st.x_count,
            weight_singular_values=sv,
            sigma_max_w=s_max,
            sigma_min_w=s_min,
            kappa_w=kappa_w,
            input=in_stats,
        )
        counts = st.unit_counts()
        if counts is not None:
            lc.activation = st.act_kind
            lc.dead_units, lc.saturated_units, lc.full_units = counts
        if st.g_count > 0:
            assert st.g_gram is not None and st.g_sum is not None and st.grad_w is not None
            scale = float(st.g_rows) ** 2 if self.loss_reduction == "mean" else 1.0
            ev_g = second_moment_eigvals(st.g_gram, st.g_sum, st.g_count, scale=scale, centered=self.centered)
            g_stats = SpectrumStats.from_eigvals(ev_g, self.ps, rel_tol=self.rel_tol)
            fim = SpectrumStats.from_eigvals(
                kronecker_spectrum(in_stats.eigvals, g_stats.eigvals), self.ps, cleaned=True
            )
            gw_max = torch.linalg.matrix_norm(st.grad_w.cpu(), ord=2).item()
            lc.output_grad = g_stats
            lc.fim = fim
            lc.sigma_max_grad_w = gw_max
            lc.domination = gw_max / s_max if s_max > 0 else math.inf
        return lc


@dataclass
class UnitCounts:
    """Dead / saturated / full units of one layer over every row of every batch counted."""

    name: str
    activation: str
    units: int
    rows: int
    dead_units: int
    saturated_units: int
    full_units: int | None  # ReLU / leaky ReLU only

    def metrics(self, prefix: str = "") -> dict[str, float]:
        base = f"{prefix}{self.name}"
        out = {f"{base}/dead_units": float(self.dead_units), f"{base}/saturated_units": float(self.saturated_units)}
        if self.full_units is not None:
            out[f"{base}/full_units"] = float(self.full_units)
        return out


def count_units(
    module: nn.Module,
    batches: Iterable,
    *,
    forward: Callable | None = None,
    include: LayerFilter | None = None,
    activations: Mapping[str, str] | None = None,
    saturation_tol: float = DEFAULT_SATURATION_TOL,
) -> dict[str, UnitCounts]:
    """Dead, saturated and full units counted over several batches (e.g. the training set).

    Runs ``forward(batch)`` (default ``module(batch)``) under ``torch.no_grad()`` for every
    batch, with hooks that record only the unit activity (no spectra, no gradient), and returns
    the layers whose activation is known (definitions in the module docstring). A unit is dead
    (full, saturated) only if it is so on every row of every batch.
    """
    analyzer = LayerwiseAnalyzer(module, include=include, activations=activations, saturation_tol=saturation_tol)
    analyzer._units_only = True
    run = forward if forward is not None else module
    with torch.no_grad(), analyzer:
        for batch in batches:
            run(batch)
    out: dict[str, UnitCounts] = {}
    for name in [n for n in linear_layers(module, include) if n in analyzer._stats]:
        st = analyzer._stats[name]
        counts = st.unit_counts()
        if counts is None:
            continue
        assert st.act_alive is not None and st.act_kind is not None
        out[name] = UnitCounts(name, st.act_kind, int(st.act_alive.numel()), st.act_rows, *counts)
    return out


def analyze_layers(
    module: nn.Module,
    loss_fn: Callable[[], Tensor],
    *,
    max_samples: int | None = 4096,
    **kwargs,
) -> dict[str, LayerConditioning]:
    """Structured variant of :func:`analyze`."""
    analyzer = LayerwiseAnalyzer(module, max_samples=max_samples, **kwargs)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("module has no parameter that requires grad; nothing to back-propagate to")
    with torch.enable_grad(), analyzer:
        loss = loss_fn()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        if not loss.requires_grad:
            raise ValueError("the loss does not require grad (is loss_fn running under torch.no_grad()?)")
        # autograd.grad instead of backward(): no .grad of any tensor is touched, so the
        # caller's accumulated gradients stay exactly as they were.
        torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
    return analyzer.compute_layers()


def analyze(
    module: nn.Module,
    loss_fn: Callable[[], Tensor],
    *,
    max_samples: int | None = 4096,
    prefix: str = "",
    **kwargs,
) -> dict[str, float]:
    """One forward+backward of ``loss_fn()`` with hooks attached; returns flat metrics.

    ``loss_fn()`` must run ``module`` and return a scalar loss. The gradient is taken with
    ``torch.autograd.grad`` w.r.t. ``module``'s parameters, so no ``.grad`` is modified (existing
    gradients stay as they were) and the analysis itself changes no state of the module; no
    hooks remain afterwards. The forward runs in the module's current mode, so in train mode
    layers such as BatchNorm / EquiNorm update their running statistics as in any forward.
    Other keyword arguments go to :class:`LayerwiseAnalyzer` (``ps``, ``centered``,
    ``loss_reduction``, ``rel_tol``, ``seed``, ``include``, ``weight_fn``, ``activations``,
    ``saturation_tol``).
    """
    layers = analyze_layers(module, loss_fn, max_samples=max_samples, **kwargs)
    out: dict[str, float] = {}
    for lc in layers.values():
        out.update(lc.metrics(prefix))
    return out
