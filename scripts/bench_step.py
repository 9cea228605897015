#!/usr/bin/env python
"""What a whole training step and the rendering of one held-out image cost, conditioned vs plain.

For each method pair (``e-nerf-small`` / ``nerf-small``, ``e-nerfacto-small`` /
``nerfacto-plain-small``, ``e-nerf`` / ``nerf`` at a reduced ray count) the two methods' real
nerfstudio pipelines are built from their method configs on a scene (default: the shipped fern)
and timed **interleaved in one process on one torch thread**:

* ``step``: one whole training iteration as nerfstudio's trainer runs it: the model's
  BEFORE callbacks, pixel sampling and ray generation (the datamanager), both fields, volume
  rendering, losses, backward, the optimizer and scheduler steps, the AFTER callbacks
  (``post_step``, the analysis switch, nerfacto's anneal);
* ``render``: one held-out image (``model.get_outputs_for_camera``, optionally scaled by
  ``--image-scale``) and its metrics (``get_image_metrics_and_images``: PSNR, SSIM, LPIPS when
  weights are available), timed separately as ``render`` and ``metrics``.

Each round times ``conditioned, plain`` (the order alternating between rounds); a ratio is the
conditioned time over the plain time of the same round, reported as the median over rounds with
the quartiles. Rays per second: training rays per second of wall time of a step, rendering rays
per second of the render alone, and their quotient (``render/train``). ``step/forward``: a
step's CPU time over that of its forward part (batch, fields, rendering, losses; the rest is
backward, optimizer and callbacks), i.e. the ``render/train`` a render would reach if a rendered
ray cost exactly what a training ray's forward pass does.

``--profile <method>`` instead renders one held-out image of that method under cProfile and
prints the top entries by own time and by cumulative time.

    python scripts/bench_step.py                                  # all three pairs
    python scripts/bench_step.py --pairs small --rounds 5
    python scripts/bench_step.py --profile e-nerf-small
    python scripts/bench_step.py --pairs aa-small small --rounds 20   # with an A/A control
    python scripts/bench_step.py --render-threads 1 2 --chunk-methods e-nerf-small
"""

from __future__ import annotations

import copy
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import tyro

PAIRS: Dict[str, Tuple[str, str]] = {
    "small": ("e-nerf-small", "nerf-small"),
    "aa-small": ("nerf-small", "nerf-small"),  # A/A control: two copies of one method, the ratio's noise
    "nerfacto-small": ("e-nerfacto-small", "nerfacto-plain-small"),
    "paper": ("e-nerf", "nerf"),
}


@dataclass
class Args:
    data: Path = Path("data/llff/fern")
    """LLFF scene (images_<factor> of each method's preset)."""
    pairs: Tuple[str, ...] = ("small", "nerfacto-small", "paper")
    """Which pairs: small (e-nerf-small/nerf-small), nerfacto-small, paper (e-nerf/nerf), aa-small
    (nerf-small/nerf-small: an A/A control, whose ratio shows the measurement's noise)."""
    rounds: int = 5
    """Measured rounds per pair (after one warm-up round)."""
    steps: int = 20
    """Training steps per timed block."""
    image_scale: float = 1.0
    """Held-out image resolution scale for the small pairs (1: the protocol's full image)."""
    paper_rays: int = 256
    """Rays per training step of the paper pair (its preset has 4096)."""
    paper_steps: int = 3
    """Training steps per timed block of the paper pair."""
    paper_image_scale: float = 0.1
    """Held-out image scale of the paper pair (its images are at factor 4)."""
    threads: int = 1
    """torch CPU threads."""
    chunk: int = 0
    """eval_num_rays_per_chunk override (0: the preset's)."""
    profile: Optional[str] = None
    """Profile rendering one held-out image of this method instead of benchmarking."""
    profile_top: int = 25
    chunks: Tuple[int, ...] = ()
    """Instead of benchmarking: render one held-out image of each ``--chunk-methods`` method with
    each of these eval_num_rays_per_chunk values, interleaved over --rounds rounds."""
    render_threads: Tuple[int, ...] = ()
    """Instead of benchmarking (alone or with --chunks): render with each of these torch thread
    counts (rays per wall-second is then the figure to read)."""
    chunk_methods: Tuple[str, ...] = ("e-nerf-small", "e-nerfacto-small")
    ab: Tuple[str, ...] = ()
    """Instead of benchmarking: for each of these methods, render one held-out image with
    nerfstudio's stock chunked render and with wcnerf's evaluation path, alternating, over
    --rounds rounds (the evaluation change before/after in one process)."""
    out: Optional[Path] = None
    """JSON output (default outputs/bench/step.json)."""


