"""Issue 15, point 1: impossible LLFF geometry and splits are refused by the pure reader (with
the file and the problem), unusual but usable input is accepted with one warning.

Each case is fern (the ``fern`` fixture, images_8) copied to tmp_path with one thing broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wcnerf.data.llff_scene import (
    BOUNDS_RATIO_WARN,
    LLFFDataError,
    check_split,
    load_llff_scene,
    scene_problem,
)


def copy_fern(fern: Path, dst: Path) -> Path:
    """fern's poses_bounds.npy and images_8/ (only) in ``dst``."""
    dst.mkdir(parents=True)
    shutil.copy(fern / "poses_bounds.npy", dst / "poses_bounds.npy")
    shutil.copytree(fern / "images_8", dst / "images_8")
    return dst


def edit_poses(scene: Path, edit) -> Path:
    arr = np.load(scene / "poses_bounds.npy")
    edit(arr)
    np.save(scene / "poses_bounds.npy", arr)
    return scene / "poses_bounds.npy"


def refused(scene: Path, *needles: str, **kwargs) -> str:
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(scene, 8, show_progress=False, **kwargs)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def rot(arr, i):
    """Row i's 3x3 rotation block (a view into arr)."""
    return arr[i, :15].reshape(3, 5)[:, :3]


def test_fern_itself_loads_without_warnings(fern, tmp_path):
    scene = load_llff_scene(copy_fern(fern, tmp_path / "s"), 8, show_progress=False, holdout_every=8)
    assert scene.warnings == []


def test_near_not_below_far_refused(fern, tmp_path):
    def swap(a):
        a[3, 15], a[3, 16] = a[3, 16], a[3, 15]

    poses = edit_poses(copy_fern(fern, tmp_path / "s"), swap)
    msg = refused(poses.parent, str(poses), "near bound >= far bound", "row 3")
    assert msg.startswith(str(poses))


@pytest.mark.parametrize(
    "case",
    [
        "zero",  # trains to NaN without the check
        "two-equal-columns",  # singular
        "reflection",  # det -1
        "scaled",  # 2 R: not orthonormal
    ],
)
def test_non_rotation_refused(fern, tmp_path, case):
    def breaker(a):
        R = rot(a, 5)
        if case == "zero":
            R[:] = 0
        elif case == "two-equal-columns":
            R[:, 1] = R[:, 0]
        elif case == "reflection":
            R[:, 2] *= -1
        else:
            R *= 2

    poses = edit_poses(copy_fern(fern, tmp_path / "s"), breaker)
    refused(poses.parent, str(poses), "not a rotation", "row 5")


def test_rounded_rotation_accepted(fern, tmp_path):
    """Rotations rounded to four digits are within the stated tolerance (1e-3)."""
    def rounder(a):
        for i in range(len(a)):
            rot(a, i)[:] = np.round(rot(a, i), 4)

    edit_poses(copy_fern(fern, tmp_path / "s"), rounder)
    assert load_llff_scene(tmp_path / "s", 8, show_progress=False).warnings == []


def test_all_cameras_at_one_pose_refused(fern, tmp_path):
    def same(a):
        a[:, :15] = a[0, :15]

    poses = edit_poses(copy_fern(fern, tmp_path / "s"), same)
    refused(poses.parent, str(poses), "do not span a baseline")


def test_tiny_near_bound_refused(fern, tmp_path):
    def tiny(a):
        a[2, 15] = 1e-30

    poses = edit_poses(copy_fern(fern, tmp_path / "s"), tiny)
    refused(poses.parent, str(poses), "depth bounds span", "1e-30")


def test_wide_bounds_accepted_with_one_warning(fern, tmp_path):
    def wide(a):
        a[2, 15] = a[:, 16].max() / (10 * BOUNDS_RATIO_WARN)

    poses = edit_poses(copy_fern(fern, tmp_path / "s"), wide)
    scene = load_llff_scene(poses.parent, 8, show_progress=False)
    assert len(scene.warnings) == 1 and str(poses) in scene.warnings[0] and "span" in scene.warnings[0]


def test_geometry_problems_reported_by_scene_problem(fern, tmp_path):
    """The harness's check (scene_problem) sees the same problems without reading images."""
    poses = edit_poses(copy_fern(fern, tmp_path / "s"), lambda a: rot(a, 0).__setitem__(slice(None), 0))
    assert "not a rotation" in (scene_problem(poses.parent, 8) or "")


def test_one_image_split_refused_with_what_works(fern, tmp_path):
    scene = copy_fern(fern, tmp_path / "s")
    edit_poses(scene, lambda a: None)
    arr = np.load(scene / "poses_bounds.npy")[:1]
    np.save(scene / "poses_bounds.npy", arr)
    for p in sorted((scene / "images_8").iterdir())[1:]:
        p.unlink()
    refused(scene, "no training image", "--holdout-every 0", holdout_every=8)
    assert len(load_llff_scene(scene, 8, show_progress=False, holdout_every=0).image_paths) == 1


def test_holdout_every_one_refused(tmp_path):
    with pytest.raises(LLFFDataError, match="no training image.*--holdout-every 8"):
        check_split(20, 1, tmp_path / "poses_bounds.npy")
    check_split(20, 8, tmp_path / "poses_bounds.npy")
    check_split(1, 0, tmp_path / "poses_bounds.npy")


def test_rgba_among_rgb_refused_by_name(fern, tmp_path):
    scene = copy_fern(fern, tmp_path / "s")
    odd = sorted((scene / "images_8").iterdir())[7]
    Image.open(odd).convert("RGBA").save(odd)
    refused(scene, str(odd), "4 channels", "convert")


def test_palette_image_refused_by_name(fern, tmp_path):
    scene = copy_fern(fern, tmp_path / "s")
    odd = sorted((scene / "images_8").iterdir())[2]
    Image.open(odd).convert("P").save(odd)
    refused(scene, str(odd), "mode P")


def test_grey_among_rgb_accepted(fern, tmp_path):
    """nerfstudio repeats a grey channel to RGB: usable."""
    scene = copy_fern(fern, tmp_path / "s")
    odd = sorted((scene / "images_8").iterdir())[2]
    Image.open(odd).convert("L").save(odd)
    assert len(load_llff_scene(scene, 8, show_progress=False).image_paths) == 20


def test_dataparser_refuses_the_split(fern, tmp_path):
    pytest.importorskip("nerfstudio")
    from wcnerf.data.llff import LLFFDataParserConfig

    scene = copy_fern(fern, tmp_path / "s")
    parser = LLFFDataParserConfig(data=scene, holdout_every=1).setup()
    with pytest.raises(LLFFDataError, match="no training image"):
        parser.get_dataparser_outputs("train")
