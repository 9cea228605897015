"""What the single-run tools share: the ``RUN`` argument (a run folder or its ``config.yml``),
the run's config and LLFF scene as nerfstudio loads them, ``ns-eval`` over every held-out view,
and the command-line wrapper that turns a bad ``RUN`` into a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Type, TypeVar

import tyro
from typing_extensions import Annotated

from wcnerf.bounds import Bounds, OptionError

__all__ = [
    "RunPathError",
    "RunArgs",
    "resolve_run",
    "find_run_config",
    "load_run_config",
    "scene_of_run",
    "evaluate_run",
    "run_tool",
]

CONFIG = "config.yml"

RunPath = tyro.conf.Positional[Annotated[Optional[Path], tyro.conf.arg(metavar="RUN")]]


class RunPathError(ValueError):
    """``RUN`` is not a run folder or a run config; the message (one line) starts with the path."""


def resolve_run(path: Path) -> Path:
    """The ``config.yml`` of ``path``: a run folder (``outputs/<experiment>/<method>/<timestamp>/``)
    or the config file itself. Raises :class:`RunPathError` naming the path otherwise."""
    p = Path(path)
    if p.is_dir():
        if (p / CONFIG).is_file():
            return p / CONFIG
        raise RunPathError(f"{p}: a folder without {CONFIG}, not a nerfstudio run folder "
                           "(outputs/<experiment>/<method>/<timestamp>/)")  # fmt: skip
    if p.is_file():
        return p
    raise RunPathError(f"{p}: no such run folder or {CONFIG}")


@dataclass
class RunArgs:
    """The ``RUN`` argument of every tool: positional, or nerfstudio's ``--load-config``."""

    run: RunPath = None
    """A run folder (outputs/<experiment>/<method>/<timestamp>/) or its config.yml."""
    load_config: Annotated[Optional[Path], tyro.conf.arg(metavar="RUN/config.yml")] = None
    """The run's config.yml, as nerfstudio's commands take it (the same as RUN)."""

    def given_run(self) -> Optional[Path]:
        """The path given as ``RUN`` or ``--load-config`` (None when neither)."""
        if self.run is not None and self.load_config is not None and resolve_run(self.run) != resolve_run(self.load_config):
            raise RunPathError(f"{self.run}: RUN and --load-config {self.load_config} name different runs; give one")
        return self.run if self.run is not None else self.load_config

    def config_path(self) -> Path:
        """The run's ``config.yml`` (:func:`resolve_run`); a :class:`RunPathError` when none is given."""
        given = self.given_run()
        if given is None:
            raise RunPathError("no run given: RUN (a run folder or its config.yml) or --load-config RUN/config.yml")
        return resolve_run(given)


def find_run_config(output_dir: Path, method: str, timestamp: str, experiment: Optional[str] = None) -> Optional[Path]:
    """``<output_dir>/<experiment>/<method>/<timestamp>/config.yml`` (any experiment name when
    not given; the newest if several), or None."""
    output_dir = Path(output_dir)
    if experiment:
        path = output_dir / experiment / method / timestamp / CONFIG
        return path if path.is_file() else None
    found = sorted(output_dir.glob(f"*/{method}/{timestamp}/{CONFIG}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_run_config(config_path: Path) -> Any:
    """The run's TrainerConfig, read as nerfstudio's ``eval_setup`` reads it; a
    :class:`RunPathError` naming the file when it is not one."""
    import yaml

    import wcnerf.plugin  # noqa: F401  (nerfstudio fixes; YAML imports the config's classes)

    config_path = Path(config_path)
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunPathError(f"{config_path}: not a YAML run config ({' '.join(str(e).split())})") from e
    if not hasattr(config, "pipeline"):
        raise RunPathError(f"{config_path}: not a nerfstudio run config (no pipeline in it)")
    return config


def scene_of_run(config_path: Path):
    """The LLFF scene a run was trained on, loaded with the run's own dataparser settings (as
    ``ns-render`` / ``ns-eval`` load it); ``(LLFFScene, run folder)``. Raises ValueError when the
    run did not use the llff dataparser, or when its ``dataparser_transforms.json`` does not
    match the scene on disk (another scene, other settings)."""
    import numpy as np

    from wcnerf.data.llff import LLFFDataParserConfig

    config_path = Path(config_path)
    config = load_run_config(config_path)
    datamanager = config.pipeline.datamanager
    dp_config = datamanager.dataparser
    if not isinstance(dp_config, LLFFDataParserConfig):
        raise ValueError(
            f"{config_path}: the run used the {type(dp_config).__name__} dataparser, not llff; "
            "use ns-render spiral / interpolate for other scenes"
        )
    if getattr(datamanager, "data", None) is not None:  # --data sets the datamanager's, as in training
        dp_config.data = Path(datamanager.data)
    scene = dp_config.setup().load_scene()
    run_dir = config_path.parent
    saved = run_dir / "dataparser_transforms.json"
    if saved.is_file():
        d = json.loads(saved.read_text())
        if not (np.allclose(np.asarray(d["transform"]), scene.transform, atol=1e-5)
                and abs(float(d["scale"]) - scene.scale) <= 1e-5 * abs(scene.scale)):  # fmt: skip
            raise ValueError(
                f"{saved}: the run's dataparser transform differs from that of {scene.root} as loaded now; "
                "is the scene on disk the one the run was trained on?"
            )
    return scene, run_dir


def evaluate_run(config_path: Path, eval_dir: Path, *, env: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = None) -> Dict[str, Any]:  # fmt: skip
    """``ns-eval`` (as a subprocess of this interpreter) over every held-out view; returns its
    ``results`` dict. Output in ``eval_dir`` (metrics.json, renders/, ns_eval.log)."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nerfstudio.scripts.eval", "--load-config", str(config_path),
           "--output-path", str(eval_dir / "metrics.json"), "--render-output-path", str(eval_dir / "renders")]  # fmt: skip
    with open(eval_dir / "ns_eval.log", "w") as log:
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if res.returncode != 0:
        tail = (eval_dir / "ns_eval.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"ns-eval failed (exit code {res.returncode}); log: {eval_dir / 'ns_eval.log'}\n{tail}")
    return json.loads((eval_dir / "metrics.json").read_text())["results"]


T = TypeVar("T")


NO_BOUNDS = Bounds(())
"""A tool without numeric options."""


def run_tool(cls: Type[T], args: Optional[Sequence[str]] = None) -> int:
    """Parse the command line (``sys.argv`` unless ``args``) into ``cls`` and run its ``main()``;
    a bad ``RUN`` ends with one line on stderr and exit code 2 (no traceback)."""
    return run_parsed(tyro.cli(cls, args=args))


def run_parsed(tool: Any) -> int:
    """:func:`run_tool` after parsing: the tool's numbers checked against its ``BOUNDS``, then its ``main()``."""
    try:
        getattr(tool, "BOUNDS", NO_BOUNDS).check(tool)
        return int(tool.main() or 0)  # type: ignore[attr-defined]
    except (RunPathError, OptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
