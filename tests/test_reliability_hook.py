"""Issue 15, point 2: the exception hook the plugin installs turns our input errors into one
line and exit code 2 and removes a config-only run folder; a genuine bug keeps its traceback."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("nerfstudio")

from wcnerf.atomic import WriteError  # noqa: E402
from wcnerf.data.llff_scene import LLFFDataError  # noqa: E402
from wcnerf.plugin import compat  # noqa: E402


@pytest.fixture
def hook(monkeypatch):
    calls = []
    previous = compat._input_error_hook.__defaults__[0]
    saved = previous[0]
    previous[0] = lambda *a: calls.append(a)

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(compat.os, "_exit", exit_)
    monkeypatch.setattr(compat, "_CREATED_RUN_DIRS", [])
    yield calls
    previous[0] = saved


def test_installed_by_the_plugin():
    # In a fresh interpreter: in this one, another library (e.g. ray.init in an executor test)
    # may have put its own hook on top since wcnerf.plugin was first imported.
    import subprocess

    code = "import sys, wcnerf.plugin; from wcnerf.plugin import compat; print(sys.excepthook is compat._input_error_hook)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("error", [LLFFDataError("/x/poses_bounds.npy: bad"), compat.RunInputError("/x: bad"),
                                   WriteError(28, "/x/step-1.ckpt: cannot write (full)")])
def test_input_error_is_one_line_and_exit_2(hook, tmp_path, capsys, error):
    config_only, used = tmp_path / "run1", tmp_path / "run2"
    for run in (config_only, used):
        run.mkdir()
        (run / "config.yml").write_text("x")
    (used / "nerfstudio_models").mkdir()
    compat.note_run_dir(config_only)
    compat.note_run_dir(used)
    try:
        raise RuntimeError("wrapped") from error  # found through the cause chain too
    except RuntimeError as exc:
        with pytest.raises(SystemExit) as ended:
            compat._input_error_hook(type(exc), exc, exc.__traceback__)
    assert ended.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"
    assert not config_only.exists() and used.exists()
    assert hook == []


def test_a_genuine_bug_keeps_its_traceback(hook):
    exc = KeyError("step")
    compat._input_error_hook(KeyError, exc, None)
    assert hook == [(KeyError, exc, None)]


def test_the_folders_made_above_a_refused_run_go_too(hook, tmp_path, capsys):
    """nerfstudio makes <output-dir>/<experiment>/<method>/<timestamp>/: a refusal after it leaves none of
    the folders this run made, and keeps the ones that were there before."""
    before = tmp_path / "outputs"
    (before / "other").mkdir(parents=True)
    run = before / "fern" / "e-nerf-small" / "t0"
    run.mkdir(parents=True)
    (run / "config.yml").write_text("x")
    compat.note_run_dir(run, before / "fern")
    with pytest.raises(SystemExit):
        compat._input_error_hook(compat.RunInputError, compat.RunInputError("/x: bad"), None)
    assert not (before / "fern").exists() and (before / "other").is_dir()
