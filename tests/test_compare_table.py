"""results.csv and table.md from given per-run metrics (no training)."""

from __future__ import annotations

import math
import re

import pytest

from wcnerf.eval.table import aggregate, read_results_csv, results_csv, table_markdown, write_results_csv


def rec(scene, method, seed, psnr=None, ssim=None, lpips=None, status="done", error=""):
    return {
        "protocol": "cpu",
        "scene": scene,
        "method": method,
        "seed": seed,
        "status": status,
        "psnr": psnr,
        "ssim": ssim,
        "lpips": lpips,
        "iterations": 100,
        "sec_per_iter": 0.5,
        "run_dir": f"runs/{scene}/{method}/seed-{seed}",
        "error": error,
    }


@pytest.fixture
def records():
    return [
        # fern: E-NeRF better in PSNR and SSIM, NeRF better (lower) in LPIPS
        rec("fern", "nerf", 0, 20.0, 0.60, 0.30),
        rec("fern", "nerf", 1, 22.0, 0.62, 0.32),
        rec("fern", "e-nerf", 0, 23.0, 0.70, 0.40),
        rec("fern", "e-nerf", 1, 25.0, 0.72, 0.42),
        # flower: NeRF better in PSNR
        rec("flower", "nerf", 0, 30.0, 0.80, 0.10),
        rec("flower", "nerf", 1, 30.0, 0.80, 0.10),
        rec("flower", "e-nerf", 0, 28.0, 0.78, 0.12),
        rec("flower", "e-nerf", 1, None, status="failed", error="Traceback...\nRuntimeError: CUDA out of memory"),
    ]


def _row(md: str, section: str, label: str) -> list:
    block = md.split(f"## {section}")[1].split("\n## ")[0]
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in section {section!r}:\n{block}")


def test_aggregate_mean_std_and_average(records):
    cells = aggregate(records, "psnr", ["fern", "flower"], ["nerf", "e-nerf"])
    c = cells[("nerf", "fern")]
    assert c.mean == pytest.approx(21.0) and c.std == pytest.approx(math.sqrt(2.0)) and c.n_ok == 2
    c = cells[("e-nerf", "flower")]
    assert c.mean == pytest.approx(28.0) and c.std is None and (c.n_ok, c.n_runs, c.n_failed) == (1, 2, 1)
    avg = cells[("nerf", "__avg__")]
    assert avg.mean == pytest.approx((21.0 + 30.0) / 2)
    # per-seed scene averages 25 and 26 -> std sqrt(0.5)
    assert avg.std == pytest.approx(math.sqrt(0.5))
    # e-nerf: average of per-scene means; only seed 0 finished both scenes -> no std
    avg = cells[("e-nerf", "__avg__")]
    assert avg.mean == pytest.approx((24.0 + 28.0) / 2) and avg.std is None


def test_table_layout_bold_and_difference(records):
    md = table_markdown(records, protocol_summary="protocol `cpu`")
    header = [c.strip() for c in md.split("## PSNR ↑")[1].splitlines()[2].strip("|").split("|")]
    assert header == ["Method", "Fern", "Flower", "Average"]  # scenes as columns, average last
    nerf, enerf = _row(md, "PSNR ↑", "NeRF"), _row(md, "PSNR ↑", "E-NeRF")
    assert nerf[1] == "21.00 ± 1.41" and enerf[1] == "**24.00 ± 1.41**"  # better one in bold
    assert nerf[2] == "**30.00 ± 0.00**" and enerf[2].startswith("28.00") and "(1/2 seeds)" in enerf[2]
    # average of the scene means; its std over seeds needs two seeds that finished every scene
    assert nerf[3] == "25.50 ± 0.71" and enerf[3] == "**26.00**"
    diff = _row(md, "PSNR ↑", "Δ PSNR (E-NeRF − NeRF)")
    assert diff[1:] == ["+3.00", "-2.00", "+0.50"]
    # LPIPS: lower is better
    assert _row(md, "LPIPS ↓", "NeRF")[1].startswith("**0.310")
    assert not _row(md, "LPIPS ↓", "E-NeRF")[1].startswith("**")
    # SSIM section present, 3 decimals
    assert _row(md, "SSIM ↑", "E-NeRF")[1] == "**0.710 ± 0.014**"
    # the failed run is listed with its error
    unfinished = md.split("## Runs that did not finish")[1]
    assert "Flower | E-NeRF | 1 | failed" in unfinished
    assert "CUDA out of memory" in unfinished


