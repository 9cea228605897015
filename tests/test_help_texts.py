"""Issue 31, point 4: one command-line style. Every console script of pyproject.toml answers
``--help`` through tyro (in this process: each entry point called with ``["--help"]``) with help
that a user of the installed package can read: no RST double backticks, no repository paths
(docs/, configs/, scripts/, tests/), examples as the user types them; the flags for the same
idea have the same name in every command (``--output-dir``, ``--overwrite``, ``--threads``
with 0 for the default, ``--seeds``), and the old spellings still parse."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import tomllib
from pathlib import Path

import pytest

from support.helpers import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

REPO_PATH = re.compile(r"(?<![\w.<>/-])(docs|configs|scripts|tests|data)/")
"""A path into the repository (``docs/results.md``); not ``outputs/...`` nor ``<run>/...``."""

OLD_NAMES = {"--output-root", "--out-dir", "--redo", "--output", "--compare.seeds"}
"""Spellings kept only as aliases: never a flag's first (shown) name."""

SHARED = {
    "wcnerf-compare": {"--output-dir", "--overwrite", "--threads", "--seeds"},
    "wcnerf-shape-fit": {"--output-dir", "--overwrite", "--threads", "--seeds"},
    "wcnerf-gpu-check": {"--output-dir", "--threads"},
    "wcnerf-llff-to-nerfstudio": {"--output-dir"},
    "wcnerf-spiral": {"--output-path"},
    "wcnerf-heldout": {"--output-path"},
    "wcnerf-scaled-eval": {"--output-path"},
}
"""The shared flags each command takes (the same idea, the same name)."""


