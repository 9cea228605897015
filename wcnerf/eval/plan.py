"""Planning a comparison: what is swept, and each run's nerfstudio config, its one record.

A run's ``TrainerConfig`` is built here, in this process, before any run starts
(:func:`build_config`): the method's own specification (what ``ns-train <method>`` would
train), conditioned the way ``wcnerf-train`` conditions any method, with the protocol's
dataparser and its ``overrides`` applied by their dotted paths, and the run's scene, seed,
device and folder. It is written to ``<run>/config.yml`` and trained with
``ns-train <method> --load-config <run>/config.yml`` (:mod:`wcnerf.eval.ns_runner`); the
records read the iterations, image factor and seed back from it. A misspelt override fails
here, naming it and the protocol file.

Scenes are checked once, by the dataparser itself (:func:`resolve_scenes`): its outputs give
the number of views evaluated and held out; a scene it refuses keeps its error and its runs
are recorded as failed with it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TypeVar

from wcnerf.bounds import Bounds, OptionError
from wcnerf.eval.protocols import ITERATIONS, Protocol, ProtocolError
from wcnerf.plugin.option_bounds import NS_TRAIN_BOUNDS
from wcnerf.eval.runs import CONFIG_FILE, MethodSpec, RunSpec, SceneSpec, run_dir_for

__all__ = [
    "parse_list",
    "known_conditioners",
    "resolve_methods",
    "resolve_scenes",
    "plan_runs",
    "build_config",
    "apply_override",
    "dataparser_config",
    "write_configs",
    "check_protocol",
    "config_changes",
    "HARNESS_KEYS",
]

T = TypeVar("T")

# Bare conditioner names that are the two named methods of the LLFF protocols.
_ALIASES = {"none": "nerf", "equilibrate": "e-nerf"}
# nerfstudio's names for the dataparsers the command line also accepts by their common name.
_DATAPARSER_ALIASES = {"blender": "blender-data", "nerfstudio": "nerfstudio-data"}

HARNESS_KEYS = ("output_dir", "experiment_name", "timestamp", "method_name", "machine.seed", "machine.device_type",
                "vis", "load_dir", "load_config", "data", "pipeline.datamanager.data",
                "pipeline.datamanager.dataparser.data")
"""Config paths the harness sets for every run (the scene, seed, device and folder are the
sweep's); an override of one is refused."""


def parse_list(values: Iterable[Any], cast: Callable[[str], T] = str) -> List[T]:
    """``("fern,flower", "room")`` -> ``["fern", "flower", "room"]``: every item split at commas,
    stripped, empty parts dropped, each part ``cast`` (``int`` for seeds), order kept, duplicates
    dropped. Command lines take typed tuples (``--seeds 0 1 2``); a comma-joined item
    (``--seeds 0,1,2``) is split here."""
    out: List[T] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            item = cast(part)
            if item not in out:
                out.append(item)
    return out


# --------------------------------------------------------------------------------------
# What is swept
# --------------------------------------------------------------------------------------


def known_conditioners() -> List[str]:
    """Conditioner names of :mod:`wcnerf.conditioning`: each is also a method of the sweep."""
    from wcnerf.conditioning import available

    return list(available())


def resolve_methods(names: Sequence[str], protocol: Protocol) -> List[MethodSpec]:
    """Sweep labels -> methods. ``nerf`` / ``e-nerf`` (any key of ``protocol.methods``) are the
    registered methods, also by their ``ns-train`` names (``nerf-small`` under the cpu
    protocol); any other conditioner name runs ``protocol.base_method`` with that conditioning
    (``none`` and ``equilibrate`` are the same as ``nerf`` and ``e-nerf`` where the protocol
    names those)."""
    conditioners = known_conditioners()
    by_ns_name = {ns: label for label, ns in protocol.methods.items()}
    specs: List[MethodSpec] = []
    for raw in parse_list(names):
        name = _ALIASES.get(raw, raw) if raw not in protocol.methods else raw
        if name not in protocol.methods and raw in by_ns_name:  # ns-train's name of a protocol method
            name = by_ns_name[raw]
        if name in protocol.methods:
            spec = MethodSpec(name, protocol.methods[name])
        elif raw in conditioners:
            spec = MethodSpec(raw, protocol.base_method, conditioning=raw)
        else:
            named = ", ".join(f"{k} (ns-train {v})" for k, v in sorted(protocol.methods.items()))
            raise ValueError(
                f"unknown method {raw!r} (--methods): use one of the protocol's methods ({named or 'none'}) "
                f"or a conditioner name ({', '.join(conditioners)})"
            )
        if spec.label not in [s.label for s in specs]:
            specs.append(spec)
    if not specs:
        raise ValueError("no methods to run")
    return specs


def dataparser_config(protocol: Protocol, data: Optional[Path] = None) -> Any:
    """The protocol's dataparser config (nerfstudio's registry, plugins included) with the
    protocol's ``pipeline.datamanager.dataparser.*`` overrides and ``data``."""
    from nerfstudio.configs.dataparser_configs import all_dataparsers

    name = _DATAPARSER_ALIASES.get(protocol.dataparser, protocol.dataparser)
    if name not in all_dataparsers:
        raise ProtocolError(f"{_where(protocol)}: unknown dataparser {protocol.dataparser!r}; ns-train knows "
                            f"{', '.join(sorted(all_dataparsers))}")
    dp = copy.deepcopy(all_dataparsers[name])
    prefix = "pipeline.datamanager.dataparser."
    for key, value in protocol.overrides.items():
        if key.startswith(prefix):
            apply_override(dp, key[len(prefix):], value, protocol, shown=key)
    if data is not None:
        dp.data = Path(data)
    return dp


def resolve_scenes(names: Sequence[str], protocol: Protocol) -> List[SceneSpec]:
    """Scene names or folders -> scenes, each checked by the protocol's dataparser: a folder
    that exists is used as given; for ``llff`` a name is also looked up as
    ``<root>/<name>`` and ``<root>/llff/<name>`` under the repository's ``data/`` and each
    ``$WCNERF_DATA`` entry (:func:`wcnerf.data.llff_scene.resolve_data_path`, the lookup of
    ``ns-train ... llff --data NAME``). A scene that cannot be found or that the dataparser
    refuses is kept with its error, so that its runs are reported as failed with it."""
    specs: List[SceneSpec] = []
    for raw in parse_list(names):
        spec = _check_scene(raw, protocol)
        clash = [s for s in specs if s.label == spec.label and s.path != spec.path]
        if clash:
            raise ValueError(f"two scenes named {spec.label!r}: {clash[0].path} and {spec.path}")
        if spec.label not in [s.label for s in specs]:
            specs.append(spec)
    return specs


def _check_scene(raw: str, protocol: Protocol) -> SceneSpec:
    label = Path(raw).expanduser().name
    dp = dataparser_config(protocol)
    try:
        from wcnerf.data.llff import LLFFDataParserConfig

        if isinstance(dp, LLFFDataParserConfig):
            from wcnerf.data.llff_scene import resolve_data_path

            path = resolve_data_path(raw, getattr(dp, "downscale_factor", None)).resolve()
        else:
            path = Path(raw).expanduser().resolve()
            if not path.exists():
                return SceneSpec(label, None, f"{raw}: no such file or folder (the {protocol.dataparser} dataparser's --data)")
    except ValueError as exc:
        return SceneSpec(label, None, str(exc))
    label = path.name if path.is_dir() else path.parent.name
    try:
        views = _views(dataclasses.replace(dp, data=path))
    except Exception as exc:  # noqa: BLE001 - whatever the dataparser refuses, with its own words
        return SceneSpec(label, path, f"{path}: the {protocol.dataparser} dataparser refused it: {type(exc).__name__}: {exc}")
    if protocol.eval_views and views["views_evaluated"] > protocol.eval_views:  # ns_eval evaluates fewer
        views["views_evaluated"] = protocol.eval_views
    return SceneSpec(label, path, None, **views)


def _views(dp: Any) -> Dict[str, int]:
    """Views evaluated, views held out and the image width, from the dataparser's outputs."""
    parser = dp.setup()  # one parser: the llff one reads and checks the scene once for both splits
    evaluated = parser.get_dataparser_outputs("test")
    held = evaluated
    if getattr(dp, "max_eval_views", 0):  # a subset of the held-out views is evaluated
        held = dataclasses.replace(dp, max_eval_views=0).setup().get_dataparser_outputs("test")
    parser.get_dataparser_outputs("train")  # a scene without training views fails here, not in a worker
    return {
        "views_evaluated": len(evaluated.image_filenames),
        "views_held_out": len(held.image_filenames),
        "image_width": int(evaluated.cameras.width[0].item()) if len(evaluated.image_filenames) else None,
    }


def plan_runs(
    protocol: Protocol,
    scenes: Sequence[SceneSpec],
    methods: Sequence[MethodSpec],
    seeds: Sequence[int],
    out_dir: Path,
) -> List[RunSpec]:
    """Every (scene, method, seed), scene-major so a scene's comparison completes early."""
    return [
        RunSpec(protocol, sc, m, int(seed), run_dir_for(out_dir, sc.label, m.label, int(seed)))
        for sc in scenes
        for seed in seeds
        for m in methods
    ]


# --------------------------------------------------------------------------------------
# Each run's config
# --------------------------------------------------------------------------------------


def _where(protocol: Protocol) -> str:
    return protocol.source or f"protocol {protocol.name!r}"


def apply_override(config: Any, path: str, value: Any, protocol: Protocol, shown: Optional[str] = None) -> None:
    """Set ``config.<path>`` (dotted) to ``value``; a path the config lacks is refused, naming
    it and the protocol's file. Values keep the field's kind (a Path stays a Path, a tuple a
    tuple); nerfstudio checks the rest when it builds the run."""
    shown = shown or path
    obj = config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            have = sorted(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else []
            owner = ".".join(parts[:i]) or "the trainer config"
            raise ProtocolError(
                f"{_where(protocol)}: override {shown!r}: {owner} ({type(obj).__name__}) has no field {part!r}"
                + (f"; its fields: {', '.join(have)}" if have else "")
            )
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    current = getattr(obj, parts[-1])
    if isinstance(current, Path) and value is not None:
        value = Path(value)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(current, bool) and not isinstance(value, bool):
        raise ProtocolError(f"{_where(protocol)}: override {shown!r} takes true or false, not {value!r}")
    elif isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
        raise ProtocolError(f"{_where(protocol)}: override {shown!r} takes a number, not {value!r}")
    setattr(obj, parts[-1], value)


def build_config(spec: RunSpec, device: str, allocator: Optional[bool] = None) -> Any:
    """The run's ``TrainerConfig``: the method's specification, conditioned, with the
    protocol's dataparser and overrides, the run's scene, seed, device and folder (see the
    module docstring). Every run trains with wcnerf's trainer, which resumes a run to its own
    total and keeps its learning-rate schedule (:mod:`wcnerf.plugin.trainer`)."""
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.engine.trainer import TrainerConfig

    from wcnerf.plugin.any_method import conditioned_trainer_config
    from wcnerf.plugin.conditioned import ConditionedModelConfig
    from wcnerf.plugin.trainer import WCTrainerConfig

    protocol, method = spec.protocol, spec.method
    if method.ns_method not in all_methods:
        raise ProtocolError(f"{_where(protocol)}: unknown method {method.ns_method!r}; ns-train knows "
                            f"{', '.join(sorted(all_methods))}")
    config = copy.deepcopy(all_methods[method.ns_method])
    if not isinstance(config, WCTrainerConfig):
        config = WCTrainerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainerConfig)
                                    if f.name != "_target"})
    if method.conditioning is not None:
        if isinstance(config.pipeline.model, ConditionedModelConfig):  # wcnerf's own models have the option
            config.pipeline.model.conditioning = method.conditioning
        else:  # any other method: as wcnerf-train conditions it
            config = conditioned_trainer_config(config, method.conditioning)
    for key in protocol.overrides:
        if key in HARNESS_KEYS:
            raise ProtocolError(f"{_where(protocol)}: override {key!r} is set by the harness for each run "
                                "(the scene, seed, device and run folder are the sweep's)")
    config.pipeline.datamanager.dataparser = dataparser_config(protocol, spec.scene.path)
    if hasattr(config.pipeline.datamanager, "data"):
        config.pipeline.datamanager.data = None
    for key, value in protocol.overrides.items():
        if not key.startswith("pipeline.datamanager.dataparser."):
            apply_override(config, key, value, protocol)
    config.output_dir = spec.run_dir.resolve() / "ns"
    config.experiment_name = spec.scene.label
    config.timestamp = "run"
    config.machine.seed = int(spec.seed)
    config.machine.device_type = device  # "auto": the worker that trains it decides (ns_runner.settle_device)
    if device not in ("cuda", "auto"):
        config.mixed_precision = False
    config.vis = "tensorboard"
    config.logging.local_writer.max_log_size = 0  # every step line in train.log: the harness's progress
    config.steady_cpu_allocator = allocator
    try:  # what --set and --max-num-iterations changed too, named by its path in the config
        Bounds(NS_TRAIN_BOUNDS.rules, flag=lambda path: path).check(config)
    except OptionError as exc:
        raise ProtocolError(f"{_where(protocol)} (overrides, --set, --max-num-iterations): {exc}") from None
    return config


