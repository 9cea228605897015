"""ENorm: equi-normalization of neural networks (Stock, Graham, Gribonval & Jegou, ICLR 2019).

A hidden unit behind a positively homogeneous activation (ReLU, LeakyReLU, identity) can be
scaled by ``d > 0`` on its incoming side and by ``1/d`` on its outgoing side without changing
the network's function. After every optimizer step (``post_step``), ENorm runs ``cycles``
cycles of block-coordinate descent over these scalings (default 1: one cycle after each SGD
step, as the authors' code does), with the paper's closed-form coordinate update for p = 2
(its ``r = 1``), weighted by ``r``:

    d_i = (r * ||outgoing weights of unit i||_2^2 / ||incoming weights of unit i||_2^2) ** (1/4)

then multiplies the producing layer's row ``i`` (and its bias ``i``) by ``d_i`` and divides the
consuming columns by ``d_i``. Each update is the exact minimiser, over ``d_i``, of

    E = sum_L r^depth(L) ||W_L||_F^2        (``ENorm.energy()``; depth along the chain)

so ``E`` never increases, and repeated cycles converge to the balanced network (the paper
proves it for r = 1). At the fixed point ``||outgoing|| = r^(-1/2) ||incoming||`` for every unit.

Asymmetry ``c`` (default 1.0, i.e. ``r = 1``, the paper's unweighted objective). ``c_rule`` picks
how ``c`` sets ``r``; the two rules are one family (``reference`` c equals ``depth-weighted``
c^-2) and differ in which way a given ``c > 1`` pushes the weights:

* ``"reference"`` (default, the behaviour before this option): the authors' code
  (facebookresearch/enorm, ``enorm/enorm.py``: ``balancer = (right / (left * c)) ** 0.5``),
  ``d_i = sqrt(||out_i|| / (c ||in_i||))``, ``r = c^-2``: at balance ``||out|| = c ||in||``, so
  with ``c > 1`` each layer ends ``c`` times heavier than the one before.
* ``"depth-weighted"``: the penalty ``sum_L c^depth(L) ||W_L||^2`` that the authors' README states
  ("c penalizes the layers exponentially according to their depth"), ``r = c``: at balance
  ``||out|| = c^(-1/2) ||in||``, so with ``c > 1`` deeper layers end lighter.

The paper's own asymmetric-scaling formula was not available to check when this was written;
the two rules are measured against each other on a small fit in docs/conditioners.md
(section "ENorm's depth factor c"). With ``c != 1`` every pair must respect a depth numbering
(``depth(B) = depth(A) + 1``).

Choices the paper or its reference implementation leave open, made here:

* Biases are rescaled with their row (``b_i -> d_i b_i``), so the function of a *biased*
  network is preserved exactly; the reference implementation leaves biases alone, which
  changes a biased network's output. Biases do not enter the norms (the objective is the
  weights' squared norm, i.e. the weight-decay penalty).
* Several cycles (``cycles > 1``) move further toward the balanced network within one step; the
  authors' README reports one cycle per SGD step as working best, hence the default.
* Several consumers: if unit ``i`` feeds several layers and all of them are given (one pair
  per consumer, same producer), its outgoing norm is taken over all consuming columns and all
  are divided by ``d_i``. A producer must be listed with *all* its consumers: ENorm cannot
  see the graph, so a layer whose output also goes elsewhere (e.g. NeRF's last base layer
  feeding both the density head and the colour head) must not be given unless every consumer
  is, and automatic inference never balances a layer against consumers outside its MLP.
* One cycle = every producer once, from the input side to the output side (depth order).
* Dead units (zero incoming or outgoing norm) keep ``d = 1``.
* Half-precision weights (float16, bfloat16): the norms and ``d`` are computed in float32 and
  each rescaled tensor (weight, bias, gradient, optimizer state) is multiplied in float32 and
  rounded once (``_common.reduction_dtype``). In float16 a column of 1e4 weights has squares
  past 65504 (an infinite ``d``), and the dead-unit threshold ``sqrt(finfo.tiny)`` would be
  2^-7, taking small live units for dead.
* Optimizer state is kept in gradient units. With ``W' = D W`` and the function unchanged,
  ``dL/dW' = D^{-1} dL/dW``; the moment buffers are linear (resp. quadratic) running sums
  of gradients, so they are multiplied by ``1/d`` (``momentum_buffer``, ``exp_avg``,
  ``grad_avg``) resp. ``1/d^2`` (``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``,
  ``sum``); ``acc_delta`` (Adadelta, squared parameter updates) by ``d^2``. This is exact:
  the buffers become what the optimizer would hold had every past gradient been taken in the
  rescaled coordinates (weight decay folded into SGD's buffer is treated as gradient). The
  consuming side gets the inverse factors. Adam's step ``exp_avg / sqrt(exp_avg_sq)`` is
  thereby unchanged by a rebalancing. ``.grad`` is rescaled like a gradient. Any other
  parameter-shaped state raises ``NotImplementedError`` rather than going stale silently.

Layer graph. A pair ``(A, B, cols)`` means: ``A``'s output units feed ``B``'s input columns
``cols`` (``len(cols) == A.out_features``; ``None`` = all columns) through a positively
homogeneous activation, and nothing else consumes them. Pairs are given explicitly
(``condition(m, "enorm", pairs=[(A, B), (B, C, slice(3, 67))])``, layers as modules or
qualified names) or inferred from

1. ``nn.Sequential`` chains ``Linear, [ReLU-like ...], Linear`` (direct children only);
2. nerfstudio-style MLPs, detected by duck typing: attributes ``layers`` (ModuleList of
   Linear), ``skip_connections`` and ``activation`` (positively homogeneous or None).
   Consecutive layers ``(layers[i], layers[i+1])`` are paired. At a skip layer ``k``
   nerfstudio's forward feeds ``cat([in_tensor, x])``, so ``layers[k-1]`` feeds the *last*
   ``layers[k-1].out_features`` columns of ``layers[k]``: that pair is balanced on those
   columns only; the columns reading the MLP's raw input (an encoding, not a Linear's
   output) are never rescaled. The MLP's last layer is never a producer (its consumers lie
   outside the MLP).

Only plain layers qualify: ENorm rewrites stored weights, which a parametrized layer
recomputes. ``condition`` raises when a layer is parametrized or when no pair is found.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import torch
from torch import nn

from ._common import POSITIVELY_HOMOGENEOUS, is_parametrized, is_positively_homogeneous, upcast

#: exponent k such that a state tensor of a parameter scaled by d is multiplied by d**(-k)
STATE_POWERS = {
    "momentum_buffer": 1, "exp_avg": 1, "grad_avg": 1,
    "exp_avg_sq": 2, "max_exp_avg_sq": 2, "square_avg": 2, "sum": 2,
    "acc_delta": -2,
}


def _check_plain(layer: nn.Module, label: str) -> None:
    from .equinorm import EquiNormLinear

    if not isinstance(layer, nn.Linear) or isinstance(layer, EquiNormLinear):
        raise ValueError(f"enorm: {label} must be a plain nn.Linear, got {type(layer).__name__}")
    if is_parametrized(layer):
        raise ValueError(f"enorm: {label} is parametrized; ENorm rewrites stored weights and needs "
                         "plain layers (apply enorm alone, not on top of another conditioner)")


def _cols_index(cols, n_in: int, n_out: int, label: str):
    """Normalise ``cols`` to a slice (contiguous) or a LongTensor of column indices."""
    if cols is None:
        cols = range(n_in)
    if isinstance(cols, slice):
        cols = range(*cols.indices(n_in))
    idx = torch.as_tensor(list(cols) if isinstance(cols, range) else cols, dtype=torch.long).flatten()
    if idx.numel() != n_out:
        raise ValueError(f"enorm: {label}: {idx.numel()} columns given for a producer with "
                         f"{n_out} output units")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_in):
        raise ValueError(f"enorm: {label}: column index out of range for in_features={n_in}")
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"enorm: {label}: repeated column indices")
    if idx.numel() and bool((idx[1:] - idx[:-1] == 1).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


C_RULES = ("reference", "depth-weighted")
"""How ``c`` sets the per-level energy ratio ``r`` (module docstring): ``c^-2`` resp. ``c``."""


class ENorm:
    """``cycles`` ENorm cycles per ``step()``; attached to a module by ``condition(m, "enorm")``."""

    def __init__(self, pairs: Sequence[tuple], c: float = 1.0, names: dict | None = None, *,
                 cycles: int = 1, c_rule: str = "reference"):
        if not pairs:
            raise ValueError("enorm: no layer pair to balance")
        if not c > 0:
            raise ValueError(f"enorm: c must be > 0, got {c}")
        if c_rule not in C_RULES:
            raise ValueError(f"enorm: c_rule must be one of {C_RULES}, got {c_rule!r}")
        if isinstance(cycles, bool) or int(cycles) != cycles or cycles < 1:
            raise ValueError(f"enorm: cycles must be an integer >= 1, got {cycles!r}")
        self.c = float(c)
        self.c_rule = c_rule
        self.cycles = int(cycles)
        #: energy ratio between consecutive levels: E = sum_L r^depth(L) ||W_L||^2
        self.r = self.c ** -2 if c_rule == "reference" else self.c
        names = names or {}
        label = lambda m: names.get(id(m), type(m).__name__)  # noqa: E731
        groups: dict[int, list] = {}
        producers: dict[int, nn.Linear] = {}
        used_cols: dict[int, list] = defaultdict(list)
        for pair in pairs:
            if len(pair) not in (2, 3):
                raise ValueError(f"enorm: a pair is (producer, consumer[, cols]), got {pair!r}")
            A, B = pair[0], pair[1]
            cols = pair[2] if len(pair) == 3 else None
            _check_plain(A, f"producer {label(A)!r}")
            _check_plain(B, f"consumer {label(B)!r}")
            if A is B:
                raise ValueError(f"enorm: layer {label(A)!r} cannot feed itself")
            tag = f"pair ({label(A)!r} -> {label(B)!r})"
            idx = _cols_index(cols, B.in_features, A.out_features, tag)
            mask = torch.zeros(B.in_features, dtype=torch.bool)
            mask[idx] = True
            for other in used_cols[id(B)]:
                if bool((other & mask).any()):
                    raise ValueError(f"enorm: {tag}: columns overlap another pair's columns of the "
                                     "same consumer")
            used_cols[id(B)].append(mask)
            producers[id(A)] = A
            groups.setdefault(id(A), []).append((B, idx))
        self.depth = self._depths(producers, groups, label)
        order = sorted(groups, key=lambda k: self.depth[k])
        self.groups = [(producers[k], groups[k]) for k in order]
        layers = {id(A): A for A, _ in self.groups}
        for _, cons in self.groups:
            layers.update({id(B): B for B, _ in cons})
        self.layers = list(layers.values())
        self.names = names

    def _depths(self, producers, groups, label) -> dict[int, int]:
        """Longest-path depth of every layer in the pair graph (error on a cycle)."""
        edges = {a: [id(B) for B, _ in cons] for a, cons in groups.items()}
        nodes = set(edges) | {b for bs in edges.values() for b in bs}
        indeg = {n: 0 for n in nodes}
        for bs in edges.values():
            for b in bs:
                indeg[b] += 1
        depth = {n: 0 for n in nodes}
        frontier = [n for n in nodes if indeg[n] == 0]
        seen = 0
        while frontier:
            n = frontier.pop()
            seen += 1
            for b in edges.get(n, ()):
                depth[b] = max(depth[b], depth[n] + 1)
                indeg[b] -= 1
                if indeg[b] == 0:
                    frontier.append(b)
        if seen != len(nodes):
            raise ValueError("enorm: the pairs contain a cycle")
        if self.c != 1.0:
            for a, bs in edges.items():
                if any(depth[b] != depth[a] + 1 for b in bs):
                    raise ValueError(f"enorm: with c != 1 every consumer must sit exactly one level "
                                     f"below its producer ({label(producers[a])!r} violates this)")
        return depth

    def check(self) -> None:
        for layer in self.layers:
            _check_plain(layer, repr(self.names.get(id(layer), type(layer).__name__)))

    @torch.no_grad()
    def energy(self) -> float:
        """``sum_L r^depth(L) ||W_L||_F^2`` over the balanced layers (biases excluded)."""
        return float(sum(self.r ** self.depth[id(L)] * L.weight.double().pow(2).sum()
                         for L in self.layers))

    @torch.no_grad()
    def _norms(self, A, consumers):
        """Incoming (row of ``A``) and outgoing (consuming columns) 2-norms of ``A``'s units."""
        row = torch.linalg.vector_norm(upcast(A.weight), dim=1)  # float32 for half weights
        col_sq = torch.zeros_like(row)
        for B, idx in consumers:
            col_sq += upcast(B.weight[:, idx]).pow(2).sum(0).to(row.dtype)
        return row, col_sq.sqrt()

    @torch.no_grad()
    def imbalance(self) -> float:
        """``max_i |log(r^(1/2) ||out_i|| / ||in_i||)|`` over live units: 0 exactly at the fixed
        point, where no coordinate update moves (``d_i = 1`` for every unit)."""
        worst = 0.0
        for A, consumers in self.groups:
            row, col = self._norms(A, consumers)
            ok = (row > 0) & (col > 0)
            if bool(ok.any()):
                gap = (0.5 * math.log(self.r) + col[ok].double().log() - row[ok].double().log()).abs()
                worst = max(worst, float(gap.max()))
        return worst

    @torch.no_grad()
    def step(self, optimizers=None) -> float:
        """Run ``self.cycles`` cycles; rescale the optimizers' state. Returns ``max_i |d_i - 1|``
        over the last cycle (how far that cycle still moved)."""
        self.check()
        opts = _as_optimizer_list(optimizers)
        for _ in range(self.cycles):
            max_dev = self._cycle(opts)
        return max_dev

    def _cycle(self, opts: list) -> float:
        max_dev = 0.0
        for A, consumers in self.groups:
            row, col = self._norms(A, consumers)
            tiny = torch.finfo(row.dtype).tiny ** 0.5
            ok = (row > tiny) & (col > tiny)
            # d^4 = r col^2 / row^2, written as r^(1/4) sqrt(col / row) (no squares: no overflow)
            d = torch.where(ok, self.r ** 0.25 * (col / row.clamp_min(tiny)).sqrt(), torch.ones_like(row))
            max_dev = max(max_dev, float((d - 1).abs().max()) if d.numel() else 0.0)
            _scale(A.weight, d[:, None], opts)
            if A.bias is not None:
                _scale(A.bias, d, opts)
            for B, idx in consumers:
                _scale(B.weight, 1.0 / d[None, :], opts, cols=idx)
        return max_dev


