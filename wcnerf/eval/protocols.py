"""Comparison protocols: a base method, a dataparser and overrides of nerfstudio's config.

A protocol is data: ``configs/protocols/<name>.yaml`` in the repository (``paper`` for GPUs,
``cpu`` for a small CPU run, ``budget`` for the training-budget study) or any YAML path with the
same keys. It does not restate nerfstudio's settings: each run's ``TrainerConfig`` is the
method's own specification (``ns-train <method>``'s defaults) with the protocol's
``overrides`` applied by their dotted paths in that config, e.g.
``pipeline.datamanager.dataparser.downscale_factor: 8`` (:mod:`wcnerf.eval.plan`). A misspelt
override is refused when the runs are planned, naming it and this file.

What is not nerfstudio's (which methods are compared, the scenes and seeds, the threads of a
process, the time limit of a call) is a key of its own. See ``configs/protocols/cpu.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from wcnerf.bounds import EVAL_IMAGE_SCALE, EVAL_VIEWS, SEED, Bounds, OptionError, at_least
from wcnerf.plugin.option_bounds import NS_TRAIN_BOUNDS

__all__ = ["Protocol", "ProtocolError", "protocols_dir", "available_protocols", "load_protocol", "ITERATIONS"]

ITERATIONS = "max_num_iterations"
"""The override that sets a run's training budget (the trainer config's field)."""
DATAPARSER_EVAL_VIEWS = "pipeline.datamanager.dataparser.max_eval_views"
"""The override that sizes the held-out evaluation where the dataparser has it (llff)."""


class ProtocolError(ValueError):
    """A protocol that cannot be found or read, or an override nerfstudio's config lacks."""


@dataclass(frozen=True)
class Protocol:
    name: str
    """Label of the protocol; outputs go to ``<output_root>/<name>/``."""
    methods: Dict[str, str]
    """Sweep label (``nerf``, ``e-nerf``) -> registered nerfstudio method (``nerf-small``)."""
    base_method: str
    """Method run for a bare conditioner name, conditioned with that conditioner."""
    dataparser: str = "llff"
    """A dataparser ``ns-train`` knows (``llff``, ``nerfstudio-data``, ``blender-data``, ``colmap``...)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """Dotted path in the run's ``TrainerConfig`` -> value, applied over the method's defaults."""
    scenes: Tuple[str, ...] = ("fern",)
    seeds: Tuple[int, ...] = (0,)
    description: str = ""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cuda``, ``cpu`` or ``mps``."""
    threads: Optional[int] = None
    """OMP/MKL threads of each training / evaluation process (None: torch's default), unless
    ``train_threads`` / ``eval_threads`` apply (:mod:`wcnerf.eval.execution`). 1 is much faster
    than torch's default on a small, shared CPU (no thread oversubscription)."""
    train_threads: Optional[int] = None
    """OMP/MKL threads of ``ns-train`` when a local worker has that many cores to itself. Float
    sums that torch splits over threads round differently, so a run trained with 2 threads is
    not bit for bit the run trained with 1 (docs/results.md, "Training threads and the cost of
    a run")."""
    eval_threads: Optional[int] = None
    """OMP/MKL threads of ``ns-eval``, by the same rule as ``train_threads``."""
    timeout_minutes: float = 0.0
    """Wall-clock limit of one ns-train or ns-eval call (0: none)."""
    eval_views: int = 0
    """Held-out views the final evaluation renders, evenly spaced over the eval split (0: all of
    them); for a dataparser without a ``max_eval_views`` of its own (``--max-eval-views``)."""
    eval_image_scale: float = 1.0
    """The final evaluation renders every view at this fraction of its size, in (0, 1]
    (``--eval-image-scale``); PSNRs at different scales are not comparable."""
    changes: Tuple[str, ...] = ()
    """What the command line changed of the protocol file (``--max-num-iterations 30``, ...): the
    file's description no longer describes the runs."""
    source: Optional[str] = None
    """The file the protocol was read from."""

    @property
    def max_num_iterations(self) -> Optional[int]:
        """The protocol's training budget (None: the method's own)."""
        value = self.overrides.get(ITERATIONS)
        return None if value is None else int(value)

    def with_overrides(self, **changes: Any) -> "Protocol":
        """A copy with ``changes`` to its nerfstudio overrides (dotted paths as keyword names
        with ``__`` for ``.``: ``pipeline__datamanager__dataparser__max_eval_views=0``)."""
        merged = dict(self.overrides)
        merged.update({k.replace("__", "."): v for k, v in changes.items()})
        return dataclasses.replace(self, overrides=merged)

    def with_budget(self, iterations: int) -> "Protocol":
        """The protocol at another training budget: another protocol, ``<name>-<N>it``, whose
        outputs never mix with this one's."""
        if iterations == self.max_num_iterations:
            return self
        return dataclasses.replace(self.with_overrides(**{ITERATIONS: int(iterations)}), name=f"{self.name}-{iterations}it")

    def with_evaluation(self, max_eval_views: Optional[int] = None, image_scale: Optional[float] = None) -> "Protocol":
        """The protocol with its held-out evaluation sized: ``max_eval_views`` views (through the
        dataparser's own ``max_eval_views`` when it has one, else :attr:`eval_views`) at
        ``image_scale`` of their size. Another protocol, ``<name>-<N>views`` / ``<name>-scale<S>``:
        what is measured differs, so its outputs never mix with this one's."""
        proto, name = self, self.name
        if max_eval_views is not None:
            from wcnerf.eval.plan import dataparser_config

            if hasattr(dataparser_config(self), "max_eval_views"):
                proto = proto.with_overrides(**{DATAPARSER_EVAL_VIEWS: int(max_eval_views)})
            else:
                proto = dataclasses.replace(proto, eval_views=int(max_eval_views))
            name += f"-{int(max_eval_views)}views"
        if image_scale is not None and image_scale != proto.eval_image_scale:
            proto = dataclasses.replace(proto, eval_image_scale=float(image_scale))
            name += f"-scale{float(image_scale):g}"
        return dataclasses.replace(proto, name=name)

    def summary(self) -> str:
        """One line describing the settings (for table.md and the console)."""
        shown = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        sizing = []
        if self.eval_views:
            sizing.append(f"{self.eval_views} held-out views evaluated")
        if self.eval_image_scale != 1:
            sizing.append(f"evaluated at {self.eval_image_scale:g} of the image size")
        return (
            f"protocol `{self.name}`"
            + (f" (the `{self.base_name}` protocol with {' '.join(self.changes)})" if self.changes else "")
            + f": methods {', '.join(f'{k} = ns-train {v}' for k, v in self.methods.items())}, "
            f"dataparser {self.dataparser}" + (f", overrides {shown}" if shown else "")
            + "".join(f", {x}" for x in sizing)
        )

    @property
    def base_name(self) -> str:
        """The protocol file's name (``cpu`` for ``cpu-30it``)."""
        return Path(self.source).stem if self.source else self.name.split("-")[0]


