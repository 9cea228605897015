#!/usr/bin/env python
"""What running conditioned MLPs in torch costs E-nerfacto, against the plain torch MLP and,
where CUDA and tinycudann exist, against tinycudann's fused MLP.

Two levels, each timing a **training step** (forward, MSE loss, backward, Adam step,
``post_step``):

* ``mlp``: nerfacto's field MLPs alone on ``--samples`` random inputs: ``mlp_base``'s MLP
  (hash features -> 64 -> 1 + 15) and ``mlp_head`` (SH(16) + 15 -> 64 -> 64 -> RGB), as
  nerfstudio builds them with ``implementation="torch"``; variants ``plain`` (torch), each
  ``--conditioners`` entry (torch, conditioned), and ``tcnn-fused`` (nerfstudio's
  ``MLP(implementation="tcnn")``: tinycudann's FullyFusedMLP; CUDA + tinycudann only).
* ``model``: a whole nerfacto train step on random rays (world space, scene contraction,
  appearance embedding off, the sizes of ``--preset``): ``nerfacto-plain`` and each
  conditioner (torch MLPs, hash grid tinycudann when usable, else torch), and ``stock-tcnn``
  (nerfstudio's ``NerfactoModel`` with ``implementation="tcnn"``: hash grid and fused MLP in
  one tinycudann network; CUDA + tinycudann only).

Variants are measured interleaved: every round runs ``P V1 P V2 ... P`` (P the plain torch
variant, the order of the others rotating), and a variant's ratio is its time over the mean
of the two P measurements around it; the median over rounds is reported, with the median
time. A busy machine then slows numerator and denominator alike.

Usage::

    python scripts/bench_nerfacto.py                         # CPU: small preset (~3 min)
    python scripts/bench_nerfacto.py --preset full --rounds 20   # on a CUDA machine

Without CUDA or tinycudann the ``tcnn`` rows are skipped and the output says so. Writes
JSON to ``--out`` (default ``outputs/bench/nerfacto.json``) and prints markdown tables.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Tuple

import torch
import tyro
from torch import nn


@dataclass
class Args:
    preset: Literal["small", "full"] = "small"
    """Model sizes and ray batch: the CPU-sized preset or nerfacto's."""
    conditioners: Tuple[str, ...] = ("equilibrate", "weight-norm", "enorm")
    """Conditioned variants besides the plain one."""
    samples: int = 0
    """Rows per MLP step (0: 65536 on CPU, 1048576 on CUDA)."""
    rays: int = 0
    """Rays per model step (0: the preset's)."""
    rounds: int = 8
    """Measured rounds (after --warmup rounds)."""
    warmup: int = 2
    """Unmeasured rounds."""
    levels: Tuple[str, ...] = ("mlp", "model")
    """Which benchmarks to run."""
    out: Path = Path("outputs/bench/nerfacto.json")
    """JSON output."""


@dataclass
class Row:
    level: str
    name: str
    variant: str
    median_ms: float
    ratio_to_plain: float
    ratio_q1: float
    ratio_q3: float
    extra: Dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(steps: Dict[str, Callable[[], None]], rounds: int, warmup: int, device) -> Dict[str, Tuple[float, List[float]]]:
    """{variant: (median seconds, per-round ratios to 'plain')}; 'plain' must be a key."""
    others = [k for k in steps if k != "plain"]
    times: Dict[str, List[float]] = {k: [] for k in steps}
    ratios: Dict[str, List[float]] = {k: [] for k in steps}

    def timed(fn) -> float:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    for r in range(warmup + rounds):
        order = others[r % max(len(others), 1):] + others[: r % max(len(others), 1)]
        prev = timed(steps["plain"])
        plain_times = [prev]
        for k in order:
            t = timed(steps[k])
            nxt = timed(steps["plain"])
            plain_times.append(nxt)
            if r >= warmup:
                times[k].append(t)
                ratios[k].append(t / (0.5 * (prev + nxt)))
            prev = nxt
        if r >= warmup:
            times["plain"].extend(plain_times)
            ratios["plain"].append(1.0)
    return {k: (statistics.median(times[k]), ratios[k]) for k in steps}


def _quartiles(x: List[float]) -> Tuple[float, float, float]:
    if len(x) < 2:
        return x[0], x[0], x[0]
    q = statistics.quantiles(x, n=4)
    return q[0], statistics.median(x), q[2]


# ----------------------------------------------------------------------------- MLP level
def bench_mlps(args: Args, device: torch.device, tcnn_ok: bool, rows: List[Row]) -> None:
    from nerfstudio.field_components.mlp import MLP

    from wcnerf import conditioning as wc

    n = args.samples or (1 << 20 if device.type == "cuda" else 1 << 16)
    num_levels = 16 if args.preset == "full" else 10
    specs = {
        "mlp_base": dict(in_dim=num_levels * 2, num_layers=2, layer_width=64, out_dim=16, out_activation=None),
        "mlp_head": dict(in_dim=16 + 15, num_layers=3, layer_width=64, out_dim=3, out_activation=nn.Sigmoid()),
    }
    for name, spec in specs.items():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, spec["in_dim"], generator=g).to(device)
        y = torch.rand(n, spec["out_dim"], generator=g).to(device)
        steps = {}
        variants = {"plain": "none", **{c: c for c in args.conditioners}}
        for label, method in variants.items():
            torch.manual_seed(0)
            mlp = MLP(activation=nn.ReLU(), implementation="torch", **spec).to(device)
            mlp = wc.condition(mlp, method)
            steps[label] = _make_step(mlp, lambda m, x=x: m(x), y, device)
        if tcnn_ok:
            torch.manual_seed(0)
            fused = MLP(activation=nn.ReLU(), implementation="tcnn", **spec).to(device)
            steps["tcnn-fused"] = _make_step(fused, lambda m, x=x: m(x).float(), y, device)
        res = _interleaved(steps, args.rounds, args.warmup, device)
        for label, (med, ratios) in res.items():
            q1, mid, q3 = _quartiles(ratios)
            rows.append(Row("mlp", f"{name} x {n}", label, med * 1e3, mid, q1, q3))