def _as_optimizer_list(optimizers) -> list:
    if optimizers is None:
        return []
    if isinstance(optimizers, torch.optim.Optimizer):
        return [optimizers]
    return list(optimizers)


def _scale(p: torch.Tensor, factor: torch.Tensor, opts: Iterable, cols=None) -> None:
    """Multiply ``p`` (or its columns ``cols``) by ``factor`` and fix the optimizer state."""

    def mul(t: torch.Tensor, f: torch.Tensor) -> None:
        if upcast(t) is not t:  # half precision: multiply in float32, round once
            if cols is None:
                t.copy_(upcast(t) * f)
            else:
                t[:, cols] = (upcast(t[:, cols]) * f).to(t.dtype)
            return
        f = f.to(t.dtype)
        if cols is None:
            t.mul_(f)
        elif isinstance(cols, slice):
            t[:, cols].mul_(f)
        else:
            t[:, cols] = t[:, cols] * f

    mul(p, factor)
    if p.grad is not None:
        mul(p.grad, 1.0 / factor)
    for opt in opts:
        state = opt.state.get(p)
        if not state:
            continue
        for key, val in state.items():
            if not torch.is_tensor(val) or val.shape != p.shape:
                continue
            if key not in STATE_POWERS:
                raise NotImplementedError(
                    f"enorm: optimizer {type(opt).__name__} keeps state {key!r} that ENorm does not "
                    f"know how to rescale (known: {sorted(STATE_POWERS)})")
            mul(val, factor ** (-STATE_POWERS[key]))


