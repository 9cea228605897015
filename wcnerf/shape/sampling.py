"""Training/evaluation points and their ground-truth labels, computed once per mesh and cached.

Inside/outside comes from libigl's fast generalized winding number rather than ray casting or
a watertightness test: it degrades gracefully on scans with holes (the Stanford bunny has five
open boundary loops), where "inside" is still well defined as winding number > 1/2.
Signed distances take their sign from that same winding number and their magnitude from an
exact closest-point query (libigl's AABB tree), so occupancy and SDF labels always agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import igl
import numpy as np

from ..atomic import atomic_path
from .mesh import ShapeMesh

# Fast winding number: the name changed across libigl python versions.
_fwn = getattr(igl, "fast_winding_number_for_meshes", None) or getattr(igl, "fast_winding_number")


def winding_number(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Generalized winding number of ``points`` w.r.t. the triangle soup (chunked to bound memory)."""
    V = np.ascontiguousarray(vertices, dtype=np.float64)
    F = np.ascontiguousarray(faces, dtype=np.int64)
    P = np.asarray(points, dtype=np.float64)
    out = np.empty(len(P), dtype=np.float64)
    for i in range(0, len(P), chunk):
        out[i : i + chunk] = _fwn(V, F, np.ascontiguousarray(P[i : i + chunk]))
    return out


def inside(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Occupancy (bool) as winding number > 1/2; robust to holes and flipped orientation.

    The absolute value makes an inward-oriented mesh (negative signed volume) still give
    its interior as inside.
    """
    return np.abs(winding_number(vertices, faces, points)) > 0.5


def closest_points(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray):
    """Unsigned distance, closest face index and closest point on the mesh for each point."""
    sq, idx, cp = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, dtype=np.float64),
        np.ascontiguousarray(vertices, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64),
    )
    return np.sqrt(np.maximum(sq, 0.0)), idx, cp


def signed_distance(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Signed distance, negative inside (sign: winding number; magnitude: closest point)."""
    dist, _, _ = closest_points(vertices, faces, points)
    return np.where(inside(vertices, faces, points), -dist, dist)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """Area-uniform points on a triangle mesh, with the index of the face each lies on.

    Written out (instead of trimesh.sample) so the result depends only on ``rng``.
    """
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not total > 0:
        raise ValueError("mesh has zero surface area")
    face = rng.choice(len(area), size=n, p=area / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return pts, face


@dataclass(frozen=True)
class SamplingConfig:
    """How training and evaluation points are drawn (all in unit coordinates, box [-1, 1]^3)."""

    n_near: int = 400_000  # near-surface points, half at each noise scale
    sigma_near: tuple[float, float] = (0.005, 0.05)  # Gaussian offset std devs (fine, coarse)
    n_uniform: int = 100_000  # uniform in the box [-1, 1]^3
    n_eval: int = 100_000  # fixed uniform points in the mesh's bounding box for IoU
    eval_padding: float = 0.02  # bounding box padding for the IoU points (fraction of extent)
    seed: int = 0  # sampling seed: fixed per mesh so every run and conditioner sees the same points


@dataclass
class ShapeSamples:
    points: np.ndarray  # (N, 3) float32 training points: near-surface then uniform
    occupancy: np.ndarray  # (N,) uint8
    sdf: np.ndarray  # (N,) float32, negative inside
    eval_points: np.ndarray  # (M, 3) float32
    eval_occupancy: np.ndarray  # (M,) uint8
    n_near: int  # the first n_near rows of ``points`` are near-surface


def _atomic_savez(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def cache_key(shape: ShapeMesh, cfg: SamplingConfig, version: int = 1) -> str:
    blob = json.dumps({"mesh": shape.content_hash, "sampling": asdict(cfg), "v": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compute_samples(shape: ShapeMesh, cfg: SamplingConfig) -> ShapeSamples:
    rng = np.random.default_rng(cfg.seed)
    V, F = shape.mesh.vertices, shape.mesh.faces
    surf, _ = sample_surface(V, F, cfg.n_near, rng)
    sig = np.where(np.arange(cfg.n_near) < cfg.n_near // 2, cfg.sigma_near[0], cfg.sigma_near[1])
    near = surf + rng.normal(size=surf.shape) * sig[:, None]
    near = np.clip(near, -1.0, 1.0)
    uni = rng.uniform(-1.0, 1.0, size=(cfg.n_uniform, 3))
    pts = np.concatenate([near, uni], axis=0)
    occ = inside(V, F, pts)
    dist, _, _ = closest_points(V, F, pts)
    sdf = np.where(occ, -dist, dist)
    lo, hi = shape.mesh.bounds
    pad = cfg.eval_padding * (hi - lo)
    ev = rng.uniform(lo - pad, hi + pad, size=(cfg.n_eval, 3))
    ev_occ = inside(V, F, ev)
    return ShapeSamples(
        points=pts.astype(np.float32),
        occupancy=occ.astype(np.uint8),
        sdf=sdf.astype(np.float32),
        eval_points=ev.astype(np.float32),
        eval_occupancy=ev_occ.astype(np.uint8),
        n_near=cfg.n_near,
    )


def load_or_compute_samples(shape: ShapeMesh, cfg: SamplingConfig, cache_dir: Path | None) -> ShapeSamples:
    """Labels are the expensive part; cache them keyed by mesh geometry hash + sampling settings."""
    if cache_dir is None:
        return compute_samples(shape, cfg)
    path = Path(cache_dir) / f"samples-{cache_key(shape, cfg)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return ShapeSamples(
                    points=z["points"], occupancy=z["occupancy"], sdf=z["sdf"],
                    eval_points=z["eval_points"], eval_occupancy=z["eval_occupancy"], n_near=int(z["n_near"]),
                )
        except Exception:
            pass  # a corrupt cache file is recomputed
    s = compute_samples(shape, cfg)
    _atomic_savez(path, points=s.points, occupancy=s.occupancy, sdf=s.sdf, eval_points=s.eval_points,
                  eval_occupancy=s.eval_occupancy, n_near=np.array(s.n_near))
    return s


def grid_points(resolution: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Vertices of a regular resolution^3 grid over [lo, hi]^3 in C order (x slowest)."""
    ax = np.linspace(lo, hi, resolution)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)


def load_or_compute_grid_occupancy(shape: ShapeMesh, resolution: int, cache_dir: Path | None) -> np.ndarray:
    """Ground-truth occupancy on the extraction grid (for grid IoU), cached like the samples."""
    key = hashlib.sha256(f"{shape.content_hash}-grid-{resolution}".encode()).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"grid-{resolution}-{key}.npz"
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                return np.unpackbits(z["occ"])[: resolution**3].astype(bool).reshape((resolution,) * 3)
        except Exception:
            pass
    occ = inside(shape.mesh.vertices, shape.mesh.faces, grid_points(resolution)).reshape((resolution,) * 3)
    if path is not None:
        _atomic_savez(path, occ=np.packbits(occ.reshape(-1)))
    return occ
