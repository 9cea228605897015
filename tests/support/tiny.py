"""The tiny models, the tiny scene and tiny trained runs: each defined once here.

- :data:`NERF` / :data:`NERFACTO`: the tiny presets of the two method families, each one
  :class:`TinyPreset` (nerfstudio ``TrainerConfig`` overrides by dotted attribute path) that
  yields the ``ns-train`` arguments (:meth:`TinyPreset.args`), the config object
  (:meth:`TinyPreset.apply` / :meth:`TinyPreset.config`), the model's keyword arguments
  (:meth:`TinyPreset.model_kwargs`) and a comparison protocol (:meth:`TinyPreset.protocol_yaml`,
  :func:`tiny_protocol`);
- :func:`tiny_fern`: fern in the nerf_llff_data layout with ``images_32/`` (126 x 94), made from
  the ``fern`` fixture's ``images_8/`` (a run's rays, renders and exports are then cheap);
- :func:`train_tiny`: ``ns-train <method> ... llff --data <scene> --downscale-factor 32`` for a
  few iterations with the family's tiny preset, one torch thread, offline
  (:func:`support.helpers.offline_env`), through :mod:`support.ns_server`; returns the run
  folder (``config.yml``, ``nerfstudio_models/``).

No nerfstudio import at module level: the inner loop imports this module too.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from support import ns_server
from support.helpers import BIN, offline_env

TINY_FACTOR = 32
"""images_<factor>/ of :func:`tiny_fern` (126 x 94)."""


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _words(value: Any) -> List[str]:
    if isinstance(value, (tuple, list)):
        return [w for v in value for w in _words(v)]
    return [str(value)]  # bools print as True / False, as tyro reads them


def _argv(items: Mapping[str, Any]) -> List[str]:
    """``--dotted-path value...`` for each override, as ``ns-train`` reads them."""
    return [w for path, value in items.items() for w in (_flag(path), *_words(value))]


@dataclasses.dataclass(frozen=True)
class TinyPreset:
    """One tiny model of a method family, as ``TrainerConfig`` overrides.

    ``model``: the network (``pipeline.model.<name>``: also what a model-level test builds);
    ``run``: the rest of a tiny ``ns-train`` run (trainer, logging, rays per batch, render chunk).
    """

    model: Mapping[str, Any]
    run: Mapping[str, Any]

    def overrides(self) -> Dict[str, Any]:
        """Every override, by dotted path from the ``TrainerConfig``."""
        return {**self.run, **{f"pipeline.model.{k}": v for k, v in self.model.items()}}

    def args(self, **changes: Any) -> List[str]:
        """``ns-train`` arguments; ``changes`` (dotted paths with ``__`` for ``.``) replace or add."""
        return _argv({**self.overrides(), **{k.replace("__", "."): v for k, v in changes.items()}})

    def model_kwargs(self, **changes: Any) -> Dict[str, Any]:
        """The model config's keyword arguments (``changes`` replace or add)."""
        return {**self.model, **changes}

    def apply(self, config: Any) -> Any:
        """Set every override on ``config`` (a ``TrainerConfig``) in place; returns it."""
        for path, value in self.overrides().items():
            *parents, name = path.split(".")
            target = config
            for p in parents:
                target = getattr(target, p)
            setattr(target, name, tuple(value) if isinstance(value, list) else value)
        return config

    def config(self, method: str) -> Any:
        """A copy of ``method``'s nerfstudio config with the preset applied."""
        from nerfstudio.configs.method_configs import all_methods

        return self.apply(copy.deepcopy(all_methods[method]))

    def protocol_yaml(self, iterations: int, *, methods: Mapping[str, str], base_method: str) -> str:
        """A comparison protocol (configs/protocols schema) that trains this preset on
        :func:`tiny_fern` for ``iterations`` steps, one seed, two evaluated held-out views."""
        import yaml

        overrides = {path: v for path, v in self.overrides().items() if path.startswith("pipeline.")}
        overrides.update({
            "max_num_iterations": iterations,
            "pipeline.datamanager.dataparser.downscale_factor": TINY_FACTOR,
            "pipeline.datamanager.dataparser.holdout_every": 8,
            "pipeline.datamanager.dataparser.max_eval_views": 2,
            "logging.steps_per_log": self.run["logging.steps_per_log"],
            "steps_per_save": 3,
            "steps_per_eval_batch": self.run["steps_per_eval_batch"],
        })
        return yaml.safe_dump({
            "name": "tiny", "methods": dict(methods), "base_method": base_method, "scenes": ["fern"], "seeds": [0],
            "threads": 1, "timeout_minutes": 10, "overrides": overrides,
        }, sort_keys=False)


