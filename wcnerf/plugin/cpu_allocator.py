"""A steady glibc malloc for CPU training: each step's temporaries reuse heap memory.

Why: PyTorch's CPU tensors are plain ``malloc`` memory (there is no caching allocator as on
CUDA). glibc serves a block above ``M_MMAP_THRESHOLD`` with a fresh ``mmap``, whose pages fault
in (kernel time) on first touch and are unmapped again when the tensor is freed. The threshold
starts at 128 KiB and rises, up to 32 MiB on 64-bit, whenever the process frees such a block;
the heap is trimmed whenever twice the threshold is free at its top. Where the two settle
depends on the order of the process' allocations, so identical training steps cost different
amounts in different processes: in real ``ns-train`` runs of ``e-nerf-small`` / ``nerf-small``
the conditioned run, which allocates a few more small tensors per step, took 2.3 times the
minor page faults and 1.9 times the system time of the plain one (docs/results.md, "The
whole-step gap in real runs").

What: :func:`steady_cpu_allocator` fixes the threshold at glibc's maximum and switches trimming
off (``mallopt``, what the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment
variables do at start-up), so the step's multi-megabyte temporaries come from the heap and are
reused. Cost: a process keeps the memory of its peak, which a training process reaches every
step anyway. :class:`wcnerf.plugin.trainer.WCTrainer` applies it to every wcnerf method trained
on the CPU on one torch thread (the ``cpu`` protocol's setting, where it was measured; at two
threads three pairs of runs were inconclusive, so there it is opt-in: ``--steady-cpu-allocator
True``); ``--steady-cpu-allocator False`` keeps glibc's defaults, and so does either ``MALLOC_``
variable or a ``glibc.malloc`` tunable set by the user (their setting wins). Other platforms
and C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "USER_VARIABLES", "steady_cpu_allocator"]

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""glibc's largest allowed mmap threshold on 64-bit (``HEAP_MAX_SIZE / 2``)."""
TRIM_THRESHOLD = 2**31 - 1
"""Free memory kept at the heap's top before trimming: in effect, never trim."""
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""Set by the user (or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``): their settings are kept."""


def steady_cpu_allocator() -> bool:
    """Fix glibc's mmap threshold and switch heap trimming off in this process (see the
    module docstring). Returns whether it was applied: False without glibc's ``mallopt`` or
    when the user set malloc's thresholds."""
    user_set = any(v in os.environ for v in USER_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or user_set:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl's mallopt ignores these parameters
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