def check_protocol(protocol: Protocol, methods: Sequence[str] = ()) -> None:
    """Refuse a protocol whose overrides nerfstudio's config of its methods (or of
    ``methods``) lacks, or whose dataparser refuses its options, before any scene is read or
    any run starts; the error names the override and the protocol's file."""
    dp = dataparser_config(protocol)
    check = getattr(dp, "check_options", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ProtocolError(f"{_where(protocol)}: the {protocol.dataparser} dataparser refuses its options: {exc}") from None
    for ns_method in dict.fromkeys([*protocol.methods.values(), protocol.base_method, *methods]):
        spec = RunSpec(protocol, SceneSpec("scene", Path("scene")), MethodSpec(ns_method, ns_method), 0, Path("run"))
        build_config(spec, "cpu")


def write_configs(plan: Sequence[RunSpec], device: str, allocator: Optional[bool] = None,
                  console: Any = None, built: Optional[Dict[Any, Any]] = None) -> None:
    """Build every run's config (refusing a bad override before any run starts) and write it
    to ``<run>/config.yml``. A finished run keeps the config it was trained with (with a note
    when the protocol now says otherwise; ``--redo`` trains it anew); an unfinished one takes
    the protocol as it is now (a raised budget resumes it to the new total). ``built``: the
    configs already built for the plan, by run key (the command line builds them to check)."""
    import yaml

    from wcnerf.atomic import write_text
    from wcnerf.eval.runs import run_state

    for spec in plan:
        if spec.scene.path is None or spec.scene.error:
            continue
        config = (built or {}).get(spec.key) or build_config(spec, device, allocator)
        text = yaml.dump(config)
        path = spec.run_dir / CONFIG_FILE
        if path.is_file() and _as_planned(path.read_text(encoding="utf8"), text, device) == text:
            continue
        if path.is_file() and run_state(spec.run_dir) == "done":
            if console is not None:
                console.print(f"[yellow]note[/] {spec.scene.label} / {spec.method.label} / seed {spec.seed} finished "
                              "with a config.yml that differs from what the protocol now gives; kept (--redo runs it again)")
            continue
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, text)