_RUN = {
    "vis": "tensorboard",
    "steps_per_eval_batch": 2,
    "steps_per_eval_image": 0,
    "steps_per_eval_all_images": 0,
    "logging.steps_per_log": 1,
    "pipeline.datamanager.train_num_rays_per_batch": 64,
    "pipeline.datamanager.eval_num_rays_per_batch": 64,
    "pipeline.model.eval_num_rays_per_chunk": 16384,
    "pipeline.model.cpu_eval_num_rays_per_chunk": 0,  # renders in chunks of 16384 on a CPU too (paper presets: 128)
}

NERF = TinyPreset(
    model=dict(
        base_mlp_num_layers=3,
        base_mlp_layer_width=16,
        skip_connections=(1,),
        head_mlp_layer_width=8,
        num_coarse_samples=8,
        num_importance_samples=8,
        position_frequencies=4,
        direction_frequencies=2,
    ),
    run={
        **_RUN,
        "pipeline.model.analysis_every": 2,
        "pipeline.model.analysis_max_samples": 64,
    },
)
"""The tiny E-NeRF / NeRF (``e-nerf*``, ``nerf*``): a 3 x 16 MLP, 8 + 8 samples per ray."""

NERFACTO = TinyPreset(
    model=dict(
        num_levels=4,
        log2_hashmap_size=12,
        max_res=64,
        num_proposal_samples_per_ray=(8, 8),
        num_nerf_samples_per_ray=8,
    ),
    run=_RUN,
)
"""The tiny E-nerfacto / nerfacto (``e-nerfacto*``, ``nerfacto-plain*``): 4 hash levels of 2^12."""


def tiny_protocol(iterations: int) -> str:
    """The tiny comparison protocol: :data:`NERF` on :func:`tiny_fern`, methods nerf / e-nerf."""
    return NERF.protocol_yaml(iterations, methods={"nerf": "nerf-small", "e-nerf": "e-nerf-small"},
                              base_method="nerf-small")


def preset(method: str) -> TinyPreset:
    """The tiny preset of ``method``'s family."""
    return NERFACTO if "nerfacto" in method else NERF


# ----------------------------------------------------------------------------- the tiny scene
def tiny_fern(root: Path, fern: Path) -> Path:
    """``root/fern`` with fern's ``poses_bounds.npy`` and ``images_32/`` made from ``images_8/``."""
    from PIL import Image

    scene = Path(root) / "fern"
    if (scene / f"images_{TINY_FACTOR}").is_dir():
        return scene
    (scene / f"images_{TINY_FACTOR}").mkdir(parents=True)
    (scene / "poses_bounds.npy").write_bytes((fern / "poses_bounds.npy").read_bytes())
    for p in sorted((fern / "images_8").iterdir()):
        with Image.open(p) as im:
            im.convert("RGB").resize((126, 94), Image.BOX).save(scene / f"images_{TINY_FACTOR}" / f"{p.stem}.png")
    return scene


# ----------------------------------------------------------------------------- tiny runs
def tiny_env(tmp_path: Path) -> dict:
    """:func:`support.helpers.offline_env` with one torch thread."""
    env = offline_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def train_tiny(
    tmp_path: Path,
    scene: Path,
    method: str = "e-nerf-small",
    iterations: int = 30,
    extra: Sequence[str] = (),
    timestamp: str = "tiny",
) -> Path:
    """Train ``method`` for ``iterations`` steps on ``scene`` (factor 32); the run folder."""
    out = Path(tmp_path) / "outputs"
    cmd = [
        str(BIN / "ns-train"), method, "--output-dir", str(out), "--experiment-name", "fern",
        "--timestamp", timestamp, "--max-num-iterations", str(iterations), "--steps-per-save", "1000",
        "--machine.seed", "0", *preset(method).args(), *extra,
        "llff", "--data", str(scene), "--downscale-factor", str(TINY_FACTOR),
    ]  # fmt: skip
    res = ns_server.run(cmd, cwd=tmp_path, env=tiny_env(tmp_path), timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run = out / "fern" / method / timestamp
    assert (run / "config.yml").is_file() and list((run / "nerfstudio_models").glob("step-*.ckpt")), res.stdout[-2000:]
    return run
