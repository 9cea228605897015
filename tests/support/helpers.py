"""Helpers shared by the test modules (no nerfstudio import here; the nerfstudio models are in
:mod:`support.nerf_models`).

- where the repository and this venv's command lines are (:data:`REPO`, :data:`BIN`);
- where the LLFF scenes are (:func:`llff_scene`, :func:`require_llff_scene`; fixtures
  ``fern``, ``fern4``, ``repo_fern`` in conftest.py);
- the environment of an offline ``ns-train`` / ``ns-eval`` subprocess (:func:`offline_env`);
  the tiny models themselves are in :mod:`support.tiny`;
- tensorboard scalars of a run (:func:`tb_scalars`);
- which fields differ between two configs (:func:`differences`);
- what the comparison's ``--dry-run`` prints (:func:`compare_dry_run`);
- the radius of the small sphere mesh (:data:`SPHERE_RADIUS`; fixture ``sphere``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
"""The checkout (tests/support/../..)."""

BIN = Path(sys.executable).parent
"""This venv's scripts folder (``ns-train``, ``ns-eval``)."""

SPHERE_RADIUS = 0.5
"""Radius of the ``sphere`` fixture (conftest.py)."""


# ----------------------------------------------------------------------------- LLFF scenes
def llff_roots() -> List[Path]:
    """Folders holding ``llff/<scene>``, in the order they are tried: the repo's ``data/``,
    each ``$WCNERF_DATA`` entry (``os.pathsep``-separated), then the shared data folder beside
    the checkout (``../shared/data``, which has fern and flower at factors 4 and 8)."""
    env = [Path(p) for p in os.environ.get("WCNERF_DATA", "").split(os.pathsep) if p]
    return [REPO / "data", *env, REPO.parent / "shared" / "data"]


def llff_scene(name: str = "fern", factor: int = 8, roots: Optional[Sequence[Path]] = None) -> Optional[Path]:
    """The first ``<root>/llff/<name>`` with ``poses_bounds.npy`` and ``images_<factor>/``
    (roots: :func:`llff_roots` unless given), or None."""
    for root in llff_roots() if roots is None else roots:
        scene = root / "llff" / name
        if (scene / "poses_bounds.npy").is_file() and (scene / f"images_{factor}").is_dir():
            return scene
    return None


def require_llff_scene(name: str = "fern", factor: int = 8, roots: Optional[Sequence[Path]] = None) -> Path:
    """:func:`llff_scene`, or skip the test (with the places looked at) when there is none."""
    scene = llff_scene(name, factor, roots)
    if scene is None:
        looked = ", ".join(str(r / "llff" / name) for r in (llff_roots() if roots is None else roots))
        pytest.skip(f"LLFF {name} (poses_bounds.npy + images_{factor}) not found; looked in: {looked}")
    return scene


# ----------------------------------------------------------------------------- nerfstudio runs
def offline_env(tmp_path: Path) -> dict:
    """The environment of an offline ``ns-train`` / ``ns-eval`` subprocess: an empty torch hub
    cache under ``tmp_path`` and no LPIPS weights path, so LPIPS must be omitted."""
    env = dict(os.environ)
    env["TORCH_HOME"] = str(tmp_path / "torch_home")  # empty hub cache: LPIPS must be omitted
    env["WCNERF_NO_DOWNLOAD"] = "1"  # and never fetched, on a machine with a network too
    env.pop("WCNERF_LPIPS_WEIGHTS", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def tb_scalars(run_dir: Path) -> dict:
    """``{tag: [step, ...]}`` of every scalar in the run's tensorboard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return tags


# ----------------------------------------------------------------------------- configs
def differences(a: Any, b: Any, prefix: str = "") -> list:
    """Dotted names of the dataclass fields (and dict keys) that differ between two configs."""
    if (
        dataclasses.is_dataclass(a)
        and not isinstance(a, type)
        and dataclasses.is_dataclass(b)
        and type(a) is type(b)
    ):
        out = []
        for f in dataclasses.fields(a):
            out += differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        out = []
        for k in a:
            out += differences(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ----------------------------------------------------------------------------- the harness
def compare_dry_run(*args: str, code: int = 0) -> str:
    """What ``compare_llff.py ARGS --dry-run`` prints on a 400-column terminal, planned in this
    process (the plan is what is tested, not the interpreter's start)."""
    import io

    import tyro
    from rich.console import Console

    from wcnerf.eval.cli import CompareLLFF

    buf = io.StringIO()
    assert tyro.cli(CompareLLFF, args=[*args, "--dry-run"]).main(console=Console(file=buf, width=400)) == code
    return buf.getvalue()


class GuiHandle:
    """One widget of :class:`ViserGui`: its value, markdown content, disabled flag and callback."""

    def __init__(self, value=None):
        self.value, self.content, self.disabled = value, "", False

    def on_update(self, fn):
        self.fn = fn


class ViserGui:
    """The few viser calls the Weight conditioning panel makes, recorded (a test double of the
    viewer's ``gui``, not of the panel under test)."""

    def add_folder(self, name):
        import contextlib

        return contextlib.nullcontext()

    def add_text(self, label, value, **kw):
        return GuiHandle(value)

    add_checkbox = add_number = add_text

    def add_markdown(self, content):
        return GuiHandle()

