"""The sweep harness with fake runners: skip finished runs, retry failed ones, record errors,
resume after an interruption, write the reports. No training."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import imageio.v3 as imageio
import numpy as np
import pytest

from wcnerf.atomic import write_json
from wcnerf.eval.protocols import Protocol, ProtocolError, load_protocol
from wcnerf.eval.runs import MethodSpec, RunFailed, RunResult, SceneSpec, run_state
from wcnerf.eval.plan import resolve_methods, resolve_scenes
from wcnerf.eval.sweep import run_sweep
from wcnerf.eval.table import read_results_csv

from support.fake_runner import FakeRunner  # a plain module: worker processes import it too
from support.helpers import REPO, compare_dry_run


def proto(**kw) -> Protocol:
    base = dict(
        name="fake",
        methods={"nerf": "nerf-small", "e-nerf": "e-nerf-small"},
        base_method="nerf-small",
        overrides={"max_num_iterations": 10, "pipeline.datamanager.dataparser.downscale_factor": 8},
    )
    base.update(kw)
    return Protocol(**base)


SCENES = [SceneSpec("fern", Path("/nonexistent/fern")), SceneSpec("flower", Path("/nonexistent/flower"))]
METHODS = [MethodSpec("nerf", "nerf-small"), MethodSpec("e-nerf", "e-nerf-small")]


def sweep(tmp_path, runner, seeds=(0, 1), **kw):
    return run_sweep(proto(), SCENES, METHODS, list(seeds), runner=runner, output_root=tmp_path, show_progress=False, **kw)


def test_first_sweep_records_everything_and_lists_failures(tmp_path):
    runner = FakeRunner(fail={("flower", "e-nerf", 1)})
    s = sweep(tmp_path, runner)
    out = tmp_path / "fake"
    assert len(runner.calls) == 8 and s.done == 7 and s.failed == 1
    rows = read_results_csv(out / "results.csv")
    assert len(rows) == 8
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["scene"], r["method"], r["seed"]) for r in failed] == [("flower", "e-nerf", 1)]
    assert "fake boom" in failed[0]["error"] and failed[0]["psnr"] is None
    ok = [r for r in rows if r["status"] == "done"]
    assert all(r["psnr"] is not None and r["iterations"] == 10 and r["sec_per_iter"] == 0.01 for r in ok)
    assert all((out / r["run_dir"] / "metrics.json").is_file() for r in ok)
    status = json.loads((out / "runs/flower/e-nerf/seed-1/status.json").read_text())
    assert status["status"] == "failed" and "fake boom" in status["error"] and status["attempts"] == 1
    md = (out / "table.md").read_text()
    assert "| Flower | E-NeRF (ns-train e-nerf-small) | 1 | failed |" in md and "fake boom" in md
    assert (out / "curves.png").is_file() and (out / "renders" / "fern.png").is_file()
    assert (out / "renders" / "flower.png").is_file()


def test_resume_skips_finished_and_retries_failed(tmp_path):
    sweep(tmp_path, FakeRunner(fail={("flower", "e-nerf", 1), ("fern", "nerf", 0)}))
    before = (tmp_path / "fake/runs/fern/e-nerf/seed-0/metrics.json").read_text()
    runner = FakeRunner()
    s = sweep(tmp_path, runner)
    assert sorted(runner.calls) == [("fern", "nerf", 0), ("flower", "e-nerf", 1)]
    assert s.skipped_done == 6 and s.done == 2 and s.n_failed_total == 0
    assert (tmp_path / "fake/runs/fern/e-nerf/seed-0/metrics.json").read_text() == before  # never redone
    status = json.loads((tmp_path / "fake/runs/fern/nerf/seed-0/status.json").read_text())
    assert status["status"] == "done" and status["attempts"] == 2 and status["history"][-1]["status"] == "failed"
    # a third invocation has nothing to do
    runner = FakeRunner()
    sweep(tmp_path, runner)
    assert runner.calls == []
    md = (tmp_path / "fake/table.md").read_text()
    assert "None: every run finished." in md


def test_failed_left_alone_without_retry(tmp_path):
    sweep(tmp_path, FakeRunner(fail={("fern", "nerf", 1)}))
    runner = FakeRunner()
    s = sweep(tmp_path, runner, retry_failed=False)
    assert runner.calls == [] and s.skipped_failed == 1
    rows = read_results_csv(tmp_path / "fake/results.csv")
    assert [r["status"] for r in rows].count("failed") == 1


def test_interrupt_then_continue(tmp_path):
    runner = FakeRunner(interrupt={("fern", "e-nerf", 1)})
    s = sweep(tmp_path, runner)
    assert s.interrupted and runner.calls[-1] == ("fern", "e-nerf", 1) and len(runner.calls) == 4
    assert run_state(tmp_path / "fake/runs/fern/e-nerf/seed-1") == "interrupted"
    rows = read_results_csv(tmp_path / "fake/results.csv")  # reports are written on interruption
    assert {r["status"] for r in rows} == {"done", "interrupted", "pending"}
    runner = FakeRunner()
    sweep(tmp_path, runner)
    assert runner.calls[0] == ("fern", "e-nerf", 1) and len(runner.calls) == 5


def test_killed_run_is_continued(tmp_path):
    """A run whose process was killed (status 'running', dead pid) is run again."""
    d = tmp_path / "fake/runs/fern/nerf/seed-0"
    d.mkdir(parents=True)
    write_json(d / "status.json", {"status": "running", "pid": 2**22 + 12345, "host": os.uname().nodename})
    assert run_state(d) == "interrupted"
    runner = FakeRunner()
    sweep(tmp_path, runner, seeds=(0,))
    assert ("fern", "nerf", 0) in runner.calls and run_state(d) == "done"


def test_run_held_by_live_process_is_skipped(tmp_path):
    d = tmp_path / "fake/runs/fern/nerf/seed-0"
    d.mkdir(parents=True)
    write_json(d / "status.json", {"status": "running", "pid": os.getppid(), "host": os.uname().nodename})
    runner = FakeRunner()
    s = sweep(tmp_path, runner, seeds=(0,))
    assert ("fern", "nerf", 0) not in runner.calls and s.skipped_running == 1


def test_metrics_file_means_finished(tmp_path):
    d = tmp_path / "fake/runs/fern/nerf/seed-0"
    d.mkdir(parents=True)
    write_json(d / "status.json", {"status": "failed", "error": "old"})
    write_json(d / "metrics.json", {"psnr": 12.5, "scene": "fern", "method": "nerf", "seed": 0})
    runner = FakeRunner()
    sweep(tmp_path, runner, seeds=(0,))
    assert ("fern", "nerf", 0) not in runner.calls
    rows = {(r["scene"], r["method"], r["seed"]): r for r in read_results_csv(tmp_path / "fake/results.csv")}
    assert rows[("fern", "nerf", 0)]["psnr"] == 12.5 and rows[("fern", "nerf", 0)]["status"] == "done"


def test_redo_and_reports_keep_earlier_runs(tmp_path):
    sweep(tmp_path, FakeRunner(), seeds=(0,))
    runner = FakeRunner()
    run_sweep(proto(), SCENES[:1], METHODS[:1], [0], runner=runner, output_root=tmp_path, show_progress=False, redo=True)
    assert runner.calls == [("fern", "nerf", 0)]
    rows = read_results_csv(tmp_path / "fake/results.csv")
    assert len(rows) == 4  # runs of the earlier, larger invocation stay in the report


def test_unknown_scene_is_a_failed_run(tmp_path):
    scenes = [SceneSpec("nowhere", None, "nowhere: LLFF scene folder not found")]
    runner = FakeRunner()
    s = run_sweep(proto(), scenes, METHODS, [0], runner=runner, output_root=tmp_path, show_progress=False)
    assert runner.calls == [] and s.failed == 2
    rows = read_results_csv(tmp_path / "fake/results.csv")
    assert all(r["status"] == "failed" and "not found" in r["error"] for r in rows)


def test_resolve_methods_and_aliases():
    p = load_protocol("cpu")
    ms = resolve_methods(["nerf,e-nerf", "weight-norm", "none", "equilibrate"], p)
    assert [m.label for m in ms] == ["nerf", "e-nerf", "weight-norm"]
    assert ms[0] == MethodSpec("nerf", "nerf-small") and ms[1] == MethodSpec("e-nerf", "e-nerf-small")
    assert ms[2] == MethodSpec("weight-norm", "nerf-small", "weight-norm")
    with pytest.raises(ValueError, match="unknown method"):
        resolve_methods(["mip-nerf"], p)


def test_resolve_scenes(tmp_path, monkeypatch):
    scene = tmp_path / "root" / "myscene"
    (scene / "images_8").mkdir(parents=True)
    np.save(scene / "poses_bounds.npy", np.load(REPO / "data/llff/fern/poses_bounds.npy")[:2])  # possible cameras
    for i in range(2):  # the dataparser checks the scene: two small images of fern's shape
        imageio.imwrite(scene / "images_8" / f"{i:03d}.png", np.zeros((8, 12, 3), np.uint8))
    monkeypatch.setenv("WCNERF_DATA", str(tmp_path / "root"))
    at8, at4 = proto(dataparser="llff"), proto(overrides={"pipeline.datamanager.dataparser.downscale_factor": 4})
    fern, mine, missing = resolve_scenes(["fern,myscene", str(scene), "nope"], at8)  # myscene twice: once
    assert fern.error is None and fern.path == (REPO / "data/llff/fern").resolve()
    assert mine.error is None and mine.path == scene.resolve() and mine.label == "myscene"
    (byp,) = resolve_scenes([str(scene)], at8)
    assert byp == mine
    assert missing.path is None and "not found" in missing.error and "WCNERF_DATA" in missing.error
    (bad,) = resolve_scenes([str(scene)], at4)  # no images_4, no images/
    assert bad.error and "images_4" in bad.error


def test_protocols_paper_and_cpu():
    paper, cpu = load_protocol("paper"), load_protocol("cpu")
    factor, every = (f"pipeline.datamanager.dataparser.{k}" for k in ("downscale_factor", "holdout_every"))
    assert (paper.overrides[factor], paper.max_num_iterations, paper.overrides[every]) == (4, 200000, 8)
    assert paper.methods == {"nerf": "nerf", "e-nerf": "e-nerf"}
    assert len(paper.scenes) == 8
    assert cpu.overrides[factor] == 8 and cpu.methods == {"nerf": "nerf-small", "e-nerf": "e-nerf-small"}
    with pytest.raises(ProtocolError):
        load_protocol("no-such-protocol")


def test_protocol_from_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("methods: {nerf: nerf-small}\nbase_method: nerf-small\noverrides: {max_num_iterations: 3}\n")
    assert load_protocol(p).name == "mine"
    p.write_text("methods: {}\nbase_method: x\noverrides: {max_num_iterations: 3}\ntypo: 1\n")
    with pytest.raises(ProtocolError, match="typo"):
        load_protocol(p)


def test_cli_dry_run(tmp_path):
    printed = compare_dry_run("--protocol", "cpu", "--scenes", "fern", "--methods", "nerf", "e-nerf", "weight-norm",
                              "--seeds", "0", "--output-root", str(tmp_path))  # fmt: skip
    text = " ".join(printed.split())
    assert "nerf.scripts.train nerf-small" in text.replace("nerfstudio.scripts.train", "nerf.scripts.train")
    assert "--pipeline.model.conditioning weight-norm" in text
    assert "--downscale-factor 8" in text
