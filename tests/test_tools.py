"""The single-run tools (``wcnerf/tools/``, issue 27): each a console script of pyproject whose
``--help`` works; ``RUN`` is a run folder or its config.yml, positional or ``--load-config``;
a bad ``RUN`` ends with one line on stderr naming the path and exit code 2 (no traceback);
``scripts/train_enerf.py`` parses its own options with tyro and finds the run folder where
nerfstudio's ``TrainerConfig.get_base_dir()`` puts it. The tools on a trained run:
tests/test_after_training.py, tests/test_spiral.py, tests/test_scaled_eval.py."""

from __future__ import annotations

import importlib
import tomllib

import pytest

from support.helpers import REPO

TOOLS = {
    "wcnerf-summary": "wcnerf.tools.summary:main",
    "wcnerf-spiral": "wcnerf.tools.spiral:main",
    "wcnerf-heldout": "wcnerf.tools.heldout:main",
    "wcnerf-scaled-eval": "wcnerf.tools.scaled_eval:main",
}


def _main(name: str):
    module, func = TOOLS[name].split(":")
    return getattr(importlib.import_module(module), func)


def test_pyproject_installs_every_tool_as_a_console_script():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert {name: scripts.get(name) for name in TOOLS} == TOOLS
    assert "wcnerf.tools" in pyproject["tool"]["setuptools"]["packages"]


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _main(name)(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "RUN" in out and "--load-config" in out and "config.yml" in out


def _bad_runs(tmp_path):
    """``(path, what the message says)`` of paths that are no run."""
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    broken = tmp_path / "broken" / "config.yml"
    broken.parent.mkdir()
    broken.write_text("not: yaml: [\n")
    return [(tmp_path / "missing", "no such run folder or config.yml"),
            (empty, "a folder without config.yml"),
            (broken, "not a YAML run config")]  # fmt: skip


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_bad_run_is_one_line_naming_the_path(name, tmp_path, capsys):
    main = _main(name)
    for bad, says in _bad_runs(tmp_path):
        for argv in ([str(bad)], ["--load-config", str(bad)]):
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert len(lines) == 1 and str(bad) in lines[0] and says in lines[0], (argv, err)
            assert lines[0].startswith("error: ") and "Traceback" not in out + err


@pytest.mark.parametrize("name", ["wcnerf-summary", "wcnerf-heldout", "wcnerf-scaled-eval"])
def test_no_run_given(name, capsys):
    assert _main(name)([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run given" in err and "--load-config" in err


def test_run_is_a_folder_or_its_config(tmp_path):
    from wcnerf.tools.runs import RunArgs, RunPathError, resolve_run

    run = tmp_path / "outputs" / "fern" / "e-nerf-small" / "ts"
    run.mkdir(parents=True)
    (run / "config.yml").write_text("x")
    assert resolve_run(run) == resolve_run(run / "config.yml") == run / "config.yml"
    assert RunArgs(run=run).config_path() == RunArgs(load_config=run / "config.yml").config_path() == run / "config.yml"
    assert RunArgs(run=run, load_config=run / "config.yml").config_path() == run / "config.yml"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yml").write_text("x")
    with pytest.raises(RunPathError, match="name different runs"):
        RunArgs(run=run, load_config=other).config_path()


# ----------------------------------------------------------------------------- scripts/train_enerf.py
def test_train_enerf_own_options_by_tyro(capsys):
    from wcnerf.tools.train_enerf import own_options

    argv = ["--timestamp", "t", "--data=x", "--no-summary", "--pipeline.model.predict-normals", "True", "llff", "--downscale-factor", "32"]
    assert own_options(argv) == (["--timestamp", "t", "--data=x", "--pipeline.model.predict-normals", "True", "llff",
                                  "--downscale-factor", "32"], False, None)  # fmt: skip
    assert own_options(["--summary-only", "outputs/fern/e-nerf-small/ts"]) == ([], True, "outputs/fern/e-nerf-small/ts")
    with pytest.raises(SystemExit) as exit_:
        own_options(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--no-summary" in out and "--summary-only RUN" in out and "ns-train" in out


def test_train_enerf_summary_only_of_a_bad_run(tmp_path, capsys):
    from wcnerf.tools.train_enerf import main

    assert main(["--summary-only", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err and "Traceback" not in err


def test_train_enerf_finds_the_run_folder_nerfstudio_names(tmp_path):
    """``--data`` (ns-train's alias), ``--output-dir`` and ``--timestamp`` through nerfstudio's own
    parse and ``get_base_dir()``: ``<output-dir>/<data's name>/<method>/<timestamp>/config.yml``."""
    from wcnerf.tools.train_enerf import ns_train_run_config

    cfg = tmp_path / "out" / "fern" / "e-nerf-small" / "ts" / "config.yml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("x")
    args = ["--timestamp", "ts", "--data", str(tmp_path / "scenes" / "fern"), "--output-dir", str(tmp_path / "out"),
            "--max-num-iterations", "30", "llff", "--downscale-factor", "32"]  # fmt: skip
    assert ns_train_run_config("e-nerf-small", args) == cfg
    assert ns_train_run_config("e-nerf-small", ["--timestamp", "other", *args[2:]]) is None
