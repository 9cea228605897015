"""The plugin as users install it: a normal (non-editable) wheel, used from outside the checkout.

- pyproject's explicit package list covers every package of the tree, and the checkout's
  ``configs/``, ``viewer/`` and ``data/`` are mapped into the package (``wcnerf.configs``,
  ``wcnerf.viewer``, ``wcnerf.example_data``);
- no module edits ``sys.path`` (the scripts are shims over the installed package); every shim
  in ``scripts/`` over a package ``main`` is a console script, and docs/setup.md lists them all;
- ``ray`` and ``submitit`` are an extra (``wcnerf[cluster]``): an executor that needs a missing
  one stops with one line naming the extra; scripts/setup.sh installs it for the tests;
- (slow) the wheel: its metadata (LICENSE, the licence expression, nerfstudio's tested range,
  the ``cluster`` extra, project URLs, classifiers, every console script) and that it carries
  no images; installed into a throwaway environment that reuses this venv's dependencies, it
  runs ``ns-train e-nerf --help``, the console scripts' ``--help`` and a short shape fit from a
  folder outside the checkout, finding the protocols and the example mesh inside
  site-packages, and the example scene only through ``$WCNERF_DATA`` (it is not in the wheel).
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


def _shims() -> dict:
    """``{script: "module:main"}`` of the scripts/ files that only call a package's ``main``."""
    out = {}
    for path in sorted((REPO / "scripts").glob("*.py")):
        text = path.read_text()
        m = re.search(r"^from (wcnerf[\w.]*) import main$", text, re.M)
        if m and "sys.exit(main())" in text:
            out[path.name] = f"{m.group(1)}:main"
    return out


def test_every_script_shim_is_a_console_script_and_the_docs_list_them_all():
    scripts = _pyproject()["project"]["scripts"]
    shims = _shims()
    assert {"train_enerf.py", "llff_spiral.py", "shape_fit.py", "compare_llff.py"} <= set(shims), shims
    missing = {name: target for name, target in shims.items() if target not in scripts.values()}
    assert not missing, f"scripts/ shims a pip user cannot run as a console script: {missing}"
    setup = (REPO / "docs" / "setup.md").read_text()
    listed = set(re.findall(r"^\| `(wcnerf-[\w-]+)` \|", setup, re.M))
    assert listed == set(scripts), f"docs/setup.md's table vs pyproject: {sorted(listed ^ set(scripts))}"
    words = {8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
    assert f"The {words[len(scripts)]} console scripts" in setup
    assert f"{words[len(scripts)]} [console scripts]" in (REPO / "README.md").read_text()


def test_the_cluster_packages_are_an_extra_that_setup_installs():
    project = _pyproject()["project"]
    names = [re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0] for d in project["dependencies"]]
    assert "ray" not in names and "submitit" not in names
    assert {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in project["optional-dependencies"]["cluster"]} == {"ray", "submitit"}
    setup = (REPO / "scripts" / "setup.sh").read_text()
    (extras,) = re.findall(r'install -q -e "\.\[([\w,]+)\]"', setup)
    assert {"test", "cluster"} <= set(extras.split(","))


@pytest.mark.parametrize("kind, package", [("ray", "ray"), ("slurm", "submitit")])
def test_an_executor_without_its_package_says_which_extra_in_one_line(kind, package, monkeypatch):
    from wcnerf.eval.executors import start_engine
    from wcnerf.plugin.compat import RunInputError

    monkeypatch.setitem(sys.modules, package, None)  # not installed: importing it raises ImportError
    with pytest.raises(RunInputError) as err:
        start_engine(kind, None, 1)
    message = str(err.value)
    assert "\n" not in message and f"--executor {kind}" in message and package in message, message
    assert "pip install 'wcnerf[cluster]'" in message, message


def test_a_missing_cluster_package_ends_the_command_with_that_line_and_no_traceback(tmp_path):
    code = ("import sys; sys.modules['submitit'] = None\n"
            "from wcnerf.eval.executors import start_engine\n"
            "start_engine('slurm', None, 1)\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == (
        "error: --executor slurm: needs the submitit package, which is not installed: pip install 'wcnerf[cluster]'"), proc.stderr


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once from the tracked files only (what a fresh clone has)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    (built,) = dist.glob("wcnerf-*.whl")
    return built


WHEEL_MAX_BYTES = 2 * 2**20
"""The wheel without the example images is well under a megabyte (code, protocols, the viewer,
spot.obj); with fern's images it was 31 MB."""


