#!/usr/bin/env python
"""Count the subnormal float32 values every aten op produces in a few training steps of a run.

x86 arithmetic on subnormal floats (below 1.2e-38) is many times slower than on normal ones, so
a field whose values drift there slows down; this answers whether a run's step does. It loads a
finished nerfstudio run (its ``config.yml`` and latest checkpoint, optimizer state included),
runs ``--steps`` training steps (forward, backward, optimizer step) under a
``TorchDispatchMode`` and prints the count per op (uninitialised ``empty`` buffers and views of
them also count: they are never read). One torch thread.

    python scripts/count_subnormals.py outputs/fern/e-nerf-small/<run>/config.yml [more configs]
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

TINY = torch.finfo(torch.float32).tiny


class CountSubnormals(TorchDispatchMode):
    """Per aten op: how many float32 values its outputs held, and how many were subnormal."""

    def __init__(self) -> None:
        super().__init__()
        self.subnormal: collections.Counter = collections.Counter()
        self.values: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel():
                self.values[str(func)] += t.numel()
                n = int(((t != 0) & (t.abs() < TINY)).sum())
                if n:
                    self.subnormal[str(func)] += n
        return out


def count(config: Path, steps: int) -> CountSubnormals:
    from nerfstudio.engine.optimizers import Optimizers
    from nerfstudio.utils.eval_utils import eval_setup

    cfg, pipeline, ckpt, step = eval_setup(config, test_mode="val")
    optimizers = Optimizers(cfg.optimizers, pipeline.get_param_groups())
    optimizers.load_optimizers(torch.load(ckpt, map_location="cpu", weights_only=True)["optimizers"])
    pipeline.train()
    counter = CountSubnormals()
    with counter:
        for k in range(steps):
            optimizers.zero_grad_all()
            _, loss_dict, _ = pipeline.get_train_loss_dict(step + k)
            sum(loss_dict.values()).backward()
            optimizers.optimizer_step_all()
    return counter


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--steps=")]
    steps = int(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--steps=")), 3))
    if not args:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    for config in map(Path, args):
        if not config.is_file():
            raise SystemExit(f"{config}: not found; give a run's config.yml")
        c = count(config, steps)
        print(f"{config}: {sum(c.subnormal.values())} subnormal values of {sum(c.values.values())} in {steps} steps "
              f"({len(c.values)} ops)")  # fmt: skip
        for op, n in c.subnormal.most_common(8):
            print(f"  {n:>10d}  {op}")


if __name__ == "__main__":
    main()