def _as_planned(existing: str, planned: str, device: str) -> str:
    """``existing`` with what a worker settles on its own put back as planned: an ``auto``
    device (and the mixed precision that goes with it) is decided where the run trains."""
    import re

    if device != "auto":
        return existing
    existing = re.sub(r"^(\s+device_type: )\w+$", r"\1auto", existing, flags=re.M)
    planned_mp = re.search(r"^mixed_precision: \w+$", planned, flags=re.M)
    if planned_mp:
        existing = re.sub(r"^mixed_precision: \w+$", planned_mp.group(0), existing, flags=re.M)
    return existing


def config_changes(config: Any, base: Any = None, prefix: str = "") -> List[str]:
    """What a run's config changes from ``ns-train <method>``'s defaults (``base``: the
    method's registered config), in ns-train's flag spelling: ``--max-num-iterations 700``.
    For people reading a plan (``--dry-run``); the config file is what trains."""
    if base is None:
        from nerfstudio.configs.method_configs import all_methods

        base = all_methods[config.method_name]
    out: List[str] = []
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        new, old = getattr(config, f.name), getattr(base, f.name, None)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(new) and not isinstance(new, type):
            if type(new) is not type(old):
                out.append(f"--{_flag(path)} {type(new).__name__}")
            out += config_changes(new, old if dataclasses.is_dataclass(old) else type(new)(), path + ".")
        elif new != old:
            out.append(f"--{_flag(path)} {new}")
    return out


def _flag(path: str) -> str:
    return path.replace("_", "-")
