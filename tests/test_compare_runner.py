"""Pieces of the nerfstudio runner that need no training: commands, checkpoints, curves."""

from __future__ import annotations

import dataclasses

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wcnerf.eval.runs import MethodSpec, RunSpec, SceneSpec
from wcnerf.eval.ns_runner import NerfstudioRunner, extract_curves, latest_checkpoint, read_scalars, split_eval_image
from wcnerf.eval.plots import compose_views
from wcnerf.eval.protocols import load_protocol


def _spec(tmp_path, method=MethodSpec("weight-norm", "nerf-small", "weight-norm")):
    proto = load_protocol("cpu").with_overrides(max_num_iterations=1000)
    return RunSpec(proto, SceneSpec("fern", tmp_path / "fern"), method, 3, tmp_path / "run")


def test_train_command(tmp_path):
    runner = NerfstudioRunner(python="py")
    spec = _spec(tmp_path)
    cmd = runner.train_command(spec)
    text = " ".join(cmd)
    assert cmd[:4] == ["py", "-m", "nerfstudio.scripts.train", "nerf-small"]
    assert "--pipeline.model.conditioning weight-norm" in text
    assert "--max-num-iterations 1000" in text and "--machine.seed 3" in text and "--vis tensorboard" in text
    assert "--load-dir" not in text
    # the dataparser subcommand comes last, with the scene and the protocol's factor
    i = cmd.index("llff")
    assert cmd[i:] == ["llff", "--data", str(tmp_path / "fern"), "--downscale-factor", "8", "--holdout-every", "8",
                       "--max-eval-views", "5"]
    every = runner.train_command(dataclasses.replace(spec, protocol=spec.protocol.with_overrides(max_eval_views=0)))
    assert "--max-eval-views" not in every  # 0: the dataparser's default, every held-out image
    resumed = runner.train_command(spec, load_dir=tmp_path / "ckpts")
    assert resumed[resumed.index("--load-dir") + 1] == str(tmp_path / "ckpts")
    assert "--resume-to-max-iterations True" in " ".join(resumed)
    assert "--max-num-iterations 1000" in " ".join(resumed)  # the total, not what is left
    plain = runner.train_command(_spec(tmp_path, MethodSpec("e-nerf", "e-nerf-small")))
    assert "--pipeline.model.conditioning" not in plain and plain[3] == "e-nerf-small"
    assert runner._env(spec)["OMP_NUM_THREADS"] == "1"  # the cpu protocol's threads
    assert runner._env(spec, "eval")["OMP_NUM_THREADS"] == "1"  # no stage threads: `threads`
    two = dataclasses.replace(runner, eval_threads=2)
    assert two._env(spec, "eval")["OMP_NUM_THREADS"] == two._env(spec, "eval")["MKL_NUM_THREADS"] == "2"
    assert two._env(spec, "train")["OMP_NUM_THREADS"] == "1"
    three = dataclasses.replace(runner, train_threads=3)
    assert three._env(spec, "train")["OMP_NUM_THREADS"] == three._env(spec, "train")["MKL_NUM_THREADS"] == "3"
    assert three._env(spec, "eval")["OMP_NUM_THREADS"] == "1"


def test_local_threads_is_the_protocols_up_to_a_workers_share_of_the_cores():
    from wcnerf.eval.executors import local_threads

    assert local_threads(None, 1, 1, 2) is None  # the protocol sets none: `threads`
    assert local_threads(2, 1, 1, 2) == 2  # one worker on 2 cores
    assert local_threads(2, 1, 2, 2) == 1  # two workers on 2 cores: one each
    assert local_threads(4, 1, 1, 2) == 2  # never more than the cores
    assert local_threads(2, 3, 2, 2) == 3  # never fewer than `threads`
    assert local_threads(2, 1, 1, None) == 1


def test_with_local_threads_sets_both_stages_unless_the_runner_fixes_them(tmp_path):
    from wcnerf.eval.executors import with_local_threads

    proto = dataclasses.replace(_spec(tmp_path).protocol, train_threads=2, eval_threads=2, threads=1)
    cores = min(2, os.cpu_count() or 1)
    runner = with_local_threads(NerfstudioRunner(), proto, 1)
    assert (runner.train_threads, runner.eval_threads) == (cores, cores)
    assert with_local_threads(NerfstudioRunner(), proto, os.cpu_count() or 1).train_threads in (None, 1)  # a core each
    own = with_local_threads(NerfstudioRunner(eval_threads=3), proto, 1)
    assert (own.train_threads, own.eval_threads) == (cores, 3)  # a stage the runner sets keeps its setting
    fixed = NerfstudioRunner(threads=1)  # --threads 1: every process, as the user said
    assert with_local_threads(fixed, proto, 1) is fixed
    unset = with_local_threads(NerfstudioRunner(), dataclasses.replace(proto, train_threads=None, eval_threads=None), 1)
    assert (unset.train_threads, unset.eval_threads) == (None, None)
    fake = object()
    assert with_local_threads(fake, proto, 1) is fake


