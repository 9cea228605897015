"""The neural field: input encoding + MLP whose Linear layers take any weight conditioner.

The conditioner is applied with :func:`wcnerf.conditioning.condition` after the plain MLP is
built, so the same seed gives the same raw initial weights for every conditioner and a
comparison isolates the effect of conditioning itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..conditioning import condition

Encoding = Literal["none", "positional", "fourier"]
Activation = Literal["relu", "softplus", "silu"]


@dataclass(frozen=True)
class FieldConfig:
    width: int = 256
    depth: int = 4  # number of hidden layers
    encoding: Encoding = "positional"
    n_freqs: int = 6  # positional: octaves 2^0..2^(n-1) (times pi); fourier: number of features
    fourier_scale: float = 4.0  # std of the Gaussian Fourier frequency matrix (fourier only)
    activation: Activation = "relu"


class PositionalEncoding(nn.Module):
    """NeRF-style [x, sin(2^k pi x), cos(2^k pi x)]: lets a small MLP represent thin detail."""

    def __init__(self, n_freqs: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)
        self.out_dim = 3 + 6 * n_freqs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = (x[..., None, :] * self.freqs[:, None]).flatten(-2)
        return torch.cat([x, torch.sin(xb), torch.cos(xb)], dim=-1)


class FourierEncoding(nn.Module):
    """Random Gaussian Fourier features (Tancik et al. 2020); the matrix is seeded, not learned."""

    def __init__(self, n_features: int, scale: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(3, n_features, generator=g) * scale)
        self.out_dim = 3 + 2 * n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = 2 * math.pi * x @ self.B
        return torch.cat([x, torch.sin(xb), torch.cos(xb)], dim=-1)


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":  # smooth, so the eikonal term's second derivatives are non-zero
        return nn.Softplus(beta=100)
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}")


class ShapeField(nn.Module):
    """x in [-1, 1]^3 -> one scalar (occupancy logit, or signed distance)."""

    def __init__(self, cfg: FieldConfig, seed: int = 0):
        super().__init__()
        if cfg.encoding == "positional":
            self.encoding: nn.Module = PositionalEncoding(cfg.n_freqs)
            in_dim = self.encoding.out_dim
        elif cfg.encoding == "fourier":
            self.encoding = FourierEncoding(cfg.n_freqs, cfg.fourier_scale, seed)
            in_dim = self.encoding.out_dim
        elif cfg.encoding == "none":
            self.encoding = nn.Identity()
            in_dim = 3
        else:
            raise ValueError(f"unknown encoding {cfg.encoding!r}")
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(d, cfg.width), make_activation(cfg.activation)]
            d = cfg.width
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoding(x)).squeeze(-1)


def build_field(cfg: FieldConfig, conditioning: str, seed: int) -> ShapeField:
    torch.manual_seed(seed)
    field = ShapeField(cfg, seed=seed)
    return condition(field, conditioning)  # every nn.Linear; the encoding has none
