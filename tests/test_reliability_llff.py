"""Issue 15, point 1: impossible LLFF geometry and splits are refused by the pure reader (with
the file and the problem), unusual but usable input is accepted with one warning.

Each case is fern (the ``fern`` fixture, images_8) copied to tmp_path with one thing broken: the
catalogue's cases (tests/support/broken_scenes.py), whose ``says`` are the message fragments checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.broken_scenes import BROKEN, copy_fern, odd_image
from wcnerf.data.llff_scene import (
    LLFFDataError,
    check_split,
    load_llff_scene,
    scene_problem,
)


def refused(scene: Path, *needles: str, **kwargs) -> str:
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(scene, 8, show_progress=False, **kwargs)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def broken(name: str, fern: Path, tmp_path: Path) -> Path:
    """``tmp_path/s``: fern with the catalogue's ``name`` case applied."""
    return BROKEN[name].build(fern, tmp_path / "s")


def test_fern_itself_loads_without_warnings(fern, tmp_path):
    scene = load_llff_scene(copy_fern(fern, tmp_path / "s"), 8, show_progress=False, holdout_every=8)
    assert scene.warnings == []


def test_near_not_below_far_refused(fern, tmp_path):
    case = "near >= far in one row"
    poses = broken(case, fern, tmp_path) / "poses_bounds.npy"
    msg = refused(poses.parent, str(poses), *BROKEN[case].says)  # near bound >= far bound, row 3
    assert msg.startswith(str(poses))


ROTATION_CASES = {
    "zero": "zero rotation block in one row",  # trains to NaN without the check
    "two-equal-columns": "singular rotation (two equal columns)",  # singular
    "reflection": "reflection (det -1)",  # det -1
    "scaled": "rotation scaled by 2",  # 2 R: not orthonormal
}


@pytest.mark.parametrize("case", list(ROTATION_CASES))
def test_non_rotation_refused(fern, tmp_path, case):
    poses = broken(ROTATION_CASES[case], fern, tmp_path) / "poses_bounds.npy"
    refused(poses.parent, str(poses), *BROKEN[ROTATION_CASES[case]].says)  # not a rotation, row 5


def test_rounded_rotation_accepted(fern, tmp_path):
    """Rotations rounded to four digits are within the stated tolerance (1e-3)."""
    broken("rotations rounded to 4 digits", fern, tmp_path)
    assert load_llff_scene(tmp_path / "s", 8, show_progress=False).warnings == []


def test_all_cameras_at_one_pose_refused(fern, tmp_path):
    case = "all cameras at one pose"
    poses = broken(case, fern, tmp_path) / "poses_bounds.npy"
    refused(poses.parent, str(poses), *BROKEN[case].says)  # do not span a baseline


def test_tiny_near_bound_refused(fern, tmp_path):
    case = "near bound 1e-30 (scene x1e30)"
    poses = broken(case, fern, tmp_path) / "poses_bounds.npy"
    refused(poses.parent, str(poses), *BROKEN[case].says)  # depth bounds span, 1e-30


def test_wide_bounds_accepted_with_one_warning(fern, tmp_path):
    poses = broken("bounds span 10 x BOUNDS_RATIO_WARN", fern, tmp_path) / "poses_bounds.npy"
    scene = load_llff_scene(poses.parent, 8, show_progress=False)
    assert len(scene.warnings) == 1 and str(poses) in scene.warnings[0] and "span" in scene.warnings[0]


def test_geometry_problems_reported_by_scene_problem(fern, tmp_path):
    """The harness's check (scene_problem) sees the same problems without reading images."""
    poses = broken("zero rotation block in one row", fern, tmp_path) / "poses_bounds.npy"
    assert "not a rotation" in (scene_problem(poses.parent, 8) or "")


def test_one_image_split_refused_with_what_works(fern, tmp_path):
    case = "one image (holdout_every 8)"
    scene = broken(case, fern, tmp_path)
    refused(scene, *BROKEN[case].says, holdout_every=8)  # no training image, --holdout-every 0
    assert len(load_llff_scene(scene, 8, show_progress=False, holdout_every=0).image_paths) == 1


def test_holdout_every_one_refused(tmp_path):
    with pytest.raises(LLFFDataError, match="no training image.*--holdout-every 8"):
        check_split(20, 1, tmp_path / "poses_bounds.npy")
    check_split(20, 8, tmp_path / "poses_bounds.npy")
    check_split(1, 0, tmp_path / "poses_bounds.npy")


def test_rgba_among_rgb_refused_by_name(fern, tmp_path):
    case = "RGBA among RGB"
    scene = broken(case, fern, tmp_path)
    refused(scene, str(odd_image(scene)), *BROKEN[case].says)  # 4 channels, convert


def test_palette_image_refused_by_name(fern, tmp_path):
    case = "palette image"
    scene = broken(case, fern, tmp_path)
    refused(scene, str(odd_image(scene)), *BROKEN[case].says)  # mode P


def test_grey_among_rgb_accepted(fern, tmp_path):
    """nerfstudio repeats a grey channel to RGB: usable."""
    scene = broken("grey among RGB", fern, tmp_path)
    assert len(load_llff_scene(scene, 8, show_progress=False).image_paths) == 20


def test_dataparser_refuses_the_split(fern, tmp_path):
    pytest.importorskip("nerfstudio")
    from wcnerf.data.llff import LLFFDataParserConfig

    scene = copy_fern(fern, tmp_path / "s")
    parser = LLFFDataParserConfig(data=scene, holdout_every=1).setup()
    with pytest.raises(LLFFDataError, match="no training image"):
        parser.get_dataparser_outputs("train")
