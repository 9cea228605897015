"""Shape metrics and marching cubes on cases with known answers."""

import math

import numpy as np
import pytest
import torch
import trimesh

from wcnerf.shape.extract import evaluate_grid, marching_cubes, to_original
from wcnerf.shape.mesh import Normalization
from wcnerf.shape.metrics import floater_metrics, iou, mesh_iou, surface_metrics

from support.helpers import SPHERE_RADIUS as R  # radius of the sphere fixture (conftest.py)


def lens_iou(r: float, d: float) -> float:
    """IoU of two balls of radius r whose centres are d apart (d < 2r), via the lens volume."""
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    ball = 4 / 3 * math.pi * r**3
    return lens / (2 * ball - lens)


def shifted_sphere_chamfer(r: float, d: float) -> float:
    """Mean distance from a sphere (radius r) to the same sphere moved by d, in closed form.

    A point at polar angle theta is s = sqrt(r^2 + d^2 - 2 r d cos theta) from the other centre,
    hence |s - r| from the other sphere; with u = cos theta uniform on [-1, 1] (area measure),
    du = -s ds / (r d), so E = 1/(2 r d) * int_{|r-d|}^{r+d} |s - r| s ds. Both directions are
    equal by symmetry, so this is also the Chamfer-L1 (mean of the two directions).
    """
    def prim(s):  # antiderivative of (s - r) s
        return s**3 / 3 - r * s**2 / 2

    a, b = abs(r - d), r + d
    if a < r:
        integral = -(prim(r) - prim(a)) + (prim(b) - prim(r))
    else:
        integral = prim(b) - prim(a)
    return integral / (2 * r * d)


def test_iou_basic():
    a = np.array([1, 1, 0, 0], bool)
    assert iou(a, a) == 1.0
    assert iou(a, np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert np.isnan(iou(np.zeros(3, bool), np.zeros(3, bool)))  # undefined, not perfect (issue 15, point 3)


def test_mesh_against_itself(sphere):
    pts = np.random.default_rng(0).uniform(-0.6, 0.6, size=(20000, 3))
    assert mesh_iou(sphere, sphere, pts) == 1.0
    m = surface_metrics(sphere, sphere, n_points=20000)
    assert m["chamfer_l1"] < 1e-9
    assert m["fscore"] == 1.0
    assert m["normal_consistency"] > 1 - 1e-9


def test_shifted_spheres_match_analytic(sphere):
    d = 0.3
    moved = sphere.copy()
    moved.apply_translation([d, 0, 0])
    rng = np.random.default_rng(1)
    pts = rng.uniform([-R, -R, -R], [R + d, R, R], size=(100_000, 3))
    # IoU: Monte-Carlo std here is ~2e-3 (fixed seed); the icosphere is 0.2% short of the ball
    assert mesh_iou(moved, sphere, pts) == pytest.approx(lens_iou(R, d), abs=5e-3)
    m = surface_metrics(moved, sphere, n_points=50_000)
    assert m["chamfer_l1"] == pytest.approx(shifted_sphere_chamfer(R, d), rel=0.01)
    assert m["accuracy"] == pytest.approx(m["completeness"], rel=0.02)
    # F-score: fraction of a sphere within tau of the moved one
    assert 0 < m["fscore"] < 1


def test_analytic_chamfer_formula_against_quadrature():
    from scipy.integrate import quad

    for r, d in [(0.5, 0.3), (0.5, 0.05), (0.4, 1.0)]:
        kink = d / (2 * r)  # where the distance to the moved sphere is zero
        num, _ = quad(lambda u: abs(math.sqrt(r * r + d * d - 2 * r * d * u) - r) / 2, -1, 1,
                      points=[kink] if kink < 1 else None, epsabs=1e-13)
        assert shifted_sphere_chamfer(r, d) == pytest.approx(num, rel=1e-8)


def test_marching_cubes_recovers_sphere():
    res = 64
    values = evaluate_grid(lambda p: p.norm(dim=-1) - R, res, torch.device("cpu"), chunk=5000)
    mesh = marching_cubes(values, 0.0)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    h = 2.0 / (res - 1)
    assert np.abs(radii - R).max() < 0.1 * h  # linear interpolation of an exact distance field
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)  # outward faces: volume > 0
    # occupancy-style field (positive inside) gives the same surface
    mesh2 = marching_cubes(-values, 0.0, inside_is_negative=False)
    assert mesh2.volume == pytest.approx(mesh.volume, rel=1e-6)
    # back to original coordinates
    norm = Normalization(center=np.array([10.0, -2.0, 3.0]), scale=0.25)
    orig = to_original(mesh, norm)
    assert np.allclose(orig.vertices.mean(0), [10.0, -2.0, 3.0], atol=1e-2)
    assert np.linalg.norm(orig.vertices - [10.0, -2.0, 3.0], axis=1).mean() == pytest.approx(R / 0.25, rel=0.01)


