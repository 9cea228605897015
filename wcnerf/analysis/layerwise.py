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
  by default); eigenvalues ``<= rel_tol · λ_1`` count as zero and give ``inf``.
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
    {prefix}{L}/output_grad/lambda_max   {prefix}{L}/output_grad/kappa_p100 ...
    {prefix}{L}/fim/lambda_max       {prefix}{L}/fim/kappa_p100     ...
    {prefix}{L}/sigma_max_grad_w     {prefix}{L}/domination

``output_grad/*``, ``fim/*``, ``sigma_max_grad_w`` and ``domination`` are present only for
layers that received a gradient in the capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .spectral import (
    DEFAULT_PS,
    clean_spectrum,
    generalized_condition_numbers,
    kronecker_spectrum,
    p_key,
    second_moment_eigvals,
)

LossReduction = Literal["mean", "sum"]
LayerFilter = Callable[[str, nn.Module], bool]
WeightFn = Callable[[nn.Module], Tensor]

__all__ = [
    "LayerwiseAnalyzer",
    "LayerConditioning",
    "SpectrumStats",
    "analyze",
    "analyze_layers",
    "linear_layers",
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

    @classmethod
    def from_eigvals(cls, ev: Tensor, ps: Sequence[float], *, cleaned: bool = False, rel_tol: float | None = None) -> SpectrumStats:
        ev = ev if cleaned else clean_spectrum(ev, rel_tol)
        lam = ev[0].item() if ev.numel() else math.nan
        return cls(eigvals=ev, lambda_max=lam, kappa=generalized_condition_numbers(ev, ps, cleaned=True))

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/lambda_max": float(self.lambda_max)}
        for p, k in self.kappa.items():
            out[f"{prefix}/{p_key(p)}"] = float(k)
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
    ) -> None:
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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stats: dict[str, _Accumulator] = {}
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(seed)

    # ------------------------------------------------------------------ attach / detach
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> LayerwiseAnalyzer:
        """Register a forward hook on every analyzed Linear (no-op if already attached)."""
        if self._handles:
            return self
        layers = linear_layers(self.module, self.include)
        if not layers:
            raise ValueError("module contains no nn.Linear layer to analyze")
        for name, layer in layers.items():
            h = layer.register_forward_hook(self._make_forward_hook(name), with_kwargs=True)
            self._handles.append(h)
        return self

    def detach(self) -> None:
        """Remove every hook this analyzer registered on modules."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget captured statistics (and restart the row sampler from ``seed``)."""
        self._stats = {}
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
                idx = self._sample_rows(x2.shape[0], x2.device)
                xs = x2 if idx is None else x2.index_select(0, idx)
                st.add_input(_f64(xs), x2.shape[0])
                if st.weight is None:
                    st.weight = _f64(self.weight_fn(layer).detach()).clone()
            if output.requires_grad:
                output.register_hook(self._make_grad_hook(st, x2, idx))
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
    ``loss_reduction``, ``rel_tol``, ``seed``, ``include``, ``weight_fn``).
    """
    layers = analyze_layers(module, loss_fn, max_samples=max_samples, **kwargs)
    out: dict[str, float] = {}
    for lc in layers.values():
        out.update(lc.metrics(prefix))
    return out
