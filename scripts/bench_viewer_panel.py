#!/usr/bin/env python
"""What the viewer's "Weight conditioning" panel costs a training step of E-NeRF.

Times full training steps (the model's BEFORE callbacks, forward, loss, backward, Adam step,
AFTER callbacks) of the ``e-nerf-small`` network on random rays, side by side in one run:

* ``bare``: only the conditioning's post-step callback: a model with no panel at all;
* ``off``: the model's own callbacks with the panel's analysis switched off (what every step
  of a run costs when nobody switches the analysis on);
* ``on``: the analysis on at every step (hooks, second moments, eigenvalues), for scale;
  a real run analyses every N steps, so its cost is spread over N steps.

Rounds run ``bare off on`` in rotating order; each ratio is the median over rounds of the
variant's time over ``bare``'s in the same round, so a machine that gets busier affects both.

    python scripts/bench_viewer_panel.py [--rounds 30] [--rays 512] [--threads 1]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import tyro


@dataclass
class Args:
    rounds: int = 30
    steps_per_round: int = 3
    rays: int = 512
    threads: int = 1
    """torch CPU threads (1 is the least noisy on a shared machine)."""


def main(args: Args) -> None:
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
    from nerfstudio.utils import writer

    from wcnerf.nerf.methods import SMALL
    from wcnerf.nerf.model import ENeRFModelConfig
    from wcnerf.plugin.conditioned import ConditioningCallback

    torch.set_num_threads(args.threads)
    writer.put_scalar = lambda name, scalar, step: None  # keep the analysis' logging out of the timing
    torch.manual_seed(0)
    cfg = ENeRFModelConfig(conditioning="equilibrate", **{**SMALL.model_options(), "analysis_every": 0})
    meta = {"llff": {"ndc": True, "near": 1.0, "far": 1.0, "focal": 407.0, "width": 504, "height": 378}}
    model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata=meta)
    model.train()
    opts = Optimizers({"fields": {"optimizer": AdamOptimizerConfig(lr=1e-4), "scheduler": None}},
                      model.get_param_groups())
    callbacks = model.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=opts, grad_scaler=None, pipeline=None, trainer=None))
    bare = [ConditioningCallback(model, opts)]  # the conditioning's post_step only, no analysis
    panel = model.conditioning_panel

    g = torch.Generator().manual_seed(0)
    n = args.rays
    dirs = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -1.0])
    bundle = RayBundle(origins=torch.randn(n, 3, generator=g) * 0.1, directions=dirs / dirs.norm(dim=-1, keepdim=True),
                       pixel_area=torch.ones(n, 1), camera_indices=torch.zeros(n, 1, dtype=torch.long))
    batch = {"image": torch.rand(n, 3, generator=g)}

    def step(cbs, i):
        for cb in cbs:
            cb.run_callback_at_location(i, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        loss = sum(model.get_loss_dict(model(bundle), batch).values())
        opts.zero_grad_all()
        loss.backward()
        opts.optimizer_step_all()
        for cb in cbs:
            cb.run_callback_at_location(i, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)

    def timed(name) -> float:
        panel.enabled, panel.every = name == "on", 1
        cbs = bare if name == "bare" else callbacks
        t0 = time.perf_counter()
        for i in range(args.steps_per_round):
            step(cbs, i)
        return (time.perf_counter() - t0) / args.steps_per_round

    names = ["bare", "off", "on"]
    for name in names:  # warm-up
        timed(name)
    times = {k: [] for k in names}
    from tqdm import tqdm

    for r in tqdm(range(args.rounds), desc="rounds"):
        order = names[r % 3:] + names[: r % 3]
        for name in order:
            times[name].append(timed(name))
    print(f"e-nerf-small network, {n} rays, {args.threads} thread(s), {args.rounds} rounds x {args.steps_per_round} steps")
    print("| variant | median s/step | ratio to bare (median [quartiles]) |\n|---|---|---|")
    for name in names:
        ratios = sorted(t / b for t, b in zip(times[name], times["bare"]))
        q = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {statistics.median(times[name]):.4f} | {statistics.median(ratios):.3f} "
              f"[{q[0]:.3f}, {q[2]:.3f}] |")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
