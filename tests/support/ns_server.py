"""Command lines of nerfstudio and wcnerf run in forked children of one interpreter that
imported nerfstudio once: :func:`run` is ``subprocess.run`` for tests where the command's work
is tested, not the start of a fresh interpreter (which costs 15-20 s of imports here).

A test calls ``run([BIN / "ns-train", ...], cwd=..., env=..., timeout=...)`` as it would call
``subprocess.run(..., capture_output=True, text=True)``; it gets a ``CompletedProcess`` whose
``returncode`` is the command's exit code. The argv forms understood: a console script of this
venv (``ns-train``, ``ns-eval``, ``ns-render``, ``ns-export``, ``ns-viewer``, ``wcnerf-*``),
``python SCRIPT.py ...`` and ``python -m MODULE ...``. The child runs in ``cwd`` with exactly
``env`` and ``OMP_NUM_THREADS`` torch threads, as a fresh process would. What a fresh process
would do differently: environment variables read at import time (``PYTHONWARNINGS``) keep the
server's values, so no test here depends on them. Tests that are about the process itself
(kills, signals, servers) keep real subprocesses.

One server per test process (per xdist worker), started on first use, ended at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

_SERVER: Optional[subprocess.Popen] = None
PRELOAD = (
    "nerfstudio.configs.method_configs",
    "nerfstudio.scripts.train",
    "nerfstudio.scripts.eval",
    "wcnerf.eval.ns_eval",
    "nerfstudio.scripts.render",
    "nerfstudio.scripts.exporter",
    "wcnerf.plugin.any_method_cli",
)
"""Imported once by the server (method discovery included)."""


def _server() -> subprocess.Popen:
    global _SERVER
    if _SERVER is None or _SERVER.poll() is not None:
        _SERVER = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)  # fmt: skip
        ready = _SERVER.stdout.readline()
        assert ready.strip() == "ready", f"ns_server did not start: {ready!r}"
        atexit.register(_SERVER.kill)
    return _SERVER


def run(argv: Sequence, cwd: Optional[Path] = None, env: Optional[Mapping[str, str]] = None,
        timeout: float = 900) -> subprocess.CompletedProcess:  # fmt: skip
    """``subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)``,
    in a forked child of the server."""
    argv = [str(a) for a in argv]
    server = _server()
    with tempfile.TemporaryDirectory(prefix="ns_server_") as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": dict(os.environ if env is None else env),
                   "out": str(out), "err": str(err)}  # fmt: skip
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            server.stdout.readline()
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(errors="replace"), err.read_text(errors="replace"))
        code = int(server.stdout.readline())
        return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"), err.read_text(errors="replace"))


# ----------------------------------------------------------------------------- the server
def _entry(argv: list):
    """The callable that runs ``argv`` in this interpreter, with ``sys.argv`` set for it."""
    import runpy
    from importlib.metadata import entry_points

    name = Path(argv[0]).name
    if name.startswith("python"):
        if argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            return lambda: runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        sys.argv = argv[1:]
        sys.path.insert(0, str(Path(argv[1]).resolve().parent))
        return lambda: runpy.run_path(argv[1], run_name="__main__")
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    sys.argv = [name, *argv[1:]]
    return script.load()


def _child(request: dict) -> int:
    """Run one request (argv, cwd, env, out, err; optional ``child`` code run just before the
    command, e.g. a patch that kills the process at a chosen point) in this forked process."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    try:
        entry = _entry(request["argv"])
        if request.get("child"):
            exec(request["child"], {"Path": Path})  # noqa: S102 - test code from the test itself (ns_cases)
        result = entry()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def preload(extra: Sequence[str] = ()) -> None:
    """Import wcnerf's plugin (its nerfstudio fixes and error hook, as every ns-* command has
    them), :data:`PRELOAD` and ``extra``: once, before any fork."""
    import importlib

    import wcnerf.plugin  # noqa: F401

    for module in (*PRELOAD, *extra):
        importlib.import_module(module)


def serve() -> None:
    preload()
    sys.stdout.flush()
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing printed by the server corrupts the replies
    print("ready", file=reply, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        print(pid, file=reply, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), file=reply, flush=True)


if __name__ == "__main__":
    serve()