# ----------------------------------------------------------------------------- inference


def _is_nerfstudio_mlp(m: nn.Module) -> bool:
    layers = getattr(m, "layers", None)
    return (isinstance(layers, nn.ModuleList) and len(layers) > 0
            and all(isinstance(layer, nn.Linear) for layer in layers)
            and hasattr(m, "skip_connections") and hasattr(m, "activation"))


def infer_pairs(root: nn.Module, selected: set[int] | None = None) -> list[tuple]:
    """Pairs found in ``root`` (see module docstring); both layers must be in ``selected``."""
    ok = (lambda m: True) if selected is None else (lambda m: id(m) in selected)
    pairs: list[tuple] = []
    seen: set[tuple[int, int]] = set()

    def add(A, B, cols=None):
        if ok(A) and ok(B) and (id(A), id(B)) not in seen:
            seen.add((id(A), id(B)))
            pairs.append((A, B) if cols is None else (A, B, cols))

    for m in root.modules():
        if isinstance(m, nn.Sequential):
            prev = None
            for child in m.children():
                if isinstance(child, nn.Linear):
                    if prev is not None:
                        add(prev, child)
                    prev = child
                elif not isinstance(child, POSITIVELY_HOMOGENEOUS):
                    prev = None
        elif _is_nerfstudio_mlp(m):
            if not is_positively_homogeneous(m.activation):
                continue
            layers = list(m.layers)
            skips = getattr(m, "_skip_connections", None)
            if skips is None:
                skips = set(m.skip_connections or ())
            for i in range(len(layers) - 1):
                A, B = layers[i], layers[i + 1]
                if (i + 1) in skips:
                    add(A, B, slice(B.in_features - A.out_features, B.in_features))
                else:
                    add(A, B)
    return pairs


