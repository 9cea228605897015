"""scripts/shape_budget_study.py (issue 28, point 2): its tables against the formula, the rule that
widens a learning-rate grid whose best rate sits on its edge, and one tiny end-to-end study."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from support.helpers import REPO


@pytest.fixture
def study(monkeypatch):
    spec = importlib.util.spec_from_file_location("shape_budget_study", REPO / "scripts" / "shape_budget_study.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "shape_budget_study", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _records():
    """Two conditioners, three seeds, two budgets; at 500 steps equilibrate lacks seed 2."""
    iou = {("none", 250): [0.80, 0.82, 0.87], ("equilibrate", 250): [0.85, 0.83, 0.90],
           ("none", 500): [0.90, 0.91, 0.95], ("equilibrate", 500): [0.93, 0.90]}
    rows = []
    for (cond, budget), values in iou.items():
        for seed, v in enumerate(values):
            rows.append({"mesh": "blob", "optimizer": "sgd", "conditioner": cond, "seed": seed, "budget": budget,
                         "lr": 0.3 if cond == "none" else 1.0, "iou": v, "chamfer_l1": 0.01 * (seed + 1),
                         "normal_consistency": 0.9, "floater_area": 0.0 if cond == "none" else 0.02 * seed,
                         "floater_area_fraction": 0.0, "floater_components": seed, "final_loss": 0.1,
                         "diverged": False, "run": f"runs/{cond}-{budget}-{seed}"})
    return rows


def _cells(markdown: str, budget: int, metric: str):
    (line,) = [l for l in markdown.splitlines() if l.startswith(f"| {budget} | {metric} |")]
    return [c.strip() for c in line.strip("|").split("|")][2:]


def _sample(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_tables_are_mean_and_sample_std_and_gaps_paired_by_seed(study, tmp_path):
    text = study.tables_markdown(_records())
    assert "## blob, SGD (momentum 0.9)" in text and "lr none 0.3; equilibrate 1." in text
    assert "| budget | metric | none | equilibrate | equilibrate - none |" in text
    none, eq, gap = _cells(text, 250, "IoU")
    m, s = _sample([0.80, 0.82, 0.87])  # 0.83 ± sqrt(0.0026 / 2) = 0.0361: the n-1 divisor
    assert none == f"{m:.4f} ± {s:.4f}" == "0.8300 ± 0.0361"
    assert eq == "0.8600 ± 0.0361"
    # paired by seed: the differences 0.05, 0.01, 0.03 -> 0.03 ± 0.02 (each mean's own spread is 0.036)
    m, s = _sample([0.05, 0.01, 0.03])
    assert gap == f"+{m:.4f} ± {s:.4f}" == "+0.0300 ± 0.0200"
    # a seed only one conditioner has: the gap is over the seeds both have, and says how many
    none, eq, gap = _cells(text, 500, "IoU")
    assert none == "0.9200 ± 0.0265" and eq == "0.9150 ± 0.0212"
    assert gap == "+0.0100 ± 0.0283 (n=2)"  # 0.03 and -0.01
    assert _cells(text, 250, "Chamfer-L1") == ["0.02000 ± 0.01000", "0.02000 ± 0.01000", "0.00000 ± 0.00000"]
    assert _cells(text, 250, "floater components")[0] == "1.0 ± 1.0"
    assert _cells(text, 250, "floater area")[2] == "+0.0200 ± 0.0200"
    # records.csv -> tables.md: the report is rebuilt from the CSV alone, to the byte
    study.write_report(tmp_path, _records())
    rows = study.read_records(tmp_path / "records.csv")
    assert len(rows) == 11 and list(rows[0]) == study.RECORD_COLUMNS
    assert (tmp_path / "tables.md").read_text() == study.tables_markdown(rows) == text
    assert (tmp_path / "gap_vs_budget.png").stat().st_size > 0


def test_a_grid_is_widened_on_the_side_of_an_edge_best(study):
    calls = []

    def stub(best_at):  # a loss whose minimum is at ``best_at``
        def scores_for(grid):
            calls.append(list(grid))
            return {lr: (math.log10(lr) - math.log10(best_at)) ** 2 for lr in grid}
        return scores_for

    # best at the top edge: widened upward (1 -> 3 -> 10) until the best, 3, is inside
    best, grid, history = study.select_lr((0.1, 0.3, 1.0), stub(3.0), max_widen=3)
    assert best == 3.0 and grid == [0.1, 0.3, 1.0, 3.0, 10.0]
    assert calls == [[0.1, 0.3, 1.0], [0.1, 0.3, 1.0, 3.0], [0.1, 0.3, 1.0, 3.0, 10.0]]
    assert [h["best"] for h in history] == [1.0, 3.0, 3.0]
    # best at the bottom edge: widened downward, on the 1-3-10 ladder
    best, grid, _ = study.select_lr((1e-3, 3e-3, 1e-2), stub(3e-4), max_widen=3)
    assert best == 3e-4 and grid == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    # inside at once: one round, the grid as given
    calls.clear()
    assert study.select_lr((0.1, 0.3, 1.0), stub(0.3))[:2] == (0.3, [0.1, 0.3, 1.0]) and len(calls) == 1
    # at most max_widen rates are added, even if the best is still on the edge
    best, grid, history = study.select_lr((0.1, 0.3, 1.0), stub(1e6), max_widen=2)
    assert grid == [0.1, 0.3, 1.0, 3.0, 10.0] and best == 10.0 and len(history) == 3
    # a diverged rate (inf) is never the best: the top rate diverging keeps the best inside
    diverging = lambda grid: {lr: (math.inf if lr >= 1.0 else 1.0 / lr) for lr in grid}  # noqa: E731
    assert study.select_lr((0.1, 0.3, 1.0), diverging)[:2] == (0.3, [0.1, 0.3, 1.0])
    assert study.widen([0.3], 0.3) == [0.1, 0.3, 1.0] and study.widen([0.1, 0.3, 1.0], 0.3) is None


@pytest.mark.e2e
def test_tiny_study_end_to_end_and_resumed(study, small_mesh, tmp_path, capsys):
    """One mesh, Adam, both conditioners, budgets 10 and 20 (the rate chosen at 20), one seed, a
    tiny field: two shape_fit.py commands per conditioner (no widening here: the stub tests it)."""
    tiny = ("--field.width 32 --field.depth 2 --field.n-freqs 4 --sampling.n-near 4000 --sampling.n-uniform 2000 "
            "--sampling.n-eval 4000 --evaluation.curve-points 2000 --ckpt-every 10")
    s = study.ShapeBudgetStudy(out=tmp_path / "study", meshes=(small_mesh,), optimizers=("adam",), seeds=(0,),
                               budgets=(10, 20), select_budget=20, adam_lrs=(3e-3, 1e-2), max_widen=0,
                               batch_size=512, resolution=16, surface_points=500, eval_every=10, shape_args=tiny)
    assert s.main() == 0
    out = capsys.readouterr().out
    assert "ETA" in out and "[shape-budget] start blob-adam-none 20 steps" in out
    rows = study.read_records(tmp_path / "study" / "records.csv")
    assert sorted((r["conditioner"], int(r["budget"])) for r in rows) == [
        ("equilibrate", 10), ("equilibrate", 20), ("none", 10), ("none", 20)]
    selection = json.loads((tmp_path / "study" / "selection.json").read_text())
    for r in rows:
        entry = selection[f"blob-adam-{r['conditioner']}"]
        assert entry["grid"] == [3e-3, 1e-2] and float(r["lr"]) == entry["lr"] in entry["grid"]
        assert 0 <= float(r["iou"]) <= 1 and r["floater_components"] != "" and r["floater_area"] != ""
        # the selection budget's runs are the selection's own
        assert ("select-adam-" in r["run"]) == (r["budget"] == "20")
    assert (tmp_path / "study" / "tables.md").read_text() == study.tables_markdown(rows)
    assert (tmp_path / "study" / "gap_vs_budget.png").is_file()
    # the same command again trains nothing: every run is found finished
    assert s.main() == 0
    assert "[shape-budget] start" not in capsys.readouterr().out
    assert study.read_records(tmp_path / "study" / "records.csv") == rows
