"""scripts/budget_study.py's tables and figures from its records alone (no training): the gap
is paired by seed, cells are mean ± sample std (n-1), a seed missing on one side is left out
of the gap, and the curve table reads the evaluated checkpoints."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from support.helpers import REPO


@pytest.fixture
def study(monkeypatch):
    spec = importlib.util.spec_from_file_location("budget_study", REPO / "scripts" / "budget_study.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "budget_study", module)
    spec.loader.exec_module(module)
    return module


def _rec(scene, method, seed, budget, psnr, ssim=0.5, status="done"):
    return {"scene": scene, "method": method, "seed": str(seed), "budget": str(budget), "psnr": str(psnr),
            "ssim": str(ssim), "views_evaluated": "3", "status": status}


RECORDS = [
    _rec("fern", "nerf", 0, 700, 17.8), _rec("fern", "e-nerf", 0, 700, 18.6),
    _rec("fern", "nerf", 1, 700, 18.0), _rec("fern", "e-nerf", 1, 700, 18.5),
    _rec("fern", "nerf", 2, 700, 17.9), _rec("fern", "e-nerf", 2, 700, "", status="running"),  # unpaired
    _rec("fern", "nerf", 0, 3000, 19.95), _rec("fern", "e-nerf", 0, 3000, 19.96),
]


def test_gaps_are_paired_by_seed(study):
    g = study.gaps(RECORDS, "fern", 700)
    assert g.keys() == {0, 1} and math.isclose(g[0], 0.8) and math.isclose(g[1], 0.5)


def test_the_table_is_mean_and_sample_std_of_the_paired_gap(study):
    md = study.tables_markdown(RECORDS, [])
    row = next(line for line in md.splitlines() if line.startswith("| 700 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0, 1"  # the seeds of the gap
    assert cells[2] == "17.90 ± 0.10"  # NeRF over its 3 finished seeds: mean 17.9, sample std 0.1
    assert cells[3] == "18.55 ± 0.07"  # E-NeRF over its 2
    assert cells[4] == "0.65 ± 0.21"  # gaps 0.8 and 0.5: mean 0.65, std |0.3| / sqrt(2)
    assert "sample std (n-1)" in md
    one = next(line for line in md.splitlines() if line.startswith("| 3000 |"))
    assert "| 0.01 |" in one  # one seed: its value alone


def test_the_curve_table_and_figures(study, tmp_path):
    curve = [{"scene": "fern", "method": m, "seed": str(s), "budget": "6000", "step": str(step), "psnr": str(p),
              "ssim": "0.5"}
             for (m, s, step, p) in [("nerf", 0, 700, 17.0), ("e-nerf", 0, 700, 17.6), ("nerf", 0, 6000, 20.0),
                                     ("e-nerf", 0, 6000, 20.1)]]
    md = study.tables_markdown(RECORDS, curve)
    assert "| fern | 700 | 17.00 | 17.60 | 0.60 |" in md and "| fern | 6000 | 20.00 | 20.10 | 0.10 |" in md
    assert study.plot_gap(RECORDS, tmp_path / "gap.png").stat().st_size > 1000
    assert study.plot_curve(curve, tmp_path / "curve.png", RECORDS).stat().st_size > 1000


def test_the_curve_reads_evaluated_checkpoints_back_in_run_order(study, tmp_path):
    """Checkpoints evaluated before are read back, not evaluated again (nothing here could run
    ns-eval), and the rows keep run order though `--workers` evaluate at once; the longest
    budget's point is the run's own final evaluation."""
    import json

    records = []
    for method, base in (("nerf", 17.0), ("e-nerf", 17.5)):
        run = tmp_path / "runs" / "fern" / method / "seed-0"
        for k, step in enumerate((700, 3000)):
            result = study.checkpoint_result(run, step)
            result.parent.mkdir(parents=True)
            result.write_text(json.dumps({"results": {"psnr": base + k, "ssim": 0.4 + k / 10}}))
        records.append({**_rec("fern", method, 0, 6000, base + 2), "budget": 6000, "run_dir": str(run)})
    records.append({**_rec("fern", "nerf", 1, 6000, "", status="running"), "budget": 6000, "run_dir": "absent"})
    rows = study.BudgetStudy(out=tmp_path, budgets=(700, 3000, 6000), workers=2).evaluate_curve(records)
    assert [(r["method"], r["step"], r["psnr"]) for r in rows] == [
        ("nerf", 700, 17.0), ("nerf", 3000, 18.0), ("nerf", 6000, "19.0"),
        ("e-nerf", 700, 17.5), ("e-nerf", 3000, 18.5), ("e-nerf", 6000, "19.5")]
