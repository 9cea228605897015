"""Pictures of shape fits: the input mesh and fitted meshes side by side, from the same cameras.

Off-screen on a CPU with matplotlib alone (no OpenGL): each mesh is turned by the view's
rotation, projected orthographically, back faces are culled, the remaining triangles are drawn
far to near (painter's algorithm) as one 2D ``PolyCollection``, Lambert-shaded with a light
over the viewer's shoulder. Large meshes are first simplified by vertex clustering
(:func:`cluster_decimate`) so a figure takes about a second whatever the input's size.

Everything is drawn in the unit cube the trainer works in ([-1, 1]^3, +y up, as in the shape
viewer): the input (``ShapeMesh.mesh``) and a fit (``mesh.ply`` mapped back with
``Normalization.to_unit``) then share one frame, and every panel of a row one camera.

- :func:`render_fit`: one run, ``<run>/fit.png`` (input | fit, one row per view).
- :func:`render_fits`: ``--compare``, ``fits.png`` (input | each conditioner's fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path

__all__ = ["DEFAULT_VIEWS", "FIT_PNG", "FITS_PNG", "Panel", "cluster_decimate", "fit_title", "render_fit",
           "render_fits", "render_panels"]

FIT_PNG = "fit.png"
"""A run's picture (written before metrics.json, which marks the run finished)."""
FITS_PNG = "fits.png"
"""A comparison's picture (next to comparison.md, which embeds it)."""

DEFAULT_VIEWS: Tuple[Tuple[float, float], ...] = ((20.0, 30.0), (20.0, 150.0), (60.0, 270.0))
"""(elevation, azimuth) in degrees: front-right, back-left and from above; +y is up."""
MAX_FACES = 12_000
"""Meshes with more faces are simplified to about this many before drawing."""
INPUT_COLOR = (0.67, 0.67, 0.67)  # grey, as in the shape viewer
FIT_COLOR = (0.94, 0.55, 0.16)  # orange, as in the shape viewer
LIGHT = np.array([-0.4, 0.6, 1.0]) / np.linalg.norm([-0.4, 0.6, 1.0])  # camera space: upper left, from the eye


@dataclass
class Panel:
    """One column of a figure: a mesh in unit coordinates (None or empty: nothing to draw)."""

    label: str
    vertices: Optional[np.ndarray]
    faces: Optional[np.ndarray]
    color: Tuple[float, float, float] = FIT_COLOR

    @classmethod
    def of(cls, label: str, mesh, color=FIT_COLOR) -> "Panel":
        if mesh is None:
            return cls(label, None, None, color)
        return cls(label, np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64), color)

    @property
    def n_faces(self) -> int:
        return 0 if self.faces is None else len(self.faces)


