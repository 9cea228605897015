#!/usr/bin/env python
"""Does weight conditioning lower the condition number of the loss Hessian? (issue part 6)

Saratchandran, Wang & Lucey (ECCV 2024) claim that equilibrating the weights lowers the
condition number of the loss Hessian. This script measures it on a model small enough for the
full Hessian: an MLP (default 2 -> 32 -> 32 -> 1, ReLU, 1185 parameters) fitting the occupancy
of a 2D star on a 32 x 32 grid with ``L = mean((f(x) - y)^2) / 2``. For every seed one plain
network is initialised and copied for every conditioner (the same initial stored weights for
all), and for each one the full Hessian w.r.t. the *stored* parameters (what Adam updates;
:func:`wcnerf.analysis.hessian.loss_hessian`, float64) and the Gauss-Newton matrix
``J^T J / n`` are computed at initialisation and after ``--steps`` full-batch Adam steps.

Reported (mean ± sample std (n-1) over seeds, a single finite value alone; condition numbers as log10 since they span decades; an infinite
κ, i.e. a zero eigenvalue at that rank, is left out of the mean and counted as "(+k×∞)"):

- ``κ≠0``: max|λ| / min nonzero |λ| of the Hessian (the Hessian is indefinite away from a
  minimum, so over |λ|); an eigenvalue is zero when ``|λ| <= d · eps64 · max|λ|``; marked †
  when the spectrum runs into that floor (then the tolerance sets the value);
- ``κ₊``: the positive part, λ_max / smallest λ above the tolerance;
- ``κ₉₀``, ``κ₅₀``, ``κ₂₅``: max|λ| / |λ| at rank ceil(p d) (Huang et al.'s generalised κ over
  |λ|): the spread of the top of the spectrum, independent of the tolerance as long as finite;
- ``#neg``: number of eigenvalues below ``-tol``; ``rank``: number of nonzero ones; ``λmax``;
  median |λ|; the same κ's, rank and λmax of the Gauss-Newton matrix;
- a paired table: per seed, log10 κ(conditioner) - log10 κ(none) at the same initial stored
  weights, and in how many seeds the conditioner's κ is lower.

Writes ``hessian_study.json`` (config, every run with its eigenvalues, the summary) and
``hessian_spectra.png`` (sorted |λ| per conditioner at init and after training) to ``--out``.

    OMP_NUM_THREADS=1 python scripts/hessian_study.py                 # defaults: ~2-4 CPU-minutes
    python scripts/hessian_study.py --seeds 5 --steps 1000 --pe 4     # positional encoding, 4 freqs
    python scripts/hessian_study.py --conditioners none,equilibrate-out,weight-norm
"""

# No ``from __future__ import annotations``: HessianStudy's annotations stay types, which dataclasses
# and tyro need when the file is loaded by path without a sys.modules entry (tests/test_hessian.py).
import copy
import dataclasses
import json
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import tyro
from torch import nn

from wcnerf.analysis.hessian import flat_parameters, gauss_newton, hessian_spectrum, loss_hessian
from wcnerf.conditioning import available, condition
from wcnerf.report import seed_stats, stat_sentence

DEFAULT_CONDITIONERS = "none,equilibrate-out,equilibrate-in,equilibrate-both,weight-norm"


