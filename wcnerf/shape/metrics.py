"""Shape metrics: volumetric IoU, Chamfer-L1, normal consistency and F-score.

Surface metrics use point-to-*surface* distances (samples on one mesh against the exact closest
point on the other) rather than point-to-point nearest neighbours between two samplings, so a
mesh against itself scores exactly Chamfer 0 / F-score 1, and the values do not depend on how
densely the *reference* is sampled.
"""

from __future__ import annotations

import numpy as np
import trimesh

from .sampling import closest_points, inside, sample_surface


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean occupancy arrays; NaN (undefined, not a perfect
    1.0) when both are empty: an empty prediction of an empty truth measures nothing."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(a, b).sum() / union)


def mesh_iou(pred: trimesh.Trimesh, gt: trimesh.Trimesh, points: np.ndarray) -> float:
    """IoU of two meshes' interiors (winding number) measured at the given points."""
    if len(pred.faces) == 0:
        return iou(np.zeros(len(points), bool), inside(gt.vertices, gt.faces, points))
    return iou(inside(pred.vertices, pred.faces, points), inside(gt.vertices, gt.faces, points))


def _face_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def surface_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, n_points: int = 100_000, seed: int = 0,
                    fscore_fraction: float = 0.01) -> dict:
    """Chamfer-L1, normal consistency and F-score of ``pred`` against ``gt``.

    * accuracy: mean distance from points on pred to the gt surface; completeness: the reverse;
      ``chamfer_l1`` is their mean (the Occupancy Networks convention), in the meshes' units.
    * normal consistency: mean |cos| between the normal at a sample and the normal of the
      closest face on the other mesh, averaged over both directions.
    * F-score at ``fscore_fraction`` (1 %) of gt's bounding-box diagonal.
    """
    tau = fscore_fraction * float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    if len(pred.faces) == 0:
        return {"chamfer_l1": None, "accuracy": None, "completeness": None, "normal_consistency": 0.0,
                "fscore": 0.0, "precision": 0.0, "recall": 0.0, "fscore_tau": tau}
    rng = np.random.default_rng(seed)
    p_pts, p_face = sample_surface(pred.vertices, pred.faces, n_points, rng)
    g_pts, g_face = sample_surface(gt.vertices, gt.faces, n_points, rng)
    p_n, g_n = _face_normals(pred), _face_normals(gt)
    d_pg, i_pg, _ = closest_points(gt.vertices, gt.faces, p_pts)  # pred samples -> gt surface
    d_gp, i_gp, _ = closest_points(pred.vertices, pred.faces, g_pts)  # gt samples -> pred surface
    acc, comp = float(d_pg.mean()), float(d_gp.mean())
    nc_p = np.abs((p_n[p_face] * g_n[i_pg]).sum(1)).mean()
    nc_g = np.abs((g_n[g_face] * p_n[i_gp]).sum(1)).mean()
    precision = float((d_pg <= tau).mean())
    recall = float((d_gp <= tau).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer_l1": 0.5 * (acc + comp), "accuracy": acc, "completeness": comp,
            "normal_consistency": float(0.5 * (nc_p + nc_g)), "fscore": float(f),
            "precision": precision, "recall": recall, "fscore_tau": tau}
