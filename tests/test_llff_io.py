"""LLFF scene I/O: bad-input errors, data-path lookup, downsampling from images/.

Uses tiny synthetic scenes made in tmp_path (no dependency on the real data).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import wcnerf
from wcnerf.data.llff_scene import (
    LLFFDataError,
    data_search_roots,
    downsample_images,
    load_llff_scene,
    resolve_data_path,
    scene_candidates,
    scene_problem,
)

REPO_DATA = Path(wcnerf.__file__).resolve().parents[1] / "data"
FULL_H, FULL_W, FULL_F = 48, 64, 60.0


def make_poses_bounds(n: int, rng=None) -> np.ndarray:
    """N x 17 in LLFF layout: cameras near the origin looking into -z (OpenGL)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = 0.05 * rng.normal(size=3)
        # small rotation (Rodrigues), OpenGL columns [right, up, back]
        th = np.linalg.norm(a)
        k = a / th
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K
        t = np.array([0.3 * np.cos(i), 0.2 * np.sin(i), 0.05 * i])
        llff = np.stack([-R[:, 1], R[:, 0], R[:, 2], t, [FULL_H, FULL_W, FULL_F]], 1)  # [down, right, back]
        rows.append(np.concatenate([llff.ravel(), [2.0 + 0.1 * i, 20.0]]))
    return np.array(rows)


