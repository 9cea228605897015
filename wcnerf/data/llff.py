"""LLFF forward-facing scenes as a nerfstudio dataparser (``--data llff/fern``).

Registered as ``llff`` through the ``nerfstudio.dataparser_configs`` entry point
(:data:`llff_dataparser`). The geometry is the NeRF reference loader's (see
:mod:`wcnerf.data.llff_scene`): OpenGL axes, scale so the nearest bound is at 1/0.75,
recentred on the average pose, focal / factor. Every ``holdout_every``-th image
(index % 8 == 0) is held out for evaluation.

What the model gets, in ``DataparserOutputs.metadata["llff"]`` (the pipeline hands the train
dataset's metadata to ``Model(..., metadata=...)``)::

    {"ndc": bool,      # render in NDC (forward-facing) or in world space
     "near": float,    # NDC: 1.0, the world near plane for ndc_rays; else sampling near
     "far": float,     # NDC: 1.0, the end of the NDC ray parameter t; else sampling far
     "focal": float,   # focal length (pixels) of the loaded, downscaled images
     "width": int,     # their size in pixels
     "height": int}

In NDC mode, map world rays with ``ndc_rays(o, d, focal=, width=, height=, near=meta["near"])``
and sample ``t`` linearly in ``[0, 1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from wcnerf.bounds import BD_FACTOR, DOWNSCALE_FACTOR, EVAL_VIEWS, Bounds, OptionError, at_least, positive
from wcnerf.data.llff_scene import (
    LLFFDataError,
    LLFFScene,
    check_recorded_scene,
    load_llff_scene,
    parse_fingerprint,
    poses_digest,
    resolve_data_path,
    scene_candidates,
    scene_fingerprint,
    scene_problem,
    split_indices,
)

__all__ = ["LLFFDataParserConfig", "LLFF", "LLFFDataError", "llff_dataparser", "NDC_NEAR", "locate_scene",
           "record_scene"]

NDC_NEAR = 1.0
"""World depth of the NDC near plane (reference: ``ndc_rays(H, W, focal, 1., ...)``)."""


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF forward-facing scene (NeRF's ``nerf_llff_data`` layout)."""

    _target: Type = field(default_factory=lambda: LLFF)
    """Target class to instantiate."""
    data: Path = Path("llff/fern")
    """Scene folder (``poses_bounds.npy`` + ``images_<factor>/`` or ``images/``). A path that
    does not exist is looked up as ``<root>/<data>`` and ``<root>/llff/<data>`` under the repo's
    ``data/`` and under each entry of ``$WCNERF_DATA`` (``wcnerf.data.llff_scene.scene_candidates``,
    the same lookup as the comparison's ``--scenes``)."""
    downscale_factor: int = 8
    """Load ``images_<factor>/`` (made from ``images/`` and cached if missing); 4 is the
    NeRF paper's protocol, 8 is quicker. 1 means ``images/`` itself."""
    holdout_every: int = 8
    """Hold out image i for evaluation when i % holdout_every == 0 (NeRF's llffhold); 0 puts
    every image in both the train and the eval split."""
    max_eval_views: int = 0
    """Evaluate at most this many of the held-out images, evenly spaced over them, the first
    and the last included (0: all). The others stay held out: the training split does not
    change. For a quick evaluation of a scene with many views (the ``cpu`` protocol: 5)."""
    ndc: bool = True
    """Normalized device coordinates (forward-facing scenes); False for scenes that are not
    forward-facing: rays are sampled in world space between near and far below."""
    bd_factor: float = 0.75
    """Scale the scene so the nearest depth bound is 1 / bd_factor (reference: 0.75)."""
    near_factor: float = 0.9
    """Non-NDC mode: near = min scaled bound * near_factor (nerf-pytorch: 0.9)."""
    far_factor: float = 1.0
    """Non-NDC mode: far = max scaled bound * far_factor (nerf-pytorch: 1.0)."""
    scene_fingerprint: str = ""
    """What the scene a run trained on held (``poses <digest>, <N> images <digest>``), written
    to config.yml by the trainer's pre-flight (:func:`record_scene`): ns-eval, ns-render and a
    resume then refuse a scene that differs, naming both. Empty: nothing is checked."""

    def check_options(self) -> None:
        """Refuse impossible options before any scene is read (the harness plans with it)."""
        try:
            LLFF_BOUNDS.check(self)
        except OptionError as exc:
            raise LLFFDataError(str(exc)) from None
        parse_fingerprint(self.scene_fingerprint)


