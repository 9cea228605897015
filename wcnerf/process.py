"""Stopping a child process: SIGTERM, a grace period for it to clean up (a run marks itself
interrupted, a writer finishes its file), then SIGKILL."""

from __future__ import annotations

import subprocess

__all__ = ["stop_process", "GRACE_SECONDS"]

GRACE_SECONDS = 20.0
"""How long a terminated child may take to exit before it is killed."""


def stop_process(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """Terminate ``proc``, kill it if it has not exited after ``grace`` seconds, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
