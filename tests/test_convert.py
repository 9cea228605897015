"""LLFF -> nerfstudio-data (``wcnerf.data.convert``), checked against nerfstudio's own reader.

A converted scene, read by ``NerfstudioDataParserConfig(...).setup().get_dataparser_outputs``,
must give the ``llff`` dataparser's images, intrinsics, split and camera-to-world poses (these up
to nerfstudio-data's normalisation, which it reports as ``dataparser_transform`` /
``dataparser_scale``); bad scenes and outputs that must not be replaced are refused before
anything is written. Nothing here trains.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.tiny import TINY_FACTOR, tiny_fern
from wcnerf.data.convert import CONVERSION_KEY, llff_to_nerfstudio, main
from wcnerf.data.llff import LLFFDataParserConfig
from wcnerf.data.llff_scene import LLFFDataError, split_indices


@pytest.fixture(scope="module")
def tiny(fern, tmp_path_factory) -> Path:
    """fern at factor 32 (126 x 94, images_32/ only)."""
    return tiny_fern(tmp_path_factory.mktemp("data"), fern)


@pytest.fixture(scope="module")
def fern_8_16_32(fern, tmp_path_factory) -> Path:
    """fern with images_8/ (504 x 378, hard links), images_16/ (252 x 189) and images_32/ (126 x 94)."""
    scene = tmp_path_factory.mktemp("multi") / "fern"
    for f in (8, 16, 32):
        (scene / f"images_{f}").mkdir(parents=True)
    shutil.copy(fern / "poses_bounds.npy", scene / "poses_bounds.npy")
    for p in sorted((fern / "images_8").iterdir()):
        try:
            os.link(p, scene / "images_8" / p.name)
        except OSError:
            shutil.copy(p, scene / "images_8" / p.name)
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.resize((252, 189), Image.BOX).save(scene / "images_16" / f"{p.stem}.png")
            im.resize((126, 94), Image.BOX).save(scene / "images_32" / f"{p.stem}.png")
    return scene


def llff_outputs(scene: Path, factor: int, split: str = "train", **kw):
    return LLFFDataParserConfig(data=scene, downscale_factor=factor, **kw).setup().get_dataparser_outputs(split)


def ns_outputs(data: Path, split: str = "train", **kw):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    return NerfstudioDataParserConfig(data=data, **kw).setup().get_dataparser_outputs(split)


def homog(c2w: torch.Tensor) -> torch.Tensor:
    """(N, 3, 4) -> (N, 4, 4), float64."""
    out = torch.eye(4, dtype=torch.float64).repeat(c2w.shape[0], 1, 1)
    out[:, :3, :4] = c2w.to(torch.float64)
    return out


def undo_normalisation(ns) -> torch.Tensor:
    """The poses as written to transforms.json: ``T^-1 [R | t / scale]`` of nerfstudio's output."""
    c2w = homog(ns.cameras.camera_to_worlds)
    c2w[:, :3, 3] /= ns.dataparser_scale
    t = torch.eye(4, dtype=torch.float64)
    t[:3, :4] = ns.dataparser_transform.to(torch.float64)
    return (torch.linalg.inv(t) @ c2w)[:, :3, :4]