def test_bold_average_goes_to_best(records):
    md = table_markdown(records)
    nerf, enerf = _row(md, "PSNR ↑", "NeRF"), _row(md, "PSNR ↑", "E-NeRF")
    bolded = [r[0] for r in (nerf, enerf) if r[3].startswith("**")]
    assert bolded == ["E-NeRF"]


def test_incomplete_average_marked_and_not_bold():
    records = [
        rec("fern", "nerf", 0, 20.0),
        rec("flower", "nerf", 0, 30.0),
        rec("fern", "e-nerf", 0, 21.0),
        rec("flower", "e-nerf", 0, status="failed", error="boom"),
    ]
    md = table_markdown(records)
    enerf = _row(md, "PSNR ↑", "E-NeRF")
    assert enerf[2] == "failed"
    assert "†" in enerf[3] and "(1/2 scenes)" in enerf[3] and "**" not in enerf[3]
    assert _row(md, "PSNR ↑", "NeRF")[3] == "25.00"  # alone among complete averages: not bold
    # the difference's average is over the scenes both finished
    assert _row(md, "PSNR ↑", "Δ PSNR (E-NeRF − NeRF)")[1:] == ["+1.00", "–", "+1.00 † (1/2 scenes)"]
    assert "boom" in md.split("## Runs that did not finish")[1]


def test_lpips_unavailable_noted():
    records = [rec("fern", "nerf", 0, 20.0, 0.5), rec("fern", "e-nerf", 0, 21.0, 0.6)]
    md = table_markdown(records)
    assert "## LPIPS" not in md and "LPIPS was not measured" in md
    assert "None: every run finished." in md


def test_other_conditioners_get_a_difference_row():
    records = [rec("fern", m, 0, p) for m, p in (("weight-norm", 19.0), ("nerf", 20.0), ("e-nerf", 21.0))]
    md = table_markdown(records)
    rows = [ln.split("|")[1].strip() for ln in md.split("## PSNR ↑")[1].split("\n## ")[0].splitlines()[4:] if ln.startswith("|")]
    assert rows == ["NeRF", "E-NeRF", "weight-norm", "Δ PSNR (E-NeRF − NeRF)", "Δ PSNR (weight-norm − NeRF)"]
    assert _row(md, "PSNR ↑", "Δ PSNR (weight-norm − NeRF)")[1] == "-1.00"


def test_csv_one_row_per_run_with_failures(tmp_path, records):
    path = write_results_csv(records, tmp_path / "results.csv")
    rows = read_results_csv(path)
    assert len(rows) == len(records)
    header = path.read_text().splitlines()[0].split(",")
    for col in ("scene", "method", "seed", "psnr", "ssim", "lpips", "iterations", "sec_per_iter", "run_dir", "status", "error"):
        assert col in header
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["psnr"] is None and "CUDA out of memory" in failed[0]["error"]
    assert "\n" not in failed[0]["error"]  # one line per run
    ok = rows[0]
    assert ok["psnr"] == pytest.approx(20.0) and ok["seed"] == 0 and ok["iterations"] == 100
    assert re.search(r"runs/fern/nerf/seed-0", ok["run_dir"])
    assert results_csv([]).strip() == ",".join(header)


def test_table_says_which_held_out_views_were_evaluated(tmp_path, records):
    assert "mean over all of the scene's held-out views;" in table_markdown(records)  # counts unknown
    counts = {"fern": (3, 3), "flower": (5, 5), "fern62": (5, 8)}
    for r in records:
        r["views_evaluated"], r["views_held_out"] = counts[r["scene"]]
    assert "mean over all of the scene's held-out views (Fern 3, Flower 5);" in table_markdown(records)
    big = records + [rec("fern62", "nerf", 0, 17.8, 0.43) | {"views_evaluated": 5, "views_held_out": 8}]
    assert "mean over the evaluated held-out views (Fern 3 of 3, Flower 5 of 5, Fern62 5 of 8, evenly spaced);" in (
        table_markdown(big)
    )
    rows = read_results_csv(write_results_csv(big, tmp_path / "results.csv"))  # the counts survive the CSV
    assert (rows[-1]["views_evaluated"], rows[-1]["views_held_out"]) == (5, 8)
    assert "Fern62 5 of 8" in table_markdown(rows)
