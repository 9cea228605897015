"""Issue 30, point 1 (in part): numbers a user types that nerfstudio would take to a traceback
or to nonsense are refused before any folder is made, naming the option and the allowed range;
and wcnerf-train explains a missing ``--``."""

from __future__ import annotations

import copy

import pytest

from wcnerf.data.llff import LLFFDataError, LLFFDataParserConfig


@pytest.mark.parametrize("option, value, message", [
    ("downscale_factor", 0, "--downscale-factor 0: must be >= 1"),
    ("downscale_factor", -2, "--downscale-factor -2: must be >= 1"),
    ("holdout_every", -1, "--holdout-every -1: must be >= 0"),
    ("max_eval_views", -1, "--max-eval-views -1: must be >= 0"),
])  # fmt: skip
def test_the_llff_dataparser_refuses_impossible_numbers(option, value, message):
    with pytest.raises(LLFFDataError, match=message):
        LLFFDataParserConfig(**{option: value}).check_options()
    LLFFDataParserConfig().check_options()  # the defaults pass


@pytest.mark.parametrize("iterations", [0, -5])
def test_ns_train_refuses_a_budget_below_one_before_anything_is_written(iterations, tmp_path):
    from nerfstudio.configs.method_configs import all_methods

    from wcnerf.plugin.compat import RunInputError

    config = copy.deepcopy(all_methods["e-nerf-small"])
    config.max_num_iterations = iterations
    config.output_dir = tmp_path / "out"
    with pytest.raises(RunInputError, match=f"--max-num-iterations {iterations}: must be >= 1"):
        config.preflight()
    assert not (tmp_path / "out").exists()


def test_wcnerf_train_explains_a_missing_double_dash(capsys):
    from wcnerf.plugin.any_method_cli import main

    assert main(["nerfacto", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "--data: not an option of wcnerf-train; ns-train's arguments go after `--`" in err


def test_a_downscale_factor_that_leaves_too_few_pixels_is_refused_naming_the_largest_that_works(tmp_path):
    """fern at factor 1000 would be 4 x 3 pixels: refused before any image is made, with the largest factor."""
    import numpy as np

    from wcnerf.data.llff_scene import MIN_IMAGE_SIDE, LLFFDataError, check_image_size

    raw = np.zeros((3, 3, 5))
    raw[:, :, 4] = [3024.0, 4032.0, 3000.0]  # H, W, focal
    with pytest.raises(LLFFDataError, match=r"--downscale-factor 1000: leaves 4x3-pixel images .* a factor of at most 756"):
        check_image_size(raw, 1000, tmp_path / "poses_bounds.npy")
    check_image_size(raw, 3024 // MIN_IMAGE_SIDE, tmp_path / "poses_bounds.npy")  # exactly MIN_IMAGE_SIDE rows: fine
