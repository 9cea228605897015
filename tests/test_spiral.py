"""The LLFF spiral camera path (wcnerf.data.spiral, scripts/llff_spiral.py).

- the path equals an independent transcription of the NeRF reference code (bmild/nerf
  ``load_llff.py``: axes, scale, recentre, ``render_path_spiral``) run on fern's raw
  ``poses_bounds.npy``;
- the JSON is what nerfstudio reads: ``get_path_from_json`` of the training poses gives back
  the dataparser's training cameras (pose, focal, principal point, size);
- every spiral camera looks at the scene like the training cameras do;
- (slow) the script writes the path of a finished tiny ``e-nerf-small`` run and
  ``ns-render camera-path`` renders it: frames not blank, different from each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from support import llff_reference
from support import ns_server
from support.helpers import BIN, REPO
from support.tiny import tiny_env, tiny_fern, train_tiny

from wcnerf.data.llff_scene import load_llff_scene
from wcnerf.data.spiral import (
    camera_path_dict,
    llff_spiral,
    spiral_camera_path,
    spiral_focus_depth,
    spiral_radii,
    vertical_fov_degrees,
)


# ----------------------------------------------------------------------------- reference
def _reference_spiral(poses_bounds: np.ndarray, bd_factor=0.75, n_views=120):
    """``load_llff_data(recenter=True, spherify=False, path_zflat=False)``'s render_poses, in
    float64 (the reference runs in float32), from the raw ``N x 17`` array."""
    poses = poses_bounds[:, :-2].reshape([-1, 3, 5]).transpose([1, 2, 0])
    bds = poses_bounds[:, -2:].transpose([1, 0])
    poses = np.concatenate([poses[:, 1:2, :], -poses[:, 0:1, :], poses[:, 2:, :]], 1)
    poses = np.moveaxis(poses, -1, 0).astype(np.float64)
    bds = np.moveaxis(bds, -1, 0).astype(np.float64)
    sc = 1.0 / (bds.min() * bd_factor)
    poses[:, :3, 3] *= sc
    bds *= sc
    poses = llff_reference.recenter_poses(poses)
    # the spiral
    c2w = llff_reference.poses_avg(poses)
    up = llff_reference.normalize(poses[:, :3, 1].sum(0))
    close_depth, inf_depth = bds.min() * 0.9, bds.max() * 5.0
    dt = 0.75
    focal = 1.0 / ((1.0 - dt) / close_depth + dt / inf_depth)
    zdelta = close_depth * 0.2
    rads = np.percentile(np.abs(poses[:, :3, 3]), 90, 0)
    render = llff_reference.render_path_spiral(c2w, up, rads, focal, zdelta, zrate=0.5, rots=2, N=n_views)
    return np.array(render)[:, :3, :4], focal, rads


def test_spiral_matches_the_reference(fern):
    ref, ref_focus, ref_rads = _reference_spiral(np.load(fern / "poses_bounds.npy"))
    scene = load_llff_scene(fern, 8)  # the dataparser's poses: OpenGL, scaled, recentred
    ours = llff_spiral(scene.poses, scene.bounds)
    assert ours.shape == (120, 3, 4)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-9)  # the first camera
    np.testing.assert_allclose(ours, ref, atol=1e-9)  # and every other one
    assert spiral_focus_depth(scene.bounds) == pytest.approx(ref_focus, rel=1e-12)
    np.testing.assert_allclose(spiral_radii(scene.poses), ref_rads, rtol=1e-12)
    # fern: near bound 1/0.75, focus ~4.31, a flat spiral (radii x > y > z)
    assert scene.bounds.min() == pytest.approx(1 / 0.75)
    assert 4.0 < ref_focus < 4.6 and ref_rads[0] > ref_rads[1] > ref_rads[2] > 0
    # two turns in x, y, one in z: frames 30 and 90 share x, y and have opposite z offsets
    np.testing.assert_allclose(ours[30, :2, 3], ours[90, :2, 3], atol=1e-9)
    np.testing.assert_allclose(ours[30, 2, 3], -ours[90, 2, 3], atol=1e-9)
    assert abs(ours[30, 2, 3]) == pytest.approx(ref_rads[2])


def test_spiral_cameras_look_at_the_scene(fern):
    scene = load_llff_scene(fern, 8)
    path = llff_spiral(scene.poses, scene.bounds)
    rot = path[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)  # right-handed (OpenGL)
    # Every camera sees the focus point at the image centre, 4.3 in front of the average pose.
    focus = spiral_focus_depth(scene.bounds)
    target = np.array([0.0, 0.0, -focus])  # the average pose is the identity after recentring
    for m in path:
        to_target = llff_reference.normalize(target - m[:, 3])
        assert np.dot(-m[:, 2], to_target) == pytest.approx(1.0, abs=1e-9)
    # viewing directions within the training cameras' spread (a few degrees), positions within their extent
    train_dirs = -scene.poses[:, :, 2]
    mean_dir = llff_reference.normalize(train_dirs.sum(0))
    spread = np.degrees(np.arccos(np.clip(train_dirs @ mean_dir, -1, 1))).max()
    ours = np.degrees(np.arccos(np.clip(-path[:, :, 2] @ mean_dir, -1, 1))).max()
    assert ours <= max(spread, 1.0) * 1.5, (ours, spread)
    assert np.all(np.abs(path[:, :, 3]) <= np.abs(scene.poses[:, :, 3]).max(0) + 1e-9)


def test_camera_path_json_is_what_nerfstudio_reads(fern):
    """Training poses written as a camera path come back, through nerfstudio's own reader,
    as the dataparser's training cameras: the same frame, focal, principal point and size."""
    pytest.importorskip("nerfstudio")
    import torch
    from nerfstudio.cameras.camera_paths import get_path_from_json

    from wcnerf.data.llff import LLFFDataParserConfig

    outputs = LLFFDataParserConfig(data=fern, downscale_factor=8).setup().get_dataparser_outputs("train")
    train = outputs.cameras
    scene = load_llff_scene(fern, 8)
    train_idx = [i for i in range(len(scene.poses)) if i % 8]
    cam_json = json.loads(json.dumps(camera_path_dict(
        scene.poses[train_idx], width=scene.width, height=scene.height, focal=scene.focal, seconds=2.0
    )))  # fmt: skip
    cams = get_path_from_json(cam_json)
    assert torch.allclose(cams.camera_to_worlds, train.camera_to_worlds, atol=1e-6)
    for attr in ("fx", "fy", "cx", "cy", "width", "height"):
        assert torch.allclose(getattr(cams, attr).float(), getattr(train, attr).float(), atol=1e-3), attr
    assert cam_json["seconds"] == 2.0 and len(cam_json["keyframes"]) == len(train_idx)
    # the spiral's JSON: 120 frames, 4 s at 30 fps, the training field of view
    spiral = spiral_camera_path(scene)
    assert len(spiral["camera_path"]) == 120 and spiral["seconds"] == 4.0 and spiral["fps"] == 30.0
    assert spiral["render_width"] == 504 and spiral["render_height"] == 378
    assert spiral["camera_path"][0]["fov"] == pytest.approx(vertical_fov_degrees(scene.focal, 378))
    np.testing.assert_allclose(
        np.array(spiral["camera_path"][0]["camera_to_world"]).reshape(4, 4)[:3],
        llff_spiral(scene.poses, scene.bounds)[0], atol=1e-12,
    )  # fmt: skip