def assert_same_cameras(ns, llff, *, normalised: bool = True) -> None:
    """Same images, intrinsics and (after undoing nerfstudio's normalisation) poses."""
    assert [p.name for p in ns.image_filenames] == [p.name for p in llff.image_filenames]
    a, b = ns.cameras, llff.cameras
    for name in ("fx", "fy", "cx", "cy", "width", "height"):
        torch.testing.assert_close(getattr(a, name).to(torch.float64), getattr(b, name).to(torch.float64),
                                   rtol=1e-6, atol=1e-4, msg=name)
    assert int(a.width[0]) == int(b.width[0]) and int(a.height[0]) == int(b.height[0])
    poses = undo_normalisation(ns) if normalised else a.camera_to_worlds.to(torch.float64)
    torch.testing.assert_close(poses, b.camera_to_worlds.to(torch.float64), atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------- same cameras
def test_nerfstudio_reads_the_llff_cameras_and_split(tiny, tmp_path):
    transforms = llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR)
    assert transforms == tmp_path / "ns" / "transforms.json"
    meta = json.loads(transforms.read_text())
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == ["images", "transforms.json"]
    assert meta[CONVERSION_KEY]["folders"] == {"images": TINY_FACTOR}
    for split in ("train", "val", "test"):
        ns, llff = ns_outputs(tmp_path / "ns", split), llff_outputs(tiny, TINY_FACTOR, split)
        assert len(ns.image_filenames) == len(llff.image_filenames) == len(split_indices(20, 8, split))
        assert all(p.parent == tmp_path / "ns" / "images" for p in ns.image_filenames)
        assert_same_cameras(ns, llff)
    # the check is not vacuous: the default normalisation turned (LLFF's y up to z up) and scaled the
    # cameras (no shift: LLFF's poses are already centred on their mean)
    assert abs(ns.dataparser_scale - 1) > 0.05
    assert (ns.dataparser_transform[:, :3] - torch.eye(3)).abs().max() > 0.5
    # the pixels are LLFF's
    for a, b in zip(ns.image_filenames, llff.image_filenames):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_relative_poses_match_up_to_scale(tiny, tmp_path):
    """Independent of the reported transform: cam_i^-1 cam_j agree, translations scaled by dataparser_scale."""
    llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR)
    ns, llff = ns_outputs(tmp_path / "ns"), llff_outputs(tiny, TINY_FACTOR)
    a, b = homog(ns.cameras.camera_to_worlds), homog(llff.cameras.camera_to_worlds)
    ra, rb = torch.linalg.inv(a[0]) @ a, torch.linalg.inv(b[0]) @ b
    torch.testing.assert_close(ra[:, :3, :3], rb[:, :3, :3], atol=2e-5, rtol=0)
    torch.testing.assert_close(ra[:, :3, 3], rb[:, :3, 3] * ns.dataparser_scale, atol=2e-5, rtol=0)


def test_without_normalisation_nerfstudio_returns_the_llff_poses(tiny, tmp_path):
    llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR)
    ns = ns_outputs(tmp_path / "ns", orientation_method="none", center_method="none", auto_scale_poses=False)
    assert ns.dataparser_scale == 1.0
    assert_same_cameras(ns, llff_outputs(tiny, TINY_FACTOR), normalised=False)


def test_interval_eval_mode_holds_out_llffs_every_eighth(tiny, tmp_path):
    """holdout_every=None writes no split lists: --eval-mode interval --eval-interval 8 is LLFF's
    split (index % 8 == 0 of the name-sorted frames); nerfstudio's default fraction mode is not."""
    meta = json.loads(llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR, holdout_every=None).read_text())
    assert not any(k.endswith("_filenames") for k in meta)
    for split in ("train", "val"):
        ns = ns_outputs(tmp_path / "ns", split, eval_mode="interval", eval_interval=8)
        assert_same_cameras(ns, llff_outputs(tiny, TINY_FACTOR, split))
    fraction = [p.name for p in ns_outputs(tmp_path / "ns", "val").image_filenames]
    assert fraction != [p.name for p in llff_outputs(tiny, TINY_FACTOR, "val").image_filenames]


