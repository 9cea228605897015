"""Issue 15, point 2: ``ns-train`` / ``ns-eval`` on broken input print one clear error, exit
non-zero with no Python traceback and leave no empty run folder; ``--load-dir`` mistakes are
explained; a finished run's resume command says so and exits 0; progress after a resume
counts toward the real total.

All command lines run through one driver process (tests/support/ns_cases.py: nerfstudio imported once,
each case a forked child calling the real entry point), on a 126 x 94 copy of fern; the broken
scenes are the catalogue's (tests/support/broken_scenes.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.broken_scenes import BROKEN, copy_fern
from support.tiny import NERF, TINY_FACTOR, tiny_env, tiny_fern

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(__name__)]  # one module fixture: its tests on one worker

HERE = Path(__file__).resolve().parent


SCENE_CASES = {
    # name: (breaker from the catalogue, what ns-train's one error line must say)
    "zero-rotation": (BROKEN["zero rotation block in one row"].breaker, "not a rotation"),
    "singular-rotation": (BROKEN["singular rotation (two equal columns)"].breaker, "not a rotation"),
    "one-pose": (BROKEN["all cameras at one pose"].breaker, "baseline"),
    "tiny-near": (BROKEN["near bound 1e-30 (scene x1e30)"].breaker, "depth bounds span"),
    "near-above-far": (BROKEN["near >= far in one row"].breaker, "near bound >= far bound"),
    "one-image": (BROKEN["one image (holdout_every 8)"].breaker, "no training image"),
    "rgba-among-rgb": (BROKEN["RGBA among RGB"].breaker, "channels"),
}


@pytest.fixture(scope="module")
def ns_runs(fern, tmp_path_factory):
    root = tmp_path_factory.mktemp("ns15")
    good = tiny_fern(root / "good", fern)
    out = root / "outputs"
    base = out / "fern" / "e-nerf-small" / "base"

    def train(name, method="e-nerf-small", iters=5, data=good, extra=(), output=out, parser_args=()):
        return {"name": name, "entry": "train", "argv": [
            method, "--output-dir", str(output), "--experiment-name", "fern", "--timestamp", name,
            "--max-num-iterations", str(iters), "--steps-per-save", "1000", "--machine.seed", "0",
            *NERF.args(), *extra, "llff", "--data", str(data), "--downscale-factor", str(TINY_FACTOR), *parser_args]}

    cases = []
    for name, (breaker, _) in SCENE_CASES.items():
        scene = copy_fern(good, root / name / "fern", TINY_FACTOR)
        breaker(scene)
        cases.append(train(name, data=scene))
    cases.append(train("missing-scene", data=root / "no-such-scene"))
    cases.append(train("bad-conditioning", extra=["--pipeline.model.conditioning", "bogus"]))
    cases.append(train("negative-cpu-chunk", extra=["--pipeline.model.cpu-eval-num-rays-per-chunk", "-4"]))
    cases.append(train("negative-max-eval-views", parser_args=["--max-eval-views", "-1"]))
    (root / "a-file").write_text("x")
    cases.append(train("output-under-file", output=root / "a-file" / "outputs"))
    # a finished 8-step run, then every --load-dir mistake against it
    cases.append(train("base", iters=8))
    models = base / "nerfstudio_models"
    cases.append(train("finished", iters=8, extra=["--load-dir", str(models)]))
    (root / "empty").mkdir()
    cases.append(train("loaddir-missing", extra=["--load-dir", str(root / "nope")]))
    cases.append(train("loaddir-empty", extra=["--load-dir", str(root / "empty")]))
    cases.append(train("loaddir-run-folder", extra=["--load-dir", str(base)]))
    trunc = root / "truncated" / "nerfstudio_models"
    case = train("loaddir-truncated", extra=["--load-dir", str(trunc)])
    case["before"] = (f"import shutil; shutil.copytree({str(models)!r}, {str(trunc)!r}); "
                      f"p = sorted(Path({str(trunc)!r}).glob('*.ckpt'))[-1]; p.write_bytes(p.read_bytes()[:5000])")
    cases.append(case)
    cases.append(train("loaddir-other-method", method="nerf-small", iters=12, extra=["--load-dir", str(models)]))
    # resume with a stray file beside the checkpoints: accepted with a warning, counts to 12
    case = train("resume", iters=12, extra=["--load-dir", str(models)])
    case["before"] = f"Path({str(models / 'notes.txt')!r}).write_text('x')"
    cases.append(case)
    # a full disk at the first checkpoint: torch's zip writer fails ("unexpected pos")
    case = train("disk-full", iters=5, extra=["--steps-per-save", "2"])
    case["child"] = ("import torch\nreal = torch.save\n"
                     "def save(obj, f, *a, **k):\n"
                     "    if 'step-' in str(f):\n"
                     "        Path(f).write_bytes(b'PK')\n"
                     "        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 161216 vs 161104')\n"
                     "    return real(obj, f, *a, **k)\n"
                     "torch.save = save\n")
    cases.append(case)
    # ns-eval on the finished run after its scene broke
    case = {"name": "eval-broken-scene", "entry": "eval", "argv": [
        "--load-config", str(base / "config.yml"), "--output-path", str(root / "eval.json")]}
    case["before"] = (f"import numpy as np; p = {str(good / 'poses_bounds.npy')!r}; a = np.load(p); "
                      "a[:, :15] = a[0, :15]; np.save(p, a)")
    cases.append(case)

    (root / "cases.json").write_text(json.dumps(cases))
    res = subprocess.run([sys.executable, str(HERE / "support" / "ns_cases.py"), str(root / "cases.json")], cwd=root,
                         env=tiny_env(root), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    codes = json.loads((root / "results.json").read_text())

    def outcome(name):
        return codes.get(name), (root / f"{name}.out").read_text() + (root / f"{name}.err").read_text()

    return root, out, outcome


REFUSED = {**{k: v[1] for k, v in SCENE_CASES.items()},
           "missing-scene": "LLFF scene folder not found",
           "bad-conditioning": "--pipeline.model.conditioning: unknown conditioning 'bogus'",
           "negative-cpu-chunk": "--pipeline.model.cpu-eval-num-rays-per-chunk -4: must be >= 0",
           "negative-max-eval-views": "--max-eval-views -1: must be >= 0 (0: every held-out view)",
           "output-under-file": "is a file, so the run folder",
           "loaddir-missing": "not found; --load-dir takes the nerfstudio_models/ folder",
           "loaddir-empty": "is empty; --load-dir takes",
           "loaddir-run-folder": "is a run folder; --load-dir takes its checkpoint folder",
           "loaddir-truncated": "cannot be read as a checkpoint",
           "loaddir-other-method": "does not fit this method's model",
           "eval-broken-scene": "baseline"}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_one_line_and_no_run_folder(ns_runs, name):
    root, out, outcome = ns_runs
    code, text = outcome(name)
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and REFUSED[name] in errors[0], text[-3000:]
    assert "Config" not in text or name.startswith(("loaddir-truncated", "loaddir-other", "eval")), text[:2000]
    for method in ("e-nerf-small", "nerf-small"):
        assert not (out / "fern" / method / name).exists(), f"run folder left behind for {name}"


def test_finished_run_says_so_and_exits_0(ns_runs):
    root, out, outcome = ns_runs
    code, text = outcome("finished")
    assert code == 0 and "the run is finished" in text and "Traceback" not in text, text[-3000:]
    assert not (out / "fern" / "e-nerf-small" / "finished").exists()


def test_resume_counts_toward_the_real_total(ns_runs):
    root, out, outcome = ns_runs
    code, text = outcome("base")
    assert code == 0, text[-3000:]
    code, text = outcome("resume")
    assert code == 0, text[-3000:]
    assert "ignoring 1 file(s) that are not checkpoints (notes.txt)" in text
    assert "Resuming at step 8" in text
    percents = [float(p) for p in re.findall(r"\((\d+\.\d+)%\)", text)]
    assert percents and max(percents) <= 100.0, percents
    run = out / "fern" / "e-nerf-small" / "resume" / "nerfstudio_models"
    assert [p.name for p in run.glob("*.ckpt")] == ["step-000000011.ckpt"]


def test_full_disk_at_a_checkpoint_is_one_line(ns_runs):
    """Issue 15, point 5: the checkpoint write fails as on a full disk: one line naming the
    checkpoint and the cause, exit 2, and no half-written checkpoint among the checkpoints."""
    root, out, outcome = ns_runs
    code, text = outcome("disk-full")
    assert code == 2 and "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "step-000000002.ckpt: cannot write (" in errors[0], text[-3000:]
    run = out / "fern" / "e-nerf-small" / "disk-full"
    assert not list((run / "nerfstudio_models").glob("*")) if (run / "nerfstudio_models").exists() else True
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
