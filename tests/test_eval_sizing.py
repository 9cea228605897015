"""Issue 31, point 1: held-out evaluation the user can size and watch.

``--max-eval-views N`` and ``--eval-image-scale S`` on the harness's command line size the final
evaluation (``python -m wcnerf.eval.ns_eval``), give the outputs a folder of their own and are
kept in each run's record; ns_eval prints a progress line (views done / total, ETA) that the
harness reads from eval.log into status.json, the workers' progress lines and, in a log file,
plain lines of its own; the table opens with the settings the runs were run with, read from
their configs and records, never the protocol file's nominal words.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tyro
from rich.console import Console

from wcnerf.atomic import write_json
from wcnerf.eval.cli import Compare, Selection, selected_protocol
from wcnerf.eval.ns_eval import SizedViews, parse_progress, progress_line
from wcnerf.eval.ns_runner import EVAL_STAGE, NerfstudioRunner
from wcnerf.eval.protocols import load_protocol
from wcnerf.eval.reports import collect_records, write_reports
from wcnerf.eval.runs import STATUS_FILE, MethodSpec, RunResult, RunSpec, SceneSpec, execute
from wcnerf.eval.sweep import run_sweep
from wcnerf.eval.workers import sweep_progress

from support.helpers import REPO

NOMINAL = "700 iterations"
"""What the cpu protocol's description says of its budget."""


# ----------------------------------------------------------------------------- options and folders
def test_the_sizing_options_name_a_folder_of_their_own_and_say_what_changed():
    cpu = load_protocol("cpu")
    assert NOMINAL in cpu.description  # the words the table must not repeat for another budget
    p = selected_protocol(cpu, Selection(max_num_iterations=30, max_eval_views=2, eval_image_scale=0.5))
    assert p.name == "cpu-30it-2views-scale0.5"
    assert p.overrides["pipeline.datamanager.dataparser.max_eval_views"] == 2  # llff's own rule, all held-out views
    assert p.eval_image_scale == 0.5 and p.eval_views == 0
    assert p.changes == ("--max-num-iterations 30", "--max-eval-views 2", "--eval-image-scale 0.5")
    assert "(the `cpu` protocol with --max-num-iterations 30 --max-eval-views 2 --eval-image-scale 0.5)" in p.summary()
    # what the protocol measures already is the same measurement: the same folder
    same = selected_protocol(cpu, Selection(max_eval_views=5, eval_image_scale=1.0))
    assert same.name == "cpu" and same.changes == ()
    # a dataparser without max_eval_views of its own: ns_eval evaluates the N views
    other = selected_protocol(cpu, Selection(dataparser="nerfstudio-data", max_eval_views=1))
    assert other.name == "cpu-nerfstudio-data-1views" and other.eval_views == 1
    assert not any("max_eval_views" in k for k in other.overrides)


def test_out_of_range_sizes_are_refused_in_one_line_before_any_folder(tmp_path):
    for argv, line in ((["--eval-image-scale", "0"], "refused: --eval-image-scale 0: must be in (0, 1]"),
                       (["--eval-image-scale", "1.5"], "refused: --eval-image-scale 1.5: must be in (0, 1]"),
                       (["--max-eval-views", "-1"], "refused: --max-eval-views -1: must be >= 0 (0: every held-out view)")):
        out = io.StringIO()
        cmd = tyro.cli(Compare, args=[*argv, "--output-dir", str(tmp_path / "out")])
        assert cmd.main(console=Console(file=out, width=400)) == 2
        assert out.getvalue().strip().splitlines() == [line]
        assert not (tmp_path / "out").exists()


def _spec(tmp_path, protocol, scene=SceneSpec("fern", Path("/x/fern"), views_evaluated=3, views_held_out=3)):
    return RunSpec(protocol, scene, MethodSpec("nerf", "nerf-small"), 0, tmp_path / "run")


def test_the_runner_hands_the_sizing_to_ns_eval(tmp_path):
    cpu = load_protocol("cpu")
    cmd = NerfstudioRunner().eval_command(_spec(tmp_path, cpu), tmp_path / "config.yml")
    assert cmd[1:3] == ["-m", "wcnerf.eval.ns_eval"] and "--eval-image-scale" not in cmd and "--max-eval-views" not in cmd
    sized = selected_protocol(cpu, Selection(dataparser="nerfstudio-data", max_eval_views=2, eval_image_scale=0.25))
    cmd = NerfstudioRunner().eval_command(_spec(tmp_path, sized), tmp_path / "config.yml")
    assert cmd[cmd.index("--max-eval-views") + 1] == "2" and cmd[cmd.index("--eval-image-scale") + 1] == "0.25"
    assert float(cmd[cmd.index("--progress-every") + 1]) > 0


