"""nerfstudio ``Trainer`` and learning-rate schedule used by the wcnerf methods.

:class:`WCTrainer` is nerfstudio's trainer with these changes (set as ``_target`` of
:class:`WCTrainerConfig`, so every wcnerf method, e.g. ``ns-train e-nerf``, uses it):

* checkpoints are written atomically (temporary file outside ``nerfstudio_models/``, fsync,
  rename) and hold only tensors and Python scalars, so ``torch.load(weights_only=True)``
  (torch >= 2.6, used by ``ns-eval``/``ns-render``/``ns-export``/``--load-dir``) reads them;
* ``--load-dir`` resumes a run up to ``max_num_iterations`` in total (nerfstudio's trainer
  would run ``max_num_iterations`` *more* steps, past the end of the learning-rate schedule);
  ``--resume-to-max-iterations False`` restores nerfstudio's behaviour;
* :class:`RunExponentialDecaySchedulerConfig` with ``max_steps=None`` decays over the run's
  ``max_num_iterations``, so ``--max-num-iterations`` alone rescales the schedule;
* on the CPU at one torch thread, a steady glibc malloc (:mod:`wcnerf.plugin.cpu_allocator`:
  each step's temporaries reuse heap memory instead of faulting in fresh pages);
* a pre-flight check before the config is printed and ``config.yml`` written
  (:meth:`WCTrainerConfig.preflight`): the LLFF scene (:func:`wcnerf.data.llff_scene.load_llff_scene`
  with its geometry and split checks), the output folder (writable, not under a file) and
  ``--load-dir`` (a ``nerfstudio_models/`` folder holding a readable ``step-*.ckpt``). Mistakes
  raise :class:`wcnerf.data.llff_scene.LLFFDataError`, :class:`wcnerf.plugin.compat.RunInputError` or
  :class:`wcnerf.atomic.WriteError` (the output folder),
  which :mod:`wcnerf.plugin.compat` prints as one line with exit code 2. Rerunning the resume
  command of a finished run says so and exits 0. After a resume the progress line counts
  toward the run's real total.
* once set up, a run on the ``llff`` dataparser writes its spiral camera path to
  ``<run>/camera_paths/spiral.json`` (:func:`wcnerf.data.spiral.write_run_spiral`);
* after the pre-flight check, a method family's one-line notice about the run, if it registered
  one for the method in :data:`START_NOTICES` (the nerf family: ``e-nerf`` / ``nerf``, the
  paper's GPU protocol, trained on a CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Type

import torch

from torch.optim import Optimizer, lr_scheduler

from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from wcnerf.atomic import ensure_writable_dir
from wcnerf.plugin.compat import RunInputError, atomic_torch_save, first_missing, sanitize
from wcnerf.plugin.cpu_allocator import steady_cpu_allocator

__all__ = ["START_NOTICES", "RunExponentialDecaySchedulerConfig", "WCTrainer", "WCTrainerConfig", "checkpoints_in",
           "read_checkpoint"]

_CKPT = re.compile(r"^step-(\d+)\.ckpt$")

START_NOTICES: Dict[str, Callable[["WCTrainerConfig"], Optional[str]]] = {}
"""Method name -> a function of the run's config that gives one line to print before the config
dump (after the pre-flight check), or None. Filled by the method families (the plugin imports
none of them)."""


def checkpoints_in(load_dir: Path) -> List[Path]:
    """The ``step-<N>.ckpt`` files of a ``nerfstudio_models/`` folder, by step (other files are
    ignored, with a warning). Raises :class:`RunInputError` saying what ``--load-dir`` expects."""
    load_dir = Path(load_dir)
    expect = "--load-dir takes the nerfstudio_models/ folder of a run (it holds step-NNNNNNNNN.ckpt files)"
    if not load_dir.exists():
        raise RunInputError(f"{load_dir}: not found; {expect}")
    if not load_dir.is_dir():
        hint = " (for one checkpoint file use --load-checkpoint)" if load_dir.suffix == ".ckpt" else ""
        raise RunInputError(f"{load_dir}: is a file, not a folder; {expect}{hint}")
    names = sorted(os.listdir(load_dir))
    ckpts = sorted((load_dir / n for n in names if _CKPT.match(n)), key=lambda p: int(_CKPT.match(p.name).group(1)))
    if not ckpts:
        if (load_dir / "nerfstudio_models").is_dir():
            raise RunInputError(f"{load_dir}: is a run folder; --load-dir takes its checkpoint folder: "
                                f"--load-dir {load_dir / 'nerfstudio_models'}")
        what = "is empty" if not names else f"holds no step-NNNNNNNNN.ckpt (only {', '.join(names[:3])})"
        raise RunInputError(f"{load_dir}: {what}; {expect} (a run stopped before its first save has none: "
                            "train it from scratch)")
    stray = [n for n in names if not _CKPT.match(n)]
    if stray:
        CONSOLE.print(f"[bold yellow]Warning: {load_dir}: ignoring {len(stray)} file(s) that are not checkpoints "
                      f"({', '.join(stray[:3])})", soft_wrap=True, highlight=False)
    return ckpts


def read_checkpoint(path: Path) -> dict:
    """``torch.load`` of a nerfstudio checkpoint, or :class:`RunInputError` saying why it is unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged file is the input's problem, whatever torch raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunInputError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {first}); it is "
                            "truncated or damaged: resume from an earlier step-*.ckpt of its folder with --load-step, "
                            "if there is one, or train from scratch") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "pipeline" not in state:
        raise RunInputError(f"{path}: is not a nerfstudio checkpoint (expected a dict with 'step' and 'pipeline')")
    return state


