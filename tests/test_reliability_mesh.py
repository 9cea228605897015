"""Issue 15, point 3: meshes that enclose no volume are refused for occupancy / SDF fitting,
degenerate triangles are judged relative to the mesh's own size, and the IoU of two empty sets
is not a perfect 1.0."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from wcnerf.shape.cli import main as shape_fit
from wcnerf.shape.mesh import MeshLoadError, load_mesh
from wcnerf.shape.metrics import iou
from wcnerf.shape.train import DEFAULT_MESH


def _write(tmp_path, name, vertices, faces):
    path = tmp_path / name
    trimesh.Trimesh(vertices=np.asarray(vertices, float), faces=faces, process=False).export(path)
    return path


def test_single_triangle_refused(tmp_path):
    path = _write(tmp_path, "tri.obj", [[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    with pytest.raises(MeshLoadError, match="is flat .*encloses no volume") as e:
        load_mesh(path)
    assert str(e.value).startswith(str(path))


def test_flat_square_refused(tmp_path):
    path = _write(tmp_path, "square.ply", [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    with pytest.raises(MeshLoadError, match="is flat"):
        load_mesh(path)


def test_non_flat_mesh_without_interior_refused(tmp_path):
    """A cube together with its inside-out copy: a non-flat box, winding number 0 everywhere."""
    cube = trimesh.creation.box()
    faces = np.concatenate([cube.faces, cube.faces[:, ::-1]])
    path = _write(tmp_path, "cancelled.obj", cube.vertices, faces)
    with pytest.raises(MeshLoadError, match=r"encloses no volume \(winding number at most"):
        load_mesh(path)


def test_open_mesh_with_an_interior_still_loads(tmp_path):
    """A sphere with a few faces removed (a scan with a hole) still has an inside."""
    m = trimesh.creation.icosphere(3)
    m.update_faces(np.arange(len(m.faces)) >= 5)
    m.remove_unreferenced_vertices()
    path = tmp_path / "holey.ply"
    m.export(path)
    assert len(load_mesh(path).mesh.faces) == len(m.faces)


@pytest.mark.parametrize("scale", [1e-9, 1e-7, 1e-6, 1e9])
def test_degenerate_faces_relative_to_the_mesh_size(tmp_path, scale):
    """spot at 1e-7 was refused ('only degenerate triangles') and lost 314 of 5,856 faces at 1e-6."""
    ref = load_mesh(DEFAULT_MESH)
    m = trimesh.load(DEFAULT_MESH, force="mesh", process=False)
    m.apply_scale(scale)
    path = tmp_path / "spot.ply"  # binary PLY: float64 vertices, no text rounding
    m.export(path, encoding="binary")
    got = load_mesh(path)
    assert len(got.mesh.faces) == len(ref.mesh.faces)
    np.testing.assert_allclose(got.mesh.vertices, ref.mesh.vertices, atol=1e-6)


def test_iou_of_two_empty_sets_is_undefined():
    assert np.isnan(iou(np.zeros(10, bool), np.zeros(10, bool)))
    assert iou(np.ones(10, bool), np.zeros(10, bool)) == 0.0


def test_shape_fit_refuses_a_flat_mesh_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, "square.obj", [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    code = shape_fit([str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "encloses no volume" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