def help_text(name: str, monkeypatch) -> str:
    """``NAME --help`` as the entry point prints it (tyro's colours removed)."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr("sys.argv", [name])
    module, func = SCRIPTS[name].split(":")
    entry = getattr(importlib.import_module(module), func)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_:
        entry(["--help"])
    assert exit_.value.code == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())


def first_names(text: str) -> dict:
    """Each option's first (shown) flag -> all its flags, from the lines of tyro's help that
    start with a flag (``--output-dir PATH, --output-root PATH``; its help text after two spaces)."""
    out = {}
    for line in text.splitlines():
        if not re.match(r"^  --[a-z]", line):  # an option's line (its help's lines are indented further)
            continue
        spec = line.strip().split("  ")[0]
        flags = re.findall(r"(?<![\w-])(--[\w.-]+)", spec)
        out[flags[0]] = flags
    return out


def test_every_command_with_an_output_is_listed_here():
    """A console script that is not in SHARED takes no output folder or file of its own."""
    assert set(SCRIPTS) >= set(SHARED)
    assert set(SCRIPTS) - set(SHARED) <= {"wcnerf-train", "wcnerf-summary", "wcnerf-train-enerf"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_has_no_markup_or_repository_paths_and_is_tyros(name, monkeypatch):
    text = help_text(name, monkeypatch)
    assert "usage:" in text and re.search(r"^ -{40,}", text, re.M)  # tyro's help layout: every command is on tyro
    assert "--no-no-" not in text  # a boolean named by its negation
    assert "``" not in text, [ln for ln in text.splitlines() if "``" in ln]
    assert not REPO_PATH.search(text), [ln for ln in text.splitlines() if REPO_PATH.search(ln)]
    assert "python scripts" not in text and "python -m" not in text


@pytest.mark.parametrize("name", sorted(SHARED))
def test_the_same_idea_has_the_same_flag(name, monkeypatch):
    text = help_text(name, monkeypatch)
    names = first_names(text)
    assert SHARED[name] <= set(names), f"{name}: lacks {SHARED[name] - set(names)}"
    assert not OLD_NAMES & set(names), f"{name}: shows {OLD_NAMES & set(names)} first"
    flags = {f for fs in names.values() for f in fs}
    assert not {f for f in flags if re.fullmatch(r"--(out|output)[-_.](root|folder|directory|dir)", f)} - {"--output-dir"} - (
        OLD_NAMES & flags)  # an output folder is --output-dir
    if "--threads" in names:
        block = text[text.index("\n  --threads"):].split("\n  --", 2)[1]
        assert "(default: 0)" in block and "0: " in block, block


def test_examples_are_what_the_user_types(monkeypatch):
    text = help_text("wcnerf-shape-fit", monkeypatch)
    assert "    wcnerf-shape-fit mesh.obj --compare none equilibrate weight-norm" in text
    assert "shape_fit.py" not in text


def test_the_old_flag_names_still_work(tmp_path):
    import tyro

    from wcnerf.eval.cli import Compare
    from wcnerf.shape.train import FitConfig
    from wcnerf.tools.gpu_check import GpuCheck
    from wcnerf.tools.heldout import Heldout
    from wcnerf.tools.spiral import Spiral

    for old, new in ((["--output-root", "a", "--redo"], ["--output-dir", "a", "--overwrite"]),):
        a, b = tyro.cli(Compare, args=old), tyro.cli(Compare, args=new)
        assert (a.output_root, a.run.redo) == (b.output_root, b.run.redo) == (Path("a"), True)
    assert tyro.cli(Compare, args=[]).run.threads == 0
    assert tyro.cli(FitConfig, args=["--compare.seeds", "1", "2"]).compare.seeds == (1, 2)
    assert tyro.cli(FitConfig, args=["--seeds", "1", "2"]).compare.seeds == (1, 2)
    assert tyro.cli(GpuCheck, args=["--out-dir", "g"]).out_dir == tyro.cli(GpuCheck, args=["--output-dir", "g"]).out_dir
    assert tyro.cli(GpuCheck, args=[]).threads == 0
    for tool in (Spiral, Heldout):
        assert tyro.cli(tool, args=["--output", "x"]).output == tyro.cli(tool, args=["--output-path", "x"]).output == Path("x")


def test_the_converter_takes_its_output_folder_either_way(tmp_path, capsys):
    from wcnerf.data.convert import main

    assert main([str(tmp_path / "no-scene")]) == 2
    assert capsys.readouterr().err.strip() == "error: no output folder: give OUT or --output-dir"
    assert main([str(tmp_path / "no-scene"), str(tmp_path / "a"), "--output-dir", str(tmp_path / "b")]) == 2
    assert "name different folders" in capsys.readouterr().err
    assert main([str(tmp_path / "no-scene"), "--output-dir", str(tmp_path / "b")]) == 2  # the scene's own refusal
    assert "no-scene" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_the_harness_takes_ns_train_names_and_tables_print_them(tmp_path):
    from wcnerf.eval.plan import resolve_methods
    from wcnerf.eval.protocols import load_protocol
    from wcnerf.eval.table import table_markdown

    cpu = load_protocol("cpu")
    assert [(m.label, m.ns_method) for m in resolve_methods(["nerf-small", "e-nerf-small"], cpu)] == [
        ("nerf", "nerf-small"), ("e-nerf", "e-nerf-small")]
    assert resolve_methods(["nerf-small", "nerf"], cpu) == resolve_methods(["nerf"], cpu)  # one method, one label
    with pytest.raises(ValueError, match=r"nerf \(ns-train nerf-small\)"):
        resolve_methods(["nerff"], cpu)
    records = [{"scene": "fern", "method": m, "ns_method": ns, "seed": 0, "status": st, "psnr": p, "error": "boom"}
               for m, ns, st, p in (("nerf", "nerf-small", "done", 20.0), ("e-nerf", "e-nerf-small", "done", 21.0),
                                    ("weight-norm", "nerf-small", "failed", None))]
    md = table_markdown(records)
    assert "| NeRF (ns-train nerf-small) | " in md and "| E-NeRF (ns-train e-nerf-small) | " in md
    assert "| Fern | weight-norm (ns-train nerf-small) | 0 | failed |" in md  # the unfinished runs' table too


def test_a_protocol_refusal_names_no_repository_path(tmp_path):
    """The refusal of a protocol's old top-level key points at the shipped protocol, not at a
    file of the repository a pip user does not have."""
    from wcnerf.eval.protocols import ProtocolError, load_protocol

    old = tmp_path / "old.yaml"
    old.write_text("methods: {nerf: nerf-small}\nbase_method: nerf-small\nmax_num_iterations: 5\n")
    with pytest.raises(ProtocolError) as err:
        load_protocol(old)
    assert "give them under `overrides:`" in str(err.value) and not REPO_PATH.search(str(err.value).replace(str(old), ""))