@pytest.mark.packaging
def test_the_wheel_metadata_and_contents(wheel):
    import configparser
    import email.parser
    import zipfile

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        licence = z.read(f"{info}/licenses/LICENSE").decode() if f"{info}/licenses/LICENSE" in names else ""

    # licence: the file, and the expression for the code and the one data file the wheel carries
    assert meta["License-Expression"] == "MIT AND CC0-1.0", meta["License-Expression"]
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "MIT License" in licence and "Copyright (c) 2026 the wcnerf authors" in licence
    assert "fern" in licence and "no licence" in licence and "CC0" in licence  # the data's terms
    assert "Keenan Crane" in meta.get_payload() and "no licence" in meta.get_payload()  # the README

    # no example images; the mesh and the data's README ship
    images = [n for n in names if n.lower().endswith((".png", ".jpg", ".jpeg"))]
    assert images == [], images[:5]
    assert not [n for n in names if n.startswith("wcnerf/example_data/llff/")]
    assert {"wcnerf/example_data/meshes/spot.obj", "wcnerf/example_data/README.md"} <= set(names)
    assert wheel.stat().st_size < WHEEL_MAX_BYTES, wheel.stat().st_size

    # requirements: nerfstudio a tested range; ray and submitit only in the cluster extra
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    (ns,) = [r for r in reqs if r.name == "nerfstudio"]
    assert ns.specifier == SpecifierSet(">=1.1.5,<1.2") and ns.marker is None
    cluster = {r.name for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "cluster"})}
    assert cluster == {"ray", "submitit"}
    assert not [r.name for r in reqs if r.name in ("ray", "submitit") and r.marker is None]
    assert "cluster" in meta.get_all("Provides-Extra")

    # project URLs and classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls and all(u.startswith("https://") for u in urls.values()), urls
    classifiers = meta.get_all("Classifier") or []
    assert "Intended Audience :: Science/Research" in classifiers and any(c.startswith("Programming Language :: Python :: 3") for c in classifiers)

    # every console script of pyproject, the spiral, the run summary and the main job included
    ep = configparser.ConfigParser()
    ep.read_string(entry_points)
    scripts = dict(ep["console_scripts"])
    assert scripts == _pyproject()["project"]["scripts"]
    assert {"wcnerf-spiral", "wcnerf-summary", "wcnerf-train-enerf"} <= set(scripts)


@pytest.mark.packaging
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path, small_mesh, wheel):

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
        "print(DEFAULT_MESH, DEFAULT_MESH.is_file())\n"
        "try:\n    print('found', resolve_data_path('llff/fern'))\nexcept ValueError as e:\n    print('not found')\n")],
        cwd=away, env=env)
    lines = where.strip().splitlines()
    site = str(purelib)
    assert all(line.startswith(site) for line in lines[:3]), where
    assert "'cpu'" in lines[3] and "'paper'" in lines[3], where
    assert lines[4].endswith("True") and lines[4].startswith(site), where
    assert lines[5] == "not found", where  # the example scene is not in the wheel
    assert str(REPO) not in where
    # ... and the documented way to it: $WCNERF_DATA at a checkout's data/
    found = _run([str(py), "-c", "from wcnerf.data.llff_scene import resolve_data_path; print(resolve_data_path('llff/fern'))"],
                 cwd=away, env={**env, "WCNERF_DATA": str(REPO / "data")})
    assert found.strip().splitlines()[-1] == str(REPO / "data" / "llff" / "fern"), found

    out = _run([str(py), "-c", "from nerfstudio.scripts.train import entrypoint; entrypoint()", "e-nerf", "--help"],
               cwd=away, env=env)
    assert "pipeline.model.conditioning" in out
    for script in ("wcnerf-shape-fit", "wcnerf-compare", "wcnerf-train", "wcnerf-train-enerf", "wcnerf-spiral",
                   "wcnerf-summary"):
        assert "usage" in _run([str(env_dir / "bin" / script), "--help"], cwd=away, env=env).lower()

    out_dir = tmp_path / "shape_out"
    _run([str(env_dir / "bin" / "wcnerf-shape-fit"), str(small_mesh), "--optim.steps", "30",
          "--evaluation.resolution", "24", "--sampling.n-near", "4000", "--sampling.n-uniform", "1000",
          "--no-progress", "--output-dir", str(out_dir)], cwd=away, env=env)
    metrics = list(out_dir.rglob("metrics.json"))
    assert metrics, f"no metrics.json under {out_dir}"
