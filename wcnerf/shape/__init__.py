"""Occupancy / signed-distance shape fitting with weight-conditioned MLPs (no nerfstudio).

Pipeline: ``mesh`` (load, normalise into [-1, 1]^3, clear errors) -> ``sampling`` (near-surface
and uniform points, winding-number labels, cached) -> ``field`` (encoding + MLP, any
``wcnerf.conditioning`` conditioner) -> ``train`` (config, loop, checkpoint/resume) ->
``extract`` (chunked grid + marching cubes) -> ``metrics`` (IoU, Chamfer-L1, normal
consistency, F-score) -> ``render`` (``fit.png``: input and fit side by side); ``compare`` runs
several conditioners on the same points and seeds (``fits.png``, ``comparison.md``); ``view``
opens finished runs in the shape viewer (``--view RUN_DIR``).
Command line: ``cli`` (``scripts/shape_fit.py``), settings grouped as ``train.FitConfig``.
"""

from .mesh import MeshLoadError, Normalization, ShapeMesh, load_mesh

__all__ = ["MeshLoadError", "Normalization", "ShapeMesh", "load_mesh", "FitConfig", "fit"]


def __getattr__(name):  # torch-heavy parts are imported on first use
    if name in ("FitConfig", "fit"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
