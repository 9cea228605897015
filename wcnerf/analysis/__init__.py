"""Layer-wise conditioning analysis (Huang et al., ECCV 2020) for any torch module (pure torch).

Quick use::

    from wcnerf.analysis import analyze, LayerwiseAnalyzer

    metrics = analyze(model, lambda: loss_fn(model(x), y), max_samples=4096)   # dict[str, float]

    with LayerwiseAnalyzer(model) as a:          # capture during an ordinary training step
        loss = loss_fn(model(x), y)
        loss.backward()
    metrics = a.compute(prefix="cond/")

Per ``nn.Linear`` (qualified module name ``L``) the keys are ``L/sigma_max_w``, ``L/sigma_min_w``,
``L/kappa_w``, ``L/{input,output_grad,fim}/{lambda_max,kappa_p100,kappa_p90,kappa_p50,kappa_nz,rank}``,
``L/sigma_max_grad_w``, ``L/domination`` and, for layers followed by a recognised activation
module, ``L/dead_units`` and ``L/saturated_units``. Definitions (uncentred second moments, δ = N·dL/dh
for a batch-mean loss, ...) are in :mod:`wcnerf.analysis.layerwise`.

The full loss Hessian of a small model w.r.t. its stored parameters and the spectrum of an
indefinite matrix (``kappa`` over the nonzero ``|λ|``, negative count, ...) are in
:mod:`wcnerf.analysis.hessian` (``loss_hessian``, ``gauss_newton``, ``hessian_spectrum``).
"""

from .hessian import (
    HessianSpectrum,
    flat_parameters,
    gauss_newton,
    hessian_spectrum,
    loss_gradient,
    loss_hessian,
)
from .layerwise import (
    ACTIVATION_KINDS,
    LayerConditioning,
    LayerwiseAnalyzer,
    SpectrumStats,
    analyze,
    analyze_layers,
    linear_layers,
    unit_activity,
)
from .spectral import (
    DEFAULT_PS,
    generalized_condition_numbers,
    kronecker_spectrum,
    nonzero_condition_number,
    numerical_rank,
    p_key,
)

__all__ = [
    "ACTIVATION_KINDS",
    "DEFAULT_PS",
    "HessianSpectrum",
    "LayerConditioning",
    "LayerwiseAnalyzer",
    "SpectrumStats",
    "analyze",
    "analyze_layers",
    "flat_parameters",
    "gauss_newton",
    "generalized_condition_numbers",
    "hessian_spectrum",
    "kronecker_spectrum",
    "linear_layers",
    "loss_gradient",
    "loss_hessian",
    "nonzero_condition_number",
    "numerical_rank",
    "p_key",
    "unit_activity",
]