def test_grid_evaluation_chunk_independent():
    f = lambda p: p[:, 0] + 2 * p[:, 1] - p[:, 2] ** 2  # noqa: E731
    a = evaluate_grid(f, 17, torch.device("cpu"), chunk=100)
    b = evaluate_grid(f, 17, torch.device("cpu"), chunk=10**6)
    ax = np.linspace(-1, 1, 17)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    assert np.array_equal(a, b)
    assert np.allclose(a, x + 2 * y - z**2, atol=1e-6)


def test_empty_level_set_gives_empty_mesh():
    mesh = marching_cubes(np.ones((8, 8, 8), np.float32), 0.0)
    assert len(mesh.faces) == 0
    m = surface_metrics(mesh, trimesh.creation.icosphere(2), n_points=100)
    assert m["fscore"] == 0.0 and m["chamfer_l1"] is None


# ----------------------------------------------------------------------------------------------
# floaters (issue 28, point 2): area and pieces outside the largest connected component


def _box(extents, centre):
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(centre)
    return box


def test_floaters_of_two_disjoint_boxes_are_the_smaller_box():
    big, small = _box((1.0, 2.0, 3.0), (0, 0, 0)), _box((0.5, 0.5, 0.5), (5, 0, 0))
    a_big, a_small = 2 * (1 * 2 + 2 * 3 + 1 * 3), 6 * 0.5**2  # 22 and 1.5, by hand
    assert big.area == pytest.approx(a_big) and small.area == pytest.approx(a_small)
    both = trimesh.util.concatenate([small, big])  # the small box first: "largest" is by area
    m = floater_metrics(both)
    assert m["floater_area"] == pytest.approx(a_small)
    assert m["floater_area_fraction"] == pytest.approx(a_small / (a_big + a_small))
    assert m["floater_components"] == 1
    # three pieces: two floaters
    three = trimesh.util.concatenate([both, _box((0.5, 0.5, 0.5), (-5, 0, 0))])
    m = floater_metrics(three)
    assert m["floater_area"] == pytest.approx(2 * a_small) and m["floater_components"] == 2
    # the same partition as trimesh's split of the mesh into pieces
    pieces = three.split(only_watertight=False)
    assert len(pieces) - 1 == m["floater_components"]
    assert m["floater_area"] == pytest.approx(sum(p.area for p in pieces) - max(p.area for p in pieces))


def test_one_piece_has_no_floaters_even_as_an_unmerged_soup(sphere):
    assert floater_metrics(sphere) == {"floater_area": 0.0, "floater_area_fraction": 0.0, "floater_components": 0}
    # every triangle with its own vertices: connectivity comes from the geometry, not the indices
    tri = sphere.vertices[sphere.faces].reshape(-1, 3)
    soup = trimesh.Trimesh(vertices=tri, faces=np.arange(len(tri)).reshape(-1, 3), process=False)
    assert floater_metrics(soup)["floater_components"] == 0


def test_two_pieces_touching_at_one_vertex_are_one_piece():
    """Marching cubes can pinch a surface to a single vertex: that is not a floater."""
    a = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]], process=False)
    b = trimesh.Trimesh(vertices=[[0, 0, 0], [-1, 0, 0], [0, -1, 0]], faces=[[0, 1, 2]], process=False)
    assert floater_metrics(trimesh.util.concatenate([a, b]))["floater_components"] == 0


def test_floaters_of_an_empty_mesh_and_in_the_surface_metrics(sphere):
    empty = trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64), process=False)
    assert floater_metrics(empty) == {"floater_area": 0.0, "floater_area_fraction": None, "floater_components": 0}
    assert surface_metrics(empty, sphere)["floater_components"] == 0
    blob = sphere.copy()
    blob.apply_scale(0.1)
    blob.apply_translation([2 * R, 0, 0])
    m = surface_metrics(trimesh.util.concatenate([sphere, blob]), sphere, n_points=5000)
    assert m["floater_components"] == 1
    assert m["floater_area_fraction"] == pytest.approx(0.01 / 1.01, rel=1e-6)  # area scales with 0.1^2
