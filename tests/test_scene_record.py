"""Issue 30, point 4: a run knows its own scene.

The trainer's pre-flight writes the scene's absolute path (and the output folder's) into the
run's config, with an llff scene's fingerprint (``wcnerf.data.llff.record_scene``); the llff
dataparser then reads that scene from any working folder and refuses another one, naming both.
Before: ``--data fern`` was recorded as ``fern``, so ``ns-eval`` of the run from another folder
evaluated that folder's ``fern`` (exit 0, another PSNR).

The first tests call the pieces in this process; the last trains ``e-nerf-small`` with
``ns-train`` and evaluates it with ``ns-eval`` from two working folders (``e2e``)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import ns_server
from support.helpers import BIN
from support.tiny import NERF, TINY_FACTOR, tiny_env, tiny_fern
from wcnerf.data.llff_scene import LLFFDataError, scene_fingerprint

FINGERPRINT = re.compile(r"^poses [0-9a-f]{12}, 20 images [0-9a-f]{12}$")


def other_fern(root: Path, fern: Path) -> Path:
    """``root/fern``: the tiny fern with every image's colours inverted (same name, same poses)."""
    scene = tiny_fern(root, fern)
    for p in sorted((scene / f"images_{TINY_FACTOR}").iterdir()):
        with Image.open(p) as im:
            arr = 255 - np.asarray(im.convert("RGB"))
        Image.fromarray(arr).save(p)
    return scene


def llff_config(data, fingerprint: str = ""):
    from wcnerf.data.llff import LLFFDataParserConfig

    return LLFFDataParserConfig(data=Path(data), downscale_factor=TINY_FACTOR, scene_fingerprint=fingerprint)


def eval_images(data, fingerprint: str = "") -> list:
    return llff_config(data, fingerprint).setup().get_dataparser_outputs("test").image_filenames


def test_pre_flight_records_absolute_scene_output_and_fingerprint(fern, tmp_path, monkeypatch):
    from nerfstudio.configs.method_configs import all_methods

    from wcnerf.data.llff import record_scene

    scene = tiny_fern(tmp_path / "a", fern)
    monkeypatch.chdir(tmp_path / "a")
    config = copy.deepcopy(all_methods["e-nerf-small"])
    config.pipeline.datamanager.dataparser = llff_config("fern")
    config.output_dir = Path("outputs")
    record_scene(config)
    parser = config.pipeline.datamanager.dataparser
    assert parser.data == scene and parser.data.is_absolute()
    assert FINGERPRINT.match(parser.scene_fingerprint), parser.scene_fingerprint
    assert parser.scene_fingerprint == scene_fingerprint(scene, TINY_FACTOR)
    assert config.output_dir == tmp_path / "a" / "outputs"
    # ns-train's --data alias (pipeline.datamanager.data) too
    config.data = config.pipeline.datamanager.data = Path("fern")
    record_scene(config)
    assert config.data == config.pipeline.datamanager.data == scene


def test_pre_flight_makes_another_dataparsers_data_absolute(tmp_path, monkeypatch):
    """wcnerf-train with nerfstudio's own dataparsers: the path made absolute is enough."""
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from wcnerf.data.llff import record_scene

    (tmp_path / "room").mkdir()
    monkeypatch.chdir(tmp_path)
    config = copy.deepcopy(all_methods["e-nerf-small"])
    config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig(data=Path("room"))
    record_scene(config)
    assert config.pipeline.datamanager.dataparser.data == tmp_path / "room"


def test_recorded_scene_read_from_any_folder(fern, tmp_path, monkeypatch):
    scene = tiny_fern(tmp_path / "a", fern)
    other_fern(tmp_path / "b", fern)
    recorded = scene_fingerprint(scene, TINY_FACTOR)
    monkeypatch.chdir(tmp_path / "b")  # holds another fern
    assert all(p.parent.parent == scene for p in eval_images(scene, recorded))