# ----------------------------------------------------------------------------- end to end
def _frames(folder: Path) -> list:
    import imageio.v3 as iio

    files = sorted(folder.glob("*.png"))
    return [np.asarray(iio.imread(f), dtype=np.float64)[..., :3] / 255.0 for f in files]


@pytest.mark.e2e
def test_script_writes_a_path_that_ns_render_renders(tmp_path, fern):
    scene = tiny_fern(tmp_path / "data", fern)
    run = train_tiny(tmp_path, scene, "e-nerf-small", iterations=30)
    env = tiny_env(tmp_path)

    # The path of the run (its own dataparser settings), 5 distinct frames of the spiral.
    res = ns_server.run(
        [sys.executable, str(REPO / "scripts" / "llff_spiral.py"), "--load-config", str(run / "config.yml"),
         "--frames", "5"],
        cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    path_file = run / "camera_paths" / "spiral.json"
    cam = json.loads(path_file.read_text())
    assert len(cam["camera_path"]) == 5 and (cam["render_width"], cam["render_height"]) == (126, 94)
    assert f"--camera-path-filename {path_file}" in res.stdout

    # ns-render camera-path, as printed (images instead of a video, half size)
    out = tmp_path / "spiral"
    res = ns_server.run(
        [str(BIN / "ns-render"), "camera-path", "--load-config", str(run / "config.yml"),
         "--camera-path-filename", str(path_file), "--output-path", str(out),
         "--output-format", "images", "--image-format", "png", "--downscale-factor", "2"],
        cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    frames = _frames(out)
    assert len(frames) == 5 and frames[0].shape == (47, 63, 3)
    for f in frames:  # not blank: neither flat nor black / white
        assert 0.05 < f.mean() < 0.95 and f.std() > 0.02, (f.mean(), f.std())
    diffs = [np.abs(a - b).mean() for i, a in enumerate(frames) for b in frames[i + 1:]]
    assert min(diffs) > 0.003, diffs  # every frame differs from every other one

    # and the default, a video (ffmpeg)
    video = tmp_path / "spiral.mp4"
    res = ns_server.run(
        [str(BIN / "ns-render"), "camera-path", "--load-config", str(run / "config.yml"),
         "--camera-path-filename", str(path_file), "--output-path", str(video), "--downscale-factor", "2"],
        cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert video.stat().st_size > 1000
