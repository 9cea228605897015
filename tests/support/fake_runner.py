"""Fake runners of the comparison harness (no training): deterministic metrics, curves and a
held-out view; optionally slow (a sleep per step, a checkpoint per step, so that a run can be
interrupted and resumed) and logging every call to a file shared by processes. A plain module,
not a test module, so that worker processes (multiprocessing, Ray, submitit) can import it."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Optional

import numpy as np

from wcnerf.eval.runs import RunFailed, RunResult


class FakeRunner:
    """Deterministic metrics; raises for the keys in ``fail``; writes curves and a held-out view.

    ``steps`` / ``step_seconds``: the run "trains" that many steps, sleeping between them,
    keeping ``fake_ckpt.json`` (the last step) and resuming from it; ``log``: a file each call
    appends ``start`` and ``end`` lines to (JSON, one per line; O_APPEND, safe across
    processes); ``kill_once``: keys whose first attempt SIGKILLs its own process at step
    ``kill_at`` (a marker file in the run folder makes it once)."""

    def __init__(self, fail=(), interrupt=(), figures=True, steps: int = 0, step_seconds: float = 0.0,
                 log: Optional[Path] = None, kill_once=(), kill_at: int = 2):
        self.calls = []
        self.fail = set(fail)
        self.interrupt = set(interrupt)
        self.figures = figures
        self.steps = steps
        self.step_seconds = step_seconds
        self.log = Path(log) if log else None
        self.kill_once = set(tuple(k) for k in kill_once)
        self.kill_at = kill_at
        self.threads = None

    def _log(self, event: str, spec, **extra) -> None:
        if self.log is None:
            return
        line = json.dumps({"event": event, "key": list(spec.key), "pid": os.getpid(), "host": socket.gethostname(),
                           "t": time.time(), **extra}) + "\n"
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def __call__(self, spec):
        self.calls.append(spec.key)
        ckpt = spec.run_dir / "fake_ckpt.json"
        start = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else 0
        self._log("start", spec, resumed_from=start)
        total = max(self.steps, 1)
        for step in range(start, self.steps):
            if spec.key in self.kill_once and step == self.kill_at and not (spec.run_dir / "killed-once").exists():
                (spec.run_dir / "killed-once").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.step_seconds)
            ckpt.write_text(json.dumps({"step": step + 1}))
            spec.report("train", step + 1, total)
        spec.report("train", 5, spec.iterations)
        if spec.key in self.interrupt:
            raise KeyboardInterrupt
        if spec.key in self.fail:
            self._log("failed", spec)
            raise RunFailed("train failed (exit code 1)", "Traceback (most recent call last):\nRuntimeError: fake boom")
        bonus = 1.0 if spec.method.label == "e-nerf" else 0.0
        psnr = 20.0 + bonus + 0.1 * spec.seed + (5.0 if spec.scene.label == "flower" else 0.0)
        if self.figures:
            steps = list(range(0, spec.iterations, 2))
            (spec.run_dir / "curves.json").write_text(
                json.dumps(
                    {
                        "train": {"step": steps, "psnr": [10 + s + bonus for s in steps]},
                        "heldout": {"step": steps, "psnr": [9 + s + bonus for s in steps], "source": "fake"},
                    }
                )
            )
            import imageio.v3 as iio

            rng = np.random.default_rng(spec.seed)
            gt = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
            noise = rng.integers(-20, 20, gt.shape) if spec.method.label == "nerf" else rng.integers(-5, 5, gt.shape)
            (spec.run_dir / "heldout").mkdir(exist_ok=True)
            iio.imwrite(spec.run_dir / "heldout" / "gt_0000.png", gt)
            iio.imwrite(spec.run_dir / "heldout" / "pred_0000.png", np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8))
        self._log("end", spec)
        return RunResult(psnr=psnr, ssim=0.5 + bonus / 10, lpips=None, iterations=spec.iterations, sec_per_iter=0.01,
                         extra={"resumed_from": start, "pid": os.getpid()})


def read_log(path: Path) -> list:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def claim_folders(folders, log, hold: float = 0.05, stale_after: float = 5.0) -> int:
    """Race for ``folders`` through their leases: claim each unfinished one, "work" ``hold``
    seconds, mark it done, release; log every claim. Returns how many it claimed."""
    from wcnerf.lease import Lease

    n = 0
    for folder in folders:
        folder = Path(folder)
        lease = Lease(folder, stale_after=stale_after)
        if not lease.try_acquire():
            continue
        try:
            if (folder / "done").exists():
                continue
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{folder.name} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
            time.sleep(hold)
            (folder / "done").write_text("x")
            n += 1
        finally:
            lease.release()
    return n