def test_changed_scene_refused_naming_it(fern, tmp_path):
    scene = tiny_fern(tmp_path / "a", fern)
    recorded = scene_fingerprint(scene, TINY_FACTOR)
    img = sorted((scene / f"images_{TINY_FACTOR}").iterdir())[3]
    Image.new("RGB", (126, 94), (1, 2, 3)).save(img)
    with pytest.raises(LLFFDataError) as e:
        eval_images(scene, recorded)
    msg = str(e.value)
    assert msg.startswith(f"{scene}: is not the scene this run trained on there (its images differ"), msg
    poses = np.load(scene / "poses_bounds.npy")
    poses[:, 15] *= 1.01
    np.save(scene / "poses_bounds.npy", poses)
    with pytest.raises(LLFFDataError, match=r"its poses_bounds\.npy differs"):
        eval_images(scene, recorded)


def test_moved_scene_found_by_name_only_if_it_is_the_same(fern, tmp_path, monkeypatch):
    scene = tiny_fern(tmp_path / "a", fern)
    recorded = scene_fingerprint(scene, TINY_FACTOR)
    other = other_fern(tmp_path / "b", fern)
    shutil.move(str(scene), str(tmp_path / "c" / "fern"))
    monkeypatch.chdir(tmp_path / "c")  # the same scene, moved here
    assert all(p.parent.parent == tmp_path / "c" / "fern" for p in eval_images(scene, recorded))
    monkeypatch.chdir(tmp_path / "b")  # another scene of that name
    with pytest.raises(LLFFDataError) as e:
        eval_images(scene, recorded)
    msg = str(e.value)
    assert msg.startswith(f"{other}: is not the scene this run trained on, {scene}, which is not there"), msg
    monkeypatch.chdir(tmp_path)  # none of that name
    with pytest.raises(LLFFDataError, match=r"not there any more \(moved or deleted\), and no scene named fern"):
        eval_images(scene, recorded)


def test_malformed_fingerprint_refused():
    with pytest.raises(LLFFDataError, match=r"^--scene-fingerprint 'abc': not a scene fingerprint"):
        llff_config("fern", "abc").check_options()


# ----------------------------------------------------------------------------- ns-train / ns-eval
@pytest.mark.e2e
def test_ns_eval_from_another_folder_uses_the_scene_trained_on(fern, tmp_path):
    """Train with ``--data fern`` in a/ (relative scene and output folder), evaluate from a/ and
    from b/ (which has another fern): the same scene, the same PSNR. Then a/fern goes away: from
    b/ ns-eval refuses b/fern, naming both, exit 2, one line, no traceback."""
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_fern(a, fern)
    other_fern(b, fern)
    env = tiny_env(tmp_path)
    train = ns_server.run([
        BIN / "ns-train", "e-nerf-small", "--output-dir", "outputs", "--experiment-name", "fern", "--timestamp", "t",
        "--max-num-iterations", "6", "--steps-per-save", "1000", "--machine.seed", "0", *NERF.args(),
        "llff", "--data", "fern", "--downscale-factor", str(TINY_FACTOR), "--max-eval-views", "2",
    ], cwd=a, env=env, timeout=900)  # fmt: skip
    assert train.returncode == 0, (train.stdout + train.stderr)[-3000:]
    config = a / "outputs" / "fern" / "e-nerf-small" / "t" / "config.yml"
    import yaml

    recorded = yaml.load(config.read_text(), Loader=yaml.Loader)
    parser = recorded.pipeline.datamanager.dataparser
    assert parser.data == a / "fern" and recorded.output_dir == a / "outputs"  # absolute
    assert FINGERPRINT.match(parser.scene_fingerprint), parser.scene_fingerprint

    def ns_eval(cwd: Path, name: str):
        res = ns_server.run([BIN / "ns-eval", "--load-config", config, "--output-path", tmp_path / f"{name}.json"],
                            cwd=cwd, env=env, timeout=600)
        return res, res.stdout + res.stderr

    res, out = ns_eval(a, "from_a")
    assert res.returncode == 0, out[-3000:]
    res, out = ns_eval(b, "from_b")
    assert res.returncode == 0, out[-3000:]
    psnr = [json.loads((tmp_path / f"{n}.json").read_text())["results"]["psnr"] for n in ("from_a", "from_b")]
    assert psnr[0] == pytest.approx(psnr[1], abs=1e-6), psnr  # the same scene: a/fern

    shutil.move(str(a / "fern"), str(tmp_path / "elsewhere"))
    res, out = ns_eval(b, "refused")
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith(f"error: {b / 'fern'}: is not the scene this run trained on, {a / 'fern'}, "), errors
    assert not (tmp_path / "refused.json").exists()