def _method_config(name: str):
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    return copy.deepcopy(methods[name])


def set_chunk(model_config: Any, chunk: int) -> None:
    """Render with ``chunk`` rays per chunk on the CPU (the conditioned models' CPU size too)."""
    model_config.eval_num_rays_per_chunk = chunk
    if hasattr(model_config, "cpu_eval_num_rays_per_chunk"):
        model_config.cpu_eval_num_rays_per_chunk = chunk


def cpu_chunk(model_config: Any) -> int:
    """The rays per chunk of a CPU render."""
    return getattr(model_config, "cpu_eval_num_rays_per_chunk", 0) or model_config.eval_num_rays_per_chunk


def build_pipeline(name: str, data: Path, *, rays: int = 0, chunk: int = 0, seed: int = 0):
    """The method's VanillaPipeline on ``data`` (CPU), its Optimizers and training callbacks."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes
    from nerfstudio.engine.optimizers import Optimizers

    cfg = _method_config(name)
    cfg.machine.device_type = "cpu"
    cfg.pipeline.datamanager.data = data
    cfg.pipeline.datamanager.dataparser.data = data
    if rays:
        cfg.pipeline.datamanager.train_num_rays_per_batch = rays
        cfg.pipeline.datamanager.eval_num_rays_per_batch = rays
    if chunk:
        set_chunk(cfg.pipeline.model, chunk)
    torch.manual_seed(seed)
    pipeline = cfg.pipeline.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    pipeline.train()
    opts = Optimizers(cfg.optimizers.copy(), pipeline.get_param_groups())
    attrs = TrainingCallbackAttributes(optimizers=opts, grad_scaler=None, pipeline=pipeline, trainer=None)
    callbacks = pipeline.get_training_callbacks(attrs)
    return pipeline, opts, callbacks


class Runner:
    """Training steps and held-out renders of one method, counting its steps."""

    def __init__(self, name: str, data: Path, *, rays: int, chunk: int, image_scale: float) -> None:
        self.name = name
        self.pipeline, self.opts, self.callbacks = build_pipeline(name, data, rays=rays, chunk=chunk)
        self.step_no = 0
        self.forward_s = self.backward_s = 0.0  # CPU seconds: batch, forward and losses; backward
        self.rays = self.pipeline.datamanager.get_train_rays_per_batch()
        from wcnerf.tools.scaled_eval import rescale_view

        dataset = self.pipeline.datamanager.eval_dataset  # ground truth area-averaged to the rendered size
        self.camera, self.batch = rescale_view(dataset.cameras[0:1], dataset[0], image_scale)
        self.pixels = int(self.camera.height) * int(self.camera.width)

    def train_steps(self, n: int) -> None:
        from nerfstudio.engine.callbacks import TrainingCallbackLocation

        for _ in range(n):
            step = self.step_no
            for cb in self.callbacks:
                cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            self.opts.zero_grad_all()
            t0 = _clock()
            _, loss_dict, _ = self.pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
            t1 = _clock()
            loss.backward()
            self.forward_s += (t1 - t0)[1]
            self.backward_s += (_clock() - t1)[1]
            self.opts.optimizer_step_all()
            self.opts.scheduler_step_all(step)
            for cb in self.callbacks:
                cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
            self.step_no += 1

    def render(self, stock: bool = False) -> Tuple["_T", "_T", Dict[str, torch.Tensor]]:
        """(render time, metrics time, outputs) of the held-out image, as ns-eval runs it;
        ``stock``: with nerfstudio's own ``Model.get_outputs_for_camera_ray_bundle`` (no_grad,
        conditioned weights recomputed per chunk) and the E-NeRF field's training forward, i.e.
        without wcnerf's evaluation path."""
        from nerfstudio.models.base_model import Model

        from wcnerf.nerf.field import ENeRFField

        model = self.pipeline.model
        self.pipeline.eval()
        fields = [m for m in model.modules() if isinstance(m, ENeRFField)] if stock else []
        for f in fields:
            f.lean_inference = False
        try:
            t0 = _clock()
            if stock:
                outputs = Model.get_outputs_for_camera_ray_bundle(
                    model, self.camera.generate_rays(camera_indices=0, keep_shape=True))
            else:
                outputs = model.get_outputs_for_camera(self.camera)
            t1 = _clock()
            model.get_image_metrics_and_images(outputs, self.batch)
            t2 = _clock()
        finally:
            self.pipeline.train()
            for f in fields:
                del f.lean_inference  # back to the class default
        return t1 - t0, t2 - t1, outputs


