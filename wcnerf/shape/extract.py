"""Mesh extraction: evaluate a field on a grid in bounded-memory chunks, then marching cubes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh
from skimage import measure

from ..atomic import atomic_path
from .mesh import Normalization


@torch.no_grad()
def evaluate_points(fn: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray, device: torch.device,
                    chunk: int = 65536) -> np.ndarray:
    """Apply ``fn`` to (N, 3) points in chunks; returns float32 numpy (N,)."""
    out = np.empty(len(points), dtype=np.float32)
    for i in range(0, len(points), chunk):
        x = torch.as_tensor(np.asarray(points[i : i + chunk], dtype=np.float32), device=device)
        out[i : i + chunk] = fn(x).float().cpu().numpy()
    return out


@torch.no_grad()
def evaluate_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, device: torch.device,
                  lo: float = -1.0, hi: float = 1.0, chunk: int = 65536) -> np.ndarray:
    """Field values on a resolution^3 grid over [lo, hi]^3, indexed [x, y, z].

    Points are generated slab by slab so only one chunk of coordinates exists at a time:
    peak extra memory is O(chunk), not O(resolution^3 * 3).
    """
    ax = torch.linspace(lo, hi, resolution, device=device)
    out = np.empty(resolution**3, dtype=np.float32)
    yz = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), dim=-1).reshape(-1, 2)  # (R^2, 2)
    n_plane = resolution * resolution
    for start in range(0, resolution**3, chunk):
        stop = min(start + chunk, resolution**3)
        idx = torch.arange(start, stop, device=device)
        x = ax[idx // n_plane]
        pts = torch.cat([x[:, None], yz[idx % n_plane]], dim=1)
        out[start:stop] = fn(pts).float().cpu().numpy()
    return out.reshape((resolution,) * 3)


def marching_cubes(values: np.ndarray, level: float = 0.0, inside_is_negative: bool = True,
                   lo: float = -1.0, hi: float = 1.0) -> trimesh.Trimesh:
    """Iso-surface of a grid of values over [lo, hi]^3, with outward-facing triangles.

    Returns an empty mesh (not an error) when the level set is not crossed, e.g. a field
    that is still everywhere outside early in training.
    """
    vals = values if inside_is_negative else -values
    lvl = level if inside_is_negative else -level
    if not (vals.min() < lvl < vals.max()):
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64), process=False)
    res = values.shape[0]
    spacing = ((hi - lo) / (res - 1),) * 3
    verts, faces, _, _ = measure.marching_cubes(vals, level=lvl, spacing=spacing)
    verts = verts + lo
    # With skimage's default gradient_direction="descent" the triangles of an inside-negative
    # field already face outwards (checked in tests: positive signed volume).
    return trimesh.Trimesh(vertices=verts, faces=np.ascontiguousarray(faces), process=False)


def to_original(mesh: trimesh.Trimesh, norm: Normalization) -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices=norm.to_original(mesh.vertices), faces=mesh.faces.copy(), process=False)


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Write via a temporary file so a killed run never leaves a truncated mesh."""
    with atomic_path(path) as tmp:
        mesh.export(str(tmp))
