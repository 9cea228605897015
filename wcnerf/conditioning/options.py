"""What each conditioner's options accept, checked before any model is built.

A registry entry's ``apply`` signature names its options; its ``options`` field
(:class:`Option` per name, :mod:`wcnerf.conditioning.registry`) says which values each takes.
:func:`check_options` checks a set of options against both, so a typo, an option of another
conditioner or an impossible value is refused by name at configuration time instead of as a
``TypeError`` / ``ValueError`` from inside the conditioner once a run has started.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple

from torch import nn

__all__ = ["BOOL", "Option", "accepted_options", "check_options", "choice", "integer", "positive", "PAIRS",
           "UNIVERSAL", "fraction_or_none"]


@dataclass(frozen=True)
class Option:
    """The values one option takes: ``accepts`` says them in words, ``check`` tests one."""

    accepts: str
    check: Callable[[Any], bool]

    def ok(self, value: Any) -> bool:
        try:
            return bool(self.check(value))
        except Exception:  # noqa: BLE001 - a check that cannot even look at the value refuses it
            return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def choice(*values: Any) -> Option:
    return Option("one of " + ", ".join(repr(v) for v in values), lambda v: any(v == c and type(v) is type(c)
                                                                                for c in values))


def positive() -> Option:
    return Option("a finite number > 0", lambda v: _number(v) and v > 0)


def integer(at_least: int) -> Option:
    return Option(f"an integer >= {at_least}", lambda v: isinstance(v, int) and not isinstance(v, bool)
                  and v >= at_least)


def fraction_or_none() -> Option:
    return Option("a number in (0, 1], or None (a cumulative average)", lambda v: v is None or (_number(v) and 0 < v <= 1))


BOOL = Option("True or False", lambda v: isinstance(v, bool))


def _pairs_ok(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)) or not value:
        return False
    for pair in value:
        if isinstance(pair, (str, bytes)) or len(pair) not in (2, 3):
            return False
        if not all(isinstance(x, (str, nn.Module)) for x in tuple(pair)[:2]):
            return False
    return True


PAIRS = Option("a non-empty list of (producer, consumer[, columns]) layer-name tuples, or None (inferred)", _pairs_ok)

UNIVERSAL: Dict[str, Option] = {"force_degenerate": BOOL}
"""Options of ``condition`` itself, taken with every conditioner but ``none``."""


def accepted_options(method: str) -> Tuple[str, ...]:
    """The option names ``method`` takes: its ``apply``'s keywords, then :data:`UNIVERSAL`'s."""
    from .registry import REGISTRY

    cond = REGISTRY[method]
    params = list(inspect.signature(cond.apply).parameters.values())[2:]  # after (root, targets)
    names = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names + (tuple(UNIVERSAL) if method != "none" else ())


def _takes_any(method: str) -> bool:
    from .registry import REGISTRY

    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(REGISTRY[method].apply).parameters.values())


def _spec(method: str, name: str) -> Option | None:
    from .registry import REGISTRY

    return {**REGISTRY[method].options, **UNIVERSAL}.get(name)


def check_options(method: str, options: Mapping[str, Any]) -> None:
    """ValueError naming the first option ``method`` does not take (with its options, and the
    conditioners that do take it) or the first value it refuses (with what it accepts).
    ``none`` ignores options, as ``condition`` does (a plain baseline shares the settings of its
    conditioned twin), but still refuses a name or value no conditioner takes: a typo."""
    from .registry import REGISTRY

    if method not in REGISTRY:
        raise ValueError(f"unknown conditioning method {method!r}; available: {', '.join(REGISTRY)}")
    for name, value in options.items():
        owners = [m for m in REGISTRY if m != "none" and name in accepted_options(m)]
        if method == "none":
            if not owners:
                known = sorted({n for m in REGISTRY for n in accepted_options(m)})
                raise ValueError(f"{name!r} is an option of no conditioner (their options: {', '.join(known)})")
            if not any(_spec(m, name) is None or _spec(m, name).ok(value) for m in owners):  # type: ignore[union-attr]
                raise ValueError(f"{name}={value!r}: no conditioner takes this value ({owners[0]} takes "
                                 f"{_spec(owners[0], name).accepts})")  # type: ignore[union-attr]
            continue
        mine = accepted_options(method)
        if name not in mine and not _takes_any(method):
            where = f"; it is an option of {', '.join(owners)}" if owners else ""
            raise ValueError(f"{name!r} is not an option of {method!r} (its options: {', '.join(mine) or 'none'}){where}")
        spec = _spec(method, name)
        if spec is not None and not spec.ok(value):
            raise ValueError(f"{name}={value!r}: {method!r} takes {spec.accepts}")
