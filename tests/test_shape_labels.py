"""Winding-number occupancy / signed-distance labels on shapes whose inside is known."""

import numpy as np
import trimesh

from wcnerf.shape.mesh import load_mesh
from wcnerf.shape.sampling import (
    SamplingConfig,
    cache_key,
    inside,
    load_or_compute_samples,
    signed_distance,
)

from support.helpers import SPHERE_RADIUS as R  # radius of the sphere fixture (conftest.py)


def _shell_points(rng, n, r_lo, r_hi):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.uniform(r_lo, r_hi, size=(n, 1))


def test_sphere_inside_outside(sphere):
    rng = np.random.default_rng(0)
    pin, pout = _shell_points(rng, 2000, 0.0, 0.47), _shell_points(rng, 2000, 0.53, 1.5)
    assert inside(sphere.vertices, sphere.faces, pin).all()
    assert not inside(sphere.vertices, sphere.faces, pout).any()


def test_cube_inside_outside():
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    rng = np.random.default_rng(1)
    p = rng.uniform(-1.5, 1.5, size=(5000, 3))
    half = np.array([0.5, 1.0, 0.25])
    truth = (np.abs(p) < half).all(axis=1)
    margin = np.min(np.abs(np.abs(p) - half), axis=1) > 1e-3  # skip points on the faces
    assert np.array_equal(inside(box.vertices, box.faces, p)[margin], truth[margin])


def test_sphere_with_holes_still_labelled(sphere):
    """A scan-like mesh with open boundaries (like the bunny) keeps a correct inside."""
    rng = np.random.default_rng(2)
    keep = np.ones(len(sphere.faces), bool)
    keep[rng.choice(len(sphere.faces), size=12, replace=False)] = False  # 12 holes
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)
    assert not holed.is_watertight
    pin, pout = _shell_points(rng, 2000, 0.0, 0.45), _shell_points(rng, 2000, 0.55, 1.5)
    assert inside(holed.vertices, holed.faces, pin).all()
    assert not inside(holed.vertices, holed.faces, pout).any()


def test_inward_oriented_mesh(sphere):
    flipped = trimesh.Trimesh(sphere.vertices, sphere.faces[:, ::-1], process=False)
    assert flipped.volume < 0
    rng = np.random.default_rng(3)
    pin = _shell_points(rng, 500, 0.0, 0.45)
    assert inside(flipped.vertices, flipped.faces, pin).all()


def test_signed_distance_sphere(sphere):
    rng = np.random.default_rng(4)
    p = rng.uniform(-1, 1, size=(3000, 3))
    sd = signed_distance(sphere.vertices, sphere.faces, p)
    exact = np.linalg.norm(p, axis=1) - R
    # the icosphere is inscribed: it deviates from the true sphere by < 0.2% of the radius
    assert np.abs(sd - exact).max() < 3e-3
    assert np.all(np.sign(sd[np.abs(exact) > 5e-3]) == np.sign(exact[np.abs(exact) > 5e-3]))


def test_samples_cached_and_consistent(tmp_path, sphere):
    path = tmp_path / "sphere.obj"
    sphere.export(path)
    shape = load_mesh(path)
    cfg = SamplingConfig(n_near=2000, n_uniform=1000, n_eval=1000)
    s1 = load_or_compute_samples(shape, cfg, tmp_path / "cache")
    files = list((tmp_path / "cache").glob("samples-*.npz"))
    assert len(files) == 1 and cache_key(shape, cfg) in files[0].name
    s2 = load_or_compute_samples(shape, cfg, tmp_path / "cache")
    assert np.array_equal(s1.points, s2.points) and np.array_equal(s1.occupancy, s2.occupancy)
    # labels agree with each other: occupancy <=> negative distance
    assert np.array_equal(s1.occupancy.astype(bool), s1.sdf < 0)
    # near-surface points are near the surface (two scales), uniform ones fill the box
    r = np.linalg.norm(s1.points[: cfg.n_near], axis=1) * 1.0
    radius = R * shape.normalization.scale
    assert np.median(np.abs(r - radius)) < 0.05
    assert np.abs(s1.points[cfg.n_near:]).max() <= 1.0
    # other settings -> another cache entry
    load_or_compute_samples(shape, SamplingConfig(n_near=2000, n_uniform=1000, n_eval=1000, seed=1), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("samples-*.npz"))) == 2
