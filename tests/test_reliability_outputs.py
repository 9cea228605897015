"""Issue 15, point 5: outputs that cannot be written give a clear error naming the path and
the cause, at start-up where it can be known then, and never leave a half-written checkpoint
that the next run would load."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from wcnerf.atomic import WriteError, atomic_path
from wcnerf.shape.cli import main as shape_fit

FAST = ["--field.conditioning", "none", "--field.width", "32", "--optim.steps", "30", "--optim.batch-size", "512",
        "--sampling.n-near", "4000", "--sampling.n-uniform", "2000", "--sampling.n-eval", "4000",
        "--evaluation.resolution", "24", "--evaluation.surface-points", "4000", "--evaluation.every", "10",
        "--evaluation.curve-points", "2000", "--ckpt-every", "10", "--no-progress", "--threads", "1"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (as root, permissions alone do not stop writes); skipped if mount fails."""
    ro = tmp_path / "ro"
    ro.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {res.stderr.decode().strip()}")
    yield ro
    subprocess.run(["umount", str(ro)], check=False)


def _run(args, capsys):
    code = shape_fit(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_read_only_output_refused_at_start(small_mesh, read_only_dir, capsys):
    code, text = _run([str(small_mesh), "--output-dir", str(read_only_dir / "out"), *FAST], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"error: {read_only_dir / 'out'}" in text and "Read-only file system" in text, text


def test_output_under_a_file_refused_at_start(small_mesh, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    code, text = _run([str(small_mesh), "--output-dir", str(tmp_path / "plain" / "out"), *FAST], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"error: {tmp_path / 'plain'}: is a file" in text, text


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(small_mesh, tmp_path, capsys, monkeypatch):
    """The second checkpoint write fails as torch fails on a full disk ('unexpected pos'); the
    message names the checkpoint and the free space, the first checkpoint survives intact, no
    temporary file is left, and the rerun resumes from it and ends at the same step."""
    import shutil

    real_save = torch.save
    calls = []

    def failing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2 and str(f).endswith(".pt"):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # a partial zip, as a full disk leaves it
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 161216 vs 161104")
        return real_save(obj, f, *a, **k)

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    out = tmp_path / "out"
    code, text = _run([str(small_mesh), "--output-dir", str(out), *FAST], capsys)
    assert code == 2 and "Traceback" not in text, text
    (run,) = (out / "blob").glob("none-*")
    assert f"error: {run / 'checkpoint.pt'}: cannot write (no space left on the device" in text, text
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    code, text = _run([str(small_mesh), "--output-dir", str(out), *FAST], capsys)
    assert code == 0, text
    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["step"] == 30
    assert (run / "metrics.json").is_file() and (run / "curves.png").is_file()


def test_atomic_write_error_names_the_target(tmp_path):
    target = tmp_path / "table.md"
    target.write_text("old")
    with pytest.raises(WriteError, match=f"^{target}: cannot write"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_ns_train_output_on_read_only_disk_refused(read_only_dir):
    """The trainer's pre-flight check (no nerfstudio run needed: the check itself)."""
    pytest.importorskip("nerfstudio")
    import copy

    from wcnerf.nerf.methods import nerf_small

    cfg = copy.deepcopy(nerf_small.config)
    cfg.output_dir = read_only_dir / "outputs"
    cfg.set_timestamp()
    with pytest.raises(WriteError, match="Read-only file system"):
        cfg.preflight()


def test_a_finished_run_missing_an_output_is_completed_again(small_mesh, tmp_path, capsys):
    """Issue 15, point 4: a run counts as finished only when all its outputs exist."""
    args = [str(small_mesh), "--output-dir", str(tmp_path / "out"), *FAST]
    assert _run(args, capsys)[0] == 0
    (run,) = (tmp_path / "out" / "blob").glob("none-*")
    before = json.loads((run / "metrics.json").read_text())
    (run / "curves.png").unlink()
    (run / "mesh.ply").unlink()
    assert _run(args, capsys)[0] == 0
    assert (run / "curves.png").is_file() and (run / "mesh.ply").is_file()
    after = json.loads((run / "metrics.json").read_text())
    assert after["steps"] == before["steps"] == 30 and after["iou_points"] == before["iou_points"]
