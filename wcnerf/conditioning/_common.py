"""Small helpers shared by the conditioners (pure torch)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Activations g with g(d * z) = d * g(z) for every d > 0, element-wise. Only these may sit
#: between two layers balanced by ENorm: rescaling a unit by d before them and by 1/d after
#: them leaves the network's function unchanged. Dropout qualifies (it multiplies by a mask).
POSITIVELY_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)


def is_positively_homogeneous(act) -> bool:
    """True for None (no activation) and the activations in `POSITIVELY_HOMOGENEOUS`."""
    return act is None or isinstance(act, POSITIVELY_HOMOGENEOUS)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The (out, fan_in) matrix view of a Linear or Conv weight.

    A Conv2d weight (out, in/groups, kh, kw) is read as (out, in/groups*kh*kw): the matrix
    that multiplies the unfolded input patches (im2col), so "rows" are output channels and
    "columns" are (input channel, kernel tap) pairs.
    """
    return weight if weight.dim() == 2 else weight.flatten(1)


def reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a conditioner reduces in: float32 for a half-precision ``dtype`` (float16,
    bfloat16, and any other float narrower than 32 bits), ``dtype`` itself otherwise.

    Every norm, sum, mean and variance of a conditioner is taken in this dtype and its
    result cast back to the weight's dtype once, at the end, as
    ``torch.nn.utils.parametrizations.weight_norm`` accumulates its norm in float32: with half
    parameters a row's sum of squares past 65504 would overflow float16, centring and
    rescaling would round at every step. Under ``torch.autocast`` the parameters stay float32
    (autocast casts a matmul's operands, not a parametrization's), so only a half-precision
    *input* (EquiNorm's batch sums) reaches a conditioner there.
    """
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`reduction_dtype` (``t`` itself unless it is half precision)."""
    return t.to(reduction_dtype(t.dtype))


def is_parametrized(module: nn.Module, name: str | None = None) -> bool:
    return parametrize.is_parametrized(module, name) if name else parametrize.is_parametrized(module)


def set_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Replace the submodule called `qualified_name` (non-empty) of `root` by `new`."""
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
