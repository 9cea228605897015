#!/usr/bin/env python
"""Benchmark the per-step cost of every weight conditioner against the plain model.

For each model (NeRF's MLP and a small 64-wide MLP) and each conditioner in
``wcnerf.conditioning.available()``, times

* a **training step**: forward, MSE to fixed random targets, ``loss.backward()`` (no
  optimizer; grads are set to ``None`` before each step, outside the timer), followed by
  ``post_step(model)`` for every conditioned model (it is what a training loop calls after
  each step; the ENorm rebalance for ``enorm``, a no-op for the others);
* **inference** (eval mode, ``torch.no_grad()``) of the conditioned model and of its
  ``bake``-d copy;

against the same for the plain (unconditioned) model. All variants are measured
**interleaved** in one run. Each round runs ``P V1 P V2 ... P Vk P`` (P = plain, V = the
conditioners, their order rotating every round), after warm-up rounds; each variant's ratio is
its time over the mean of the two plain measurements around it, and the median (and quartiles)
over rounds is reported. A shared machine that slows down or speeds up over the run thus
affects numerator and denominator alike. The ratio of the minimum times (contention only ever
adds time, so the minimum is the least disturbed sample) is printed as well, and ``none``
(the unconditioned model under another name) is an A/A control: its spread is the noise floor.

Models:

* ``nerf``: nerfstudio's ``MLP`` as ``NeRFField`` builds its base MLP (8 Linear layers of
  width 256, ReLU, ``skip_connections=(4,)`` i.e. layer 4 reads ``cat([input, x])``,
  ReLU output), on a 63-dim input (positional encoding of xyz), followed by a
  ``Linear(256, 4)`` head (density + RGB stand-in). ``--impl torch`` uses an identical
  plain-torch replica instead of importing nerfstudio.
* ``small``: the same MLP class, 4 Linear layers of width 64, ``--small-in-dim`` inputs
  (default 3: raw coordinates, as in SDF/occupancy fitting), 1 output.

Usage::

    python scripts/bench_conditioning.py                       # full run (~5-10 min on 2 CPU cores)
    python scripts/bench_conditioning.py --quick               # smoke run
    python scripts/bench_conditioning.py --methods equilibrate enorm --rounds 20

Writes JSON (``--out``, default ``outputs/bench/conditioning.json``) and prints a markdown table.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch import nn
from torch.nn.utils import parametrize

from wcnerf.conditioning import available, bake, condition, post_step

PLAIN = "plain"


@dataclass
class Args:
    batch: int = 65536
    """points per step"""
    models: tuple[Literal["nerf", "small"], ...] = ("nerf", "small")
    methods: tuple[str, ...] = ()
    """conditioners to time (default: all of wcnerf.conditioning.available())"""
    rounds: int = 5
    """measured rounds (each round times every variant once, sandwiched between plain runs)"""
    warmup: int = 1
    """warm-up rounds (not recorded)"""
    min_time: float = 0.2
    """each measurement repeats the step until it lasts at least this many seconds (calibrated on
    the plain model during warm-up); the per-step time is the mean over those repeats"""
    infer: bool = True
    """also time inference of the conditioned and of the baked models"""
    impl: Literal["nerfstudio", "torch"] = "nerfstudio"
    """MLP class: nerfstudio's MLP, or the plain-torch replica"""
    small_in_dim: int = 3
    small_width: int = 64
    small_layers: int = 4
    device: str = "auto"
    """'auto' = cuda if available else cpu"""
    threads: int | None = None
    """torch.set_num_threads (default: torch's default)"""
    seed: int = 0
    quick: bool = False
    """smoke run: batch 4096, 2 rounds, no warm-up repeats"""
    out: Path = Path("outputs/bench/conditioning.json")


