"""Fixtures shared by the test modules (plain helpers: the ``support`` package), the test tiers
and the guard that keeps them honest.

Tiers (markers, pyproject.toml): ``e2e`` for a test that trains a nerfstudio model or starts
``ns-train`` / ``ns-eval`` / ``ns-render`` / ``ns-export`` / ``ns-viewer``, the harness, the
shape trainer or Ray as a process; ``browser`` (headless Chromium) and ``packaging`` (builds
the wheel) imply ``e2e``. The inner loop is ``pytest -m "not e2e"``. An unmarked test that
starts one of those fails (``support.tiers``), so the inner loop cannot grow one unnoticed.

- ``fern`` / ``fern4`` / ``repo_fern``: the LLFF fern scene at factor 8 / at factor 4 / the
  repository's own copy (``data/llff/fern``); the test is skipped, with the places looked at,
  when there is none (e.g. no ``../shared/data`` for factor 4).
- ``offline_hub``: no LPIPS weights anywhere (an empty torch hub dir, no env override).
- ``sphere``: an icosphere of radius ``helpers.SPHERE_RADIUS`` around the origin.
- ``small_mesh``: an off-centre, scaled ellipsoid written to an .obj file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.helpers import REPO, SPHERE_RADIUS, require_llff_scene
from support.tiers import _e2e_guard, pytest_collection_modifyitems  # noqa: F401 - the tiers and their guard


# ----------------------------------------------------------------------------- tiers
WORKER_THREADS = "1"
"""Torch threads of each pytest-xdist worker and of what it starts (``-n 2`` on 2 cores: one each)."""

if os.environ.get("PYTEST_XDIST_WORKER"):  # before any torch import: workers must not oversubscribe the cores
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, WORKER_THREADS)


# ----------------------------------------------------------------------------- LLFF data
@pytest.fixture(scope="session")
def fern() -> Path:
    """fern with images_8: the repo's data/llff/fern, a $WCNERF_DATA entry or ../shared/data."""
    return require_llff_scene("fern", 8)


@pytest.fixture(scope="session")
def fern4() -> Path:
    """fern with images_4 (the repo's data/llff/fern, a $WCNERF_DATA entry or ../shared/data)."""
    return require_llff_scene("fern", 4)


@pytest.fixture(scope="session")
def repo_fern() -> Path:
    """The repository's data/llff/fern (images_8), for tests of the relative ``llff/fern`` lookup."""
    return require_llff_scene("fern", 8, roots=[REPO / "data"])


# ----------------------------------------------------------------------------- offline LPIPS
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No LPIPS weights anywhere: an empty torch hub dir, no env override."""
    import torch

    from wcnerf.plugin import compat  # only here: importing wcnerf.plugin installs its nerfstudio fixes

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("WCNERF_NO_DOWNLOAD", "1")  # offline on a machine with a network too
    monkeypatch.delenv(compat.LPIPS_ENV, raising=False)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    yield
    torch.hub.set_dir(old)


# ----------------------------------------------------------------------------- meshes
@pytest.fixture(scope="module")
def sphere():
    """Icosphere (subdivisions 4) of radius SPHERE_RADIUS: inscribed, volume 0.2% short of the ball."""
    import trimesh

    return trimesh.creation.icosphere(subdivisions=4, radius=SPHERE_RADIUS)


@pytest.fixture(scope="module")
def small_mesh(tmp_path_factory) -> Path:
    """An off-centre, scaled ellipsoid: checks that outputs come back in input coordinates."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    m.apply_scale([3.0, 2.0, 1.5])
    m.apply_translation([10.0, -4.0, 2.0])
    path = tmp_path_factory.mktemp("mesh") / "blob.obj"
    m.export(path)
    return path