def make_scene(root: Path, n: int = 4, *, folder: str = "images_8", factor: int = 8, ext: str = ".png") -> Path:
    """A tiny scene: poses_bounds.npy + ``folder`` with n images (size full / factor)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", make_poses_bounds(n, rng))
    img_dir = root / folder
    img_dir.mkdir()
    h, w = FULL_H // factor, FULL_W // factor
    for i in range(n):
        iio.imwrite(img_dir / f"img{i:03d}{ext}", rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return root


def _err(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------
# A good synthetic scene loads
# ---------------------------------------------------------------------------------------


def test_synthetic_scene_loads(tmp_path):
    scene = load_llff_scene(make_scene(tmp_path / "s"), 8)
    assert len(scene.image_paths) == 4
    assert (scene.height, scene.width) == (6, 8)
    assert scene.focal == pytest.approx(FULL_F / 8)
    assert scene.bounds.min() == pytest.approx(1 / 0.75)
    R = scene.poses[:, :, :3]
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # images sorted by name regardless of creation order
    assert [p.name for p in scene.image_paths] == sorted(p.name for p in scene.image_paths)


def test_images_sorted_by_name(tmp_path):
    root = make_scene(tmp_path / "s", n=3)
    d = root / "images_8"
    for i, name in enumerate(["c.png", "a.png", "b.png"]):  # rename out of order
        (d / f"img{i:03d}.png").rename(d / name)
    scene = load_llff_scene(root, 8)
    assert [p.name for p in scene.image_paths] == ["a.png", "b.png", "c.png"]


# ---------------------------------------------------------------------------------------
# Bad input: clear errors that start with the offending path
# ---------------------------------------------------------------------------------------


def test_error_missing_poses_bounds(tmp_path):
    root = make_scene(tmp_path / "s")
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))
    assert "not found" in _err(e)


@pytest.mark.parametrize("shape", [(4, 16), (4, 18), (68,), (4, 3, 5), (0, 17)])
def test_error_wrong_shape(tmp_path, shape):
    root = make_scene(tmp_path / "s")
    np.save(root / "poses_bounds.npy", np.ones(shape))
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))
    assert "N x 17" in _err(e) and str(shape) in _err(e)


def test_error_not_a_numpy_array(tmp_path):
    root = make_scene(tmp_path / "s")
    with open(root / "poses_bounds.npy", "wb") as f:  # an .npz archive under the .npy name
        np.savez(f, a=np.ones((4, 17)))
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))
    assert "single numpy array" in _err(e)


@pytest.mark.parametrize(
    "content",
    [b"this is not a numpy file", b"", b"\x93NUMPY\x01\x00garbage"],
    ids=["text", "empty", "bad-header"],
)
def test_error_unreadable_npy(tmp_path, content):
    root = make_scene(tmp_path / "s")
    (root / "poses_bounds.npy").write_bytes(content)
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))
    assert "cannot read" in _err(e)


def test_error_pickled_object_array(tmp_path):
    root = make_scene(tmp_path / "s")
    np.save(root / "poses_bounds.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))


@pytest.mark.parametrize("bad", ["nan", "negative-bound"])
def test_error_bad_values(tmp_path, bad):
    root = make_scene(tmp_path / "s")
    pb = np.load(root / "poses_bounds.npy")
    if bad == "nan":
        pb[1, 3] = np.nan
    else:
        pb[2, 15] = -1.0
    np.save(root / "poses_bounds.npy", pb)
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "poses_bounds.npy"))


@pytest.mark.parametrize("change", ["remove", "add"])
def test_error_image_count_differs_from_pose_count(tmp_path, change):
    root = make_scene(tmp_path / "s")
    d = root / "images_8"
    if change == "remove":
        (d / "img002.png").unlink()
    else:
        shutil.copy(d / "img000.png", d / "img999.png")
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    msg = _err(e)
    assert msg.startswith(str(d))
    assert "poses_bounds.npy" in msg
    assert ("3 images" if change == "remove" else "5 images") in msg and "4 poses" in msg


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_error_unreadable_image(tmp_path, how):
    root = make_scene(tmp_path / "s")
    bad = root / "images_8" / "img001.png"
    if how == "garbage":
        bad.write_bytes(b"not a png at all")
    else:
        data = (root / "images_8" / "img000.png").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(bad))
    assert "cannot read image" in _err(e)


def test_error_images_of_different_sizes(tmp_path):
    root = make_scene(tmp_path / "s")
    odd = root / "images_8" / "img003.png"
    iio.imwrite(odd, np.zeros((7, 8, 3), dtype=np.uint8))
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    msg = _err(e)
    assert msg.startswith(str(odd))
    assert "8x7" in msg and "8x6" in msg and "img000.png" in msg


def test_error_factor_folder_absent_without_originals(tmp_path):
    root = make_scene(tmp_path / "s")  # has images_8 only
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 4)
    msg = _err(e)
    assert msg.startswith(str(root / "images_4"))
    assert "images/" in msg


def test_error_scene_folder_is_not_a_folder(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(f, 8)
    assert _err(e).startswith(str(f))


def test_errors_surface_through_the_dataparser(tmp_path):
    from wcnerf.data.llff import LLFFDataParserConfig

    root = make_scene(tmp_path / "s")
    (root / "images_8" / "img000.png").unlink()
    parser = LLFFDataParserConfig(data=root).setup()
    with pytest.raises(LLFFDataError, match=r"^" + str(root / "images_8").replace("\\", "\\\\")):
        parser.get_dataparser_outputs("train")
    assert issubclass(LLFFDataError, ValueError)


# ---------------------------------------------------------------------------------------
# Data-path lookup
# ---------------------------------------------------------------------------------------


def test_lookup_existing_path_used_as_given(tmp_path, monkeypatch):
    root = make_scene(tmp_path / "llff" / "fern")  # same relative name as the repo copy
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WCNERF_DATA", str(tmp_path / "elsewhere"))
    assert resolve_data_path(root) == root
    assert resolve_data_path(Path("llff/fern")) == Path("llff/fern")  # exists relative to cwd
    assert resolve_data_path(root / "poses_bounds.npy") == root


def test_lookup_repo_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WCNERF_DATA", raising=False)
    assert data_search_roots() == [REPO_DATA]
    if not (REPO_DATA / "llff" / "fern" / "poses_bounds.npy").is_file():
        pytest.skip("data/llff/fern not present")
    assert resolve_data_path("llff/fern") == REPO_DATA / "llff" / "fern"


def test_lookup_wcnerf_data_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "rootA", tmp_path / "rootB"
    a.mkdir()
    make_scene(b / "scenes" / "mine")
    monkeypatch.setenv("WCNERF_DATA", os.pathsep.join([str(a), "", str(b)]))
    assert data_search_roots() == [REPO_DATA, a, b]
    assert resolve_data_path("scenes/mine") == b / "scenes" / "mine"
    # and through the dataparser
    from wcnerf.data.llff import LLFFDataParserConfig

    out = LLFFDataParserConfig(data=Path("scenes/mine"), holdout_every=2).setup().get_dataparser_outputs("train")
    assert [p.name for p in out.image_filenames] == ["img001.png", "img003.png"]
    assert out.image_filenames[0].parent == b / "scenes" / "mine" / "images_8"


def test_lookup_prefers_a_copy_with_the_wanted_factor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "rootA", tmp_path / "rootB"
    make_scene(a / "sc", folder="images_8", factor=8)
    make_scene(b / "sc", folder="images_4", factor=4)
    monkeypatch.setenv("WCNERF_DATA", os.pathsep.join([str(a), str(b)]))
    assert resolve_data_path("sc", 8) == a / "sc"
    assert resolve_data_path("sc", 4) == b / "sc"
    assert resolve_data_path("sc", 2) == a / "sc"  # none has it: the first one (clear error later)


def test_lookup_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "rootA", tmp_path / "rootB"
    monkeypatch.setenv("WCNERF_DATA", os.pathsep.join([str(a), str(b)]))
    with pytest.raises(LLFFDataError) as e:
        resolve_data_path("llff/nope")
    msg = _err(e)
    assert msg.startswith("llff/nope")
    for place in (tmp_path / "llff" / "nope", REPO_DATA / "llff" / "nope", a / "llff" / "nope", b / "llff" / "nope"):
        assert str(place) in msg
    monkeypatch.delenv("WCNERF_DATA")
    with pytest.raises(LLFFDataError, match="WCNERF_DATA"):
        resolve_data_path("llff/nope")


def test_lookup_rule_name_and_llff_subfolder(tmp_path, monkeypatch):
    """One rule for ``--data NAME`` and ``--scenes NAME``: as given, then per root
    ``<root>/NAME`` and ``<root>/llff/NAME``."""
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "rootA", tmp_path / "rootB"
    monkeypatch.setenv("WCNERF_DATA", os.pathsep.join([str(a), str(b)]))
    assert scene_candidates("sc") == [
        Path("sc"), REPO_DATA / "sc", REPO_DATA / "llff" / "sc", a / "sc", a / "llff" / "sc", b / "sc", b / "llff" / "sc"
    ]
    assert scene_candidates(tmp_path / "abs") == [tmp_path / "abs"]
    make_scene(b / "llff" / "sc")
    assert resolve_data_path("sc", 8) == b / "llff" / "sc"
    make_scene(b / "sc")  # the same root: <root>/NAME comes before <root>/llff/NAME
    assert resolve_data_path("sc", 8) == b / "sc"
    if (REPO_DATA / "llff" / "fern" / "poses_bounds.npy").is_file():
        assert resolve_data_path("fern", 8) == REPO_DATA / "llff" / "fern"  # ns-train ... llff --data fern


def test_scene_problem(tmp_path):
    assert scene_problem(tmp_path / "none") == f"{tmp_path / 'none'}: not a folder"
    (tmp_path / "empty").mkdir()
    assert "no poses_bounds.npy" in scene_problem(tmp_path / "empty")
    root = make_scene(tmp_path / "s")  # images_8 only
    assert scene_problem(root) is None and scene_problem(root, 8) is None
    msg = scene_problem(root, 4)  # the other factors it has, and how to pick one
    assert msg == (f"{root}: neither images_4/ nor images/ to build it from (it has images_8/: pick that "
                   "factor with the llff dataparser's --downscale-factor, e.g. `ns-train ... llff --downscale-factor 8`)")
    shutil.rmtree(root / "images_8")
    assert scene_problem(root, 4) == f"{root}: neither images_4/ nor images/ to build it from"
    (root / "images_8").mkdir()
    assert scene_problem(root, 1) == f"{root}: no images/ folder"
    (root / "images").mkdir()
    assert scene_problem(root, 4) is None  # images_4/ can be made from images/


def test_lookup_error_through_dataparser(tmp_path, monkeypatch):
    from wcnerf.data.llff import LLFFDataParserConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WCNERF_DATA", str(tmp_path / "x"))
    with pytest.raises(LLFFDataError, match=r"^llff/missing: LLFF scene folder not found"):
        LLFFDataParserConfig(data=Path("llff/missing")).setup().get_dataparser_outputs("train")


# ---------------------------------------------------------------------------------------
# Downsampling from images/
# ---------------------------------------------------------------------------------------


def test_downsample_creates_and_caches(tmp_path, monkeypatch, capsys):
    root = make_scene(tmp_path / "s", folder="images", factor=1)  # full-res originals only
    originals = sorted((root / "images").iterdir())
    scene = load_llff_scene(root, 8)
    out_dir = root / "images_8"
    assert out_dir.is_dir()
    assert [p.name for p in scene.image_paths] == [p.stem + ".png" for p in originals]
    assert all(p.parent == out_dir for p in scene.image_paths)
    assert (scene.height, scene.width) == (FULL_H // 8, FULL_W // 8)
    assert "downsampling the 4 images" in capsys.readouterr().out  # progress was shown
    # area filter: each output pixel is the mean of its 8x8 block
    src = iio.imread(originals[1]).astype(np.float64)
    expected = src.reshape(FULL_H // 8, 8, FULL_W // 8, 8, 3).mean((1, 3))
    got = iio.imread(out_dir / originals[1].name).astype(np.float64)
    assert np.abs(got - np.rint(expected)).max() <= 1
    assert not any(p.name.startswith("images_8.tmp") for p in root.iterdir())

    # second load uses the cache: no downsampling again
    import wcnerf.data.llff_scene as mod

    def boom(*a, **k):
        raise AssertionError("downsampled again")

    monkeypatch.setattr(mod, "downsample_images", boom)
    again = load_llff_scene(root, 8)
    assert again.image_paths == scene.image_paths


def test_downsample_jpg_originals_and_odd_sizes(tmp_path):
    root = tmp_path / "s"
    make_scene(root, n=3, folder="images", factor=1, ext=".JPG")
    # 48x64 by 5 -> round(9.6) x round(12.8) = 10 x 13
    scene = load_llff_scene(root, 5)
    assert (scene.height, scene.width) == (10, 13)
    assert [p.name for p in scene.image_paths] == ["img000.png", "img001.png", "img002.png"]
    assert scene.focal == pytest.approx(FULL_F / 5)


def test_downsample_refuses_count_mismatch_and_leaves_no_cache(tmp_path):
    root = make_scene(tmp_path / "s", folder="images", factor=1)
    (root / "images" / "img000.png").unlink()
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(root / "images"))
    assert not (root / "images_8").exists()


def test_downsample_unreadable_original_leaves_no_cache(tmp_path):
    root = make_scene(tmp_path / "s", folder="images", factor=1)
    bad = root / "images" / "img002.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(LLFFDataError) as e:
        load_llff_scene(root, 8)
    assert _err(e).startswith(str(bad))
    assert sorted(p.name for p in root.iterdir()) == ["images", "poses_bounds.npy"]


def test_downsample_images_function_grayscale_and_16bit(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    iio.imwrite(src / "a.png", np.full((16, 16), 200, dtype=np.uint8))
    b = np.zeros((16, 16), dtype=np.uint16)
    b[:, :8] = 65535
    iio.imwrite(src / "b.png", b)
    files = downsample_images(src, dst, 4, show_progress=False)
    assert [p.name for p in files] == ["a.png", "b.png"]
    img = iio.imread(files[0])
    assert img.shape == (4, 4) and np.all(img == 200)
    img = iio.imread(files[1])
    assert img.shape == (4, 4) and img.dtype == np.uint8  # 8-bit, as nerfstudio reads them
    assert np.all(img[:, :2] == 255) and np.all(img[:, 2:] == 0)
