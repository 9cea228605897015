"""Every table docs/results.md publishes from a study is recomputed here from the study's run
records, kept in the repository: a figure edited by hand, or runs changed without the page,
fail this test (issue 28, point 4)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import List

from support.helpers import REPO

RESULTS = REPO / "docs" / "results.md"


def _script(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _section(heading: str) -> str:
    """The text of the docs/results.md section under ``heading`` (to the next heading of its level)."""
    text = RESULTS.read_text(encoding="utf8")
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    ends = [i for i in (rest.find(f"\n{level} "),) if i >= 0]
    return rest[: min(ends)] if ends else rest


def _table_rows(markdown: str) -> List[str]:
    return [line.rstrip() for line in markdown.splitlines() if line.startswith("|")]


def test_the_orientation_tables_are_their_records(monkeypatch):
    """docs/results/orientation/ holds the study's finished runs (the NeRF runs' metrics and
    curves, the shape comparisons' JSON); the study script's own report of them is the page."""
    study = _script("orientation_study", monkeypatch)
    recomputed = _table_rows(study.study_markdown(study.Study(out=REPO / "docs" / "results" / "orientation")))
    published = [r for r in _table_rows(_section("## Which E is E-NeRF? The orientation study"))
                 if not r.startswith("| armadillo |") and not r.startswith("| bunny |") and r != "| | Adam | SGD |"
                 and r != "|---|---|---|"]  # the figure grid under the tables is not a table of numbers
    assert len(recomputed) == 30
    assert published == recomputed


def test_an_edited_figure_is_caught(monkeypatch, tmp_path):
    """The check above fails when one cell of the page differs from its records."""
    study = _script("orientation_study", monkeypatch)
    recomputed = _table_rows(study.study_markdown(study.Study(out=REPO / "docs" / "results" / "orientation")))
    published = _table_rows(_section("## Which E is E-NeRF? The orientation study"))
    edited = [r.replace("18.55 ± 0.06", "18.65 ± 0.06") for r in published]
    assert edited != published and [r for r in edited if r.startswith("| equilibrate-out | **18.65")]
    assert not set(recomputed) >= set(r for r in edited if r.startswith("| equilibrate-out | **18.65"))


def test_the_budget_tables_are_their_records(monkeypatch):
    """docs/results/budget/ holds the budget study's records (one row per run) and curve points;
    tables.md and the results page's section are what they give."""
    study = _script("budget_study", monkeypatch)
    folder = REPO / "docs" / "results" / "budget"
    records, curve = study.read_csv(folder / "records.csv"), study.read_csv(folder / "curve.csv")
    recomputed = study.tables_markdown(records, curve)
    assert (folder / "tables.md").read_text(encoding="utf8") == recomputed
    published = _table_rows(_section("## Does equilibration's gain last? The training-budget study"))
    assert published and published == _table_rows(recomputed)
    done = [r for r in records if r["status"] == "done"]
    assert done and all(r["psnr"] for r in done)


def test_the_shape_budget_tables_are_their_records(monkeypatch):
    """docs/results/shape_budget/ holds the shape budget study's records (one row per run);
    tables.md and the results page's section are what they give."""
    study = _script("shape_budget_study", monkeypatch)
    folder = REPO / "docs" / "results" / "shape_budget"
    rows = study.read_records(folder / "records.csv")
    recomputed = study.tables_markdown(rows)
    assert (folder / "tables.md").read_text(encoding="utf8") == recomputed
    published = _table_rows(_section("## Does equilibration's gain last on shapes? The shape budget study"))
    assert published and published == _table_rows(recomputed)
    assert len(rows) >= 4 * 2 * 4 * 3  # 2 meshes x 2 optimizers x 4 budgets x 2 conditioners x 3 seeds, at least half