def cluster_decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int = MAX_FACES,
                     lo: float = -1.0, hi: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Simplify by vertex clustering: vertices in the same cell of a regular grid over
    ``[lo, hi]^3`` merge into their mean, faces that collapse are dropped. The grid is made
    coarser until at most ``max_faces`` remain. Keeps the silhouette (no holes, unlike dropping
    faces at random); returns the input unchanged when it is small enough."""
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if len(faces) <= max_faces:
        return vertices, faces
    # faces ~ 4 * cells^2 on a closed surface of the cube's size: start near the target, shrink
    cells = max(8, int(np.sqrt(max_faces / 2.0)))
    while True:
        q = np.clip(((vertices - lo) / (hi - lo) * cells).astype(np.int64), 0, cells - 1)
        keys = (q[:, 0] * cells + q[:, 1]) * cells + q[:, 2]
        uniq, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
        new_v = np.stack([np.bincount(inverse, weights=vertices[:, k], minlength=len(uniq)) for k in range(3)], 1)
        new_v /= counts[:, None]
        f = inverse[faces]
        keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
        f = f[keep]
        f = f[np.unique(np.sort(f, axis=1), axis=0, return_index=True)[1]]  # one of each duplicated triangle
        if len(f) <= max_faces or cells <= 8:
            return new_v, f
        cells = max(8, int(cells * 0.8))


def _rotation(elev: float, azim: float) -> np.ndarray:
    """World -> camera: turn by ``azim`` about +y, then tilt by ``elev`` about the camera's x; the
    camera looks along -z (camera space: x right, y up, z towards the eye)."""
    a, e = np.radians(azim), np.radians(elev)
    ry = np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(e), -np.sin(e)], [0.0, np.sin(e), np.cos(e)]])
    return rx @ ry


def _project(vertices: np.ndarray, faces: np.ndarray, elev: float, azim: float, color) -> Tuple[np.ndarray, np.ndarray]:
    """2D triangles (front-facing, far to near) and their shaded RGB colours."""
    v = vertices @ _rotation(elev, azim).T
    tri = v[faces]  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-20
    n[ok] /= norm[ok, None]
    # Outward normals face the eye when n_z > 0. A mesh with inconsistent winding would lose
    # faces here: draw both sides then (shaded by |n . l|).
    front = (n[:, 2] > 0) & ok
    if front.sum() < 0.3 * ok.sum():
        front = ok
    tri, n = tri[front], n[front]
    depth = tri[:, :, 2].mean(1)
    order = np.argsort(depth)  # far (small z) first
    tri, n = tri[order], n[order]
    shade = 0.28 + 0.72 * np.abs(n @ LIGHT)
    rgb = np.clip(np.asarray(color)[None, :] * shade[:, None], 0, 1)
    return tri[:, :, :2], rgb


def render_panels(panels: Sequence[Panel], path: Path, *, title: str = "",
                  views: Sequence[Tuple[float, float]] = DEFAULT_VIEWS, max_faces: int = MAX_FACES,
                  panel_size: float = 2.6) -> Path:
    """Draw ``panels`` side by side (columns), one row per view (the same camera and the same
    framing across a row), and write the PNG atomically. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    simplified = []
    for p in panels:
        if p.n_faces:
            simplified.append(cluster_decimate(p.vertices, p.faces, max_faces))
        else:
            simplified.append(None)
    ncols, nrows = max(1, len(panels)), max(1, len(views))
    label_lines = max(p.label.count("\n") + 1 for p in panels) if panels else 1
    head = (0.35 + 0.2 * title.count("\n") if title else 0.0) + 0.17 * label_lines + 0.05
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + head + 0.35), dpi=100)
    FigureCanvasAgg(fig)
    for i, (elev, azim) in enumerate(views):
        # one frame for the row: every mesh of it fits, centred on the origin (the input's centre)
        rot = _rotation(elev, azim)
        r = max([np.abs(m[0] @ rot.T)[:, :2].max() for m in simplified if m is not None and len(m[1])] or [1.0])
        r = 1.06 * max(r, 1e-6)
        for j, (p, mesh) in enumerate(zip(panels, simplified)):
            ax = fig.add_subplot(nrows, ncols, i * ncols + j + 1)
            ax.set_xlim(-r, r)
            ax.set_ylim(-r, r)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if mesh is None:
                ax.text(0, 0, "no surface\n(the field never crosses its level set)", ha="center", va="center",
                        fontsize=8, color="0.4")
            else:
                tri, rgb = _project(mesh[0], mesh[1], elev, azim, p.color)
                ax.add_collection(PolyCollection(tri, facecolors=rgb, edgecolors=rgb, linewidths=0.3,
                                                 antialiased=False))
            if i == 0:
                ax.set_title(p.label, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"elev {elev:g}°, azim {azim:g}°", fontsize=7, color="0.4")
    if title:
        fig.suptitle(title, fontsize=10)
    top = 1.0 - head / (panel_size * nrows + head + 0.35)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=top, wspace=0.02, hspace=0.04)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def fit_title(metrics: dict) -> str:
    """``IoU 0.9712 (grid 0.9688), Chamfer-L1 0.00412`` from a run's metrics."""
    return (f"IoU {_fmt(metrics.get('iou_points'), '.4f')} (grid {_fmt(metrics.get('iou_grid'), '.4f')}), "
            f"Chamfer-L1 {_fmt(metrics.get('chamfer_l1'), '.5f')}")


def render_fit(input_unit, fit_unit, metrics: dict, path: Path, *, name: str = "", label: str = "fit",
               views: Sequence[Tuple[float, float]] = DEFAULT_VIEWS, max_faces: int = MAX_FACES) -> Path:
    """A run's picture: the input mesh and the fitted (marching-cubes) mesh, both in unit
    coordinates (``fit_unit`` None: no surface), IoU and Chamfer in the title."""
    n_in, n_fit = len(input_unit.faces), 0 if fit_unit is None else len(fit_unit.faces)
    panels = [Panel.of(f"input ({n_in} faces)", input_unit, INPUT_COLOR),
              Panel.of(f"{label} ({n_fit} faces)", fit_unit if n_fit else None, FIT_COLOR)]
    title = f"{name}: {label}\n{fit_title(metrics)}" if name else f"{label}: {fit_title(metrics)}"
    return render_panels(panels, path, title=title, views=views, max_faces=max_faces)


def render_fits(input_unit, fits: Sequence[Tuple[str, object, dict]], path: Path, *, title: str = "",
                views: Sequence[Tuple[float, float]] = DEFAULT_VIEWS, max_faces: int = MAX_FACES) -> Path:
    """A comparison's picture: the input, then each ``(label, mesh_unit or None, metrics)`` fit,
    each column titled with its IoU and Chamfer."""
    panels = [Panel.of(f"input ({len(input_unit.faces)} faces)", input_unit, INPUT_COLOR)]
    for label, mesh, metrics in fits:
        has = mesh is not None and len(mesh.faces) > 0
        panels.append(Panel.of(f"{label}\nIoU {_fmt(metrics.get('iou_points'), '.4f')}, "
                               f"CD {_fmt(metrics.get('chamfer_l1'), '.5f')}", mesh if has else None, FIT_COLOR))
    return render_panels(panels, path, title=title, views=views, max_faces=max_faces)