# ----------------------------------------------------------------------------- ns_eval's progress
class _Loader:
    """nerfstudio's fixed-indices eval loader as SizedViews sees it: ``image_indices`` and
    ``(camera, batch)`` pairs of real nerfstudio cameras."""

    def __init__(self, n: int, h: int = 8, w: int = 12):
        import torch
        from nerfstudio.cameras.cameras import Cameras

        self.image_indices = list(range(n))
        self.views = [(Cameras(camera_to_worlds=torch.eye(4)[:3][None], fx=10.0, fy=10.0, cx=w / 2, cy=h / 2,
                               width=w, height=h), {"image": torch.rand(h, w, 3), "image_idx": i}) for i in range(n)]

    def __iter__(self):
        return iter(self.views)


def test_ns_eval_views_are_scaled_and_say_views_done_and_an_eta():
    pytest.importorskip("nerfstudio")
    now = [0.0]
    lines = []
    views = SizedViews(_Loader(2), 0.5, every=10.0, say=lines.append, clock=lambda: now[0])
    seen = []
    for camera, batch in views:
        seen.append((int(camera.height), int(camera.width), tuple(batch["image"].shape)))
        for _ in range(4):  # four chunks of 6 rays of the 4 x 6 view, 6 s each
            now[0] += 6.0
            views.rendered(6)
    assert seen == [(4, 6, (4, 6, 3))] * 2
    assert [parse_progress(line) for line in lines] == [(0.5, 2), (1.0, 2), (1.5, 2), (2.0, 2)]
    assert lines[0] == "eval progress: 0.5/2 views, 12s elapsed, ETA 36s"  # 12 s per half view
    assert lines[-1] == "eval progress: 2/2 views, 48s elapsed, ETA 0s"
    assert progress_line(0, 3, 5.0).endswith("ETA ?")


