"""wcnerf.plugin.cpu_allocator: the steady glibc malloc WCTrainer sets in a one-thread CPU training process.

Each check runs in a fresh interpreter: malloc's settings are process-wide and must not leak into
the test process. What the setting saves is measured by scripts/bench_runs.py (docs/results.md)."""

from __future__ import annotations

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


def _run(code: str, *args: str, env: dict | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


_ALLOCATOR = "from wcnerf.plugin.cpu_allocator import steady_cpu_allocator; print(steady_cpu_allocator())"


@glibc_only
def test_the_steady_allocator_applies_under_glibc_unless_the_user_set_malloc():
    assert _run(_ALLOCATOR) == "True"
    assert _run(_ALLOCATOR, env={"MALLOC_TRIM_THRESHOLD_": "0"}) == "False"
    assert _run(_ALLOCATOR, env={"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
    assert _run(_ALLOCATOR, env={"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) == "False"
    assert _run(_ALLOCATOR, env={"GLIBC_TUNABLES": "glibc.rtld.nns=4"}) == "True"


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
    def faults(device: str, switch: str, threads: int) -> int:
        return int(_run(_TRAINER_THEN_FAULTS, device, switch, str(tmp_path), str(threads)))

    assert faults("cpu", "auto", 1) < 1000  # the cpu protocol's setting
    assert faults("cpu", "on", 2) < 1000
    lots = 4 * 32768
    assert faults("cpu", "auto", 2) > lots  # more threads: glibc's defaults unless asked
    assert faults("cpu", "off", 1) > lots
    assert faults("cuda", "on", 1) > lots  # a CUDA run (only constructed: no GPU needed) is left alone


def test_the_trainer_config_decides_by_thread_count_by_default():
    from wcnerf.nerf.methods import e_nerf_small

    assert e_nerf_small.config.steady_cpu_allocator is None
