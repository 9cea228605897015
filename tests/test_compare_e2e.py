"""A tiny real sweep through nerfstudio (ns-train + ns-eval subprocesses): NeRF and E-NeRF on
fern (1/32 resolution, tiny MLPs, a few iterations), then a resumed run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.helpers import REPO
from support.tiny import tiny_fern, tiny_protocol



def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare_llff.py"), *args],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )  # fmt: skip


@pytest.mark.e2e
def test_tiny_real_sweep_and_resume(tmp_path, fern):
    scene = tiny_fern(tmp_path / "data", fern)
    proto = tmp_path / "tiny.yaml"
    proto.write_text(tiny_protocol(6))
    out = tmp_path / "out"
    args = ["--protocol", str(proto), "--scenes", str(scene), "--methods", "nerf", "e-nerf", "--seeds", "0",
            "--output-root", str(out)]  # fmt: skip
    res = _cli(*args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = out / "tiny"
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [(r["scene"], r["method"], r["seed"], r["status"]) for r in rows] == [
        ("fern", "nerf", "0", "done"),
        ("fern", "e-nerf", "0", "done"),
    ]
    for r in rows:
        assert 5 < float(r["psnr"]) < 40 and 0 < float(r["ssim"]) <= 1
        assert r["iterations"] == "6" and float(r["sec_per_iter"]) > 0
        run = d / r["run_dir"]
        m = json.loads((run / "metrics.json").read_text())
        assert m["extra"]["num_heldout_images"] == 3  # 20 images, every 8th held out: 0, 8, 16
        assert m["extra"]["num_evaluated_images"] == 2 and r["views_evaluated"] == "2"  # max_eval_views: 0 and 16
        assert json.loads((run / "status.json").read_text())["status"] == "done"
        per_image = m["extra"]["per_image"]  # ns-eval's metrics of each evaluated view
        assert [Path(v["image"]).stem for v in per_image] == ["image000", "image016"]
        assert math.isclose(sum(v["psnr"] for v in per_image) / 2, m["psnr"], rel_tol=1e-6)
        curves = json.loads((run / "curves.json").read_text())
        assert curves["train"]["step"][-1] == 5 and curves["heldout"]["step"]
        assert (run / "heldout" / "gt_0000.png").is_file() and (run / "heldout" / "pred_0000.png").is_file()
    md = (d / "table.md").read_text()
    assert "| Method | Fern | Average |" in md and "Δ PSNR (E-NeRF − NeRF)" in md and "**" in md
    assert "mean over the evaluated held-out views (Fern 2 of 3, evenly spaced)" in md
    assert (d / "curves.png").stat().st_size > 1000
    views = list(csv.DictReader(open(d / "results_per_image.csv")))
    assert [(v["method"], v["image"]) for v in views] == [
        ("nerf", "image000.png"), ("nerf", "image016.png"), ("e-nerf", "image000.png"), ("e-nerf", "image016.png")]
    import imageio.v3 as iio

    panel = iio.imread(d / "renders" / "fern.png")
    assert panel.shape[1] > 5 * 126  # gt, NeRF, E-NeRF, two error maps

    # Resume: E-NeRF is "killed" after its last checkpoint (step 5) and the protocol now asks
    # for 9 iterations: the same command trains steps 6..8 from that checkpoint, then evaluates.
    # NeRF's finished run is not touched.
    nerf_metrics = (d / "runs/fern/nerf/seed-0/metrics.json").read_text()
    enerf = d / "runs/fern/e-nerf/seed-0"
    (enerf / "metrics.json").unlink()
    status = json.loads((enerf / "status.json").read_text())
    status.update(status="running", pid=2**22 + 4321)
    (enerf / "status.json").write_text(json.dumps(status))
    proto.write_text(tiny_protocol(9))
    res = _cli(*args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (d / "runs/fern/nerf/seed-0/metrics.json").read_text() == nerf_metrics
    m = json.loads((enerf / "metrics.json").read_text())
    assert m["iterations"] == 9 and m["extra"]["resumed_from"] == [6] and m["attempts"] == 2
    assert "--load-dir" in (enerf / "train.log").read_text()
    assert "Resuming at step 6" in (enerf / "train.log").read_text()
    curves = json.loads((enerf / "curves.json").read_text())
    assert curves["train"]["step"] == list(range(9))
    assert math.isfinite(m["psnr"])
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert {r["method"]: r["iterations"] for r in rows} == {"nerf": "6", "e-nerf": "9"}
