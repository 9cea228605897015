"""Mesh loading and normalisation for shape fitting.

Every mesh is mapped into the cube [-1, 1]^3 (with a margin) before sampling and training so
that one set of hyper-parameters (encoding frequencies, noise scales, eikonal weight) fits
meshes of any size; the affine map is kept so that extracted meshes and distances can be
reported in the input's own coordinates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh


FLAT_FRACTION = 1e-5
"""A bounding box whose smallest side is below this fraction of its largest is flat: the mesh
(a triangle, a square, any planar sheet) encloses no volume."""

DEGENERATE_HEIGHT = 1e-8
"""A triangle is degenerate when one of its heights is below this, measured after
normalisation into [-1, 1]^3 (trimesh's merge tolerance), i.e. relative to the mesh's own
size: the same mesh at 1e-9 or 1e9 keeps the same faces."""

VOLUME_PROBES = 8192
"""Random points in the bounding box at which the winding number is probed for an interior."""


class MeshLoadError(ValueError):
    """A mesh file could not be used. The message is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Normalization:
    """``x_unit = (x_original - center) * scale``; a uniform scale keeps shapes undistorted."""

    center: np.ndarray  # (3,)
    scale: float

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.center) * self.scale

    def to_original(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) / self.scale + self.center

    def as_dict(self) -> dict:
        return {"center": [float(c) for c in self.center], "scale": float(self.scale)}


@dataclass
class ShapeMesh:
    """A loaded mesh: ``mesh`` is in unit coordinates, ``original`` as read from disk."""

    path: Path
    original: trimesh.Trimesh
    mesh: trimesh.Trimesh
    normalization: Normalization
    content_hash: str  # of the triangle geometry (not the file bytes), for label caching

    @property
    def name(self) -> str:
        return self.path.stem


def _as_triangle_mesh(loaded, path: Path) -> trimesh.Trimesh:
    """Turn whatever trimesh returned into one triangle mesh, or explain why it cannot be."""
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.geometry.values())
        tris = [g for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
        if not tris:
            kinds = sorted({type(g).__name__ for g in geoms})
            what = f" (only {', '.join(kinds)})" if kinds else ""
            raise MeshLoadError(path, f"contains no triangle mesh{what}")
        # Merge the scene with its transforms applied, ignoring non-triangle geometry.
        meshes = []
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            g = loaded.geometry[geom_name]
            if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0:
                meshes.append(g.copy().apply_transform(transform))
        loaded = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
    if isinstance(loaded, trimesh.PointCloud):
        raise MeshLoadError(path, f"is a point cloud ({len(loaded.vertices)} points), not a triangle mesh")
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshLoadError(path, f"contains a {type(loaded).__name__}, not a triangle mesh")
    return loaded


def _normalization(mesh: trimesh.Trimesh, margin: float, path: Path) -> Normalization:
    lo, hi = mesh.bounds
    extent = float((hi - lo).max())
    if not (extent > 0 and np.isfinite(extent)):
        raise MeshLoadError(path, "has zero size" if extent == 0 else f"has an unusable size ({extent:g})")
    return Normalization(center=(lo + hi) / 2.0, scale=2.0 * (1.0 - margin) / extent)


def _check_encloses_volume(unit: trimesh.Trimesh, original: trimesh.Trimesh, path: Path) -> None:
    """Refuse a mesh with no interior: a flat bounding box (:data:`FLAT_FRACTION`), or a winding
    number of at most 1/2 at every one of :data:`VOLUME_PROBES` random points of its box."""
    sides = original.bounds[1] - original.bounds[0]
    if sides.min() < FLAT_FRACTION * sides.max():
        dims = " x ".join(f"{d:.3g}" for d in sides)
        raise MeshLoadError(path, f"is flat (bounding box {dims}): it encloses no volume, and occupancy and SDF "
                                  "fitting need a closed surface around an interior")
    from .sampling import winding_number

    lo, hi = unit.bounds
    probes = np.random.default_rng(0).uniform(lo, hi, size=(VOLUME_PROBES, 3))
    w = np.abs(winding_number(unit.vertices, unit.faces, probes))
    if not (w > 0.5).any():
        raise MeshLoadError(path, f"encloses no volume (winding number at most {w.max():.2g} at {VOLUME_PROBES} points "
                                  "in its bounding box; inside is above 0.5): occupancy and SDF fitting need a closed "
                                  "surface around an interior")


def load_mesh(path: str | Path, margin: float = 0.05, require_volume: bool = True) -> ShapeMesh:
    """Read any triangle mesh trimesh understands and normalise it into [-1+margin, 1-margin]^3.

    Raises :class:`MeshLoadError` (never a deep library traceback) for a missing, empty,
    unreadable, non-triangle or degenerate file, and (``require_volume``, for the occupancy
    and SDF tasks) for a mesh that encloses no volume. Degenerate triangles are dropped by a
    test relative to the mesh's size (:data:`DEGENERATE_HEIGHT`).
    """
    path = Path(path)
    if not path.exists():
        raise MeshLoadError(path, "file not found")
    if path.is_dir():
        raise MeshLoadError(path, "is a directory, not a mesh file")
    if path.stat().st_size == 0:
        raise MeshLoadError(path, "file is empty")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many kinds; the user needs the file and reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MeshLoadError(path, f"cannot be read as a mesh ({reason})") from None
    mesh = _as_triangle_mesh(loaded, path)
    if len(mesh.faces) == 0:
        raise MeshLoadError(path, "has no triangle faces")
    faces = np.asarray(mesh.faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshLoadError(path, f"faces are not triangles (shape {faces.shape})")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if not np.isfinite(vertices).all():
        raise MeshLoadError(path, "has non-finite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        bad = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise MeshLoadError(path, f"a face refers to vertex {bad}, but the vertices are numbered 0 to {len(vertices) - 1}")
    # Keep only referenced vertices (scans such as the bunny carry unreferenced ones that
    # would otherwise distort the bounding box).
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    mesh.remove_unreferenced_vertices()
    norm = _normalization(mesh, margin, path)
    # Degenerate triangles are judged in unit coordinates, i.e. relative to the mesh's size.
    unit = trimesh.Trimesh(vertices=norm.to_unit(mesh.vertices), faces=mesh.faces.copy(), process=False)
    keep = unit.nondegenerate_faces(height=DEGENERATE_HEIGHT)
    if not keep.any():
        raise MeshLoadError(path, "has only degenerate (zero-area) triangles")
    if not keep.all():
        mesh.update_faces(keep)
        mesh.remove_unreferenced_vertices()
        norm = _normalization(mesh, margin, path)
    unit = trimesh.Trimesh(vertices=norm.to_unit(mesh.vertices), faces=mesh.faces.copy(), process=False)
    if require_volume:
        _check_encloses_volume(unit, mesh, path)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    h.update(repr(margin).encode())
    return ShapeMesh(path=path, original=mesh, mesh=unit, normalization=norm, content_hash=h.hexdigest()[:16])