@pytest.mark.parametrize(
    "change, message",
    [
        (("train_threads: 2", "train_threads: 0"), r"bad\.yaml: train_threads must be >= 1"),
        (("max_eval_views: 5", "max_eval_views: -2"), r"bad\.yaml: max_eval_views must be >= 0"),
        (("dataparser: llff", "dataparser: nerfstudio-data"), r"bad\.yaml: max_eval_views is an option of the llff"),
    ],
)
def test_a_protocol_with_impossible_settings_is_refused(tmp_path, change, message):
    from wcnerf.eval.protocols import ProtocolError

    text = Path(load_protocol("cpu").source).read_text()
    assert change[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(*change))
    with pytest.raises(ProtocolError, match=message):
        load_protocol(str(bad))


def test_the_cpu_protocol_says_how_many_views_it_evaluates():
    proto = load_protocol("cpu")
    assert proto.max_eval_views == 5 and "(at most 5 of them evaluated, evenly spaced)" in proto.summary()
    assert "evaluated" not in load_protocol("paper").summary()


def _fake_ckpt(path: Path, payload: bytes = b"x" * 100) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)


def test_latest_checkpoint_skips_truncated(tmp_path):
    d = tmp_path / "nerfstudio_models"
    d.mkdir()
    assert latest_checkpoint(tmp_path / "missing") is None
    _fake_ckpt(d / "step-000000099.ckpt")
    _fake_ckpt(d / "step-000000199.ckpt")
    data = (d / "step-000000199.ckpt").read_bytes()
    (d / "step-000000199.ckpt").write_bytes(data[: len(data) // 2])  # killed while saving
    (d / "notes.txt").write_text("not a checkpoint")
    q = tmp_path / "bad"
    assert latest_checkpoint(d, quarantine=q) == (99, d / "step-000000099.ckpt")
    assert sorted(p.name for p in d.iterdir()) == ["step-000000099.ckpt"]  # nerfstudio sees only good ones
    assert len(list(q.iterdir())) == 2


def test_curves_from_tensorboard_with_resume(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    # first attempt: steps 0..6 (killed after a checkpoint at 4); second: 5..9
    w = SummaryWriter(str(tmp_path))
    for s in range(7):
        w.add_scalar("Train Metrics Dict/psnr", 10.0 + s, s)
        w.add_scalar("Train Iter (time)", 0.5, s)
        if s % 2 == 0:
            w.add_scalar("Eval Metrics Dict/psnr", 9.0 + s, s)
    w.close()
    w = SummaryWriter(str(tmp_path))
    for s in range(5, 10):
        w.add_scalar("Train Metrics Dict/psnr", 100.0 + s, s)
        w.add_scalar("Train Iter (time)", 1.5, s)
    w.close()
    scalars = read_scalars(tmp_path)
    train = dict(scalars["Train Metrics Dict/psnr"])
    assert sorted(train) == list(range(10)) and train[4] == 14.0 and train[5] == 105.0  # last write wins
    curves = extract_curves(scalars)
    assert curves["train"]["source"] == "Train Metrics Dict/psnr" and curves["train"]["step"] == list(range(10))
    assert curves["heldout"]["source"] == "Eval Metrics Dict/psnr" and curves["heldout"]["step"] == [0, 2, 4, 6]
    assert curves["sec_per_iter"] == pytest.approx((5 * 0.5 + 5 * 1.5) / 10)


def test_curves_fall_back_to_loss():
    scalars = {"Train Loss Dict/rgb_loss_fine": [(0, 0.1), (1, 0.01)], "Eval Loss Dict/rgb_loss_fine": [(0, 0.001)]}
    c = extract_curves(scalars)
    assert c["train"]["psnr"] == pytest.approx([10.0, 20.0]) and c["heldout"]["psnr"] == pytest.approx([30.0])
    assert extract_curves({})["train"]["step"] == [] and extract_curves({})["sec_per_iter"] is None


def test_split_eval_image_and_compose(tmp_path):
    gt = np.zeros((4, 5, 3), np.uint8)
    combined = np.concatenate([gt, gt + 1, gt + 2], axis=1)
    a, b = split_eval_image(combined, 5)
    assert (a == 0).all() and (b == 2).all()
    assert split_eval_image(combined, 4) is None
    rng = np.random.default_rng(0)
    img = rng.random((30, 40, 3))
    path = compose_views(img, [("NeRF", img * 0.9), ("E-NeRF", img)], tmp_path / "r.png", caption="fern")
    import imageio.v3 as iio

    out = iio.imread(path)
    assert out.shape[1] == 5 * 40 + 4 * 4 and out.shape[0] == 30 + 22 + 20 and out.dtype == np.uint8
    assert not math.isnan(float(out.mean()))
