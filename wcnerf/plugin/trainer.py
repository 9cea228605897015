"""nerfstudio ``Trainer`` and learning-rate schedule used by the wcnerf methods.

:class:`WCTrainer` is nerfstudio's trainer with three changes (set as ``_target`` of
:class:`WCTrainerConfig`, so every wcnerf method, e.g. ``ns-train e-nerf``, uses it):

* checkpoints are written atomically (temporary file outside ``nerfstudio_models/``, fsync,
  rename) and hold only tensors and Python scalars, so ``torch.load(weights_only=True)``
  (torch >= 2.6, used by ``ns-eval``/``ns-render``/``ns-export``/``--load-dir``) reads them;
* ``--load-dir`` resumes a run up to ``max_num_iterations`` in total (nerfstudio's trainer
  would run ``max_num_iterations`` *more* steps, past the end of the learning-rate schedule);
  ``--resume-to-max-iterations False`` restores nerfstudio's behaviour;
* :class:`RunExponentialDecaySchedulerConfig` with ``max_steps=None`` decays over the run's
  ``max_num_iterations``, so ``--max-num-iterations`` alone rescales the schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from torch.optim import Optimizer, lr_scheduler

from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from wcnerf.plugin.compat import atomic_torch_save, sanitize

__all__ = ["RunExponentialDecaySchedulerConfig", "WCTrainer", "WCTrainerConfig"]


class RunExponentialDecayScheduler(ExponentialDecayScheduler):
    """Log-linear decay from ``lr_init`` to ``lr_final`` over ``max_steps`` (no warm-up by
    default), returning Python floats (nerfstudio's returns numpy scalars, which end up in
    checkpoints)."""

    config: "RunExponentialDecaySchedulerConfig"

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        cfg = self.config
        lr_final = lr_init if cfg.lr_final is None else cfg.lr_final
        max_steps = int(cfg.max_steps) if cfg.max_steps else 1
        warmup = int(cfg.warmup_steps)

        def factor(step: int) -> float:
            if step < warmup:
                frac = min(max(step / warmup, 0.0), 1.0)
                if cfg.ramp == "cosine":
                    frac = math.sin(0.5 * math.pi * frac)
                lr = cfg.lr_pre_warmup + (lr_init - cfg.lr_pre_warmup) * frac
            else:
                t = min(max((step - warmup) / max(max_steps - warmup, 1), 0.0), 1.0)
                lr = math.exp(math.log(lr_init) * (1.0 - t) + math.log(lr_final) * t)
            return float(lr / lr_init)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


@dataclass
class RunExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """Exponential decay to ``lr_final``; ``max_steps=None`` means the trainer's
    ``max_num_iterations``."""

    _target: Type = field(default_factory=lambda: RunExponentialDecayScheduler)
    max_steps: Optional[int] = None  # type: ignore[assignment]
    """Steps of the decay; None: the run's max_num_iterations."""


@dataclass
class WCTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig with wcnerf's trainer (atomic, weights_only-safe checkpoints)."""

    _target: Type = field(default_factory=lambda: WCTrainer)
    resume_to_max_iterations: bool = True
    """With --load-dir: stop at max_num_iterations in total (False: nerfstudio's behaviour, run
    max_num_iterations more steps)."""


class WCTrainer(Trainer):
    """nerfstudio's Trainer with atomic, portable checkpoints and resume-to-the-end."""

    config: WCTrainerConfig

    def setup_optimizers(self) -> Optimizers:
        optimizer_config = {}
        for group, spec in self.config.optimizers.items():
            spec = dict(spec)
            sched = spec.get("scheduler")
            if isinstance(sched, RunExponentialDecaySchedulerConfig) and not sched.max_steps:
                spec["scheduler"] = dataclasses.replace(sched, max_steps=int(self.config.max_num_iterations))
            optimizer_config[group] = spec
        return Optimizers(optimizer_config, self.pipeline.get_param_groups())

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if self._start_step > 0 and getattr(self.config, "resume_to_max_iterations", True):
            total = int(self.config.max_num_iterations)
            remaining = max(total - self._start_step, 0)
            CONSOLE.print(
                f"Resuming at step {self._start_step}: {remaining} more iteration(s) to reach "
                f"max_num_iterations={total}."
            )
            self.config.max_num_iterations = remaining
            # If nothing is left, the final save must keep the loaded step (not step 0).
            self.step = self._start_step - 1

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path: Path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline  # type: ignore
        state = {
            "step": int(step),
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": sanitize({k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()}),
            "schedulers": sanitize({k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()}),
            "scalers": sanitize(self.grad_scaler.state_dict()),
        }
        atomic_torch_save(state, ckpt_path)  # temporary file outside nerfstudio_models/
        if self.config.save_only_latest_checkpoint:
            for f in self.checkpoint_dir.glob("*.ckpt"):
                if f != ckpt_path:
                    f.unlink()