LLFF_BOUNDS = Bounds((
    ("downscale_factor", DOWNSCALE_FACTOR),
    ("holdout_every", at_least(0, warn_above=1e6, note="0: every image in both splits")),
    ("max_eval_views", EVAL_VIEWS),
    ("bd_factor", BD_FACTOR),
    ("near_factor", positive(warn_above=1, note="near = the nearest scaled bound x near_factor")),
    ("far_factor", positive(warn_above=100)),
))
"""The bounds of the llff dataparser's numbers (``ns-train ... llff --OPTION``; the scene checks
that too few pixels are left after downscaling)."""


_WARNED: set = set()


def _say_once(message: str, style: str = "") -> None:
    """Each message about a scene once per process (the run's pre-flight check and its
    datamanager both load the scene, ns-eval asks for the eval split twice)."""
    if message not in _WARNED:
        _WARNED.add(message)
        CONSOLE.print(style + escape(message), soft_wrap=True, highlight=False)


def _warn_once(message: str) -> None:
    _say_once(f"Warning: {message}", "[bold yellow]")


@dataclass
class LLFF(DataParser):
    """LLFF dataparser (NeRF reference loader geometry)."""

    config: LLFFDataParserConfig

    def __init__(self, config: LLFFDataParserConfig):
        super().__init__(config=config)
        self._cache: Optional[Tuple[Tuple, LLFFScene]] = None

    # The datamanager asks for "train" then "val"/"test": load and check the scene once.
    def load_scene(self) -> LLFFScene:
        """The whole scene (all images), resolved and checked once per parser."""
        cfg = self.config
        cfg.check_options()
        root, gone = locate_scene(cfg)
        key = (str(root.resolve()), cfg.downscale_factor, cfg.bd_factor, cfg.holdout_every)
        if self._cache is None or self._cache[0] != key:
            recorded = cfg.scene_fingerprint
            gone_from = cfg.data if gone else None
            if gone:  # a folder found by name: first whether it is the scene at all, before its images are read
                check_recorded_scene(root, cfg.downscale_factor, recorded, gone_from, poses_only=True)
            scene = load_llff_scene(root, cfg.downscale_factor, bd_factor=cfg.bd_factor, holdout_every=cfg.holdout_every)
            check_recorded_scene(root, cfg.downscale_factor, recorded, gone_from)
            if gone:
                _say_once(f"{cfg.data}: not there any more; using {root}, the same scene (it matches the fingerprint "
                          "in the run's config.yml)")
            for note in scene.warnings:
                _warn_once(note)
            full_h, full_w, _ = scene.full_hwf
            f = cfg.downscale_factor
            if abs(scene.height * f - full_h) > f or abs(scene.width * f - full_w) > f:
                CONSOLE.print(
                    f"[bold yellow]Warning: {scene.image_paths[0].parent}: images are "
                    f"{scene.width}x{scene.height}, poses_bounds.npy says {full_w:g}x{full_h:g} / {f}; "
                    "the focal length is scaled by the factor as in the reference loader."
                )
            self._cache = (key, scene)
        return self._cache[1]

    def llff_metadata(self, scene: LLFFScene) -> Dict[str, object]:
        """The ``metadata["llff"]`` contract (see the module docstring)."""
        cfg = self.config
        if cfg.ndc:
            near, far = NDC_NEAR, 1.0
        else:
            near = float(scene.bounds.min() * cfg.near_factor)
            far = float(scene.bounds.max() * cfg.far_factor)
        return {
            "ndc": bool(cfg.ndc),
            "near": float(near),
            "far": float(far),
            "focal": float(scene.focal),
            "width": int(scene.width),
            "height": int(scene.height),
        }

    def scene_box(self, scene: LLFFScene, far: float) -> SceneBox:
        """NDC: the NDC cube [-1, 1]^3. World mode: a cube around the cameras reaching far."""
        if self.config.ndc:
            half = 1.0
        else:
            half = float(np.abs(scene.poses[:, :, 3]).max() + far)
        return SceneBox(aabb=torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32))

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        scene = self.load_scene()
        num, cfg = len(scene.image_paths), self.config
        indices = split_indices(num, cfg.holdout_every, split, cfg.max_eval_views)
        held = split_indices(num, cfg.holdout_every, split)
        if len(indices) < len(held):
            _say_once(f"{scene.root}: evaluating {len(indices)} of the {len(held)} held-out images, evenly spaced "
                      f"(--max-eval-views {cfg.max_eval_views}): images {indices}")
        meta = self.llff_metadata(scene)

        c2w = torch.from_numpy(scene.poses[indices]).to(torch.float32)
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=float(scene.focal),
            fy=float(scene.focal),
            cx=scene.width / 2.0,
            cy=scene.height / 2.0,
            width=int(scene.width),
            height=int(scene.height),
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[scene.image_paths[i] for i in indices],
            cameras=cameras,
            scene_box=self.scene_box(scene, float(meta["far"])),
            dataparser_scale=float(scene.scale),
            dataparser_transform=torch.from_numpy(scene.transform).to(torch.float32),
            metadata={"llff": meta},
        )


