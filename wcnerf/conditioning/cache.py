"""``cached(module)``: every conditioned weight computed once for a block of forward passes.

A parametrized layer recomputes its conditioned weight ``E(W)`` at every forward pass, which
training needs (the gradient flows through ``E``) but evaluation does not: rendering an image
in chunks would recompute every layer's ``E(W)`` once per chunk. Inside ``with cached(model):``
each parametrized tensor of ``model`` is computed on first use and reused until the block ends.

Unlike ``torch.nn.utils.parametrize.cached()``, whose switch is process-wide, the cache is
per thread: nerfstudio's viewer renders in a thread of its own while the training loop keeps
stepping, and a process-wide cache would hand the training thread a stale weight with no graph
back to ``W``. Here only the thread that entered the block sees cached weights; every other
thread computes them as usual. Meant for forward passes without a backward through the weights
(``torch.no_grad`` / ``torch.inference_mode``); nested blocks are allowed.

How: while a block is open anywhere, each ``ParametrizationList`` of ``module`` gets an
instance-level ``forward`` that looks in the calling thread's store first; it is removed when
the last block using that list ends (a count per list, under a lock), so a module outside any
block, its copies and its state dict are untouched.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["cached", "parametrization_lists"]

_local = threading.local()
_lock = threading.Lock()
_USERS = "_wcnerf_cache_users"


def parametrization_lists(module: nn.Module) -> List[nn.Module]:
    """Every ``ParametrizationList`` (one per parametrized tensor) below ``module``."""
    return [plist for m in module.modules() if parametrize.is_parametrized(m) for plist in m.parametrizations.values()]


def _stack() -> List[Dict[int, Optional[torch.Tensor]]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _cached_forward(plist: nn.Module):
    original = type(plist).forward

    def forward(*args, **kwargs):
        stack = getattr(_local, "stack", None)
        if stack:
            store = stack[-1]
            key = id(plist)
            if key in store:
                value = store[key]
                if value is None:
                    value = store[key] = original(plist, *args, **kwargs)
                return value
        return original(plist, *args, **kwargs)

    return forward


@contextlib.contextmanager
def cached(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, in the calling thread, compute each parametrized weight of ``module``
    once (see the module docstring). A module without parametrizations is left alone."""
    lists = parametrization_lists(module)
    if not lists:
        yield module
        return
    with _lock:
        for plist in lists:
            users = plist.__dict__.get(_USERS, 0)
            if users == 0:
                plist.__dict__["forward"] = _cached_forward(plist)
            plist.__dict__[_USERS] = users + 1
    stack = _stack()
    outer = stack[-1] if stack else {}
    stack.append({**outer, **{id(plist): None for plist in lists}})
    try:
        yield module
    finally:
        stack.pop()
        with _lock:
            for plist in lists:
                users = plist.__dict__.get(_USERS, 1) - 1
                if users <= 0:
                    plist.__dict__.pop("forward", None)
                    plist.__dict__.pop(_USERS, None)
                else:
                    plist.__dict__[_USERS] = users
