"""wcnerf.plugin.cpu_allocator: the steady glibc malloc WCTrainer sets in a one-thread CPU training process.

Each check runs in a process of its own (a child forked from one driver interpreter per test):
malloc's settings are process-wide and must not leak into the test process. What the setting saves is measured by scripts/bench_runs.py (docs/results.md)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("nerfstudio")

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)


_FORKING_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import wcnerf.nerf.methods  # nerfstudio and wcnerf imported once; each case runs in a forked child
    code, cases = sys.argv[1], json.loads(sys.argv[2])
    for env, args in cases:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.environ.update(env)
            sys.argv = ["-c", *args]
            os.dup2(w, 1)
            exec(code, {"__name__": "__main__"})
            sys.stdout.flush()
            os._exit(0)
        os.close(w)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        os.close(r)
        print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out.decode()]), flush=True)
    """
)


def _run_each(code: str, cases: list) -> list:
    """The last line ``code`` printed for each ``(env, args)`` case: each case in a fresh process
    as far as malloc is concerned (a child forked from one interpreter that imported wcnerf and
    nerfstudio and allocated nothing since; malloc's settings are per process), with the
    environment's malloc variables removed and ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", _FORKING_DRIVER, code, json.dumps(cases)], capture_output=True,
                          text=True, env=clean, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(cases) and all(code == 0 for code, _ in results), (results, proc.stderr[-2000:])
    return [out.strip().splitlines()[-1] for _, out in results]


_ALLOCATOR = "from wcnerf.plugin.cpu_allocator import steady_cpu_allocator; print(steady_cpu_allocator())"


@glibc_only
def test_the_steady_allocator_applies_under_glibc_unless_the_user_set_malloc():
    envs = [{}, {"MALLOC_TRIM_THRESHOLD_": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, {"GLIBC_TUNABLES": "glibc.rtld.nns=4"}]
    assert _run_each(_ALLOCATOR, [(env, []) for env in envs]) == ["True", "False", "False", "False", "True"]


# A trainer of e-nerf-small is constructed on a device; then 5 rounds of: 8 blocks of 16 MiB
# malloc'd, written and freed (a training step's temporaries, writ large), and the minor page
# faults of those rounds counted. Under glibc's defaults the 128 MiB freed at the heap's top
# exceed the trim threshold (at most 2 x 32 MiB), so each round faults all 32768 pages in again;
# the steady setting keeps them (no faults after a first, uncounted round).
_TRAINER_THEN_FAULTS = textwrap.dedent(
    """
    import copy, ctypes, resource, sys, torch
    from pathlib import Path
    from wcnerf.nerf.methods import e_nerf_small
    torch.set_num_threads(int(sys.argv[4]))
    cfg = copy.deepcopy(e_nerf_small.config)
    cfg.machine.device_type = sys.argv[1]
    cfg.steady_cpu_allocator = {"auto": None, "on": True, "off": False}[sys.argv[2]]
    cfg.output_dir = Path(sys.argv[3])
    cfg.setup(local_rank=0, world_size=1)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def round_(size=16 * 2**20):
        blocks = [libc.malloc(size) for _ in range(8)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks:
            libc.free(b)
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@glibc_only
def test_a_one_thread_cpu_trainer_steadies_malloc_and_the_switch_decides_otherwise(tmp_path):
    cases = [("cpu", "auto", 1), ("cpu", "on", 2), ("cpu", "auto", 2), ("cpu", "off", 1), ("cuda", "on", 1)]
    faults = dict(zip(cases, map(int, _run_each(_TRAINER_THEN_FAULTS, [
        ({}, [device, switch, str(tmp_path / f"{device}-{switch}-{threads}"), str(threads)])
        for device, switch, threads in cases]))))  # fmt: skip

    assert faults["cpu", "auto", 1] < 1000  # the cpu protocol's setting
    assert faults["cpu", "on", 2] < 1000
    lots = 4 * 32768
    assert faults["cpu", "auto", 2] > lots  # more threads: glibc's defaults unless asked
    assert faults["cpu", "off", 1] > lots
    assert faults["cuda", "on", 1] > lots  # a CUDA run (only constructed: no GPU needed) is left alone


def test_the_trainer_config_decides_by_thread_count_by_default():
    from wcnerf.nerf.methods import e_nerf_small

    assert e_nerf_small.config.steady_cpu_allocator is None