def locate_scene(cfg: LLFFDataParserConfig) -> Tuple[Path, bool]:
    """The scene folder of ``cfg`` and whether the one recorded is gone: ``data`` through
    :func:`wcnerf.data.llff_scene.resolve_data_path`; but when a run recorded its scene (an
    absolute ``data`` and a ``scene_fingerprint``) and that folder is not there any more, a usable
    folder of the same name where ``--data`` is looked up (the working folder, the repo's data,
    ``$WCNERF_DATA``; one with the recorded poses first), which the caller then compares with the
    fingerprint."""
    data = Path(cfg.data)
    recorded = parse_fingerprint(cfg.scene_fingerprint)
    if recorded is None or not data.is_absolute() or data.exists():
        return resolve_data_path(data, cfg.downscale_factor), False
    usable, problems = [], []
    for place in (p for p in scene_candidates(data.name) if p.is_dir()):
        problem = scene_problem(place, cfg.downscale_factor)
        if problem:
            problems.append(problem)
        else:
            usable.append(Path(os.path.abspath(place)))
    if not usable:
        seen = f" ({problems[0]})" if problems else ""
        raise LLFFDataError(
            f"{data}: the scene this run trained on is not there any more (moved or deleted), and no scene named "
            f"{data.name} is found where --data is looked up (the working folder, $WCNERF_DATA){seen}; put it back"
        )
    same = [p for p in usable if poses_digest(p) == recorded["poses"]]
    return (same or usable)[0], True


def record_scene(config: Any) -> None:
    """Write into a run's config, before nerfstudio saves it as config.yml, its scene folder and
    output folder as absolute paths, and for an llff scene its fingerprint
    (:func:`wcnerf.data.llff_scene.scene_fingerprint`): ``ns-eval`` / ``ns-render`` / the harness,
    from any working folder, then read the scene the run trained on (a relative ``--data fern``
    would be looked up again from there) and the llff dataparser refuses another one. Called by
    the trainer's pre-flight once the scene was checked; another dataparser's ``data`` that does
    not exist is left as given (that dataparser reports it)."""
    dm = config.pipeline.datamanager
    parser = getattr(dm, "dataparser", None)
    given = getattr(dm, "data", None) or getattr(parser, "data", None)
    if given is not None:
        if isinstance(parser, LLFFDataParserConfig):
            import dataclasses

            found: Optional[Path] = locate_scene(dataclasses.replace(parser, data=Path(given)))[0]
        else:
            found = Path(given).expanduser()
            found = found if found.exists() else None
        if found is not None:
            path = Path(os.path.abspath(found))
            for owner in (config, dm, parser):
                if getattr(owner, "data", None) is not None:
                    owner.data = path
            if isinstance(parser, LLFFDataParserConfig):
                parser.data = path
                if not parser.scene_fingerprint.strip():
                    parser.scene_fingerprint = scene_fingerprint(path, parser.downscale_factor)
    if getattr(config, "output_dir", None) is not None:
        config.output_dir = Path(os.path.abspath(Path(config.output_dir).expanduser()))


llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description=(
        "LLFF forward-facing scenes (NeRF's nerf_llff_data: poses_bounds.npy + images_<factor>/), "
        "NeRF reference loader geometry, every 8th image held out, NDC metadata for the model."
    ),
)
