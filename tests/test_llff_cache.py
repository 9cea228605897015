"""Issue 30, point 3: an ``images_<factor>/`` wcnerf derives from ``images/`` cannot go stale.

It records what it was made from (``.wcnerf-source.json``: names, sizes, times, sha256) and is
made again when ``images/`` changes or it is incomplete; an empty one is made; errors about a
derived image name the source; a folder the user made (no record) is used as it is, never
rewritten, and a problem in it says how to have it made from ``images/``.

Synthetic scenes in tmp_path (full-size 64 x 48 images, factor 8), and a copy of fern's shipped
images_8/."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import wcnerf.data.llff_scene as llff_scene
from wcnerf.data.llff_scene import DERIVED_RECORD, LLFFDataError, derived_state, load_llff_scene

H, W, N = 48, 64, 5


def poses_bounds(n: int) -> np.ndarray:
    """n cameras with the identity rotation (LLFF columns [down, right, back]) on a line."""
    rows = []
    for i in range(n):
        llff = np.array([[0.0, 1.0, 0.0, 0.1 * i, H], [-1.0, 0.0, 0.0, 0.05 * i, W], [0.0, 0.0, 1.0, 0.0, 60.0]])
        rows.append(np.concatenate([llff.ravel(), [2.0, 20.0]]))
    return np.array(rows)


def image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def scene_with_originals(root: Path, n: int = N) -> Path:
    """poses_bounds.npy + images/ (full size) only: images_8/ is derived on load."""
    (root / "images").mkdir(parents=True)
    np.save(root / "poses_bounds.npy", poses_bounds(n))
    for i in range(n):
        iio.imwrite(root / "images" / f"img{i:03d}.png", image(i))
    return root


def load(root: Path):
    return load_llff_scene(root, 8, show_progress=False)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(iio.imread(path)).astype(np.float64)


def test_derived_folder_records_what_it_was_made_from(tmp_path):
    root = scene_with_originals(tmp_path / "s")
    load(root)
    record = json.loads((root / "images_8" / DERIVED_RECORD).read_text())
    assert record["factor"] == 8 and record["source"] == "images"
    first = record["files"][0]
    src = root / "images" / "img000.png"
    assert (first["source"], first["size"], first["mtime_ns"], first["output"]) == (
        "img000.png", src.stat().st_size, src.stat().st_mtime_ns, "img000.png")
    assert len(first["sha256"]) == 64 and len(record["files"]) == N
    assert derived_state(root / "images_8", 8) == ("ours", "")
    assert sorted(p.name for p in root.iterdir()) == ["images", "images_8", "poses_bounds.npy"]  # no debris


def test_changed_source_image_is_downsampled_again(tmp_path):
    """Before: images_8/ kept the old image for ever."""
    root = scene_with_originals(tmp_path / "s")
    load(root)
    new = np.full((H, W, 3), 7, dtype=np.uint8)
    iio.imwrite(root / "images" / "img002.png", new)
    assert derived_state(root / "images_8", 8)[0] == "stale"
    scene = load(root)
    assert np.all(pixels(scene.image_paths[2]) == 7)
    assert derived_state(root / "images_8", 8) == ("ours", "")


def test_added_source_image_is_seen(tmp_path):
    """Before: an image added to images/ (and a pose row) left images_8/ one short: "N images"."""
    root = scene_with_originals(tmp_path / "s")
    load(root)
    np.save(root / "poses_bounds.npy", poses_bounds(N + 1))
    iio.imwrite(root / "images" / f"img{N:03d}.png", image(N))
    assert len(load(root).image_paths) == N + 1


def test_wrong_sized_source_is_named_and_its_fix_is_picked_up(tmp_path):
    """Before: the refusal named images_8/img003.png and, after images/img003.png was fixed, came
    back unchanged (the derived folder was never made again)."""
    root = scene_with_originals(tmp_path / "s")
    load(root)  # a derived folder exists from before the mistake
    bad = root / "images" / "img003.png"
    iio.imwrite(bad, image(3, h=40, w=64))
    with pytest.raises(LLFFDataError) as e:
        load(root)
    assert str(e.value).startswith(f"{bad}: image is 64x40 but img000.png is 64x48"), str(e.value)
    assert (root / "images_8" / DERIVED_RECORD).is_file()  # the failed rebuild kept the previous folder
    assert not [p for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    iio.imwrite(bad, image(33))  # fixed
    scene = load(root)
    assert (scene.height, scene.width) == (H // 8, W // 8)


def test_wrong_sized_source_named_when_nothing_was_derived_yet(tmp_path):
    root = scene_with_originals(tmp_path / "s")
    bad = root / "images" / "img001.png"
    iio.imwrite(bad, image(1, h=48, w=72))
    with pytest.raises(LLFFDataError, match=rf"^{bad}: image is 72x48"):
        load(root)
    assert not (root / "images_8").exists()
    iio.imwrite(bad, image(1))
    assert len(load(root).image_paths) == N


def test_problem_in_a_derived_image_names_its_source(tmp_path):
    """An alpha channel in one source: the message names images/img004.png, not its copy."""
    root = scene_with_originals(tmp_path / "s")
    rgba = np.concatenate([image(4), np.full((H, W, 1), 255, np.uint8)], axis=2)
    iio.imwrite(root / "images" / "img004.png", rgba)
    with pytest.raises(LLFFDataError) as e:
        load(root)
    assert str(e.value).startswith(f"{root / 'images' / 'img004.png'}: image has 4 channels"), str(e.value)


def test_empty_derived_folder_is_made(tmp_path):
    """Before: an empty images_8/ beside a full images/ was "0 images but ... has 5 poses"."""
    root = scene_with_originals(tmp_path / "s")
    (root / "images_8").mkdir()
    assert len(load(root).image_paths) == N
    assert (root / "images_8" / DERIVED_RECORD).is_file()


def test_incomplete_derived_folder_is_made_again(tmp_path):
    root = scene_with_originals(tmp_path / "s")
    load(root)
    (root / "images_8" / "img001.png").unlink()
    assert derived_state(root / "images_8", 8) == ("stale", "is incomplete (img001.png is missing)")
    assert len(load(root).image_paths) == N


def test_touched_source_is_not_downsampled_again(tmp_path, monkeypatch):
    """A new time with the same content (a copy without -p, touch): compared by sha256, kept."""
    root = scene_with_originals(tmp_path / "s")
    load(root)
    src = root / "images" / "img000.png"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))

    def again(*a, **k):
        raise AssertionError("downsampled again")

    monkeypatch.setattr(llff_scene, "downsample_images", again)
    load(root)
    record = json.loads((root / "images_8" / DERIVED_RECORD).read_text())
    assert record["files"][0]["mtime_ns"] == src.stat().st_mtime_ns  # remembered: not hashed again


def test_users_own_folder_is_used_as_it_is(tmp_path):
    """A folder without the record (e.g. the images_8/ shipped with nerf_llff_data) is the
    user's: used even beside an images/ it does not match, never rewritten."""
    root = scene_with_originals(tmp_path / "s")
    mine = root / "images_8"
    mine.mkdir()
    for i in range(N):
        iio.imwrite(mine / f"img{i:03d}.png", np.full((H // 8, W // 8, 3), 100 + i, np.uint8))
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    scene = load(root)
    assert np.all(pixels(scene.image_paths[3]) == 103)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before


def test_problem_in_users_folder_says_how_to_have_it_made(tmp_path):
    root = scene_with_originals(tmp_path / "s")
    mine = root / "images_8"
    mine.mkdir()
    for i in range(N - 1):  # one short
        iio.imwrite(mine / f"img{i:03d}.png", np.full((H // 8, W // 8, 3), 9, np.uint8))
    with pytest.raises(LLFFDataError) as e:
        load(root)
    msg = str(e.value)
    assert msg.startswith(f"{mine}: 4 images but") and "delete it to have it made again from images/" in msg, msg
    assert "\n" not in msg
    assert sorted(p.name for p in mine.iterdir()) == [f"img{i:03d}.png" for i in range(N - 1)]  # untouched


def test_shipped_images_folder_is_not_written(fern, tmp_path):
    """fern as shipped (images_8/, no images/): loaded as before, nothing written into it."""
    root = tmp_path / "fern"
    root.mkdir()
    shutil.copy(fern / "poses_bounds.npy", root / "poses_bounds.npy")
    shutil.copytree(fern / "images_8", root / "images_8")
    before = sorted(p.name for p in (root / "images_8").iterdir())
    scene = load(root)
    assert (scene.width, scene.height) == (504, 378)
    assert sorted(p.name for p in (root / "images_8").iterdir()) == before
    assert derived_state(root / "images_8", 8) == ("user", "")
    with pytest.raises(LLFFDataError, match=r"images_8: is empty, and there is no images/ folder"):
        shutil.rmtree(root / "images_8")
        (root / "images_8").mkdir()
        load(root)