def test_split_lists_override_eval_mode_and_holdout_zero(tiny, tmp_path):
    llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR)  # holdout_every=8 written into transforms.json
    ns = ns_outputs(tmp_path / "ns", "val", eval_mode="fraction")
    assert [p.name for p in ns.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    llff_to_nerfstudio(tiny, tmp_path / "ns", TINY_FACTOR, holdout_every=0)  # replaces the previous conversion
    for split in ("train", "val"):
        assert_same_cameras(ns_outputs(tmp_path / "ns", split), llff_outputs(tiny, TINY_FACTOR, split, holdout_every=0))


def test_coarser_folders_become_nerfstudio_downscales(fern_8_16_32, tmp_path):
    """Base images_8; images_16 (504/2 x 378/2) becomes images_2; images_32 (378 / 4 is not whole) is skipped."""
    meta = json.loads(llff_to_nerfstudio(fern_8_16_32, tmp_path / "ns", 8).read_text())
    record = meta[CONVERSION_KEY]
    assert record["folders"] == {"images": 8, "images_2": 16}
    assert len(record["skipped"]) == 1 and "images_32" in record["skipped"][0] and "divide" in record["skipped"][0]
    assert (meta["w"], meta["h"]) == (504, 378)
    assert_same_cameras(ns_outputs(tmp_path / "ns", downscale_factor=2), llff_outputs(fern_8_16_32, 16))
    assert_same_cameras(ns_outputs(tmp_path / "ns"), llff_outputs(fern_8_16_32, 8))  # auto: 504 px, factor 1
    # the finest folder is the default base
    llff_to_nerfstudio(fern_8_16_32, tmp_path / "default")
    assert json.loads((tmp_path / "default" / "transforms.json").read_text())[CONVERSION_KEY]["source_factor"] == 8


def test_jpeg_images_become_png_with_the_same_pixels(tiny, tmp_path):
    scene = tmp_path / "jpg"
    (scene / "images").mkdir(parents=True)
    shutil.copy(tiny / "poses_bounds.npy", scene)
    for p in sorted((tiny / f"images_{TINY_FACTOR}").iterdir()):
        Image.open(p).save(scene / "images" / f"{p.stem}.JPG", quality=90)
    llff_to_nerfstudio(scene, tmp_path / "ns", 1)
    names = sorted(p.name for p in (tmp_path / "ns" / "images").iterdir())
    assert names == [f"image{i:03d}.png" for i in range(20)]
    for name in names:
        jpg = np.asarray(Image.open(scene / "images" / name.replace(".png", ".JPG")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ns" / "images" / name)), jpg)


# ----------------------------------------------------------------------------- refusals
def refused(scene, out: Path, *fragments: str, **kw) -> str:
    existed = out.exists()
    with pytest.raises(LLFFDataError) as info:
        llff_to_nerfstudio(scene, out, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert out.exists() == existed, "out created or removed by a refused conversion"
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return message


def test_refuses_a_folder_without_poses_bounds(tmp_path):
    (tmp_path / "scene" / "images").mkdir(parents=True)
    refused(tmp_path / "scene", tmp_path / "out", str(tmp_path / "scene" / "poses_bounds.npy"), "not found")


def test_refuses_an_image_count_mismatch(tiny, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny, scene)
    (scene / f"images_{TINY_FACTOR}" / "image019.png").unlink()
    refused(scene, tmp_path / "out", f"images_{TINY_FACTOR}: 19 images", "20 poses", downscale_factor=TINY_FACTOR)


def test_refuses_a_missing_factor_and_bad_arguments(tiny, tmp_path):
    refused(tiny, tmp_path / "out", "images_4", "not found", downscale_factor=4)
    refused(tiny, tmp_path / "out", "--downscale-factor 0: must be >= 1", downscale_factor=0)
    refused(tiny, tmp_path / "out", "--holdout-every -1: must be >= 0", downscale_factor=TINY_FACTOR, holdout_every=-1)


def test_refuses_to_overwrite_what_is_not_a_previous_conversion(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(tiny, out, str(out), "not a previous conversion")
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    refused(tiny, tmp_path / "file", "not a folder")
    refused(tiny, tiny.parent, "holds it")  # the folder holding the scene
    # an empty folder is fine; a previous conversion is replaced, unless something else was added to it
    (tmp_path / "empty").mkdir()
    llff_to_nerfstudio(tiny, tmp_path / "empty", TINY_FACTOR)
    llff_to_nerfstudio(tiny, tmp_path / "empty", TINY_FACTOR, holdout_every=4)
    meta = json.loads((tmp_path / "empty" / "transforms.json").read_text())
    assert meta[CONVERSION_KEY]["holdout_every"] == 4 and len(meta["val_filenames"]) == 5
    (tmp_path / "empty" / "outputs").mkdir()
    refused(tiny, tmp_path / "empty", "also holds outputs")


# ----------------------------------------------------------------------------- the command
def test_command_line(tiny, tmp_path, capsys):
    assert main([str(tiny), str(tmp_path / "ns"), "--downscale-factor", str(TINY_FACTOR)]) == 0
    printed = capsys.readouterr().out
    assert "20 frames, 126x94" in printed and f"nerfstudio-data --data {tmp_path / 'ns'}" in printed
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "ns2")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "ns2").exists()


def test_console_script_is_declared():
    import tomllib

    from support.helpers import REPO

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["wcnerf-llff-to-nerfstudio"] == "wcnerf.data.convert:main"