def _check_fits(pipeline, saved: dict, path: Path) -> None:
    """Refuse a checkpoint whose tensors do not match the pipeline's by name and shape
    (nerfstudio's ``load_state_dict`` would fall back to a non-strict load and train on)."""
    pipeline = pipeline.module if hasattr(pipeline, "module") else pipeline
    mine = {k: tuple(v.shape) for k, v in pipeline.state_dict().items() if hasattr(v, "shape")}
    theirs = {(k[len("module."):] if k.startswith("module.") else k): tuple(v.shape)
              for k, v in saved.items() if hasattr(v, "shape")}
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    shape = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of this model missing, e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unknown, e.g. {extra[0]}")
        if shape:
            parts.append(f"{len(shape)} of another shape, e.g. {shape[0]} {theirs[shape[0]]} vs {mine[shape[0]]}")
        raise RunInputError(f"{path}: does not fit this method's model ({'; '.join(parts)}); it was written by another "
                            "method or other model settings: resume with those (see its run's config.yml)")


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
    steady_cpu_allocator: Optional[bool] = None
    """On the CPU under glibc: fix malloc's mmap threshold and switch heap trimming off, so each
    step's temporaries reuse heap memory instead of faulting in fresh pages (see
    wcnerf.plugin.cpu_allocator; a MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ you set wins).
    None: when training on one torch thread (where it was measured to help); True: at any
    thread count; False: glibc's defaults."""

    def print_to_terminal(self) -> None:
        # ns-train's main() calls this right before save_config(): the one hook before anything
        # is printed or written, so a refused run leaves no config dump and no run folder.
        self.preflight()
        super().print_to_terminal()

    def preflight(self) -> None:
        """Check the scene, the output folder and --load-dir before training (see module doc);
        exits 0 with a message when --load-dir holds a finished run."""
        from wcnerf.bounds import OptionError
        from wcnerf.data.llff import LLFFDataParserConfig, record_scene
        from wcnerf.plugin.any_method import check_device
        from wcnerf.plugin.conditioned import ConditionedModelConfig, check_conditioner, check_conditioning_options
        from wcnerf.plugin.option_bounds import NS_TRAIN_BOUNDS

        try:  # every number first (max_num_iterations 0 would save no checkpoint and end in KeyError: 'step')
            NS_TRAIN_BOUNDS.check(self, warn=lambda line: CONSOLE.print(f"Warning: {line}", style="bold yellow",
                                                                         soft_wrap=True, highlight=False, markup=False))
        except OptionError as exc:
            raise RunInputError(str(exc)) from None
        model = self.pipeline.model
        if isinstance(model, ConditionedModelConfig):
            try:
                check_conditioner(model.conditioning)
            except ValueError as exc:
                raise RunInputError(f"--pipeline.model.conditioning: {exc}") from None
            check_conditioning_options(model)  # (its numbers, cpu_eval_num_rays_per_chunk too, are in the bounds)
        check_device(self)  # a CUDA run on a machine without it
        dm = self.pipeline.datamanager
        parser_cfg = getattr(dm, "dataparser", None)
        if isinstance(parser_cfg, LLFFDataParserConfig):
            data = getattr(dm, "data", None) or parser_cfg.data
            parser_cfg = dataclasses.replace(parser_cfg, data=Path(data))
            parser_cfg.setup().load_scene()
        record_scene(self)  # config.yml: absolute scene and output paths, the llff fingerprint
        if self.load_dir is not None:
            from wcnerf.atomic import remove_stale_temporaries

            # a run killed while writing a checkpoint leaves its temporary file beside nerfstudio_models/
            remove_stale_temporaries(Path(self.load_dir).parent)
            ckpts = checkpoints_in(self.load_dir)
            wanted = ckpts[-1]
            if self.load_step is not None:
                wanted = self.load_dir / f"step-{self.load_step:09d}.ckpt"
                if wanted not in ckpts:
                    have = ", ".join(str(int(_CKPT.match(p.name).group(1))) for p in ckpts)
                    raise RunInputError(f"{wanted}: no such checkpoint; --load-step can be one of {have}")
            step = read_checkpoint(wanted)["step"]
            if self.resume_to_max_iterations and step + 1 >= self.max_num_iterations:
                CONSOLE.print(f"{self.load_dir}: the run is finished (its last checkpoint is step {step} and "
                              f"max_num_iterations is {self.max_num_iterations}); nothing to train. Raise "
                              "--max-num-iterations to train it further.", soft_wrap=True, highlight=False)
                sys.exit(0)
        elif self.load_checkpoint is not None:
            if not Path(self.load_checkpoint).is_file():
                raise RunInputError(f"{self.load_checkpoint}: not a file; --load-checkpoint takes one step-*.ckpt file")
            read_checkpoint(self.load_checkpoint)
        first_missing(self.get_base_dir())  # a refusal after this removes every folder the run made
        ensure_writable_dir(self.get_base_dir(), "--output-dir", what="run folder")
        notice = START_NOTICES.get(self.method_name)
        line = notice(self) if notice else None
        if line:
            CONSOLE.print(line, soft_wrap=True, highlight=False)


