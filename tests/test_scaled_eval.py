"""The reduced-resolution held-out evaluation: each view's camera rescaled by nerfstudio,
its ground truth area-averaged to the same size (checked against block means)."""

from __future__ import annotations

import pytest

pytest.importorskip("nerfstudio")

import torch  # noqa: E402
from nerfstudio.cameras.cameras import Cameras  # noqa: E402

from wcnerf.tools.scaled_eval import ScaledViews, main, rescale_view  # noqa: E402


def _view(h: int = 8, w: int = 12):
    cam = Cameras(camera_to_worlds=torch.eye(4)[:3][None], fx=10.0, fy=10.0, cx=w / 2, cy=h / 2, width=w, height=h)
    image = torch.rand(h, w, 3)
    mask = torch.zeros(h, w, 1, dtype=torch.bool)
    mask[: h // 2] = True
    return cam, {"image": image, "mask": mask, "image_idx": 0}


def test_rescale_view_averages_blocks_and_keeps_the_original():
    cam, batch = _view()
    small_cam, small = rescale_view(cam, batch, 0.5)
    assert (int(small_cam.height), int(small_cam.width)) == (4, 6)
    assert (int(cam.height), int(cam.width)) == (8, 12)  # the loader's camera is not touched
    blocks = batch["image"].reshape(4, 2, 6, 2, 3).mean(dim=(1, 3))
    assert torch.allclose(small["image"], blocks, atol=1e-6)
    assert small["mask"].dtype == torch.bool and small["mask"].shape == (4, 6, 1)
    assert small["mask"][:2].all() and not small["mask"][2:].any()
    assert small["image_idx"] == 0
    assert float(small_cam.fx) == pytest.approx(5.0)
    same_cam, same = rescale_view(cam, batch, 1.0)
    assert same_cam is cam and same is batch


def test_rescale_view_refuses_per_pixel_entries_it_cannot_resize():
    cam, batch = _view()
    with pytest.raises(ValueError, match="depth_image"):
        rescale_view(cam, {**batch, "depth_image": torch.rand(8, 12, 1)}, 0.5)


def test_scaled_views_wraps_a_loader():
    views = [_view(), _view()]
    scaled = ScaledViews(views, 0.5)
    assert len(scaled) == 2
    assert all(b["image"].shape == (4, 6, 3) for _, b in scaled)


def test_cli_refuses_a_bad_scale(tmp_path, capsys):
    assert main(["--load-config", str(tmp_path / "config.yml"), "--image-scale", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --image-scale 0: must be in (0, 1]"  # before the run is read


def test_cli_names_the_file_it_cannot_read(tmp_path, capsys):
    assert main(["--load-config", str(tmp_path / "missing.yml")]) == 2
    assert "missing.yml" in capsys.readouterr().err
    broken = tmp_path / "config.yml"
    broken.write_text("not: yaml: [\n")
    assert main(["--load-config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "not a YAML run config" in err
