"""Comparison protocols: the settings a NeRF vs E-NeRF sweep is run under.

A protocol is data: a YAML file ``configs/protocols/<name>.yaml`` in the repository (``paper``
for GPUs, ``cpu`` for a small CPU run) or any YAML path with the same keys. See
``configs/protocols/paper.yaml`` for a commented example.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["Protocol", "ProtocolError", "protocols_dir", "available_protocols", "load_protocol"]


class ProtocolError(ValueError):
    """A protocol that cannot be found or read."""


@dataclass(frozen=True)
class Protocol:
    name: str
    """Label of the protocol; outputs go to ``<output_root>/<name>/``."""
    methods: Dict[str, str]
    """Sweep label (``nerf``, ``e-nerf``) -> registered nerfstudio method (``nerf-small``)."""
    base_method: str
    """Method run for a bare conditioner name, with ``--pipeline.model.conditioning NAME``."""
    max_num_iterations: int
    downscale_factor: int
    holdout_every: int = 8
    max_eval_views: int = 0
    """Evaluate at most this many of a scene's held-out views, evenly spaced (the LLFF
    dataparser's ``--max-eval-views``; 0: all). The table says how many of how many were
    evaluated per scene."""
    scenes: Tuple[str, ...] = ("fern",)
    seeds: Tuple[int, ...] = (0,)
    description: str = ""
    steps_per_log: int = 10
    steps_per_save: int = 1000
    steps_per_eval_batch: int = 100
    steps_per_eval_image: int = 0
    steps_per_eval_all_images: int = 0
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cuda``, ``cpu`` or ``mps``."""
    train_args: Tuple[str, ...] = ()
    """Extra ns-train flags given to every method (before the dataparser subcommand)."""
    dataparser: str = "llff"
    dataparser_args: Tuple[str, ...] = ()
    threads: Optional[int] = None
    """OMP/MKL threads of each training / evaluation process (None: torch's default), unless
    ``train_threads`` / ``eval_threads`` apply. 1 is much faster than torch's default on a
    small, shared CPU (no thread oversubscription)."""
    train_threads: Optional[int] = None
    """OMP/MKL threads of ``ns-train`` when a local worker has that many cores to itself (the
    cores divided by the local workers); None, or any other engine: ``threads``. A sweep with
    one worker on 2 free cores would otherwise leave one idle while it trains. Float sums that
    torch splits over threads round differently, so a run trained with 2 threads is not bit
    for bit the run trained with 1 (docs/results.md, "Training threads and the cost of a run")."""
    eval_threads: Optional[int] = None
    """OMP/MKL threads of ``ns-eval``, by the same rule as ``train_threads``. Evaluation
    renders every held-out view and gains from a second thread (docs/results.md, "Cost of one
    cpu protocol run, and its evaluation")."""
    timeout_minutes: float = 0.0
    """Wall-clock limit of one ns-train or ns-eval call (0: none)."""
    source: Optional[str] = None
    """The file the protocol was read from."""

    def with_overrides(self, **changes: Any) -> "Protocol":
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line describing the settings (for table.md and the console)."""
        return (
            f"protocol `{self.name}`: methods {', '.join(f'{k}={v}' for k, v in self.methods.items())}, "
            f"downscale factor {self.downscale_factor}, every {self.holdout_every}th image held out"
            + (f" (at most {self.max_eval_views} of them evaluated, evenly spaced)" if self.max_eval_views else "")
            + f", {self.max_num_iterations} iterations"
            + (f", extra ns-train args `{' '.join(self.train_args)}`" if self.train_args else "")
        )


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


_FIELDS = {f.name: f for f in dataclasses.fields(Protocol)}
_REQUIRED = [n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]


def _from_mapping(data: Dict[str, Any], source: str) -> Protocol:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ProtocolError(f"{source}: unknown keys {unknown} (known: {sorted(_FIELDS)})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ProtocolError(f"{source}: missing keys {missing}")
    values = dict(data)
    for key in ("scenes", "train_args", "dataparser_args"):
        if key in values:
            values[key] = tuple(str(x) for x in (values[key] or ()))
    if "seeds" in values:
        values["seeds"] = tuple(int(x) for x in (values["seeds"] or ()))
    values["methods"] = {str(k): str(v) for k, v in dict(values["methods"]).items()}
    for key in (
        "max_num_iterations",
        "downscale_factor",
        "holdout_every",
        "max_eval_views",
        "steps_per_log",
        "steps_per_save",
        "steps_per_eval_batch",
        "steps_per_eval_image",
        "steps_per_eval_all_images",
    ):
        if key in values:
            values[key] = int(values[key])
    for key in ("threads", "train_threads", "eval_threads"):
        if values.get(key) is not None:
            values[key] = int(values[key])
            if values[key] < 1:
                raise ProtocolError(f"{source}: {key} must be >= 1 (or left out), not {values[key]}")
    if "timeout_minutes" in values:
        values["timeout_minutes"] = float(values["timeout_minutes"] or 0)
    values["description"] = str(values.get("description") or "").strip()
    values["source"] = source
    proto = Protocol(**values)
    if proto.max_num_iterations < 1:
        raise ProtocolError(f"{source}: max_num_iterations must be >= 1")
    if proto.max_eval_views < 0:
        raise ProtocolError(f"{source}: max_eval_views must be >= 0 (0: every held-out view), not {proto.max_eval_views}")
    if proto.max_eval_views and proto.dataparser != "llff":
        raise ProtocolError(f"{source}: max_eval_views is an option of the llff dataparser, not of {proto.dataparser!r}")
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
