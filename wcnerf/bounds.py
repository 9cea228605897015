"""Bounds of the numbers a user can type, declared once per command and checked before any folder is made.

Each command keeps one table (:class:`Bounds`) of glob patterns over its options' dotted paths
(``pipeline.model.num_coarse_samples``, ``optim.lr``, ...), each with the :class:`Bound` it must
meet. :meth:`Bounds.check` walks every numeric option of the command's config
(:func:`numeric_options`), refuses a value outside its bound with one line naming the flag, the
value and the allowed range (:class:`OptionError`), and returns a warning for a value that is
allowed but unusually large. Every bound states its top (a limit or a level above which a value
is unusual), so "absurd" is never silently taken. ``tests/test_option_bounds.py`` walks every
numeric option of every command with 0, -1 and an absurd value through the command's own entry
point, and fails on a numeric option that no pattern covers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["Bound", "Bounds", "OptionError", "at_least", "between", "numeric_options", "positive", "set_option",
           "tyro_flag"]

Number = Union[int, float]


class OptionError(ValueError):
    """A number outside its option's bound; the message is ``--flag VALUE: must be ...``."""


@dataclass(frozen=True)
class Bound:
    """The values one option accepts: ``low``..``high`` (``strict_*``: the end itself refused),
    plus ``special`` values with a meaning of their own (-1: all). Above ``warn_above`` a value
    is accepted with a warning. ``note`` says what the special or edge values mean."""

    low: Optional[float] = None
    high: Optional[float] = None
    strict_low: bool = False
    strict_high: bool = False
    warn_above: Optional[float] = None
    special: Tuple[float, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.high is None and self.warn_above is None:
            raise ValueError("a Bound states its top: high (refused above) or warn_above (unusual above)")

    def describe(self) -> str:
        """The allowed range in words, e.g. ``>= 1``, ``> 0``, ``in [0, 1)``, ``-1 or >= 1``."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.strict_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.strict_high else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.strict_low else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.strict_high else '<='} {_num(self.high)}"
        else:
            text = "a finite number"
        if self.special:
            text = " or ".join(_num(v) for v in self.special) + " or " + text
        return text

    def allows(self, value: Number) -> bool:
        if value in self.special:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.strict_low and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.strict_high and value == self.high)):
            return False
        return True

    def unusual(self, value: Number) -> bool:
        return self.warn_above is not None and value > self.warn_above and value not in self.special


def at_least(low: float, *, warn_above: Optional[float] = None, high: Optional[float] = None, special=(),
             note: str = "") -> Bound:
    return Bound(low=low, high=high, warn_above=warn_above, special=tuple(special), note=note)


def positive(*, warn_above: Optional[float] = None, high: Optional[float] = None, note: str = "") -> Bound:
    return Bound(low=0, strict_low=True, high=high, warn_above=warn_above, note=note)


def between(low: float, high: float, *, strict_low: bool = False, strict_high: bool = False, note: str = "") -> Bound:
    return Bound(low=low, high=high, strict_low=strict_low, strict_high=strict_high, note=note)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def tyro_flag(path: str) -> str:
    """The flag tyro gives a dotted field path: ``optim.batch_size`` -> ``--optim.batch-size``."""
    return "--" + path.replace("_", "-")


# --------------------------------------------------------------------------- walking a config
def _hints(obj: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(type(obj), include_extras=False)
    except Exception:  # noqa: BLE001 - forward references a config does not import
        return {}


def _numeric_hint(hint: Any) -> bool:
    """int / float, Optional of one, or a tuple of them (bool excluded)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (tuple, list, typing.Union):
        return any(_numeric_hint(a) for a in args if a is not Ellipsis)
    return hint in (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_options(config: Any, prefix: str = "") -> Dict[str, Any]:
    """Every numeric option of ``config`` by dotted path: int and float fields (also ``None``
    where the type says a number may go), tuples of numbers; walks dataclasses and dicts."""
    out: Dict[str, Any] = {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        hints = _hints(config)
        for f in dataclasses.fields(config):
            if f.name.startswith("_") or not f.init:
                continue
            value = getattr(config, f.name)
            path = prefix + f.name
            if _is_number(value) or (isinstance(value, tuple) and value and all(_is_number(v) for v in value)):
                out[path] = value
            elif (value is None or value == ()) and _numeric_hint(hints.get(f.name)):
                out[path] = value
            else:
                out.update(numeric_options(value, path + "."))
    elif isinstance(config, dict):
        for key, value in config.items():
            if _is_number(value):
                out[prefix + str(key)] = value
            else:
                out.update(numeric_options(value, f"{prefix}{key}."))
    return out


def set_option(config: Any, path: str, value: Any) -> Any:
    """``config`` with the dotted option ``path`` set to ``value`` (a copy; frozen dataclasses too)."""
    head, _, rest = path.partition(".")
    if isinstance(config, dict):
        new = dict(config)
        new[head] = set_option(config[head], rest, value) if rest else value
        return new
    child = set_option(getattr(config, head), rest, value) if rest else value
    if getattr(type(config), "__dataclass_params__").frozen:
        return dataclasses.replace(config, **{head: child})
    import copy

    new = copy.copy(config)
    object.__setattr__(new, head, child)
    return new


# --------------------------------------------------------------------------- a command's table
@dataclass(frozen=True)
class Bounds:
    """One command's bounds: ``(pattern, Bound)`` rules, the first pattern that matches an
    option's dotted path wins; ``flag`` names an option as the user types it."""

    rules: Tuple[Tuple[str, Bound], ...]
    flag: Callable[[str], str] = tyro_flag

    def __add__(self, other: "Bounds") -> "Bounds":
        return Bounds(self.rules + other.rules, self.flag)

    def prefixed(self, prefix: str, flag: Optional[Callable[[str], str]] = None) -> "Bounds":
        """The same rules for the options under ``prefix`` (a sub-config of a bigger one)."""
        return Bounds(tuple((prefix + p, b) for p, b in self.rules), flag or self.flag)

    def bound_of(self, path: str) -> Optional[Bound]:
        return next((b for p, b in self.rules if fnmatch.fnmatchcase(path, p)), None)

    def uncovered(self, config: Any) -> List[str]:
        """Numeric options of ``config`` that no rule covers (the bounds test fails on any)."""
        return [p for p in numeric_options(config) if self.bound_of(p) is None]

    def problems(self, options: Dict[str, Any]) -> Tuple[List[str], List[str]]:
        """(refusals, warnings) for the values of ``options`` (dotted path -> value), one line each."""
        refusals, warnings = [], []
        for path, value in options.items():
            bound = self.bound_of(path)
            if bound is None or value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            shown = " ".join(_num(v) if isinstance(v, (int, float)) else str(v) for v in values)
            bad = [v for v in values if not bound.allows(v)]
            if bad:
                note = f" ({bound.note})" if bound.note else ""
                refusals.append(f"{self.flag(path)} {shown}: must be {bound.describe()}{note}")
            elif any(bound.unusual(v) for v in values):
                warnings.append(f"{self.flag(path)} {shown}: unusually large (above {_num(bound.warn_above)}); "
                                "accepted")
        return refusals, warnings

    def check(self, config: Any, *, warn: Optional[Callable[[str], None]] = None) -> List[str]:
        """Raise :class:`OptionError` for the first refused value of ``config``'s numeric options;
        warn (``warn`` or stderr) of each unusual one and return those warnings."""
        return self.check_values(numeric_options(config), warn=warn)

    def check_values(self, options: Dict[str, Any], *, warn: Optional[Callable[[str], None]] = None) -> List[str]:
        """:meth:`check` for values given by dotted path (a library function's arguments)."""
        refusals, warnings = self.problems(options)
        if refusals:
            raise OptionError(refusals[0])
        for line in warnings:
            if warn is not None:
                warn(line)
            else:
                import sys

                print(f"warning: {line}", file=sys.stderr, flush=True)
        return warnings


def merge(*tables: Bounds) -> Bounds:
    """Several tables as one, the first's flag style."""
    rules: Sequence[Tuple[str, Bound]] = tuple(r for t in tables for r in t.rules)
    return Bounds(tuple(rules), tables[0].flag)


# --------------------------------------------------------------------------- bounds shared by commands
SEED = between(0, 2**32 - 1, note="numpy's and torch's generators take unsigned 32-bit seeds")
THREADS = at_least(0, warn_above=1024, note="0: torch's default")
LEARNING_RATE = positive(warn_above=10)
PORT = between(1, 65535)
COUNT = at_least(1, warn_above=1e9)
"""A number of steps, points, rays or samples: at least one; above a billion, unusual."""
EVERY = at_least(1, warn_above=1e9)
"""A cadence in steps (every N steps)."""
EVERY_OR_OFF = at_least(0, warn_above=1e9, note="0: never")
WEIGHT = at_least(0, warn_above=1e6)
"""A loss weight or penalty (0: off)."""
DOWNSCALE_FACTOR = at_least(1, warn_above=64, note="1: the full-size images/")
"""An LLFF images_<factor>/ (the scene itself refuses a factor that leaves too few pixels)."""
BD_FACTOR = positive(warn_above=100)
"""LLFF's scale: the nearest depth bound lands at 1 / bd_factor."""
EVAL_VIEWS = at_least(0, warn_above=1e6, note="0: every held-out view")
"""How many held-out views an evaluation renders (evenly spaced)."""
EVAL_IMAGE_SCALE = between(0, 1, strict_low=True)
"""The size evaluated images are rendered at, as a fraction of the training images' size."""