def apply(root, targets, *, pairs=None, c: float = 1.0, cycles: int = 1, c_rule: str = "reference"):
    """Registry entry point: attach an ``ENorm`` to ``root`` (run by ``post_step``)."""
    names = {id(m): (n or "<root>") for n, m in root.named_modules()}
    if any(isinstance(p, ENorm) for p in root.__dict__.get("_wcnerf_post_step", ())):
        raise ValueError("enorm: this module already has ENorm attached")
    selected = {id(m) for _, m in targets}
    if pairs is None:
        found = infer_pairs(root, selected)
        if not found:
            raise ValueError(
                "enorm: no pair of consecutive Linear layers found (looked for nn.Sequential chains "
                "Linear, ReLU-like..., Linear and nerfstudio-style MLPs with a positively homogeneous "
                "activation); pass pairs=[(producer, consumer[, cols]), ...]")
    else:
        found = []
        for pair in pairs:
            pair = tuple(pair)
            resolved = [root.get_submodule(x) if isinstance(x, str) else x for x in pair[:2]]
            found.append(tuple(resolved) + pair[2:])
    enorm = ENorm(found, c=c, names=names, cycles=cycles, c_rule=c_rule)
    root.__dict__.setdefault("_wcnerf_post_step", []).append(enorm)
    return root
