"""The conditioner registry: adding a conditioner = adding one entry to ``_ENTRIES``.

An entry's ``apply(root, targets, **options) -> module`` receives the root module and the
``(qualified_name, layer)`` pairs selected by ``condition`` (layers of ``layer_types``
passing include/exclude) and returns the conditioned module (``root`` itself, unless the root
had to be replaced). Its optional ``degenerate(layer, **options) -> reason | None`` says when
the conditioner would leave a layer of that shape unable to train (``condition`` then leaves
the layer plain unless forced). Its ``options`` say which values each keyword of ``apply``
takes (:mod:`wcnerf.conditioning.options`), so options are checked before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from torch import nn

from . import enorm, equilibrate, equinorm, standardize, weight_norm
from ._common import as_matrix
from .options import BOOL, PAIRS, Option, choice, fraction_or_none, integer, positive


@dataclass(frozen=True)
class Conditioner:
    name: str
    description: str
    apply: Callable[..., nn.Module]
    layer_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)
    degenerate: Optional[Callable[..., Optional[str]]] = None
    options: Mapping[str, Option] = field(default_factory=dict, hash=False)
    """Keyword of ``apply`` -> the values it takes (a keyword without an entry takes any value)."""


def _fan_in(layer: nn.Module) -> int:
    return as_matrix(layer.weight).shape[1]


def _centred_degenerate(layer, **_options):
    """A centred row of length <= 2 is 0 or +-(1, -1): no direction left to learn."""
    n = _fan_in(layer)
    return f"centring a row of {n} weight(s) leaves no free direction" if n <= 2 else None


def _equinorm_degenerate(layer, **_options):
    return "the per-output shift cancels a single input weight exactly" if _fan_in(layer) == 1 else None


def _none(root, targets):
    return root


def _equilibrate_options(fixed_mode: Optional[str]) -> dict:
    modes = (fixed_mode,) if fixed_mode else equilibrate.MODES
    return {"mode": choice(None, *modes), "detach": BOOL, "eps": positive(), "iters": integer(1)}


_EPS = {"eps": positive()}


_ENTRIES = [
    Conditioner("none", "no conditioning: the module is returned unchanged", _none),
    Conditioner("equilibrate", f"alias of equilibrate-{equilibrate.DEFAULT_MODE}, the orientation "
                "chosen by the orientation study (docs/results.md); accepts mode=out|in|both",
                equilibrate.make_apply(None), degenerate=equilibrate.make_degenerate(None),
                options=_equilibrate_options(None)),
    Conditioner("equilibrate-out", "per output: unit 2-norm rows of torch's (out, in) weight, each "
                "neuron's incoming weights (the paper's column equilibration in its (in x out) "
                "notation, one of the variants its results cover; weight norm with gain fixed at 1)",
                equilibrate.make_apply("out"),
                degenerate=equilibrate.make_degenerate("out"), options=_equilibrate_options("out")),
    Conditioner("equilibrate-in", "per input: unit 2-norm columns of torch's weight, each input's "
                "outgoing weights (the paper's E, its row equilibration, as its (in x out) notation "
                "reads, arXiv:2409.03424)",
                equilibrate.make_apply("in"), degenerate=equilibrate.make_degenerate("in"),
                options=_equilibrate_options("in")),
    Conditioner("equilibrate-both", "row-column equilibration: a few differentiable Ruiz "
                "scalings, then unit rows", equilibrate.make_apply("both"),
                degenerate=equilibrate.make_degenerate("both"), options=_equilibrate_options("both")),
    Conditioner("weight-norm", "weight normalization W = g V/||V|| per output (Salimans & Kingma; "
                "torch's parametrization)", weight_norm.apply,
                options={"dim": Option("0 (one gain per output), 1 (per input) or None (one for the whole weight)",
                                       choice(0, 1, None).check)}),
    Conditioner("weight-standardization", "per-output zero mean, unit std, learnable gain "
                "initialised to keep the function scale (Qiao et al.; Brock et al.)", standardize.apply_ws,
                degenerate=_centred_degenerate, options=_EPS),
    Conditioner("centered-weight-norm", "per-output centred, unit-norm weights with learnable "
                "scale (Huang et al. 2017)", standardize.apply_cwn, degenerate=_centred_degenerate,
                options={**_EPS, "gain_init": choice(*standardize.CWN_GAIN_INITS)}),
    Conditioner("equinorm", "equilibrium normalization (Defazio & Bottou): per-output shift and scale "
                "of the weights from the batch's input sums, running estimates at eval; assumes "
                "non-negative inputs (exclude layers fed signed inputs)", equinorm.apply,
                degenerate=_equinorm_degenerate,
                options={"momentum": fraction_or_none(), "single_pass": BOOL, "sign_balance": BOOL}),
    Conditioner("enorm", "after each optimizer step, rebalance consecutive Linear layers to "
                "minimise the weights' norm (Stock et al. 2019); call post_step", enorm.apply,
                (nn.Linear,), options={"pairs": PAIRS, "c": positive(), "cycles": integer(1),
                                       "c_rule": choice(*enorm.C_RULES)}),
]

REGISTRY: dict[str, Conditioner] = {c.name: c for c in _ENTRIES}


def register(conditioner: Conditioner) -> None:
    """Add a conditioner at run time (e.g. from an experiment script)."""
    if conditioner.name in REGISTRY:
        raise ValueError(f"conditioner {conditioner.name!r} is already registered")
    REGISTRY[conditioner.name] = conditioner