def test_ns_eval_refuses_an_out_of_range_scale_in_one_line(capsys):
    pytest.importorskip("nerfstudio")
    from wcnerf.eval.ns_eval import main as ns_eval_main

    assert ns_eval_main(["--load-config", "missing.yml", "--eval-image-scale", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --eval-image-scale 0: must be in (0, 1]"


def test_the_harness_follows_eval_progress_into_status_and_its_progress_lines(tmp_path):
    """The real runner's log follower and execute's status record, with a runner standing in for
    ns-eval's subprocess: its eval.log lines as ns_eval writes them."""
    from wcnerf.lease import Lease
    from wcnerf.eval import runs

    log = tmp_path / "eval.log"
    seen = {}

    class EvalLogRunner:
        def __call__(self, spec):
            log.write_text("eval: 2 of the eval split's 3 views\n" + progress_line(0.5, 2, 30.0) + "\n")
            offset = NerfstudioRunner._follow(spec, log, 0, "eval", None)
            with open(log, "a") as fh:
                fh.write(progress_line(1.25, 2, 75.0) + "\nnot yet a line")
            NerfstudioRunner._follow(spec, log, offset, "eval", None)
            seen["status"] = json.loads((spec.run_dir / STATUS_FILE).read_text())
            seen["lines"] = sweep_progress([spec], 1).run_lines()
            return RunResult(psnr=20.0)

    spec = _spec(tmp_path, load_protocol("cpu"))
    spec.run_dir.mkdir(parents=True)
    old, runs.PROGRESS_EVERY = runs.PROGRESS_EVERY, 0.0  # record every report (the real pace: seconds apart)
    lease = Lease(spec.run_dir, stale_after=60)
    assert lease.try_acquire()
    try:
        assert execute(spec, EvalLogRunner()) == ("done", None)
    finally:
        lease.release()
        runs.PROGRESS_EVERY = old
    status = seen["status"]
    assert status["stage"] == EVAL_STAGE
    assert {k: status["progress"][k] for k in ("step", "total", "unit")} == {"step": 1.25, "total": 2, "unit": "views"}
    assert status["progress"]["sec_per_view"] > 0
    assert len(seen["lines"]) == 1 and "fern / nerf / seed 0: eval 1.25/2 held-out views, " in seen["lines"][0]
    assert " left (" in seen["lines"][0]  # the run's own ETA: views left times seconds per view


class _SlowRunner:
    """Reports training steps and evaluated views a few milliseconds apart, as a real run does."""

    def __call__(self, spec):
        for step in range(0, 11):
            spec.report("train", step, 10)
            time.sleep(0.004)
        spec.report(EVAL_STAGE, None, None)
        for done in (0.5, 1.0, 1.5, 2.0):
            time.sleep(0.004)
            spec.report(EVAL_STAGE, done, 2)
        return RunResult(psnr=20.0, iterations=10)


def test_a_log_file_gets_plain_progress_lines_with_an_eta(tmp_path):
    """Not a terminal (a log file): no progress bar, a line per interval with the training step
    or the held-out views evaluated and the ETA."""
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert not console.is_terminal
    p = load_protocol("cpu")
    run_sweep(p, [SceneSpec("fern", Path("/x/fern"))], [MethodSpec("nerf", "nerf-small")], [0], runner=_SlowRunner(),
              output_root=tmp_path, console=console, progress_every=0.002)
    text = out.getvalue()
    lines = [ln for ln in text.splitlines() if ln.startswith("[1/1] fern / nerf / seed 0: ")]
    assert any(ln.endswith("train") for ln in lines) and any(ln.endswith(EVAL_STAGE) for ln in lines)
    assert any(" step " in ln and "/10, ETA " in ln for ln in lines)
    assert any(" eval 1.5/2 held-out views, ETA " in ln or " eval 2/2 held-out views, ETA " in ln for ln in lines)
    assert "\r" not in text and "━" not in text  # no bar


# ----------------------------------------------------------------------------- the table's protocol line
def _finished_run(out: Path, iterations: int, scale: float, method: str = "nerf", ns_method: str = "nerf-small"):
    run = out / "runs" / "fern" / method / "seed-0"
    run.mkdir(parents=True)
    (run / "config.yml").write_text(f"max_num_iterations: {iterations}\npipeline:\n  datamanager:\n    dataparser:\n"
                                    "      downscale_factor: 8\n")
    settings = {"protocol": out.name, "scene": "fern", "method": method, "ns_method": ns_method, "seed": 0}
    write_json(run / STATUS_FILE, {"status": "done", "settings": settings})
    write_json(run / "metrics.json", {**settings, "psnr": 20.0, "ssim": 0.5, "iterations": iterations,
                                      "extra": {"num_evaluated_images": 2, "num_heldout_images": 3,
                                                "evaluation": {"image_scale": scale, "views": 2}}})


def test_the_table_states_the_settings_run_not_the_protocols_nominal_ones(tmp_path):
    cpu = load_protocol("cpu")
    p = selected_protocol(cpu, Selection(max_num_iterations=30, eval_image_scale=0.5))
    out = tmp_path / p.name
    _finished_run(out, 30, 0.5)
    _finished_run(out, 30, 0.5, "e-nerf", "e-nerf-small")
    records = collect_records(out)
    assert {(r["iterations"], r["downscale_factor"], r["eval_image_scale"]) for r in records} == {(30, 8, 0.5)}
    write_reports(out, records, p, console=Console(file=io.StringIO()))
    md = (out / "table.md").read_text()
    head = md.split("## PSNR")[0]
    assert NOMINAL not in md and "max_num_iterations=700" not in md
    assert ("Settings as run (from the runs' configs and records): 30 training iterations; images downscaled by 8; "
            "held-out views evaluated at 0.5 of their size") in head
    assert "(the `cpu` protocol with --max-num-iterations 30 --eval-image-scale 0.5)" in head
    assert "Fern 2 of 3" in head
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["iterations"], r["eval_image_scale"], r["downscale_factor"]) for r in rows} == {("30", "0.5", "8")}
    # the protocol as its file says: its description, and the settings line from the runs still first
    plain = tmp_path / "cpu"
    _finished_run(plain, 700, 1.0)
    write_reports(plain, collect_records(plain), cpu, console=Console(file=io.StringIO()))
    head = (plain / "table.md").read_text().split("## PSNR")[0]
    assert NOMINAL in head and "700 training iterations" in head and "evaluated at full size" in head
    assert head.index("Settings as run") < head.index(NOMINAL)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_a_tiny_sized_sweep_in_a_log_file(tmp_path, fern):
    """A real tiny sweep (ns-train, then ns-eval through wcnerf.eval.ns_eval) with its output
    going to a file: one view evaluated at half size, progress lines in eval.log and in the log,
    the record and the table saying so."""
    from support.tiny import tiny_fern, tiny_protocol

    scene = tiny_fern(tmp_path / "data", fern)
    proto = tmp_path / "tiny.yaml"
    proto.write_text(tiny_protocol(6))
    out = tmp_path / "out"
    log = tmp_path / "compare.log"
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_llff.py"), "--protocol", str(proto),
                              "--scenes", str(scene), "--methods", "nerf-small", "--seeds", "0", "--output-dir", str(out),
                              "--max-num-iterations", "4", "--max-eval-views", "1", "--eval-image-scale", "0.5",
                              "--progress-every", "1"],
                             stdout=fh, stderr=subprocess.STDOUT, timeout=900, cwd=REPO, env=dict(os.environ, COLUMNS="200"))
    text = log.read_text()
    assert res.returncode == 0, text[-3000:]
    d = out / "tiny-4it-1views-scale0.5"
    run = d / "runs" / "fern" / "nerf" / "seed-0"  # nerf-small is the protocol's nerf
    m = json.loads((run / "metrics.json").read_text())
    ev = m["extra"]["evaluation"]
    assert ev["image_scale"] == 0.5 and ev["views"] == 1 and ev["resolution_hw"] == [47, 63]
    assert m["extra"]["num_evaluated_images"] == 1 and len(m["extra"]["per_image"]) == 1 and math.isfinite(m["psnr"])
    eval_log = (run / "eval.log").read_text()
    assert "eval progress: 1/1 views" in eval_log and "ETA" in eval_log
    assert f"fern / nerf / seed 0: {EVAL_STAGE}" in text and "fern / nerf / seed 0: step " in text
    assert "\r" not in text
    md = (d / "table.md").read_text()
    assert "4 training iterations" in md and "evaluated at 0.5 of their size" in md and "Fern 1 of 3" in md
    assert "| NeRF (ns-train nerf-small) |" in md
    assert (run / "heldout" / "gt_0000.png").is_file()