# ----------------------------------------------------------------------------- task and model
def star_occupancy(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid x grid`` points of [-1, 1]^2 and the occupancy (0/1) of a five-pointed star."""
    t = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    xy = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)
    r = xy.norm(dim=1)
    ang = torch.atan2(xy[:, 1], xy[:, 0])
    inside = r < 0.55 + 0.25 * torch.cos(5.0 * ang)
    return xy, inside.to(torch.float64).unsqueeze(1)


class PositionalEncoding(nn.Module):
    """``[x, sin(2^k pi x), cos(2^k pi x)]_{k < freqs}`` (no parameters)."""

    def __init__(self, freqs: int) -> None:
        super().__init__()
        self.register_buffer("scales", (2.0 ** torch.arange(freqs, dtype=torch.float64)) * math.pi, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.unsqueeze(-1) * self.scales.to(x.dtype)
        return torch.cat([x, torch.sin(z).flatten(-2), torch.cos(z).flatten(-2)], -1)


def make_mlp(d_in: int, width: int, hidden: int, activation: str, pe: int) -> nn.Sequential:
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    if pe > 0:
        layers.append(PositionalEncoding(pe))
        d_in = d_in * (1 + 2 * pe)
    for i in range(hidden):
        layers += [nn.Linear(d_in if i == 0 else width, width), act()]
    layers.append(nn.Linear(width if hidden else d_in, 1))
    return nn.Sequential(*layers).double()


def resolve(name: str) -> tuple[str, dict]:
    """Registry name -> (method, options); ``equilibrate-<mode>`` falls back to
    ``equilibrate`` with ``mode=<mode>`` on a registry that lacks the oriented names."""
    reg = available()
    if name in reg:
        return name, {}
    m = re.fullmatch(r"equilibrate-(out|in|both)", name)
    if m and "equilibrate" in reg:
        return "equilibrate", {"mode": m.group(1)}
    raise SystemExit(f"unknown conditioner {name!r}; registry: {', '.join(reg)}")


# ----------------------------------------------------------------------------- statistics
def log10(v: float | None) -> float:
    """log10, keeping +inf (a singular spectrum at that rank) and nan (undefined) apart."""
    if v is None or not v > 0:
        return math.nan
    return math.inf if math.isinf(v) else math.log10(v)


def fmt_ms(vals, spec: str = ".2f", std_spec: str | None = None) -> str:
    """``mean ± std`` of the finite values; ``+k∞`` counts the infinite ones (left out)."""
    stats = seed_stats(vals)
    pos = sum(1 for v in vals if v is not None and v == math.inf)
    neg = sum(1 for v in vals if v is not None and v == -math.inf)
    if stats.n == 0:
        return {(True, False): "∞", (False, True): "−∞", (True, True): "±∞"}.get((pos > 0, neg > 0), "–")
    out = f"{stats.mean:{spec}}"
    if stats.std is not None:  # one finite seed has no spread: its value alone
        out += f" ± {stats.std:{std_spec or spec.lstrip('+')}}"
    extra = [f"+{pos}×∞"] * bool(pos) + [f"+{neg}×−∞"] * bool(neg)
    return out + (f" ({', '.join(extra)})" if extra else "")


# ----------------------------------------------------------------------------- one run
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gn: bool) -> dict:
    n = x.shape[0]
    t0 = time.time()
    H = loss_hessian(model, lambda f: ((f(x) - y) ** 2).mean() / 2)
    t_h = time.time() - t0
    hs = hessian_spectrum(H)
    with torch.no_grad():
        loss = (((model(x) - y) ** 2).mean() / 2).item()
    rec = {"loss": loss, "hessian": hs.summary(), "eigvals": hs.eigvals.tolist(), "seconds_hessian": t_h}
    if gn:
        G = gauss_newton(model, x, scale=1.0 / n)
        rec["gauss_newton"] = hessian_spectrum(G).summary()
    return rec


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean() / 2
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- report
PHASES = ("init", "trained")


AT_TOL = 100.0  # kappa≠0 is marked † when the smallest nonzero |λ| is within this factor of the tolerance


def tables(runs: list[dict], conds: list[str], n_seeds: int) -> str:
    by = {(r["conditioner"], r["phase"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    has_gn = any("gauss_newton" in r for r in runs)

    def col(c, ph, f):
        return [f(by[(c, ph, s)]) for s in seeds if (c, ph, s) in by]

    def get(part, key):
        return lambda r: r.get(part, {}).get(key)

    def kappa_nz(c, ph, part):
        cell = fmt_ms([log10(v) for v in col(c, ph, get(part, "kappa_abs"))])
        ratios = col(c, ph, lambda r: r.get(part, {}).get("min_nonzero_abs", math.nan) / r.get(part, {}).get("tol", 1.0))
        return cell + (" †" if any(v < AT_TOL for v in ratios if math.isfinite(v)) else "")

    lines = [f"Hessian w.r.t. the stored parameters (d of them); {stat_sentence(n_seeds)}; κ as log10; "
             f"† = in some seed the smallest nonzero |λ| is < {AT_TOL:g} × the zero tolerance (the spectrum runs "
             "into the rounding floor: κ≠0 is then set by the tolerance and only bounds the true κ from below)", ""]
    hdr = ["conditioner", "phase", "d", "loss", "κ≠0(|H|)", "κ₊(H)", "κ₉₀(|H|)", "κ₅₀(|H|)", "κ₂₅(|H|)", "#neg",
           "rank", "λmax", "median |λ|"]
    lines += ["| " + " | ".join(hdr) + " |", "|---" * len(hdr) + "|"]
    for c in conds:
        for ph in PHASES:
            h = lambda k: get("hessian", k)  # noqa: E731
            cells = [
                "/".join(str(d) for d in sorted(set(col(c, ph, lambda r: r["d"])))),
                fmt_ms(col(c, ph, lambda r: r["loss"]), ".4f"),
                kappa_nz(c, ph, "hessian"),
                fmt_ms([log10(v) for v in col(c, ph, h("kappa_pos"))]),
                *(fmt_ms([log10(v) for v in col(c, ph, h(f"kappa_abs_p{p}"))]) for p in (90, 50, 25)),
                fmt_ms(col(c, ph, h("n_negative")), ".0f"),
                fmt_ms(col(c, ph, h("rank")), ".0f"),
                fmt_ms(col(c, ph, h("lambda_max")), ".3g"),
                fmt_ms(col(c, ph, h("abs_q50")), ".1e"),
            ]
            lines.append(f"| {c} | {ph} | " + " | ".join(cells) + " |")
    if has_gn:
        lines += ["", "Gauss-Newton J^T J / n (positive semi-definite part of the curvature), same runs", ""]
        hdr = ["conditioner", "phase", "κ≠0(GN)", "κ₉₀(GN)", "κ₂₅(GN)", "rank(GN)", "λmax(GN)"]
        lines += ["| " + " | ".join(hdr) + " |", "|---" * len(hdr) + "|"]
        for c in conds:
            for ph in PHASES:
                g = lambda k: get("gauss_newton", k)  # noqa: E731
                cells = [
                    kappa_nz(c, ph, "gauss_newton"),
                    *(fmt_ms([log10(v) for v in col(c, ph, g(f"kappa_abs_p{p}"))]) for p in (90, 25)),
                    fmt_ms(col(c, ph, g("rank")), ".0f"),
                    fmt_ms(col(c, ph, g("lambda_max")), ".3g"),
                ]
                lines.append(f"| {c} | {ph} | " + " | ".join(cells) + " |")
    # Paired differences against the plain network at the same initial weights.
    if "none" in conds:
        pairs_of = [("hessian", "kappa_abs", "κ≠0(|H|)"), ("hessian", "kappa_abs_p25", "κ₂₅(|H|)")]
        if has_gn:
            pairs_of.append(("gauss_newton", "kappa_abs_p25", "κ₂₅(GN)"))
        lines += ["", "Paired against `none` (same seed, same initial stored weights): "
                      f"Δ = log10 κ(conditioner) - log10 κ(none), {stat_sentence(n_seeds)}; "
                      "'lower' = seeds where the conditioner's κ is lower", ""]
        hdr = ["conditioner", "phase"] + [x for _, _, name in pairs_of for x in (f"Δ {name}", "lower")]
        lines += ["| " + " | ".join(hdr) + " |", "|---" * len(hdr) + "|"]
        for c in conds:
            if c == "none":
                continue
            for ph in PHASES:
                cells = []
                for part, key, _ in pairs_of:
                    diffs, lower, pairs = [], 0, 0
                    for s in seeds:
                        a, b = by.get((c, ph, s)), by.get(("none", ph, s))
                        if a is None or b is None or part not in a or part not in b:
                            continue
                        ka, kb = a[part][key], b[part][key]
                        pairs += 1
                        lower += int(ka < kb)  # inf compares as expected: finite < inf
                        if math.isfinite(ka) and math.isfinite(kb):
                            diffs.append(log10(ka) - log10(kb))
                        elif math.isfinite(ka) != math.isfinite(kb):
                            diffs.append(-math.inf if math.isfinite(ka) else math.inf)
                    cells += [fmt_ms(diffs, "+.2f", ".2f"), f"{lower}/{pairs}"]
                lines.append(f"| {c} | {ph} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], conds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    floor = min(r["hessian"]["tol"] for r in runs) * 1e-6
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ph in zip(axes, PHASES):
        for ci, c in enumerate(conds):
            for k, r in enumerate(x for x in runs if x["conditioner"] == c and x["phase"] == ph):
                ev = torch.tensor(r["eigvals"], dtype=torch.float64)
                a = ev.abs().sort(descending=True).values
                a = torch.where(a > 0, a, torch.full_like(a, float("nan")))
                idx = torch.arange(1, a.numel() + 1)
                ax.semilogy(idx, a, color=colors[ci % len(colors)], lw=1.2 if k == 0 else 0.6,
                            alpha=1.0 if k == 0 else 0.5, label=c if k == 0 else None)
            tols = [r["hessian"]["tol"] for r in runs if r["conditioner"] == c and r["phase"] == ph]
            if tols:
                ax.axhline(sum(tols) / len(tols), color=colors[ci % len(colors)], ls=":", lw=0.8)
        ax.set_title(f"Hessian |λ| sorted, {ph}; dotted: zero tolerance d·eps·max|λ|", fontsize=10)
        ax.set_ylim(bottom=floor)
        ax.set_xlabel("rank")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("|λ|  (thin: other seeds; values below the axis are numerical zeros)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
@dataclass
class HessianStudy:
    """The study's options (the JSON's ``config``)."""

    seeds: int = 3
    """Number of seeds (0 .. n-1)."""
    steps: int = 500
    """Full-batch Adam steps between the two Hessians."""
    lr: float = 1e-3
    width: int = 32
    hidden: int = 2
    """Hidden layers."""
    activation: Literal["relu", "tanh"] = "relu"
    pe: int = 0
    """Positional-encoding frequencies (0: raw coordinates)."""
    grid: int = 32
    """Training points per side (n = grid^2)."""
    conditioners: str = DEFAULT_CONDITIONERS
    """Comma-separated registry names."""
    no_gn: bool = False
    """Skip the Gauss-Newton matrices."""
    out: Path = Path("outputs/hessian")

    def main(self) -> int:
        conds = [c.strip() for c in self.conditioners.split(",") if c.strip()]
        methods = {c: resolve(c) for c in conds}
        x, y = star_occupancy(self.grid)
        self.out.mkdir(parents=True, exist_ok=True)
        t_all = time.time()
        runs: list[dict] = []
        notes: dict[str, list[str]] = {}
        print(f"task: star occupancy, n = {x.shape[0]} points; MLP {2}->{'->'.join([str(self.width)] * self.hidden)}->1 "
              f"{self.activation}, pe={self.pe}; {self.steps} Adam steps lr {self.lr}; seeds 0..{self.seeds - 1}; "
              f"torch threads {torch.get_num_threads()}", flush=True)
        for seed in range(self.seeds):
            torch.manual_seed(seed)
            base = make_mlp(2, self.width, self.hidden, self.activation, self.pe)
            for c in conds:
                method, opts = methods[c]
                model = copy.deepcopy(base)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = condition(model, method, **opts)
                for w in caught:
                    msg = str(w.message)
                    if msg not in notes.setdefault(c, []):
                        notes[c].append(msg)
                        print(f"  note ({c}): {msg}", flush=True)
                d = flat_parameters(model)[1].numel
                t0 = time.time()
                rec0 = measure(model, x, y, not self.no_gn)
                t1 = time.time()
                losses = train(model, x, y, self.steps, self.lr)
                t2 = time.time()
                rec1 = measure(model, x, y, not self.no_gn)
                t3 = time.time()
                for ph, rec in zip(PHASES, (rec0, rec1)):
                    runs.append({"seed": seed, "conditioner": c, "method": method, "options": opts, "phase": ph, "d": d, **rec})
                h0, h1 = rec0["hessian"], rec1["hessian"]
                print(f"[seed {seed}] {c:<17} d={d}  init: κ≠0 {h0['kappa_abs']:.2e} #neg {h0['n_negative']:.0f} "
                      f"({t1 - t0:.1f}s) | train {self.steps} steps {t2 - t1:.1f}s, loss {rec0['loss']:.4f} -> {losses[-1]:.4f} | "
                      f"trained: κ≠0 {h1['kappa_abs']:.2e} #neg {h1['n_negative']:.0f} ({t3 - t2:.1f}s)", flush=True)

        table = tables(runs, conds, self.seeds)
        print()
        print(table)
        elapsed = time.time() - t_all
        print(f"\ntotal {elapsed:.0f}s", flush=True)
        out_json = self.out / "hessian_study.json"
        out_png = self.out / "hessian_spectra.png"
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        out_json.write_text(json.dumps({
            "config": config,
            "task": "occupancy of a 2D five-pointed star, r < 0.55 + 0.25 cos(5 angle), on a grid of [-1, 1]^2; "
                    "loss mean((f - y)^2) / 2; Hessian and Gauss-Newton J^T J / n w.r.t. the stored parameters, float64",
            "tolerance": "eigenvalue zero iff |lambda| <= d * eps(float64) * max|lambda|",
            "conditioners": {c: {"method": m, "options": o, "description": available()[m], "notes": notes.get(c, [])}
                             for c, (m, o) in methods.items()},
            "torch": torch.__version__,
            "seconds": elapsed,
            "table": table,
            "runs": runs,
        }, indent=1))
        plot(runs, conds, out_png)
        print(f"wrote {out_json} and {out_png}")
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    study = tyro.cli(HessianStudy, args=argv, prog="scripts/hessian_study.py", description=__doc__.split("\n\n")[0],
                     config=(tyro.conf.FlagCreatePairsOff,))
    return study.main()


if __name__ == "__main__":
    sys.exit(main())
