"""The comparison's command line (``scripts/compare_llff.py`` -> ``wcnerf.eval.cli``): typed
lists, --dry-run printing each run's state and a missing scene's whole error."""

from __future__ import annotations

import sys

import pytest

from wcnerf.eval.cli import CompareLLFF, main
from wcnerf.eval.plan import parse_list

from support.helpers import REPO, compare_dry_run


def test_dry_run_keeps_states_and_whole_scene_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # nothing of this venv's on PATH
    stdout = compare_dry_run("--protocol", "cpu", "--scenes", "fern", "nosuchscene", "--methods", "nerf", "--seeds", "0",
                      "--output-root", str(tmp_path), code=2)  # fmt: skip
    assert "refused: 1 scene(s) cannot be used (above): nosuchscene" in stdout  # the plan shown, exit 2
    # rich must not eat "[pending]" as markup
    assert "[pending] fern nerf seed 0:" in stdout
    # every line of the lookup error, not only the first
    assert "nosuchscene: LLFF scene folder not found. Looked in:" in stdout
    assert "llff/nosuchscene" in stdout and "WCNERF_DATA" in stdout


def _parse(*args: str) -> CompareLLFF:
    import tyro

    return tyro.cli(CompareLLFF, args=list(args))


def test_lists_are_typed_tuples_one_value_per_word():
    cfg = _parse("--scenes", "fern", "flower", "--methods", "none", "equilibrate-out", "--seeds", "0", "1", "2")
    assert cfg.select.scenes == ("fern", "flower")
    assert cfg.select.methods == ("none", "equilibrate-out")
    assert cfg.select.seeds == (0, 1, 2)
    # a comma-joined word is split too (and duplicates dropped), still typed
    cfg = _parse("--scenes", "fern,flower", "--seeds", "0,1", "2", "1", "--methods", "nerf,e-nerf")
    assert cfg.select.scenes == ("fern", "flower") and cfg.select.seeds == (0, 1, 2)
    assert cfg.select.methods == ("nerf", "e-nerf")
    # defaults, and the grouped options keep their flat spellings
    cfg = _parse("--no-retry-failed", "--redo", "--threads", "2", "--max-num-iterations", "5", "--data-root", "a", "b")
    assert cfg.select.scenes == () and cfg.select.seeds == () and cfg.select.methods == ("nerf", "e-nerf")
    assert (cfg.run.retry_failed, cfg.run.redo, cfg.run.threads) == (False, True, 2)
    assert cfg.select.max_num_iterations == 5 and [p.name for p in cfg.select.data_root] == ["a", "b"]
    with pytest.raises(SystemExit):
        _parse("--seeds", "zero")


def test_parse_list():
    assert parse_list(["fern,flower", " room ", "", "fern"]) == ["fern", "flower", "room"]
    assert parse_list(["0,1", "2", "1"], int) == [0, 1, 2]
    assert parse_list([]) == []


def test_dry_run_in_process_prints_markup_literally(tmp_path, monkeypatch, capsys):
    """Brackets in paths and states are printed as they are; a lookup error in full."""
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("WCNERF_DATA", str(tmp_path / "[red]data"))
    out_root = tmp_path / "[bold]out"
    code = main(["--protocol", "cpu", "--scenes", "fern", "nosuchscene", "--methods", "nerf", "weight-norm",
                 "--seeds", "0", "1", "--output-root", str(out_root), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 2  # a scene cannot be used: the plan is shown, and refused
    for seed in (0, 1):
        for method in ("nerf", "weight-norm"):
            assert f"[pending] fern {method} seed {seed}:" in text
            assert f"[pending] nosuchscene {method} seed {seed}: (scene not found)" in text
    assert str(out_root / "cpu" / "runs" / "fern" / "nerf" / "seed-0") in text
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if "nosuchscene: LLFF scene folder not found. Looked in:" in ln)
    looked = [ln.strip() for ln in lines[start + 1 :] if ln.strip().startswith("- ")]
    assert f"- {tmp_path / '[red]data' / 'nosuchscene'}" in looked
    assert f"- {tmp_path / '[red]data' / 'llff' / 'nosuchscene'}" in looked
    assert f"- {REPO / 'data' / 'llff' / 'nosuchscene'}" in looked
    assert any("$WCNERF_DATA=" in ln for ln in lines[start:])


def test_help_lists_the_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--protocol", "--scenes", "--methods", "--seeds", "--output-dir", "--data-root",
                 "--max-num-iterations", "--max-eval-views", "--eval-image-scale", "--retry-failed", "--overwrite",
                 "--threads", "--report-only", "--dry-run"):
        assert flag in text
    assert "--select." not in text and "--run." not in text  # groups without prefixes


def test_orientation_study_nerf_command_parses(monkeypatch):
    """scripts/orientation_study.py builds compare_llff command lines in the new spelling."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("orientation_study", REPO / "scripts" / "orientation_study.py")
    study_mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, study_mod)  # dataclasses look their module up
    spec.loader.exec_module(study_mod)
    study = study_mod.Study(data_root=(REPO / "a", REPO / "b"))
    cmd = study.nerf_command("fern")
    assert cmd[1] == str(REPO / "scripts" / "compare_llff.py")
    cfg = _parse(*cmd[2:])
    assert cfg.select.scenes == ("fern",) and cfg.select.methods == tuple(study.conditioners)
    assert cfg.select.seeds == (0, 1, 2) and cfg.select.data_root == (REPO / "a", REPO / "b")
    assert cfg.output_root == study.out


def test_a_missing_scene_or_a_negative_seed_is_refused_before_any_folder(tmp_path, capsys, monkeypatch):
    """Issue 30, point 6: the harness refuses at planning, naming what is wrong; nothing is
    written (a dry run still shows the plan with each scene's error)."""
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "out"
    assert main(["--protocol", "cpu", "--scenes", "nosuchscene", "--seeds", "0", "--output-root", str(out)]) == 2
    text = capsys.readouterr().out
    assert "refused" in text and "nosuchscene" in text and "nothing was run" in text
    assert not out.exists()
    assert main(["--protocol", "cpu", "--scenes", "fern", "--seeds", "-1", "--output-root", str(out)]) == 2
    assert "--seeds -1: must be in [0, 4294967295]" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("argv, says", [
    (["--methods", "nerff"], "refused: unknown method 'nerff'"),
    (["--method", "nerfactoo"], "nerfactoo"),
    (["--conditioners", "equilibrat", "--method", "vanilla-nerf"], "--conditioners: unknown ['equilibrat']"),
    (["--protocol", "{misspelt}"], "unknown keys ['seedz']"),
])  # fmt: skip
def test_a_misspelt_method_or_protocol_key_is_refused_in_one_message_before_any_folder(argv, says, tmp_path, capsys):
    """Issue 30, point 6: refused while planning, exit 2, no traceback and no folder."""
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text("methods: {nerf: nerf-small}\nbase_method: nerf-small\nseedz: [0]\n")
    out = tmp_path / "out"
    argv = [a.format(misspelt=misspelt) for a in argv]
    assert main([*argv, "--scenes", "fern", "--output-root", str(out)]) == 2
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert says in text and "Traceback" not in text
    assert not out.exists()
