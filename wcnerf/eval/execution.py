"""How a sweep's runs are executed, decided once: :class:`Execution`.

The device, the torch threads of training and of evaluation, the number of workers and the
CPU allocator of the trainer are decided here from the command line and the protocol, and
nowhere else: the executors start workers with :meth:`Execution.env`, the runner gives
``ns-train`` and ``ns-eval`` their stage's threads, the planner writes the device and the
allocator into each run's ``config.yml``, and each run's ``status.json`` keeps
:meth:`Execution.record`.

The thread rule (measured: docs/results.md, "Training threads and the cost of a run"): every
process uses the protocol's ``threads`` (1 on a shared CPU), except that a local worker with
cores to itself trains with up to the protocol's ``train_threads`` and evaluates with up to its
``eval_threads`` (its share of the cores, never fewer than ``threads``); ``--threads N`` fixes
every process at N.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

__all__ = ["Execution", "local_threads", "visible_gpus", "resolve_device"]

EXECUTORS = ("local", "ray", "slurm")


def visible_gpus() -> List[str]:
    """The CUDA devices this process may use (ids as CUDA_VISIBLE_DEVICES lists them)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001
        return []


def resolve_device(device: str, executor: str = "local") -> str:
    """``auto``: cuda when this machine sees a GPU, else cpu. On Ray or SLURM the runs train
    on other machines: ``auto`` stays, and the worker that trains a run decides there
    (:func:`wcnerf.eval.ns_runner.settle_device`)."""
    if device != "auto" or executor != "local":
        return device
    return "cuda" if visible_gpus() else "cpu"


def local_threads(stage_threads: Optional[int], threads: Optional[int], workers: int,
                  cores: Optional[int]) -> Optional[int]:
    """Threads of one stage (the protocol's ``train_threads`` or ``eval_threads``) in each of
    ``workers`` local CPU workers: capped at the worker's share of the cores, never below
    ``threads``; None (``threads``) when the protocol sets none."""
    if not stage_threads:
        return None
    share = max(1, (cores or 1) // max(1, workers))
    return max(threads or 1, min(stage_threads, share))


@dataclass(frozen=True)
class Execution:
    """The execution policy of one sweep (see the module docstring)."""

    device: str = "cpu"
    """cpu, cuda or mps, written into every run's config; auto (Ray, SLURM): decided by the
    worker that trains the run."""
    threads: Optional[int] = None
    """OMP/MKL threads of each worker process, and of ns-train / ns-eval where no stage value
    applies (None: torch's default)."""
    train_threads: Optional[int] = None
    eval_threads: Optional[int] = None
    executor: str = "local"
    workers: Optional[int] = None
    """Workers at once (None: the engine's default, Ray's one per GPU or per CPUs)."""
    allocator: Optional[bool] = None
    """The trainer's ``steady_cpu_allocator`` (None: its own rule, on for one training thread)."""

    @classmethod
    def decide(cls, protocol: Any, executor: str = "local", workers: Optional[int] = None,
               threads: Optional[int] = None, device: Optional[str] = None,
               allocator: Optional[bool] = None, cores: Optional[int] = None) -> "Execution":
        """The policy for ``protocol`` on ``executor`` with ``workers`` (None: one per visible
        GPU for local, else 1 locally and on SLURM; Ray decides its own); ``threads`` is the
        command line's ``--threads``, ``device`` its ``--device``."""
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
        if workers is None and executor != "ray":
            workers = max(1, len(visible_gpus())) if executor == "local" else 1
        base = threads or protocol.threads
        train = eval_ = None
        if threads:
            train = eval_ = threads
        elif executor == "local":
            cores = cores if cores is not None else os.cpu_count()
            train = local_threads(protocol.train_threads, base, workers or 1, cores)
            eval_ = local_threads(protocol.eval_threads, base, workers or 1, cores)
        return cls(device=resolve_device(device or protocol.device, executor), threads=base, train_threads=train,
                   eval_threads=eval_, executor=executor, workers=workers, allocator=allocator)

    def stage_threads(self, stage: str) -> Optional[int]:
        """Threads of ``stage`` (``train``, ``eval`` or ``worker``)."""
        return {"train": self.train_threads, "eval": self.eval_threads}.get(stage) or self.threads

    def env(self, stage: str = "worker") -> Dict[str, str]:
        """The environment variables that give ``stage`` its threads."""
        n = self.stage_threads(stage)
        return {k: str(n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if n else {}

    def record(self) -> Dict[str, Any]:
        return asdict(self)
