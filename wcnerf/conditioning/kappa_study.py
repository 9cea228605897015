"""How often does equilibration lower the 2-norm condition number?

The paper states ``kappa(E W) <= kappa(W)`` unconditionally; that is not a theorem (the
proven statement is van der Sluis's ``kappa(E W) <= sqrt(m) min_D kappa(D W)``). This script
measures the frequency over random matrices, per mode and matrix family:

* ``gaussian``: i.i.d. N(0, 1) entries;
* ``rows-scaled``: ``diag(10^u) G``, ``u ~ U(-3, 3)`` per row;
* ``cols-scaled``: ``G diag(10^u)`` per column;
* ``both-scaled``: ``diag(10^u) G diag(10^v)``.

Shapes (out x in): 16x16, 32x16, 16x32. ``kappa`` is the ratio of the largest to the
smallest of the ``min(out, in)`` singular values, in float64.

    python -m wcnerf.conditioning.kappa_study [--n 10000] [--seed 0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import tyro

from .equilibrate import equilibrate

FAMILIES = ("gaussian", "rows-scaled", "cols-scaled", "both-scaled")
SHAPES = ((16, 16), (32, 16), (16, 32))
MODES = ("out", "in", "both")


def kappa(W: torch.Tensor) -> torch.Tensor:
    """Batched 2-norm condition number (float64 SVD)."""
    s = torch.linalg.svdvals(W.double())
    return s[..., 0] / s[..., -1]


def sample(family: str, n: int, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    m, k = shape
    G = torch.randn(n, m, k, generator=gen, dtype=torch.float64)
    if family in ("rows-scaled", "both-scaled"):
        G = G * 10 ** (6 * torch.rand(n, m, 1, generator=gen, dtype=torch.float64) - 3)
    if family in ("cols-scaled", "both-scaled"):
        G = G * 10 ** (6 * torch.rand(n, 1, k, generator=gen, dtype=torch.float64) - 3)
    return G


def measure(n: int = 10_000, seed: int = 0, modes=MODES, families=FAMILIES, shapes=SHAPES) -> dict:
    """{(mode, family): (fraction with kappa(EW) <= kappa(W), median kappa(EW)/kappa(W))},
    pooled over ``shapes`` (n matrices per shape)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for family in families:
        Ws = [sample(family, n, shape, gen) for shape in shapes]
        k0 = torch.cat([kappa(W) for W in Ws])
        for mode in modes:
            k1 = torch.cat([kappa(torch.vmap(lambda w: equilibrate(w, mode))(W)) for W in Ws])
            ratio = k1 / k0
            out[(mode, family)] = (float((k1 <= k0).double().mean()), float(ratio.median()))
    return out


@dataclass
class KappaStudy:
    """How often does equilibration lower the 2-norm condition number? (the table of docs/results.md)"""

    n: int = 10_000
    """Matrices per family and shape."""
    seed: int = 0

    def main(self) -> None:
        res = measure(self.n, self.seed)
        shapes = ", ".join(f"{a}x{b}" for a, b in SHAPES)
        print(f"fraction of matrices with kappa(EW) <= kappa(W)  [median kappa(EW)/kappa(W)]; "
              f"{self.n} per family and shape ({shapes})")
        print(f"{'family':<12}" + "".join(f"{m:>22}" for m in MODES))
        for family in FAMILIES:
            cells = "".join(f"{res[(m, family)][0]:>12.4f} [{res[(m, family)][1]:.2g}]".rjust(22) for m in MODES)
            print(f"{family:<12}{cells}")


def main(args: Optional[Sequence[str]] = None) -> None:
    tyro.cli(KappaStudy, args=args, prog="python -m wcnerf.conditioning.kappa_study",
             description=__doc__.splitlines()[0]).main()


if __name__ == "__main__":
    main()