class WCTrainer(Trainer):
    """nerfstudio's Trainer with atomic, portable checkpoints, resume-to-the-end and a steady CPU malloc."""

    config: WCTrainerConfig

    def __init__(self, config: WCTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        steady = config.steady_cpu_allocator
        if steady is None:
            steady = torch.get_num_threads() == 1
        if steady and str(config.machine.device_type).startswith("cpu"):
            steady_cpu_allocator()  # before the pipeline allocates anything
        super().__init__(config, local_rank=local_rank, world_size=world_size)

    def setup_optimizers(self) -> Optimizers:
        optimizer_config = {}
        for group, spec in self.config.optimizers.items():
            spec = dict(spec)
            sched = spec.get("scheduler")
            if isinstance(sched, RunExponentialDecaySchedulerConfig) and not sched.max_steps:
                spec["scheduler"] = dataclasses.replace(sched, max_steps=int(self.config.max_num_iterations))
            optimizer_config[group] = spec
        return Optimizers(optimizer_config, self.pipeline.get_param_groups())

    def setup(self, test_mode="val") -> None:
        super().setup(test_mode=test_mode)
        from wcnerf.data.spiral import write_run_spiral

        write_run_spiral(self)  # an llff run's <run>/camera_paths/spiral.json, for ns-render camera-path
        if self._start_step > 0 and getattr(self.config, "resume_to_max_iterations", True):
            # The progress line and its ETA count toward the run's real total, not the remainder.
            from nerfstudio.utils import writer

            writer.GLOBAL_BUFFER["max_iter"] = self._total_iterations

    def _load_checkpoint(self) -> None:
        """nerfstudio's loader with its mistakes explained (:class:`RunInputError`): only
        ``step-<N>.ckpt`` files count, a damaged one or one of another model is named."""
        cfg = self.config
        self._total_iterations = int(cfg.max_num_iterations)
        if cfg.load_dir is not None:
            ckpts = checkpoints_in(cfg.load_dir)
            load_path = ckpts[-1] if cfg.load_step is None else cfg.load_dir / f"step-{cfg.load_step:09d}.ckpt"
            if not load_path.is_file():
                raise RunInputError(f"{load_path}: no such checkpoint in {cfg.load_dir}")
        elif cfg.load_checkpoint is not None:
            load_path = Path(cfg.load_checkpoint)
        else:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        loaded = read_checkpoint(load_path)
        _check_fits(self.pipeline, loaded["pipeline"], load_path)
        try:
            self.pipeline.load_pipeline(loaded["pipeline"], loaded["step"])
            self.optimizers.load_optimizers(loaded["optimizers"])
            if "schedulers" in loaded and cfg.load_scheduler:
                self.optimizers.load_schedulers(loaded["schedulers"])
            self.grad_scaler.load_state_dict(loaded["scalers"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RunInputError(
                f"{load_path}: does not fit this method's model and optimizers ({type(exc).__name__}: {first[:300]}); "
                "resume with the method and model settings that wrote it (its run's config.yml)"
            ) from None
        self._start_step = loaded["step"] + 1
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {load_path}")
        if self._start_step > 0 and getattr(cfg, "resume_to_max_iterations", True):
            total = int(cfg.max_num_iterations)
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
