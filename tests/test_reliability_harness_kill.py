"""Issue 15, point 4: killing the comparison harness (SIGKILL, no chance to clean up) also stops
its ns-train / ns-eval child: the runner starts children with PR_SET_PDEATHSIG, so no orphan
trains on. The child here is a stand-in that sleeps; the code path that starts it is the real
one (NerfstudioRunner._call). That the rerun only redoes what was cut is tested in
test_compare_harness.py (fake runners killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import sys, types
from pathlib import Path
from wcnerf.eval.execution import Execution
from wcnerf.eval.ns_runner import NerfstudioRunner
spec = types.SimpleNamespace(protocol=types.SimpleNamespace(timeout_minutes=None, threads=1),
                             report=lambda *a, **k: None)
child = "import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); time.sleep(600)"
NerfstudioRunner(poll_seconds=0.2, execution=Execution(threads=1))._call(spec, [sys.executable, "-c", child], "train",
                                         Path({log!r}), Path({err!r}), None)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie waiting for its reaper has stopped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_the_harness_stops_its_child(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = PARENT.format(pidfile=str(pidfile), log=str(tmp_path / "log.txt"), err=str(tmp_path / "err.txt"))
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.is_file() and pidfile.read_text()):
            assert parent.poll() is None, "the harness stand-in ended early"
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        child = int(pidfile.read_text())
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the child of a killed harness is still running (orphan)"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pidfile.is_file() and pidfile.read_text() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
