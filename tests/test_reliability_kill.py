"""Issue 15, point 4 (without the run-folder lock, which is issue 14's lease): SIGKILL
``shape_fit.py`` and ``ns-train`` at several points (during training, in the middle of a
checkpoint write, during evaluation / the final outputs); the rerun resumes from the last
complete checkpoint, ends with the same number of steps, and no partial file is left.

One driver process (tests/support/ns_cases.py) runs every case as a forked child; a case's ``child``
code patches the point where the child kills itself with SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.tiny import NERF, TINY_FACTOR, tiny_env, tiny_fern

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(__name__)]  # one module fixture: its tests on one worker

HERE = Path(__file__).resolve().parent

SHAPE_ARGS = ["--field.conditioning", "none", "--field.width", "32", "--optim.steps", "30",
              "--optim.batch-size", "512", "--sampling.n-near", "4000", "--sampling.n-uniform", "2000",
              "--sampling.n-eval", "4000", "--evaluation.resolution", "24", "--evaluation.surface-points", "4000",
              "--evaluation.every", "10", "--evaluation.curve-points", "2000", "--ckpt-every", "10", "--no-progress",
              "--threads", "1"]

KILL = "import os, signal\ndef die(): os.kill(os.getpid(), signal.SIGKILL)\n"
PARTIAL_SAVE = KILL + """import torch
real_save, calls = torch.save, []
def save(obj, f, *a, **k):
    if NEEDLE in str(f):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"PK\\x03\\x04" + b"\\0" * 4096)  # half a zip file, then the kill
            die()
    return real_save(obj, f, *a, **k)
torch.save = save
"""

SHAPE_KILLS = {
    # name: (child code, last complete checkpoint step after the kill)
    "train": (KILL + """import wcnerf.shape.train as t
lr = t.lr_factor
def lr_factor(cfg, step):
    if step == 15:
        die()
    return lr(cfg, step)
t.lr_factor = lr_factor
""", 10),
    "checkpoint-write": ("NEEDLE = 'checkpoint'\n" + PARTIAL_SAVE, 10),
    "evaluation": (KILL + """import wcnerf.shape.train as t
t.marching_cubes = lambda *a, **k: die()
""", 30),
    "pictures": (KILL + """import wcnerf.shape.plot as p
p.plot_curves = lambda *a, **k: die()
""", 30),
}

NS_KILLS = {
    "ns-train": (KILL + """from wcnerf.plugin.trainer import WCTrainer
it = WCTrainer.train_iteration
def train_iteration(self, step):
    if step == 6:
        die()
    return it(self, step)
WCTrainer.train_iteration = train_iteration
""", 4),
    "ns-checkpoint-write": ("NEEDLE = 'step-'\n" + PARTIAL_SAVE, 4),
    "ns-evaluation": (KILL + """from nerfstudio.pipelines.base_pipeline import VanillaPipeline
ev = VanillaPipeline.get_eval_loss_dict
def get_eval_loss_dict(self, step):
    if step == 10:  # an eval-batch step of the tiny preset (every 2nd) after the step-8 checkpoint
        die()
    return ev(self, step)
