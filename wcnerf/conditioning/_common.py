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


def is_parametrized(module: nn.Module, name: str | None = None) -> bool:
    return parametrize.is_parametrized(module, name) if name else parametrize.is_parametrized(module)


def set_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Replace the submodule called `qualified_name` (non-empty) of `root` by `new`."""
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
