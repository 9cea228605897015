"""The conditioner registry: adding a conditioner = adding one entry to ``_ENTRIES``.

An entry's ``apply(root, targets, **options) -> module`` receives the root module and the
``(qualified_name, layer)`` pairs selected by ``condition`` (layers of ``layer_types``
passing include/exclude) and returns the conditioned module (``root`` itself, unless the root
had to be replaced).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from . import enorm, equilibrate, equinorm, standardize, weight_norm


@dataclass(frozen=True)
class Conditioner:
    name: str
    description: str
    apply: Callable[..., nn.Module]
    layer_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)


def _none(root, targets):
    return root


_ENTRIES = [
    Conditioner("none", "no conditioning: the module is returned unchanged", _none),
    Conditioner("equilibrate", "unit 2-norm rows (each output's incoming weights) of W, recomputed "
                "every forward (paper's E, PyTorch reading; default)", equilibrate.make_apply("out")),
    Conditioner("equilibrate-in", "unit 2-norm columns (each input's outgoing weights) of W "
                "(paper's E in its own (in x out) notation)", equilibrate.make_apply("in")),
    Conditioner("equilibrate-both", "row-column equilibration: a few differentiable Ruiz "
                "scalings, then unit rows", equilibrate.make_apply("both")),
    Conditioner("weight-norm", "weight normalization W = g V/||V|| per output (Salimans & Kingma; "
                "torch's parametrization)", weight_norm.apply),
    Conditioner("weight-standardization", "per-output zero mean, unit std, learnable gain "
                "initialised to keep the function scale (Qiao et al.; Brock et al.)", standardize.apply_ws),
    Conditioner("centered-weight-norm", "per-output centred, unit-norm weights with learnable "
                "scale (Huang et al. 2017)", standardize.apply_cwn),
    Conditioner("equinorm", "equilibrium normalization from the input's sums, running estimates "
                "at eval (Defazio & Bottou); Linear only", equinorm.apply, (nn.Linear,)),
    Conditioner("enorm", "after each optimizer step, rebalance consecutive Linear layers to "
                "minimise the weights' norm (Stock et al. 2019); call post_step", enorm.apply,
                (nn.Linear,)),
]

REGISTRY: dict[str, Conditioner] = {c.name: c for c in _ENTRIES}


def register(conditioner: Conditioner) -> None:
    """Add a conditioner at run time (e.g. from an experiment script)."""
    if conditioner.name in REGISTRY:
        raise ValueError(f"conditioner {conditioner.name!r} is already registered")
    REGISTRY[conditioner.name] = conditioner