# --------------------------------------------------------------------------- models
class TorchMLP(nn.Module):
    """Plain-torch replica of nerfstudio's ``MLP`` (torch implementation), same attribute names."""

    def __init__(self, in_dim: int, num_layers: int, layer_width: int, out_dim: int | None = None,
                 skip_connections: tuple[int, ...] | None = None, activation: nn.Module | None = nn.ReLU(),
                 out_activation: nn.Module | None = None) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim if out_dim is not None else layer_width
        self.skip_connections = skip_connections
        self._skip_connections: set[int] = set(skip_connections) if skip_connections else set()
        self.activation = activation
        self.out_activation = out_activation
        layers = []
        for i in range(num_layers - 1):
            if i == 0:
                layers.append(nn.Linear(in_dim, layer_width))
            elif i in self._skip_connections:
                layers.append(nn.Linear(layer_width + in_dim, layer_width))
            else:
                layers.append(nn.Linear(layer_width, layer_width))
        layers.append(nn.Linear(layer_width, self.out_dim))
        self.layers = nn.ModuleList(layers)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        x = in_tensor
        for i, layer in enumerate(self.layers):
            if i in self._skip_connections:
                x = torch.cat([in_tensor, x], -1)
            x = layer(x)
            if self.activation is not None and i < len(self.layers) - 1:
                x = self.activation(x)
        if self.out_activation is not None:
            x = self.out_activation(x)
        return x


def mlp_class(impl: str):
    if impl == "nerfstudio":
        try:
            from nerfstudio.field_components.mlp import MLP  # noqa: PLC0415

            return MLP
        except Exception as e:  # pragma: no cover - depends on the environment
            print(f"[warn] nerfstudio MLP unavailable ({e!r}); using the plain-torch replica", file=sys.stderr)
    return TorchMLP


