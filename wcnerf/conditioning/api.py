"""Public entry points: ``condition``, ``bake``, ``available``, ``post_step``."""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase
from typing import Callable, Iterable, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._common import set_submodule
from .equinorm import EQUINORM_LAYERS
from .registry import REGISTRY

Selector = Union[None, Iterable[str], Callable[[str, nn.Module], bool]]

_POST_STEP_ATTR = "_wcnerf_post_step"
_LEFT_PLAIN_ATTR = "_wcnerf_left_plain"


def available() -> dict[str, str]:
    """Registry: method name -> one-line description."""
    return {name: c.description for name, c in REGISTRY.items()}


def _matches(name: str, module: nn.Module, selector) -> bool:
    """fnmatch on the qualified name or on any dotted prefix of it ("mlp_base" selects
    everything inside ``mlp_base``); a callable is called as ``selector(name, module)``."""
    if callable(selector):
        return bool(selector(name, module))
    if isinstance(selector, str):
        selector = [selector]
    parts = name.split(".") if name else [""]
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(p, pat) for pat in selector for p in prefixes)


def condition(module: nn.Module, method: str, *, include: Selector = None, exclude: Selector = None,
              force_degenerate: bool = False, **options) -> nn.Module:
    """Condition, in place, every ``nn.Linear`` (and ``nn.Conv2d`` where the method applies)
    of ``module``, including ``module`` itself if it is one.

    ``include`` / ``exclude``: None, a list of fnmatch patterns on qualified submodule names
    (``["mlp_base.*"]``; a pattern also matches everything below a matching name; the root is
    named ``""``), or a predicate ``(name, mod) -> bool``; exclude wins. For ``enorm`` they
    restrict pair inference (both layers of a pair must be selected). ``**options`` go to the
    method (e.g. ``detach=True``, ``mode="in"``, ``iters=8``, ``c=1.0``, ``pairs=[...]``,
    ``momentum=0.1``). Returns the conditioned module: the same object unless ``module`` is
    itself a Linear replaced by ``equinorm``, so always use the return value.
    ``"none"`` returns ``module`` untouched (options ignored).

    Layers the method would leave unable to train (its registry entry's ``degenerate``, e.g.
    per-input equilibration of a ``Linear(n, 1)`` head, whose ``E(W)`` is ``sign(W)``) are left
    plain, with one warning naming them and why; ``force_degenerate=True`` conditions them
    anyway. ``left_plain(module)`` lists them afterwards.
    """
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown conditioning method {method!r}; available: {', '.join(REGISTRY)}")
    if method == "none":
        return module
    cond = REGISTRY[method]
    targets = [
        (name, m) for name, m in module.named_modules()
        if isinstance(m, cond.layer_types)
        and (include is None or _matches(name, m, include))
        and not (exclude is not None and _matches(name, m, exclude))
    ]
    if not targets:
        kinds = "/".join(t.__name__ for t in cond.layer_types)
        raise ValueError(f"condition({method!r}): no {kinds} layer selected in {type(module).__name__} "
                         f"(include={include!r}, exclude={exclude!r})")
    skipped = []
    if cond.degenerate is not None and not force_degenerate:
        reasons = [(name, cond.degenerate(m, **options)) for name, m in targets]
        skipped = [(name or "<root>", why) for name, why in reasons if why]
        targets = [(name, m) for (name, m), (_, why) in zip(targets, reasons) if not why]
        if skipped:
            listed = "; ".join(f"{name}: {why}" for name, why in skipped)
            if not targets:
                raise ValueError(f"condition({method!r}): every selected layer is degenerate for it ({listed}); "
                                 "pass force_degenerate=True to condition them anyway")
            warnings.warn(f"condition({method!r}) left {len(skipped)} layer(s) plain: {listed} "
                          "(force_degenerate=True conditions them anyway)", stacklevel=2)
    module = cond.apply(module, targets, **options)
    module.__dict__[_LEFT_PLAIN_ATTR] = module.__dict__.get(_LEFT_PLAIN_ATTR, []) + skipped
    return module


def left_plain(module: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, reason)`` of the layers ``condition`` left plain as degenerate."""
    return list(module.__dict__.get(_LEFT_PLAIN_ATTR, []))


@torch.no_grad()
def bake(module: nn.Module) -> nn.Module:
    """Fold every conditioner into plain layers: remove all parametrizations (keeping the
    effective weights), replace EquiNorm layers by plain ``nn.Linear`` / ``nn.Conv2d`` with their eval-time weight,
    detach post-step conditioners. Same outputs (EquiNorm: its eval-mode outputs), no
    overhead. In place; returns the module (a new one if ``module`` itself was EquiNorm)."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            # torch gives a deep copy of a parametrized module the *same* generated class, and
            # remove_parametrizations deletes the property from that class: baking a copy would
            # break the original. A private copy of the class keeps the two independent.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for tensor_name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
    for name, m in list(module.named_modules()):
        if isinstance(m, EQUINORM_LAYERS):
            if name == "":
                module = m.to_plain()
            else:
                set_submodule(module, name, m.to_plain())
    for m in module.modules():
        m.__dict__.pop(_POST_STEP_ATTR, None)
    return module


def post_step(module: nn.Module, optimizers=None) -> None:
    """Call after every ``optimizer.step()``. Runs the post-step conditioners (ENorm) attached
    by ``condition`` to ``module`` or any of its submodules; a no-op if there are none.
    ``optimizers``: one torch optimizer or an iterable of them; their state is rescaled."""
    if optimizers is not None and not isinstance(optimizers, torch.optim.Optimizer):
        optimizers = list(optimizers)
    done: set[int] = set()
    for m in module.modules():
        for hook in m.__dict__.get(_POST_STEP_ATTR, ()):
            if id(hook) not in done:
                done.add(id(hook))
                hook.step(optimizers)
