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
from wcnerf.eval.ns_runner import NerfstudioRunner, extract_curves, latest_checkpoint, read_scalars
from wcnerf.report.panels import compose_views, split_eval_image
from wcnerf.eval.protocols import load_protocol


def _spec(tmp_path, method=MethodSpec("weight-norm", "nerf-small", "weight-norm"), protocol=None):
    proto = protocol or load_protocol("cpu").with_overrides(max_num_iterations=1000)
    return RunSpec(proto, SceneSpec("fern", tmp_path / "fern"), method, 3, tmp_path / "run")


def test_train_command(tmp_path):
    """ns-train trains the run's config file; that config holds what the command line held."""
    from wcnerf.eval.execution import Execution
    from wcnerf.eval.ns_runner import resume_config
    from wcnerf.eval.plan import build_config, write_configs

    runner = NerfstudioRunner(python="py")
    spec = _spec(tmp_path)
    cmd = runner.train_command(spec)
    assert cmd == ["py", "-m", "nerfstudio.scripts.train", "nerf-small", "--load-config", str(tmp_path / "run" / "config.yml")]
    config = build_config(spec, "cpu")
    assert config.pipeline.model.conditioning == "weight-norm"
    assert config.max_num_iterations == 1000 and config.machine.seed == 3 and config.vis == "tensorboard"
    assert config.load_dir is None
    # the dataparser: the scene and the protocol's factor
    dp = config.pipeline.datamanager.dataparser
    assert (type(dp).__name__, dp.data, dp.downscale_factor, dp.holdout_every, dp.max_eval_views) == (
        "LLFFDataParserConfig", tmp_path / "fern", 8, 8, 5)
    every = build_config(_spec(tmp_path, protocol=spec.protocol.with_overrides(
        pipeline__datamanager__dataparser__max_eval_views=0)), "cpu")
    assert every.pipeline.datamanager.dataparser.max_eval_views == 0  # 0: every held-out image
    write_configs([spec], "cpu")
    resumed = resume_config(spec.run_dir / "config.yml", tmp_path / "ckpts", tmp_path / "resume.yml")
    import yaml

    again = yaml.load(resumed.read_text(), Loader=yaml.Loader)
    assert again.load_dir == tmp_path / "ckpts" and again.resume_to_max_iterations is True
    assert again.max_num_iterations == 1000  # the total, not what is left
    plain = build_config(_spec(tmp_path, MethodSpec("e-nerf", "e-nerf-small")), "cpu")
    assert plain.pipeline.model.conditioning == "equilibrate" and plain.method_name == "e-nerf-small"
    env = lambda ex, stage="train": runner.__class__(execution=ex)._env(spec, stage)  # noqa: E731
    one = Execution.decide(spec.protocol, workers=2, cores=2)
    assert env(one)["OMP_NUM_THREADS"] == "1"  # the cpu protocol's threads
    assert env(one, "eval")["OMP_NUM_THREADS"] == "1"  # a core each: `threads`
    two = Execution(threads=1, eval_threads=2)
    assert env(two, "eval")["OMP_NUM_THREADS"] == env(two, "eval")["MKL_NUM_THREADS"] == "2"
    assert env(two, "train")["OMP_NUM_THREADS"] == "1"
    three = Execution(threads=1, train_threads=3)
    assert env(three, "train")["OMP_NUM_THREADS"] == env(three, "train")["MKL_NUM_THREADS"] == "3"
    assert env(three, "eval")["OMP_NUM_THREADS"] == "1"


def test_an_auto_device_is_settled_by_the_worker_that_trains_the_run(tmp_path, monkeypatch):
    """On Ray or SLURM the driver cannot know the device of the machine a run lands on: the
    config keeps `auto` and the worker writes its own device in before training."""
    from wcnerf.eval.execution import Execution
    from wcnerf.eval.ns_runner import settle_device
    from wcnerf.eval.plan import write_configs

    spec = _spec(tmp_path)
    remote = Execution.decide(spec.protocol, "ray")
    assert remote.device == "auto" and Execution.decide(spec.protocol, "local").device in ("cpu", "cuda")
    write_configs([spec], remote.device)
    config = spec.run_dir / "config.yml"
    assert "device_type: auto" in config.read_text()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this worker sees no GPU
    assert settle_device(config) == "cpu"
    text = config.read_text()
    assert "device_type: cpu" in text and "device_type: auto" not in text and "mixed_precision: true" not in text
    assert settle_device(config) is None  # settled once
    write_configs([spec], remote.device)  # planning again keeps the settled file
    assert config.read_text() == text


def test_local_threads_is_the_protocols_up_to_a_workers_share_of_the_cores():
    from wcnerf.eval.execution import local_threads

    assert local_threads(None, 1, 1, 2) is None  # the protocol sets none: `threads`
    assert local_threads(2, 1, 1, 2) == 2  # one worker on 2 cores
    assert local_threads(2, 1, 2, 2) == 1  # two workers on 2 cores: one each
    assert local_threads(4, 1, 1, 2) == 2  # never more than the cores
    assert local_threads(2, 3, 2, 2) == 3  # never fewer than `threads`
    assert local_threads(2, 1, 1, None) == 1


def test_the_execution_sets_both_stages_unless_the_command_line_fixes_them(tmp_path):
    from wcnerf.eval.execution import Execution

    proto = dataclasses.replace(_spec(tmp_path).protocol, train_threads=2, eval_threads=2, threads=1)
    cores = min(2, os.cpu_count() or 1)
    one = Execution.decide(proto, workers=1)
    assert (one.train_threads, one.eval_threads) == (cores, cores)
    assert Execution.decide(proto, workers=os.cpu_count() or 1).train_threads in (None, 1)  # a core each
    fixed = Execution.decide(proto, workers=1, threads=1)  # --threads 1: every process, as the user said
    assert (fixed.threads, fixed.train_threads, fixed.eval_threads) == (1, 1, 1)
    unset = Execution.decide(dataclasses.replace(proto, train_threads=None, eval_threads=None), workers=1)
    assert (unset.train_threads, unset.eval_threads) == (None, None)
    remote = Execution.decide(proto, "ray")  # stage threads are a local worker's share of this machine
    assert (remote.train_threads, remote.eval_threads, remote.threads) == (None, None, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        (("train_threads: 2", "train_threads: 0"), r"bad\.yaml: train_threads 0: must be >= 1"),
        (("max_eval_views: 5", "max_eval_views: -2"), r"bad\.yaml: .*max.eval.views -2: must be >= 0"),
        (("dataparser: llff", "dataparser: nerfstudio-data"),
         r"bad\.yaml: override 'pipeline\.datamanager\.dataparser\.holdout_every'.*NerfstudioDataParserConfig"),
        (("max_num_iterations: 700", "max_num_iteration: 700"), r"bad\.yaml: override 'max_num_iteration'.* no field"),
    ],
)
def test_a_protocol_with_impossible_settings_is_refused(tmp_path, change, message):
    from wcnerf.eval.plan import check_protocol
    from wcnerf.eval.protocols import ProtocolError

    text = Path(load_protocol("cpu").source).read_text()
    assert change[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(*change))
    with pytest.raises(ProtocolError, match=message):
        check_protocol(load_protocol(str(bad)))  # when the runs are planned, before any starts


def test_the_cpu_protocol_says_how_many_views_it_evaluates():
    proto = load_protocol("cpu")
    assert proto.overrides["pipeline.datamanager.dataparser.max_eval_views"] == 5
    assert "max_eval_views=5" in proto.summary()
    assert "max_eval_views" not in load_protocol("paper").summary()


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