class _T(tuple):
    """(wall seconds, process CPU seconds)."""

    def __new__(cls, wall: float, cpu: float):
        return tuple.__new__(cls, (wall, cpu))

    def __sub__(self, other):  # type: ignore[override]
        return _T(self[0] - other[0], self[1] - other[1])


def _clock() -> _T:
    return _T(time.perf_counter(), time.process_time())


def _q(x: List[float]) -> Tuple[float, float, float]:
    if len(x) < 2:
        return x[0], x[0], x[0]
    q = statistics.quantiles(x, n=4)
    return q[0], statistics.median(x), q[2]


def bench_pair(args: Args, pair: str) -> Dict[str, Any]:
    cond_name, plain_name = PAIRS[pair]
    paper = pair == "paper"
    steps = args.paper_steps if paper else args.steps
    scale = args.paper_image_scale if paper else args.image_scale
    rays = args.paper_rays if paper else 0
    runners = {k: Runner(n, args.data, rays=rays, chunk=args.chunk, image_scale=scale)
               for k, n in (("cond", cond_name), ("plain", plain_name))}
    # t[clock][variant][what]: per-round seconds; clock "wall" or "cpu" (process CPU time: with
    # one torch thread the work itself, unaffected by how many other processes share the cores)
    t: Dict[str, Dict[str, Dict[str, List[float]]]] = {
        c: {k: {"step": [], "render": [], "metrics": [], "forward": [], "backward": []} for k in runners}
        for c in ("wall", "cpu")}
    for r in range(args.rounds + 1):
        order = ("cond", "plain") if r % 2 == 0 else ("plain", "cond")
        for k in order:
            run = runners[k]
            t0, f0, b0 = _clock(), run.forward_s, run.backward_s
            run.train_steps(steps)
            ts = _clock() - t0
            tr, tm, _ = run.render()
            if r > 0:  # round 0 is the warm-up
                for i, c in enumerate(("wall", "cpu")):
                    t[c][k]["step"].append(ts[i] / steps)
                    t[c][k]["render"].append(tr[i])
                    t[c][k]["metrics"].append(tm[i])
                t["cpu"][k]["forward"].append((run.forward_s - f0) / steps)
                t["cpu"][k]["backward"].append((run.backward_s - b0) / steps)
        if r > 0:
            print(f"  {pair} round {r}: " + ", ".join(
                f"{k} step {t['cpu'][k]['step'][-1] * 1e3:.0f} ms cpu ({t['wall'][k]['step'][-1] * 1e3:.0f} wall), "
                f"render {t['cpu'][k]['render'][-1]:.2f} s cpu ({t['wall'][k]['render'][-1]:.2f} wall)" for k in runners),
                flush=True)
    res: Dict[str, Any] = {"pair": pair, "conditioned_method": cond_name, "plain_method": plain_name,
                           "rays": runners["cond"].rays, "pixels": runners["cond"].pixels,
                           "chunk": cpu_chunk(runners["cond"].pipeline.model.config),
                           "steps_per_block": steps, "image_scale": scale, "raw": t}
    for c in ("wall", "cpu"):
        tc = t[c]
        out: Dict[str, Any] = {}
        for what in ("step", "render", "metrics"):
            out[f"{what}_ratio"] = _q([a / b for a, b in zip(tc["cond"][what], tc["plain"][what])])
        for k in runners:
            step_s = statistics.median(tc[k]["step"])
            render_s = statistics.median(tc[k]["render"])
            out[k] = {
                "step_ms": step_s * 1e3,
                "render_s": render_s,
                "metrics_s": statistics.median(tc[k]["metrics"]),
                "train_rays_per_s": runners[k].rays / step_s,
                "render_rays_per_s": runners[k].pixels / render_s,
            }
            out[k]["render_over_train"] = out[k]["render_rays_per_s"] / out[k]["train_rays_per_s"]
            if tc[k]["forward"]:  # CPU clock: the step's parts; step / forward is what render/train
                # would be if a rendered ray cost what a training ray's forward does
                out[k]["forward_ms"] = statistics.median(tc[k]["forward"]) * 1e3
                out[k]["backward_ms"] = statistics.median(tc[k]["backward"]) * 1e3
                out[k]["step_over_forward"] = out[k]["step_ms"] / out[k]["forward_ms"]
        res[c] = out
    return res


