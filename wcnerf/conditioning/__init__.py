"""Weight conditioners for any torch module (pure torch).

    from wcnerf.conditioning import condition, bake, available, post_step
    model = condition(model, "equilibrate")          # every Linear (see registry.py)
    ...
    optimizer.step(); post_step(model, optimizer)     # needed only for "enorm"
    plain = bake(model)                               # plain layers, same outputs
    with torch.no_grad(), cached(model): ...          # each conditioned weight computed once

``python -m wcnerf.conditioning`` prints the registry. Each method's file documents what it
does and every choice its paper leaves open: ``equilibrate.py``, ``weight_norm.py``,
``standardize.py``, ``equinorm.py``, ``enorm.py``; the registry is ``registry.py``.
"""

from .api import available, bake, condition, left_plain, post_step
from .cache import cached
from .enorm import ENorm, infer_pairs
from .equilibrate import Equilibrate, equilibrate
from .equinorm import EquiNormConv2d, EquiNormLinear, equinorm_weight
from .options import accepted_options, check_options
from .registry import REGISTRY, Conditioner, register
from .standardize import CenteredWeightNorm, WeightStandardization, center_normalize, standardize

__all__ = [
    "available", "bake", "cached", "condition", "left_plain", "post_step", "accepted_options", "check_options",
    "ENorm", "infer_pairs", "Equilibrate", "equilibrate", "EquiNormConv2d", "EquiNormLinear", "equinorm_weight",
    "REGISTRY", "Conditioner", "register",
    "CenteredWeightNorm", "WeightStandardization", "center_normalize", "standardize",
]
