"""The LLFF dataparser on the real fern scene (fixtures ``fern``: images_8, e.g. the repo copy;
``fern4``: images_4, e.g. the shared copy; ``repo_fern``: the repo copy; see conftest.py).

The geometry is checked against a direct transcription of the NeRF reference loader
(``load_llff.py`` of bmild/nerf / yenchenlin/nerf-pytorch: axes, bd_factor, recenter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support import llff_reference

from wcnerf.data.llff import LLFF, LLFFDataParserConfig, llff_dataparser
from wcnerf.data.ndc import ndc_rays

# ---------------------------------------------------------------------------------------
# Direct transcription of the reference loader's pose processing (numpy, float32 as there)
# ---------------------------------------------------------------------------------------


def reference_load_llff_poses(basedir, factor, img_hw, bd_factor=0.75):
    """``load_llff_data(basedir, factor, recenter=True, bd_factor=.75)`` minus the images.

    Returns (poses (N, 3, 5) with [H, W, focal] column, bds (N, 2)).
    """
    poses_arr = np.load(Path(basedir) / "poses_bounds.npy")
    poses = poses_arr[:, :-2].reshape([-1, 3, 5]).transpose([1, 2, 0])
    bds = poses_arr[:, -2:].transpose([1, 0])
    poses[:2, 4, :] = np.array(img_hw).reshape([2, 1])
    poses[2, 4, :] = poses[2, 4, :] * 1.0 / factor

    poses = np.concatenate([poses[:, 1:2, :], -poses[:, 0:1, :], poses[:, 2:, :]], 1)
    poses = np.moveaxis(poses, -1, 0).astype(np.float32)
    bds = np.moveaxis(bds, -1, 0).astype(np.float32)
    sc = 1.0 / (bds.min() * bd_factor)
    poses[:, :3, 3] *= sc
    bds *= sc
    poses = llff_reference.recenter_poses(poses)
    return poses.astype(np.float32), bds


def reference_split(n, llffhold=8):
    i_test = np.arange(n)[::llffhold]
    i_train = np.array([i for i in np.arange(n) if i not in i_test])
    return i_train, i_test


# ---------------------------------------------------------------------------------------


def _parser(**kw) -> LLFF:
    return LLFFDataParserConfig(**kw).setup()


@pytest.fixture(scope="module")
def fern_outputs(fern):
    parser = _parser(data=fern)
    return parser, parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")


def test_entry_point_registered():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    configs, descriptions = discover_dataparsers()
    assert isinstance(configs["llff"], LLFFDataParserConfig)
    assert descriptions["llff"] == llff_dataparser.description
    cfg = LLFFDataParserConfig()
    assert cfg._target is LLFF
    assert cfg.data == Path("llff/fern") and cfg.downscale_factor == 8 and cfg.holdout_every == 8 and cfg.ndc


def test_fern_split_17_train_3_eval(fern_outputs):
    _, train, test = fern_outputs
    assert len(train.image_filenames) == 17 and len(train.cameras) == 17
    assert len(test.image_filenames) == 3 and len(test.cameras) == 3
    assert [p.name for p in test.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    all_names = sorted(p.name for p in train.image_filenames + test.image_filenames)
    assert all_names == [f"image{i:03d}.png" for i in range(20)]
    # "val" (ns-train's eval split) is the same held-out set.
    parser = fern_outputs[0]
    assert parser.get_dataparser_outputs("val").image_filenames == test.image_filenames


def test_fern_intrinsics_scaled_by_factor(fern_outputs, fern):
    _, train, _ = fern_outputs
    pb = np.load(fern / "poses_bounds.npy")
    full_h, full_w, full_f = pb[0, 4], pb[0, 9], pb[0, 14]
    assert (full_h, full_w) == (3024, 4032)
    cams = train.cameras
    assert torch.all(cams.width == 504) and torch.all(cams.height == 378)
    torch.testing.assert_close(cams.fx, torch.full_like(cams.fx, full_f / 8))
    torch.testing.assert_close(cams.fy, torch.full_like(cams.fy, full_f / 8))
    assert torch.allclose(cams.cx, torch.tensor(252.0)) and torch.allclose(cams.cy, torch.tensor(189.0))
    meta = train.metadata["llff"]
    assert meta == {"ndc": True, "near": 1.0, "far": 1.0, "focal": pytest.approx(full_f / 8), "width": 504, "height": 378}
    assert type(meta["width"]) is int and type(meta["height"]) is int and type(meta["ndc"]) is bool
    # The images really are that size.
    from PIL import Image

    with Image.open(train.image_filenames[0]) as im:
        assert im.size == (504, 378)


def test_fern_rotations_orthonormal(fern_outputs):
    _, train, test = fern_outputs
    for cams in (train.cameras, test.cameras):
        R = cams.camera_to_worlds[:, :3, :3].double()
        eye = torch.eye(3, dtype=torch.float64).expand_as(R)
        assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
        assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-5)


def test_fern_matches_reference_loader(fern_outputs, fern):
    parser, train, test = fern_outputs
    ref_poses, ref_bds = reference_load_llff_poses(fern, 8, (378, 504))
    i_train, i_test = reference_split(20)
    # Same axis convention (OpenGL) on both sides: poses equal.
    np.testing.assert_allclose(train.cameras.camera_to_worlds.numpy(), ref_poses[i_train, :3, :4], atol=2e-5)
    np.testing.assert_allclose(test.cameras.camera_to_worlds.numpy(), ref_poses[i_test, :3, :4], atol=2e-5)
    np.testing.assert_allclose(train.cameras.fx[:, 0].numpy(), ref_poses[i_train, 2, 4], rtol=1e-6)
    scene = parser.load_scene()
    np.testing.assert_allclose(scene.bounds, ref_bds, rtol=1e-5)
    assert scene.bounds.min() == pytest.approx(1 / 0.75)
    # The recentred average pose is the identity.
    from wcnerf.data.llff_scene import poses_avg

    np.testing.assert_allclose(poses_avg(scene.poses), np.eye(4)[:3], atol=1e-9)


def test_fern_dataparser_transform_maps_back(fern_outputs, fern):
    _, train, _ = fern_outputs
    pb = np.load(fern / "poses_bounds.npy")
    raw = pb[:, :15].reshape(-1, 3, 5)[:, :, :4]
    orig = np.concatenate([raw[:, :, 1:2], -raw[:, :, 0:1], raw[:, :, 2:4]], 2)  # OpenGL axes
    i_train, _ = reference_split(20)
    T = train.dataparser_transform.double().numpy()
    s = train.dataparser_scale
    assert s == pytest.approx(1 / (pb[:, 15:].min() * 0.75))
    # forward: new = s * (T @ old)
    fwd = T[:, :3] @ orig[i_train]
    fwd[:, :, 3] += T[:, 3]
    fwd[:, :, 3] *= s
    np.testing.assert_allclose(train.cameras.camera_to_worlds.numpy(), fwd, atol=2e-5)
    # backward, with nerfstudio's own helper (exported cameras map back)
    back = train.transform_poses_to_original_space(train.cameras.camera_to_worlds, camera_convention="opengl")
    np.testing.assert_allclose(back.numpy(), orig[i_train], atol=1e-4 * np.abs(orig[:, :, 3]).max())


def test_fern_centre_pixel_ndc_ray(fern_outputs):
    _, train, test = fern_outputs
    meta = train.metadata["llff"]
    for cams in (train.cameras, test.cameras):
        coords = torch.tensor([[meta["height"] / 2.0, meta["width"] / 2.0]])
        for i in range(len(cams)):
            bundle = cams.generate_rays(camera_indices=i, coords=coords)
            o, d = ndc_rays(
                bundle.origins, bundle.directions,
                focal=meta["focal"], width=meta["width"], height=meta["height"], near=meta["near"],
            )
            assert o.shape == (1, 3)
            # t = 0 is on the NDC near plane, the ray goes into +z in NDC (world -z).
            assert o[0, 2].item() == pytest.approx(-1.0, abs=1e-5)
            assert d[0, 2].item() == pytest.approx(2.0, abs=1e-5)
            assert bundle.directions[0, 2] < 0
            t = torch.linspace(0, 1, 33)[:, None]
            pts = o + t * d
            assert pts.abs().max() <= 1.0 + 1e-5
            # The centre ray stays near the middle of the NDC cube (cameras look ahead), and
            # ends (t = 1, world infinity) at the image centre's direction.
            assert pts[:, :2].abs().max() < 0.5
    assert torch.equal(train.scene_box.aabb, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))


def test_fern_all_pixels_of_training_views_inside_ndc_cube(fern_outputs):
    _, train, _ = fern_outputs
    meta = train.metadata["llff"]
    bundle = train.cameras.generate_rays(camera_indices=3, keep_shape=False)
    o, d = ndc_rays(bundle.origins, bundle.directions, focal=meta["focal"], width=meta["width"], height=meta["height"])
    far_pts = o + d  # t = 1: the image border rays reach about |x|, |y| <= 1
    assert far_pts[:, :2].abs().max() < 1.3
    assert torch.all(bundle.directions[:, 2] < 0)


def test_fern_images_load_through_nerfstudio_dataset(fern_outputs):
    from nerfstudio.data.datasets.base_dataset import InputDataset

    _, train, _ = fern_outputs
    ds = InputDataset(train)
    item = ds[0]
    assert item["image"].shape == (378, 504, 3)
    assert ds.metadata["llff"]["focal"] == train.metadata["llff"]["focal"]


def test_fern_world_mode_and_holdout_zero(fern):
    parser = _parser(data=fern, ndc=False, holdout_every=0)
    out = parser.get_dataparser_outputs("train")
    assert len(out.image_filenames) == 20
    assert len(parser.get_dataparser_outputs("test").image_filenames) == 20
    meta = out.metadata["llff"]
    pb = np.load(fern / "poses_bounds.npy")
    sc = 1 / (pb[:, 15:].min() * 0.75)
    assert meta["ndc"] is False
    assert meta["near"] == pytest.approx(pb[:, 15:].min() * sc * 0.9)  # = 1.2
    assert meta["near"] == pytest.approx(1.2)
    assert meta["far"] == pytest.approx(pb[:, 15:].max() * sc * 1.0)
    aabb = out.scene_box.aabb
    assert torch.all(aabb[1] >= meta["far"]) and torch.allclose(aabb[0], -aabb[1])
    # Cameras are the same in both modes.
    ndc_out = _parser(data=fern, holdout_every=0).get_dataparser_outputs("train")
    assert torch.equal(ndc_out.cameras.camera_to_worlds, out.cameras.camera_to_worlds)


def test_fern_relative_data_path_found_in_repo(monkeypatch, tmp_path, repo_fern):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WCNERF_DATA", raising=False)
    out = _parser().get_dataparser_outputs("train")  # default data = llff/fern
    assert out.image_filenames[0].parent == repo_fern / "images_8"


def test_fern_factor_4(fern4):
    parser = _parser(data=fern4, downscale_factor=4)
    train = parser.get_dataparser_outputs("train")
    test = parser.get_dataparser_outputs("test")
    assert len(train.image_filenames) == 17 and len(test.image_filenames) == 3
    assert all(p.parent.name == "images_4" for p in train.image_filenames)
    pb = np.load(fern4 / "poses_bounds.npy")
    meta = train.metadata["llff"]
    assert (meta["width"], meta["height"]) == (1008, 756)
    assert meta["focal"] == pytest.approx(pb[0, 14] / 4)
    torch.testing.assert_close(train.cameras.fx, torch.full_like(train.cameras.fx, pb[0, 14] / 4))
    assert torch.allclose(train.cameras.cx, torch.tensor(504.0))
    ref_poses, _ = reference_load_llff_poses(fern4, 4, (756, 1008))
    i_train, _ = reference_split(20)
    np.testing.assert_allclose(train.cameras.camera_to_worlds.numpy(), ref_poses[i_train, :3, :4], atol=2e-5)


@pytest.mark.usefixtures("repo_fern")  # data=llff/fern found in the repo's data/
def test_fern_through_nerfstudio_datamanager(tmp_path, monkeypatch):
    """ns-train's path: --data sets datamanager.data, copied into the dataparser's data."""
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WCNERF_DATA", raising=False)
    cfg = VanillaDataManagerConfig(
        dataparser=LLFFDataParserConfig(data=Path("does/not/matter")),
        data=Path("llff/fern"),
        train_num_rays_per_batch=32,
        eval_num_rays_per_batch=32,
    )
    dm = cfg.setup(device="cpu", test_mode="val")
    assert len(dm.train_dataset) == 17 and len(dm.eval_dataset) == 3
    assert dm.train_dataset.metadata["llff"]["width"] == 504
    ray_bundle, batch = dm.next_train(0)
    assert ray_bundle.origins.shape == (32, 3) and batch["image"].shape == (32, 3)
    assert torch.all(ray_bundle.directions[:, 2] < 0)


def test_evenly_spaced_keeps_the_first_and_last_and_never_repeats():
    from wcnerf.data.llff_scene import evenly_spaced, split_indices

    held = list(range(0, 62, 8))  # a 62-view scene's 8 held-out images
    assert split_indices(62, 8, "test") == held
    assert evenly_spaced(held, 5) == [0, 16, 32, 40, 56]  # items round(j * 7 / 4): 0, 2, 4, 5, 7
    assert split_indices(62, 8, "test", max_eval_views=5) == [0, 16, 32, 40, 56]
    assert split_indices(62, 8, "train", max_eval_views=5) == split_indices(62, 8, "train")  # training unchanged
    for n in range(1, 30):
        for k in range(1, n + 2):
            got = evenly_spaced(list(range(n)), k)
            assert len(got) == min(n, k) and len(set(got)) == len(got) and got == sorted(got)
            assert got[0] == 0 and (k == 1 or got[-1] == n - 1)
    assert evenly_spaced(held, 0) == held and evenly_spaced(held, 8) == held and evenly_spaced(held, 1) == [0]
    assert split_indices(20, 0, "test", max_eval_views=3) == [0, 10, 19]  # no held-out set: of all images


def test_max_eval_views_evaluates_fewer_held_out_images_and_trains_on_the_same(fern):
    capped = _parser(data=fern, max_eval_views=2)
    test = capped.get_dataparser_outputs("test")
    assert [p.name for p in test.image_filenames] == ["image000.png", "image016.png"] and len(test.cameras) == 2
    assert capped.get_dataparser_outputs("val").image_filenames == test.image_filenames
    plain_train = _parser(data=fern).get_dataparser_outputs("train")
    assert capped.get_dataparser_outputs("train").image_filenames == plain_train.image_filenames  # 008 stays out
    assert len(_parser(data=fern, max_eval_views=5).get_dataparser_outputs("test").image_filenames) == 3


def test_negative_max_eval_views_refused(fern):
    from wcnerf.data.llff_scene import LLFFDataError

    with pytest.raises(LLFFDataError, match=r"--max-eval-views -1: must be >= 0"):
        _parser(data=fern, max_eval_views=-1).get_dataparser_outputs("train")


def test_a_missing_example_scene_says_how_a_pip_user_gets_it(tmp_path, monkeypatch):
    """The wheel carries no LLFF images: the lookup error says where fern comes from."""
    from wcnerf.data.llff_scene import LLFFDataError, resolve_data_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WCNERF_DATA", str(tmp_path / "empty"))
    with pytest.raises(LLFFDataError, match=r"example scenes are not in the pip package: export WCNERF_DATA="):
        resolve_data_path("nowhere/fern", 8)