def table(results: List[Dict[str, Any]], clock: str = "cpu") -> str:
    """Markdown table of ``results`` on one clock: "cpu" (process CPU seconds) or "wall"."""
    fmt = lambda q: f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]"  # noqa: E731
    lines = [
        f"| pair (rays/step; image px; chunk) | step ratio | render ratio | metrics ratio | "
        f"train rays/{clock}-s (cond / plain) | render rays/{clock}-s (cond / plain) | render/train (cond / plain) | "
        f"metrics {clock}-s | step/forward (cond / plain) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        r = {**res, **res[clock]}
        c, p = r["cond"], r["plain"]
        lines.append(
            f"| {r['conditioned_method']} / {r['plain_method']} ({r['rays']}; {r['pixels']}; {r['chunk']}) | {fmt(r['step_ratio'])} | "
            f"{fmt(r['render_ratio'])} | {fmt(r['metrics_ratio'])} | "
            f"{c['train_rays_per_s']:.0f} / {p['train_rays_per_s']:.0f} | "
            f"{c['render_rays_per_s']:.0f} / {p['render_rays_per_s']:.0f} | "
            f"{c['render_over_train']:.2f} / {p['render_over_train']:.2f} | {c['metrics_s']:.2f} / {p['metrics_s']:.2f} | "
            + (f"{c['step_over_forward']:.2f} / {p['step_over_forward']:.2f} |" if "step_over_forward" in c else "- |")
        )
    return "\n".join(lines)


def profile(args: Args) -> None:
    paper = args.profile in PAIRS["paper"]
    run = Runner(args.profile, args.data, rays=_warmup_rays(args, args.profile), chunk=args.chunk,
                 image_scale=args.paper_image_scale if paper else args.image_scale)
    run.train_steps(2)
    run.render()  # warm-up
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    ct0 = os.times()
    prof.enable()
    tr, tm, _ = run.render()
    prof.disable()
    ct1 = os.times()
    wall = time.perf_counter() - t0
    print(f"{args.profile}: {run.pixels} px, chunk {cpu_chunk(run.pipeline.model.config)}: "
          f"render {tr[0]:.2f} s wall / {tr[1]:.2f} s cpu, metrics {tm[1]:.2f} s cpu; under the profiler: "
          f"wall {wall:.2f} s, user {ct1.user - ct0.user:.2f} s, system {ct1.system - ct0.system:.2f} s; "
          f"{run.pixels / tr[1]:.0f} rays per cpu-s")
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(args.profile_top)
        print(s.getvalue())


def _warmup_rays(args: Args, method: str) -> int:
    """Rays per training step of a render benchmark's warm-up steps: the paper methods' preset
    4096 rays x 192 samples need over 24 GB for one CPU step, so ``--paper-rays`` for them."""
    return args.paper_rays if method in PAIRS["paper"] else 0


def chunk_sweep(args: Args) -> None:
    """Rays per CPU and per wall second and system seconds of one held-out render for each
    chunk size (``--chunks``; 0: the preset's) and torch thread count (``--render-threads``),
    interleaved over the rounds."""
    runs = {m: Runner(m, args.data, rays=_warmup_rays(args, m), chunk=0, image_scale=args.image_scale)
            for m in args.chunk_methods}
    combos = [(c, t) for c in (args.chunks or (0,)) for t in (args.render_threads or (args.threads,))]
    rec: Dict[str, Dict[Tuple[int, int], List[Tuple[float, float, float]]]] = {m: {k: [] for k in combos} for m in runs}
    for r in range(args.rounds + 1):
        for m, run in runs.items():
            if r == 0:
                run.train_steps(2)
            preset_chunk = cpu_chunk(run.pipeline.model.config)
            for c, t in combos if r % 2 == 0 else list(reversed(combos)):
                set_chunk(run.pipeline.model.config, c or preset_chunk)
                torch.set_num_threads(t)
                o0 = os.times()
                tr, _, _ = run.render()
                o1 = os.times()
                if r > 0:
                    rec[m][(c, t)].append((tr[0], tr[1], o1.system - o0.system))
            set_chunk(run.pipeline.model.config, preset_chunk)
    torch.set_num_threads(args.threads)
    print("| method (image px) | chunk | threads | render rays/cpu-s | render rays/wall-s | system s per render |")
    print("|---|---|---|---|---|---|")
    for m, run in runs.items():
        for c, t in combos:
            wall = statistics.median(x[0] for x in rec[m][(c, t)])
            cpu = statistics.median(x[1] for x in rec[m][(c, t)])
            sys_s = statistics.median(x[2] for x in rec[m][(c, t)])
            chunk = c or cpu_chunk(run.pipeline.model.config)
            print(f"| {m} ({run.pixels}) | {chunk} | {t} | {run.pixels / cpu:.0f} | {run.pixels / wall:.0f} | {sys_s:.2f} |")


def ab(args: Args) -> None:
    """Stock vs wcnerf evaluation render of each ``--ab`` method, interleaved."""
    print("| method (image px; chunk) | stock rays/cpu-s | wcnerf rays/cpu-s | wcnerf/stock time ratio [quartiles] | max abs diff of rgb |")
    print("|---|---|---|---|---|")
    for m in args.ab:
        run = Runner(m, args.data, rays=_warmup_rays(args, m), chunk=args.chunk, image_scale=args.image_scale)
        run.train_steps(2)
        rec: Dict[str, List[float]] = {"stock": [], "ours": []}
        diff = 0.0
        for r in range(args.rounds + 1):
            order = (True, False) if r % 2 == 0 else (False, True)
            outs = {}
            for stock in order:
                tr, _, out = run.render(stock=stock)
                outs[stock] = out
                if r > 0:
                    rec["stock" if stock else "ours"].append(tr[1])
            diff = max(diff, float((outs[True]["rgb"] - outs[False]["rgb"]).abs().max()))
        ratio = _q([a / b for a, b in zip(rec["ours"], rec["stock"])])
        print(f"| {m} ({run.pixels}; {cpu_chunk(run.pipeline.model.config)}) | "
              f"{run.pixels / statistics.median(rec['stock']):.0f} | {run.pixels / statistics.median(rec['ours']):.0f} | "
              f"{ratio[1]:.3f} [{ratio[0]:.3f}, {ratio[2]:.3f}] | {diff:.1e} |", flush=True)


def main(args: Args) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.profile:
        profile(args)
        return
    if args.chunks or args.render_threads:
        chunk_sweep(args)
        return
    if args.ab:
        ab(args)
        return
    results = []
    for pair in args.pairs:
        results.append(bench_pair(args, pair))
        print(table(results[-1:]))
    for clock in ("cpu", "wall"):
        print(f"\n{clock} time (median ratio conditioned/plain [quartiles] over {args.rounds} interleaved rounds):")
        print(table(results, clock))
    end_load = os.getloadavg()
    print(f"load at the end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
    out = args.out or Path("outputs/bench/step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
                               "machine": platform.processor() or platform.machine(), "load_start": load,
                               "load_end": end_load, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