VanillaPipeline.get_eval_loss_dict = get_eval_loss_dict
""", 8),
}


def _snapshot(src: Path, dst: Path) -> str:
    """Driver-side code: copy a killed run folder aside for the test to inspect."""
    return f"import shutil; shutil.copytree({str(src)!r}, {str(dst)!r})"


@pytest.fixture(scope="module")
def killed(fern, small_mesh, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill15")
    shape_out = root / "shape"
    cases = []

    def shape(name):
        return [str(small_mesh), "--output-dir", str(shape_out), "--run-name", name, *SHAPE_ARGS]

    cases.append({"name": "shape-clean", "entry": "shape", "argv": shape("clean")})
    for name, (child, _) in SHAPE_KILLS.items():
        cases.append({"name": f"shape-{name}", "entry": "shape", "argv": shape(name), "child": child})
        cases.append({"name": f"shape-{name}-rerun", "entry": "shape", "argv": shape(name),
                      "before": _snapshot(shape_out / "blob" / name, root / "after-kill" / name)})

    scene = tiny_fern(root / "data", fern)
    ns_out = root / "ns"

    def train(name, extra=()):
        return [
            "e-nerf-small", "--output-dir", str(ns_out), "--experiment-name", "fern", "--timestamp", name,
            "--max-num-iterations", "12", "--steps-per-save", "4", "--machine.seed", "0", *NERF.args(), *extra,
            "llff", "--data", str(scene), "--downscale-factor", str(TINY_FACTOR)]

    for name, (child, _) in NS_KILLS.items():
        run = ns_out / "fern" / "e-nerf-small" / name
        cases.append({"name": name, "entry": "train", "argv": train(name), "child": child})
        cases.append({"name": f"{name}-rerun", "entry": "train",
                      "argv": train(f"{name}-resumed", ["--load-dir", str(run / "nerfstudio_models")]),
                      "before": _snapshot(run, root / "after-kill" / name)})

    (root / "cases.json").write_text(json.dumps(cases))
    res = subprocess.run([sys.executable, str(HERE / "support" / "ns_cases.py"), str(root / "cases.json")], cwd=root,
                         env=tiny_env(root), capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    codes = json.loads((root / "results.json").read_text())

    def text(name):
        return (root / f"{name}.out").read_text() + (root / f"{name}.err").read_text()

    return root, codes, text


def _partials(folder: Path) -> list:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("name", list(SHAPE_KILLS))
def test_shape_fit_killed_resumes(killed, name):
    root, codes, text = killed
    assert codes[f"shape-{name}"] == -9, text(f"shape-{name}")[-2000:]
    after = root / "after-kill" / name
    state = torch.load(after / "checkpoint.pt", weights_only=False)["state"]
    assert state["step"] == SHAPE_KILLS[name][1]  # the last complete checkpoint loads
    assert not (after / "metrics.json").exists()  # a killed run is never "finished"
    if name == "checkpoint-write":
        assert _partials(after), "the kill should have left a half-written temporary file"
    assert codes[f"shape-{name}-rerun"] == 0, text(f"shape-{name}-rerun")[-3000:]
    run = root / "shape" / "blob" / name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30
    for output in ("mesh.ply", "curves.png", "fit.png", "checkpoint.pt"):
        assert (run / output).is_file(), output
    assert _partials(run) == []
    # resumed from a checkpoint, the weights are those of the uninterrupted run
    assert codes["shape-clean"] == 0
    clean = torch.load(root / "shape" / "blob" / "clean" / "checkpoint.pt", weights_only=False)["model"]
    mine = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(clean[k], mine[k]) for k in clean)


@pytest.mark.parametrize("name", list(NS_KILLS))
def test_ns_train_killed_resumes(killed, name):
    root, codes, text = killed
    assert codes[name] == -9, text(name)[-2000:]
    after = root / "after-kill" / name
    assert [p.name for p in (after / "nerfstudio_models").iterdir()] == [f"step-{NS_KILLS[name][1]:09d}.ckpt"]
    if name == "ns-checkpoint-write":
        assert _partials(after), "the kill should have left a half-written temporary file"
    assert codes[f"{name}-rerun"] == 0, text(f"{name}-rerun")[-3000:]
    assert f"Resuming at step {NS_KILLS[name][1] + 1}" in text(f"{name}-rerun")
    runs = root / "ns" / "fern" / "e-nerf-small"
    resumed = runs / f"{name}-resumed" / "nerfstudio_models"
    assert [p.name for p in resumed.iterdir()] == ["step-000000011.ckpt"]
    assert torch.load(resumed / "step-000000011.ckpt", weights_only=False)["step"] == 11
    assert _partials(runs / name) == [] and _partials(runs / f"{name}-resumed") == []