class Field(nn.Module):
    def __init__(self, mlp: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.mlp = mlp
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        return self.head(h) if self.head is not None else h


def build_model(name: str, args: Args) -> tuple[nn.Module, int, int]:
    MLP = mlp_class(args.impl)
    if name == "nerf":
        mlp = MLP(in_dim=63, num_layers=8, layer_width=256, skip_connections=(4,),
                  activation=nn.ReLU(), out_activation=nn.ReLU())
        return Field(mlp, nn.Linear(256, 4)), 63, 4
    if name == "small":
        mlp = MLP(in_dim=args.small_in_dim, num_layers=args.small_layers, layer_width=args.small_width,
                  out_dim=1, activation=nn.ReLU(), out_activation=None)
        return Field(mlp, None), args.small_in_dim, 1
    raise ValueError(name)


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Variant:
    name: str
    train_model: nn.Module
    infer_model: nn.Module | None  # conditioned model used for inference (eval mode)
    baked_model: nn.Module | None
    call_post_step: bool
    inner: int = 1
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    baked_times: list[float] = field(default_factory=list)
    bake_max_abs_diff: float | None = None
    error: str | None = None


def time_train(v: Variant, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    m = v.train_model
    total = 0.0
    for _ in range(v.inner):
        for p in m.parameters():
            p.grad = None
        sync(device)
        t0 = time.perf_counter()
        loss = nn.functional.mse_loss(m(x), y)
        loss.backward()
        if v.call_post_step:
            post_step(m)
        sync(device)
        total += time.perf_counter() - t0
    return total / v.inner


def time_infer(m: nn.Module, x: torch.Tensor, inner: int, device: torch.device) -> float:
    total = 0.0
    with torch.no_grad():
        for _ in range(inner):
            sync(device)
            t0 = time.perf_counter()
            m(x)
            sync(device)
            total += time.perf_counter() - t0
    return total / inner


def time_isolated_overhead(v: Variant, device: torch.device, reps: int = 15) -> float | None:
    """Seconds of the work a conditioner adds independently of the batch: computing every
    parametrized effective weight and back-propagating a gradient through it, plus
    ``post_step``. Minimum over ``reps`` (contention only adds time). ``None`` when part of
    the conditioner's cost depends on the batch (EquiNorm computes its weight from the input)."""
    model = v.train_model
    if any(type(m).__name__ in ("EquiNormLinear", "EquiNormConv2d") for m in model.modules()):
        return None
    layers = [m for m in model.modules() if parametrize.is_parametrized(m)]
    best = math.inf
    for _ in range(reps):
        for p in model.parameters():
            p.grad = None
        sync(device)
        t0 = time.perf_counter()
        ws = [getattr(m, name) for m in layers for name in m.parametrizations.keys()]
        if ws:
            torch.autograd.backward(ws, [torch.ones_like(w) for w in ws])
        post_step(model)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    for p in model.parameters():
        p.grad = None
    return best


def make_variants(model_name: str, args: Args, methods: list[str], device: torch.device,
                  x_check: torch.Tensor) -> list[Variant]:
    torch.manual_seed(args.seed)
    base, _, _ = build_model(model_name, args)
    base.to(device)
    plain = copy.deepcopy(base).train()
    plain_eval = copy.deepcopy(base).eval()
    variants = [Variant(PLAIN, plain, plain_eval, None, call_post_step=False)]
    for meth in methods:
        try:
            # Three independent condition() calls, never a deepcopy of a conditioned model:
            # torch's deepcopy of a parametrized module shares its injected ParametrizedLinear
            # class, and remove_parametrizations (bake) on the copy deletes the class's `weight`
            # property, breaking the original too.
            cond = condition(copy.deepcopy(base), meth).to(device).train()
            infer_m = condition(copy.deepcopy(base), meth).to(device).eval()
            baked = bake(condition(copy.deepcopy(base), meth).to(device).eval()).eval()
            with torch.no_grad():
                diff = (infer_m(x_check) - baked(x_check)).abs().max().item()
            variants.append(Variant(meth, cond, infer_m, baked, call_post_step=True, bake_max_abs_diff=diff))
        except Exception as e:  # record and keep going: one broken conditioner must not hide the others
            variants.append(Variant(meth, base, None, None, call_post_step=False, error=f"{type(e).__name__}: {e}"))
    return variants


def run_model(model_name: str, args: Args, methods: list[str], device: torch.device, progress) -> dict:
    gen = torch.Generator().manual_seed(args.seed + 1)
    _, d_in, d_out = build_model(model_name, args)
    x = torch.rand(args.batch, d_in, generator=gen).mul_(2).sub_(1).to(device)
    y = torch.rand(args.batch, d_out, generator=gen).to(device)
    variants = make_variants(model_name, args, methods, device, x[:1024])
    ok = [v for v in variants if v.error is None]
    for v in variants:
        if v.error:
            progress.console.print(f"[red]{model_name}/{v.name}: {v.error}")

    # Calibrate the number of inner repeats on the plain model (warm-up run included).
    plain, others = ok[0], ok[1:]
    time_train(plain, x, y, device)
    t_plain = time_train(plain, x, y, device)
    inner = max(1, math.ceil(args.min_time / max(t_plain, 1e-9)))
    for v in ok:
        v.inner = inner

    def measure(v: Variant) -> tuple[float, float, float]:
        tt = time_train(v, x, y, device)
        ti = time_infer(v.infer_model, x, inner, device) if args.infer else math.nan
        tb = time_infer(v.baked_model, x, inner, device) if (args.infer and v.baked_model is not None) else math.nan
        return tt, ti, tb

    # Sandwich design: P V1 P V2 ... P Vk P, the order of V's rotating every round. Each
    # variant's ratio is taken against the mean of the two plain measurements around it.
    ratios: dict[str, dict[str, list[float]]] = {v.name: {"train": [], "infer": [], "baked": []} for v in others}
    n_rounds = args.warmup + args.rounds
    task = progress.add_task(f"{model_name} (x{inner} steps/measure)", total=n_rounds * (2 * len(others) + 1))
    for r in range(n_rounds):
        k = r % max(len(others), 1)
        order = others[k:] + others[:k]
        prev = measure(plain)
        progress.advance(task)
        rec = r >= args.warmup
        if rec:
            plain.train_times.append(prev[0]); plain.infer_times.append(prev[1])
        for v in order:
            cur = measure(v)
            progress.advance(task)
            nxt = measure(plain)
            progress.advance(task)
            if rec:
                plain.train_times.append(nxt[0]); plain.infer_times.append(nxt[1])
                v.train_times.append(cur[0]); v.infer_times.append(cur[1]); v.baked_times.append(cur[2])
                ref_t, ref_i = 0.5 * (prev[0] + nxt[0]), 0.5 * (prev[1] + nxt[1])
                ratios[v.name]["train"].append(cur[0] / ref_t)
                if args.infer:
                    ratios[v.name]["infer"].append(cur[1] / ref_i)
                    if not math.isnan(cur[2]):
                        ratios[v.name]["baked"].append(cur[2] / ref_i)
            prev = nxt
        if not progress.console.is_terminal:  # no live bar in a log file: one line per round
            print(f"[{time.strftime('%H:%M:%S')}] {model_name}: round {r + 1}/{n_rounds} done"
                  f"{' (warm-up)' if not rec else ''}", file=sys.stderr, flush=True)

    isolated = {v.name: time_isolated_overhead(v, device) for v in others}

    def q(vals: list[float], f: float) -> float | None:
        if not vals:
            return None
        s = sorted(vals)
        i = f * (len(s) - 1)
        lo, hi = math.floor(i), math.ceil(i)
        return s[lo] + (s[hi] - s[lo]) * (i - lo)

    def vmin(vals: list[float]) -> float:
        vals = [t for t in vals if not math.isnan(t)]
        return min(vals) if vals else math.nan

    out = {"d_in": d_in, "d_out": d_out, "inner_steps": inner,
           "n_params": sum(p.numel() for p in plain.train_model.parameters()), "variants": {}}
    for v in variants:
        res: dict = {"error": v.error}
        if v.error is None:
            rr = ratios.get(v.name, {"train": [1.0], "infer": [1.0] if args.infer else [], "baked": []})
            res.update(
                train_ms_median=1e3 * statistics.median(v.train_times),
                train_ms_min=1e3 * vmin(v.train_times),
                infer_ms_median=1e3 * statistics.median(v.infer_times) if args.infer else None,
                train_ratio_median=q(rr["train"], 0.5),
                train_ratio_q25=q(rr["train"], 0.25),
                train_ratio_q75=q(rr["train"], 0.75),
                train_ratio_of_min=vmin(v.train_times) / vmin(plain.train_times),
                infer_ratio_median=q(rr["infer"], 0.5),
                baked_infer_ratio_median=q(rr["baked"], 0.5),
                baked_infer_ratio_q25=q(rr["baked"], 0.25),
                baked_infer_ratio_q75=q(rr["baked"], 0.75),
                baked_infer_ratio_of_min=(vmin(v.baked_times) / vmin(plain.infer_times)) if v.baked_model is not None and args.infer else None,
                bake_max_abs_diff=v.bake_max_abs_diff,
                isolated_overhead_ms=(1e3 * isolated[v.name]) if isolated.get(v.name) is not None else None,
                isolated_overhead_frac_of_min_plain_step=(isolated[v.name] / vmin(plain.train_times))
                if isolated.get(v.name) is not None else None,
                ratios=rr,
                train_s=v.train_times,
                infer_s=v.infer_times,
                baked_infer_s=v.baked_times,
            )
        out["variants"][v.name] = res
    return out


def fmt(v, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def markdown(results: dict, meta: dict) -> str:
    lines = [
        f"batch {meta['batch']:,} points, device {meta['device']}, {meta['threads']} threads, "
        f"load average {fmt(meta.get('loadavg_1min_start'), '.1f')} at start on {meta['cpu_count']} CPUs, "
        f"{meta['rounds']} rounds after {meta['warmup']} warm-up, each round P V1 P V2 ... Vk P (order rotating); "
        f"ratio = variant / mean of the two adjacent plain measurements, median and [q25, q75] over rounds; "
        f"'ratio of min' = min variant time / min plain time; 'none' is an A/A control (same model as plain); "
        f"'isolated overhead' = batch-independent work the conditioner adds per step (effective weights forward "
        f"+ backward, + post_step), min of 15, '–' where it depends on the batch (equinorm)",
        "",
        "| model | method | train step ms (median) | train ratio (median) | [q25, q75] | train ratio of min | "
        "isolated overhead ms (% of plain step) | infer ratio, conditioned | infer ratio, baked [q25, q75] | "
        "bake max abs diff |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for model_name, res in results.items():
        for name, r in res["variants"].items():
            if r["error"]:
                lines.append(f"| {model_name} | {name} | error: {r['error'][:60]} | | | | | |")
                continue
            iso = "–"
            if r.get("isolated_overhead_ms") is not None:
                iso = f"{r['isolated_overhead_ms']:.2f} ({100 * r['isolated_overhead_frac_of_min_plain_step']:.2f}%)"
            baked = (f"{fmt(r['baked_infer_ratio_median'])} [{fmt(r['baked_infer_ratio_q25'])}, "
                     f"{fmt(r['baked_infer_ratio_q75'])}]") if r["baked_infer_ratio_median"] is not None else "–"
            lines.append(
                f"| {model_name} | {name} | {fmt(r['train_ms_median'], '.1f')} | {fmt(r['train_ratio_median'])} | "
                f"[{fmt(r['train_ratio_q25'])}, {fmt(r['train_ratio_q75'])}] | {fmt(r['train_ratio_of_min'])} | "
                f"{iso} | "
                f"{fmt(r['infer_ratio_median'])} | {baked} | {fmt(r['bake_max_abs_diff'], '.1e')} |"
            )
    return "\n".join(lines)


def main(args: Args) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    if args.quick:
        args.batch, args.rounds, args.warmup, args.min_time = min(args.batch, 4096), 2, 0, 0.0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    methods = list(args.methods) or [m for m in available() if m != "none"] + ["none"]
    unknown = [m for m in methods if m not in available()]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: {list(available())}")

    meta = {
        "batch": args.batch, "rounds": args.rounds, "warmup": args.warmup, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "impl": args.impl, "methods": methods,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "step": "forward + mse_loss + backward (+ post_step for conditioned models); grads set to None before, untimed",
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta["loadavg_1min_start"] = load
    if load is not None and torch.get_num_threads() > 1 and load > (os.cpu_count() or 1):
        print(f"[warn] load average {load:.1f} > {os.cpu_count()} CPUs with {torch.get_num_threads()} torch threads: "
              "on an oversubscribed machine every parallel op can stall for a scheduler slice, which dominates "
              "small ops; consider --threads 1", file=sys.stderr)
    results: dict = {}
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        for model_name in args.models:
            results[model_name] = run_model(model_name, args, methods, device, progress)
    meta["wall_s"] = time.perf_counter() - t0
    meta["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    table = markdown(results, meta)
    print(table)
    eq = {m: results[m]["variants"].get("equilibrate") for m in results}
    for m, r in eq.items():
        if args.quick:
            print("\n(--quick: smoke run, the ratios above are not a measurement)")
            break
        if r and not r["error"]:
            verdict = "within" if r["train_ratio_median"] <= 1.05 else "OVER"
            aa = results[m]["variants"].get("none") or {}
            noise = (f"; A/A control 'none' {fmt(aa.get('train_ratio_median'))} "
                     f"[{fmt(aa.get('train_ratio_q25'))}, {fmt(aa.get('train_ratio_q75'))}]") if aa.get("train_s") else ""
            iso = r.get("isolated_overhead_frac_of_min_plain_step")
            iso_s = f"; isolated added work {100 * iso:.2f}% of a plain step" if iso is not None else ""
            print(f"\n{m}: equilibrate train-step ratio median {fmt(r['train_ratio_median'])} "
                  f"[{fmt(r['train_ratio_q25'])}, {fmt(r['train_ratio_q75'])}] ({verdict} the <= 5% goal){noise}{iso_s}; "
                  f"baked inference ratio {fmt(r['baked_infer_ratio_median'])}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
               "results": results, "table_markdown": table}
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main(tyro.cli(Args))