def _make_step(module: nn.Module, forward: Callable, target: torch.Tensor, device) -> Callable[[], None]:
    from wcnerf import conditioning as wc

    opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=1e-15)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(forward(module), target)
        loss.backward()
        opt.step()
        wc.post_step(module, opt)

    return step


# ----------------------------------------------------------------------------- model level
def bench_models(args: Args, device: torch.device, tcnn_ok: bool, rows: List[Row]) -> None:
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.models.nerfacto import NerfactoModelConfig

    from wcnerf import conditioning as wc
    from wcnerf.nerfacto.methods import NERFACTO, NERFACTO_SMALL
    from wcnerf.nerfacto.model import ENerfactoModelConfig, _lpips_not_built

    preset = NERFACTO if args.preset == "full" else NERFACTO_SMALL
    n = args.rays or preset.rays
    sizes = {k: v for k, v in preset.model_options().items() if k != "eval_num_rays_per_chunk"}
    common = dict(use_appearance_embedding=False, average_init_density=0.01, **sizes)
    scene_box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    g = torch.Generator().manual_seed(0)
    origins = (torch.randn(n, 3, generator=g) * 0.1).to(device)
    dirs = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -1.0])
    dirs = (dirs / dirs.norm(dim=-1, keepdim=True)).to(device)
    image = torch.rand(n, 3, generator=g).to(device)

    def bundle() -> RayBundle:
        return RayBundle(origins=origins, directions=dirs, pixel_area=torch.ones(n, 1, device=device),
                         camera_indices=torch.zeros(n, 1, dtype=torch.long, device=device))

    def make(model) -> Callable[[], None]:
        model = model.to(device).train()
        opts = [torch.optim.Adam(p, lr=1e-2, eps=1e-15) for p in model.get_param_groups().values() if p]
        use_amp = device.type == "cuda"

        def step() -> None:
            for o in opts:
                o.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                out = model(bundle())
                batch = {"image": image}
                metrics = model.get_metrics_dict(out, batch)
                loss = sum(model.get_loss_dict(out, batch, metrics).values())
            loss.backward()
            for o in opts:
                o.step()
            wc.post_step(model, opts)
            model.proposal_sampler.step_cb(1)

        return step

    steps = {}
    grid = None
    for label, method in {"plain": "none", **{c: c for c in args.conditioners}}.items():
        torch.manual_seed(0)
        m = ENerfactoModelConfig(conditioning=method, **common).setup(scene_box=scene_box, num_train_data=16, metadata={})
        grid = m.grid_implementation
        steps[label] = make(m)
    if tcnn_ok:
        torch.manual_seed(0)
        with _lpips_not_built():
            stock = NerfactoModelConfig(implementation="tcnn", camera_optimizer=CameraOptimizerConfig(mode="off"), **common).setup(
                scene_box=scene_box, num_train_data=16, metadata={})
        steps["stock-tcnn"] = make(stock)
    res = _interleaved(steps, args.rounds, args.warmup, device)
    for label, (med, ratios) in res.items():
        q1, mid, q3 = _quartiles(ratios)
        rows.append(Row("model", f"{args.preset} preset, {n} rays, grid {grid if label != 'stock-tcnn' else 'tcnn'}",
                        label, med * 1e3, mid, q1, q3))


def main(args: Args) -> None:
    import wcnerf.plugin  # noqa: F401  (compat: nerfacc guard etc.)
    from wcnerf.nerfacto.tcnn import tcnn_status

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tcnn_ok, why = tcnn_status()
    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(why if tcnn_ok else f"tcnn rows skipped: {why.split(':')[0]} (the tinycudann comparison needs CUDA + tinycudann)")
    rows: List[Row] = []
    if "mlp" in args.levels:
        bench_mlps(args, device, tcnn_ok, rows)
    if "model" in args.levels:
        bench_models(args, device, tcnn_ok, rows)

    print("\n| level | workload | variant | median ms/step | ratio to plain torch (q1-q3) | ratio to tcnn-fused |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        ref = next((x for x in rows if x.level == r.level and x.name == r.name and x.variant in ("tcnn-fused", "stock-tcnn")), None)
        to_tcnn = f"{r.median_ms / ref.median_ms:.2f}" if ref else "n/a"
        print(f"| {r.level} | {r.name} | {r.variant} | {r.median_ms:.2f} | {r.ratio_to_plain:.2f} ({r.ratio_q1:.2f}-{r.ratio_q3:.2f}) | {to_tcnn} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"device": str(device), "tcnn": tcnn_ok, "tcnn_status": why, "args": {k: str(v) for k, v in asdict(args).items()},
               "rows": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
