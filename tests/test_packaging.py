"""The plugin as users install it: a normal (non-editable) wheel, used from outside the checkout.

- pyproject's explicit package list covers every package of the tree, and the checkout's
  ``configs/``, ``viewer/`` and ``data/`` are mapped into the package (``wcnerf.configs``,
  ``wcnerf.viewer``, ``wcnerf.example_data``);
- no module edits ``sys.path`` (the scripts are shims over the installed package);
- (slow) the wheel, installed into a throwaway environment that reuses this venv's
  dependencies, runs ``ns-train e-nerf --help``, both console scripts' ``--help`` and a short
  shape fit from a folder outside the checkout, finding the protocols, the example scene and
  the example mesh inside site-packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from support.helpers import REPO

MAPPED = {"wcnerf.configs": "configs", "wcnerf.viewer": "viewer", "wcnerf.example_data": "data"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _tree_packages() -> set:
    """Every package in the checkout, named as installed (``configs/`` -> ``wcnerf.configs``)."""
    found = set()
    for init in (REPO / "wcnerf").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(REPO).parts))
    for name, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name,) + rel))
    return found


def test_pyproject_lists_every_package_and_maps_the_top_level_folders():
    tool = _pyproject()["tool"]["setuptools"]
    assert set(tool["packages"]) == _tree_packages()
    assert tool["package-dir"] == MAPPED


def test_console_scripts_point_at_main_functions():
    import importlib

    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) >= {"wcnerf-shape-fit", "wcnerf-compare", "wcnerf-train"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_no_module_edits_sys_path():
    offenders = []
    for folder in ("wcnerf", "scripts", "configs", "viewer", "data"):
        for path in (REPO / folder).rglob("*.py"):
            if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", path.read_text()):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.packaging
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path, small_mesh):
    # 1. The wheel, built from the tracked files only (what a fresh clone has).
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    tracked = [f for f in files.stdout.split("\0") if f]
    if not tracked:
        pytest.skip("not a git checkout")
    for rel in tracked:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(dist), str(src)], cwd=tmp_path, env=os.environ.copy())
    (wheel,) = dist.glob("wcnerf-*.whl")

    # 2. A throwaway environment that sees this venv's dependencies (a .pth file) but not the
    #    checkout, with the wheel installed normally (not editable).
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", str(wheel)], cwd=tmp_path, env=os.environ.copy())

    # 3. From outside the checkout: the installed package, never the checkout's files.
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WCNERF_DATA", "WCNERF_PROTOCOLS")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(py), "-c", (
        "import wcnerf, wcnerf.viewer.shape_viewer as v\n"
        "from wcnerf.eval.protocols import protocols_dir, available_protocols\n"
        "from wcnerf.data.llff_scene import resolve_data_path\n"
        "from wcnerf.shape.train import DEFAULT_MESH\n"
        "print(wcnerf.__file__); print(v.__file__); print(protocols_dir()); print(available_protocols())\n"
        "print(resolve_data_path('llff/fern')); print(DEFAULT_MESH, DEFAULT_MESH.is_file())\n")],
        cwd=away, env=env)
    lines = where.strip().splitlines()
    site = str(purelib)
    assert all(line.startswith(site) for line in lines[:3] + [lines[4]]), where
    assert "'cpu'" in lines[3] and "'paper'" in lines[3], where
    assert lines[5].endswith("True") and lines[5].startswith(site), where
    assert str(REPO) not in where

    out = _run([str(py), "-c", "from nerfstudio.scripts.train import entrypoint; entrypoint()", "e-nerf", "--help"],
               cwd=away, env=env)
    assert "pipeline.model.conditioning" in out
    for script in ("wcnerf-shape-fit", "wcnerf-compare", "wcnerf-train"):
        assert "usage" in _run([str(env_dir / "bin" / script), "--help"], cwd=away, env=env).lower()

    out_dir = tmp_path / "shape_out"
    _run([str(env_dir / "bin" / "wcnerf-shape-fit"), str(small_mesh), "--optim.steps", "30",
          "--evaluation.resolution", "24", "--sampling.n-near", "4000", "--sampling.n-uniform", "1000",
          "--no-progress", "--output-dir", str(out_dir)], cwd=away, env=env)
    metrics = list(out_dir.rglob("metrics.json"))
    assert metrics, f"no metrics.json under {out_dir}"