def protocols_dir() -> Path:
    """The shipped protocols (the checkout's ``configs/protocols``, installed as the package
    ``wcnerf.configs``); ``$WCNERF_PROTOCOLS`` overrides it."""
    env = os.environ.get("WCNERF_PROTOCOLS")
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("wcnerf.configs") / "protocols"))


def available_protocols() -> List[str]:
    folder = protocols_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


PROTOCOL_BOUNDS = Bounds((
    ("seeds", SEED),
    ("threads", at_least(1, warn_above=1024)), ("train_threads", at_least(1, warn_above=1024)),
    ("eval_threads", at_least(1, warn_above=1024)),
    ("timeout_minutes", at_least(0, warn_above=10 * 24 * 60, note="0: no limit")),
    ("eval_views", EVAL_VIEWS), ("eval_image_scale", EVAL_IMAGE_SCALE),
), flag=lambda key: key) + NS_TRAIN_BOUNDS.prefixed("overrides.")
"""The bounds of a protocol's numbers; its overrides are a run config's, bounded as ns-train's."""

_FIELDS = {f.name: f for f in dataclasses.fields(Protocol)}
_REQUIRED = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
_OLD_KEYS = {"max_num_iterations", "downscale_factor", "holdout_every", "max_eval_views", "steps_per_log",
             "steps_per_save", "steps_per_eval_batch", "steps_per_eval_image", "steps_per_eval_all_images",
             "train_args", "dataparser_args"}


def _from_mapping(data: Dict[str, Any], source: str) -> Protocol:
    old = sorted(set(data) & _OLD_KEYS)
    if old:
        raise ProtocolError(
            f"{source}: {old} are settings of nerfstudio's config: give them under `overrides:` by their path in the "
            "config (max_num_iterations, steps_per_save, logging.steps_per_log, "
            "pipeline.datamanager.dataparser.downscale_factor, ...; the cpu protocol shipped with wcnerf shows each)"
        )
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ProtocolError(f"{source}: unknown keys {unknown} (known: {sorted(_FIELDS)})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ProtocolError(f"{source}: missing keys {missing}")
    values = dict(data)
    if "scenes" in values:
        values["scenes"] = tuple(str(x) for x in (values["scenes"] or ()))
    if "seeds" in values:
        values["seeds"] = tuple(int(x) for x in (values["seeds"] or ()))
    values["methods"] = {str(k): str(v) for k, v in dict(values["methods"]).items()}
    overrides = values.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ProtocolError(f"{source}: overrides must be a mapping of config paths to values, not {overrides!r}")
    values["overrides"] = {str(k): v for k, v in overrides.items()}
    if values["overrides"].get(ITERATIONS) is not None and int(values["overrides"][ITERATIONS]) < 1:
        raise ProtocolError(f"{source}: overrides.{ITERATIONS} must be >= 1")
    for key in ("threads", "train_threads", "eval_threads"):
        if values.get(key) is not None:
            values[key] = int(values[key])
    if "timeout_minutes" in values:
        values["timeout_minutes"] = float(values["timeout_minutes"] or 0)
    if "eval_views" in values:
        values["eval_views"] = int(values["eval_views"] or 0)
    if "eval_image_scale" in values:
        values["eval_image_scale"] = float(values["eval_image_scale"])
    if "changes" in values:
        raise ProtocolError(f"{source}: `changes` is set by the command line, not a protocol key")
    values["description"] = str(values.get("description") or "").strip()
    values["dataparser"] = str(values.get("dataparser") or "llff")
    values["source"] = source
    proto = Protocol(**values)
    try:
        PROTOCOL_BOUNDS.check(proto)
    except OptionError as exc:
        raise ProtocolError(f"{source}: {exc}") from None
    if proto.device not in ("auto", "cuda", "cpu", "mps"):
        raise ProtocolError(f"{source}: device must be auto, cuda, cpu or mps, not {proto.device!r}")
    return proto


def load_protocol(name_or_path: Union[str, Path]) -> Protocol:
    """A protocol by name (``configs/protocols/<name>.yaml``) or by path to a YAML file."""
    import yaml

    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = protocols_dir() / f"{text}.yaml"
    if not path.is_file():
        raise ProtocolError(
            f"protocol {text!r} not found (looked for {path}); available: {', '.join(available_protocols()) or 'none'}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf8"))
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: expected a mapping of settings")
    data.setdefault("name", path.stem)
    return _from_mapping(data, str(path))
