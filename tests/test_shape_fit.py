"""End-to-end shape fitting with tiny settings: outputs, resume, determinism, bad inputs."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import tyro

from wcnerf.shape.mesh import MeshLoadError, load_mesh
from wcnerf.shape.train import DEFAULT_MESH, CompareConfig, FitConfig, fit

from support.helpers import REPO


def settings(cfg, **kw):
    """``cfg`` with settings changed by name: a top-level one, else the first group that has it, in
    the config's order (``steps=5`` sets ``cfg.optim.steps``; ``resolution`` is ``eval``'s)."""
    changes = {}
    for name, value in kw.items():
        for f in dataclasses.fields(cfg):
            sub = changes.get(f.name, getattr(cfg, f.name))
            if f.name == name:
                changes[name] = value
            elif dataclasses.is_dataclass(sub) and name in {g.name for g in dataclasses.fields(sub)}:
                changes[f.name] = dataclasses.replace(sub, **{name: value})
            else:
                continue
            break
        else:
            raise AssertionError(f"no setting {name!r}")
    return dataclasses.replace(cfg, **changes)


def tiny(tmp_path: Path, mesh: Path, **kw) -> FitConfig:
    base = settings(FitConfig(), mesh=mesh, conditioning="none", width=32, depth=2, n_freqs=4, steps=30,
                    batch_size=512, n_near=4000, n_uniform=2000, n_eval=4000, resolution=24, surface_points=4000,
                    every=10, curve_points=2000, ckpt_every=10, progress=False, output_dir=tmp_path / "out",
                    threads=1)
    return settings(base, **kw)


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def test_fit_writes_every_output(tmp_path, small_mesh):
    res = fit(tiny(tmp_path, small_mesh, steps=60, lr=1e-2))
    for name in ("mesh.ply", "metrics.json", "curves.png", "config.json", "checkpoint.pt"):
        assert (res.run_dir / name).is_file(), name
    assert res.run_dir.parent == tmp_path / "out" / "blob"
    metrics = json.loads((res.run_dir / "metrics.json").read_text())
    for key in ("iou_points", "iou_grid", "chamfer_l1", "normal_consistency", "fscore", "seconds_per_step"):
        assert key in metrics
    assert metrics["steps"] == 60 and 0.0 <= metrics["iou_points"] <= 1.0
    # even a 60-step fit of an ellipsoid is roughly right, and lies where the input was
    out = trimesh.load(res.run_dir / "mesh.ply")
    assert metrics["iou_points"] > 0.5 and len(out.faces) > 0
    assert np.allclose(out.bounds.mean(0), [10.0, -4.0, 2.0], atol=0.5)
    assert json.loads((res.run_dir / "config.json").read_text())["optim"]["steps"] == 60
    assert list((tmp_path / "out" / "blob" / "cache").glob("samples-*.npz"))


def test_resume_matches_uninterrupted_run_and_seed_matters(tmp_path, small_mesh):
    full = fit(tiny(tmp_path, small_mesh, run_name="full"))
    cfg = tiny(tmp_path, small_mesh, run_name="killed")
    stopped = fit(dataclasses.replace(cfg, stop_after=17))  # "killed" after 17 steps, checkpoint at 10
    assert stopped.metrics == {"interrupted_at": 17}
    assert torch.load(stopped.run_dir / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    assert not (stopped.run_dir / "metrics.json").exists()
    resumed = fit(cfg)  # the same command again continues
    assert resumed.metrics["steps"] == 30
    # same seed: bit-identical weights, losses and metrics, resumed or not
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full.curves["loss"] == resumed.curves["loss"]
    assert full.metrics["iou_points"] == resumed.metrics["iou_points"]
    # a finished run is not retrained
    again = fit(cfg)
    assert again.metrics["train_seconds"] == resumed.metrics["train_seconds"]
    # another seed gives another result
    other = fit(tiny(tmp_path, small_mesh, run_name="other", seed=1, steps=5, resolution=16, surface_points=500))
    wc = _weights(other.run_dir)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_default_run_name_resumes_and_separates(tmp_path, small_mesh):
    shape = load_mesh(small_mesh)
    cfg = tiny(tmp_path, small_mesh, steps=5)
    assert cfg.default_run_name(shape) == tiny(tmp_path, small_mesh, steps=5, resolution=64).default_run_name(shape)
    assert cfg.default_run_name(shape) != tiny(tmp_path, small_mesh, steps=5, lr=0.5).default_run_name(shape)


def test_training_key_is_the_training_groups_task_seed_and_mesh(tmp_path, small_mesh):
    shape = load_mesh(small_mesh)
    cfg = tiny(tmp_path, small_mesh)
    key = cfg.training_key(shape)
    for change in (dict(conditioning="enorm"), dict(width=33), dict(n_near=4001), dict(sigma_near=(0.01, 0.05)),
                   dict(steps=31), dict(batch_size=256), dict(clamp=0.2), dict(task="sdf"), dict(seed=1)):
        assert settings(cfg, **change).training_key(shape) != key, change
    assert cfg.training_key(load_mesh(small_mesh, margin=0.2)) != key  # the mesh: geometry and margin
    for change in (dict(every=3), dict(resolution=8), dict(port=1), dict(conditioners=("none",)), dict(lrs=(1.0,)),
                   dict(threads=2), dict(ckpt_every=3), dict(output_dir=tmp_path / "x"), dict(run_name="x")):
        assert settings(cfg, **change).training_key(shape) == key, change
    # an explicit learning rate equal to the default one is the same training
    assert settings(cfg, lr=2e-3).training_key(shape) == key


def test_run_folder_of_the_older_flat_layout_is_refused_clearly(tmp_path, small_mesh, capsys):
    """Run folders written before the settings were grouped hold a flat config and another key:
    they are neither resumed nor loaded, with a message; the default run name starts afresh."""
    from wcnerf.shape import cli
    from wcnerf.shape.train import RunError, load_field

    cfg = tiny(tmp_path, small_mesh, steps=5, resolution=16, surface_points=500, run_name="old")
    run_dir = tmp_path / "out" / "blob" / "old"
    run_dir.mkdir(parents=True)
    flat = {"mesh": str(small_mesh), "conditioning": "none", "width": 32, "depth": 2, "steps": 5, "lr": None}
    torch.save({"model": {}, "optimizer": {}, "state": {"step": 5}, "training_key": "0123abcd", "config": flat},
               run_dir / "checkpoint.pt")
    (run_dir / "config.json").write_text(json.dumps(flat))
    assert cli.run(cfg) == 2
    err = capsys.readouterr().err
    assert "older shape trainer" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((run_dir / "config.json").read_text()) == flat  # left as it was
    with pytest.raises(RunError, match="older shape trainer"):
        load_field(run_dir)
    fresh = fit(settings(cfg, run_name=None))
    assert fresh.metrics["steps"] == 5 and fresh.run_dir != run_dir
    model, loaded = load_field(fresh.run_dir)
    assert loaded == settings(cfg, run_name=None)


def test_test_only_settings_are_not_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(FitConfig, args=["--help"])
    text = capsys.readouterr().out
    assert "--field.conditioning" in text and "--optim.lr" in text and "stop-after" not in text
    with pytest.raises(SystemExit):
        tyro.cli(FitConfig, args=["--stop-after", "3"])
    capsys.readouterr()


@pytest.mark.parametrize("method", ["equilibrate", "weight-norm", "enorm"])
def test_conditioners_train(tmp_path, small_mesh, method):
    res = fit(tiny(tmp_path, small_mesh, steps=5, conditioning=method, optimizer="sgd", lr=0.05,
                   resolution=16, surface_points=500))
    assert res.metrics["final_loss"] is not None and np.isfinite(res.metrics["final_loss"])


def test_sdf_task_with_eikonal(tmp_path, small_mesh):
    res = fit(tiny(tmp_path, small_mesh, task="sdf", activation="softplus", eikonal_weight=0.1, steps=5,
                   resolution=16, surface_points=500))
    assert np.isfinite(res.metrics["final_loss"])


def test_compare_writes_reports(tmp_path, small_mesh):
    from wcnerf.shape.compare import run_compare

    cfg = tiny(tmp_path, small_mesh, steps=3, resolution=16, surface_points=500,
               compare=CompareConfig(conditioners=("none",), lrs=(1e-3, 1e-2), seeds=(0, 1)))
    with pytest.raises(ValueError, match="unknown conditioner"):
        run_compare(settings(cfg, conditioners=("none", "not-a-conditioner")))
    summary = run_compare(settings(cfg, conditioners=("none",)))
    out = Path(summary["dir"])
    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (out / name).is_file()
    data = json.loads((out / "comparison.json").read_text())
    assert data["methods"]["none"]["lr"] in (1e-3, 1e-2)
    assert set(data["methods"]["none"]["per_seed"]) == {"0", "1"}
    assert "| none |" in (out / "comparison.md").read_text()
    # training speed (issue 11, part 4): early IoU per seed, and the steps-to-target of the plain
    # field itself (its curve reaches its own final value at some step <= the last)
    assert all(0 <= v["iou_early"] <= 1 for v in data["methods"]["none"]["per_seed"].values())
    assert 0 < data["steps_to_target"]["none"] <= 1
    assert "IoU @15%" in (out / "comparison.md").read_text()


def test_default_mesh_is_in_repo():
    assert DEFAULT_MESH.is_file()
    shape = load_mesh(DEFAULT_MESH)
    assert len(shape.mesh.faces) > 1000
    assert np.abs(shape.mesh.vertices).max() == pytest.approx(0.95)
    # its attribution lives with the other data's, in data/README.md
    assert "meshes/spot.obj" in (REPO / "data" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------
# loading and bad input


def test_normalisation_round_trip(small_mesh):
    shape = load_mesh(small_mesh, margin=0.1)
    assert np.abs(shape.mesh.vertices).max() == pytest.approx(0.9)
    assert np.allclose(shape.normalization.to_original(shape.mesh.vertices), shape.original.vertices)


def test_scene_is_merged(tmp_path):
    a = trimesh.creation.box()
    b = trimesh.creation.box()
    b.apply_translation([3, 0, 0])
    path = tmp_path / "two.glb"
    trimesh.Scene([a, b]).export(path)
    shape = load_mesh(path)
    assert len(shape.mesh.faces) == 24
    assert shape.original.bounds[1][0] == pytest.approx(3.5)


BAD_INPUTS = {
    "missing.obj": (None, "file not found"),
    "empty.obj": (b"", "file is empty"),
    "garbage.ply": (bytes(range(256)) * 4, "cannot be read"),
    "points.ply": (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                   b"property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n", "point cloud"),
    "points.obj": (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "not a triangle mesh"),
    "notes.txt": (b"hello\n", "cannot be read"),
    "flat.obj": (b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_errors(tmp_path, name):
    content, message = BAD_INPUTS[name]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MeshLoadError, match=message) as info:
        load_mesh(path)
    assert str(info.value).startswith(f"{path}: ")


def _script():
    spec = importlib.util.spec_from_file_location("shape_fit_script", REPO / "scripts" / "shape_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_parses_and_reports_errors_cleanly(tmp_path, capsys):
    """In-process (a subprocess would spend most of the test importing torch)."""
    from wcnerf.shape import cli

    assert _script().main is cli.main  # the script is a shim over the package's command line
    cfg = tyro.cli(FitConfig, args=["m.obj", "--field.conditioning", "none", "--optim.optimizer", "sgd",
                                    "--no-progress"])
    assert cfg.mesh == Path("m.obj") and cfg.optim.optimizer == "sgd" and not cfg.progress
    assert tyro.cli(FitConfig, args=[]).mesh is None  # no mesh: the default one
    path = tmp_path / "empty.stl"
    path.write_bytes(b"")
    assert cli.run(FitConfig(mesh=path, output_dir=tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"{path}: file is empty" in err and "Traceback" not in err
    assert cli.run(FitConfig(mesh=tmp_path / "nope.obj", output_dir=tmp_path / "out")) == 2
    assert "nope.obj: file not found" in capsys.readouterr().err
    bogus = CompareConfig(conditioners=("none", "bogus"))
    assert cli.run(FitConfig(mesh=path, compare=bogus, output_dir=tmp_path / "out")) == 2
    assert "bogus" in capsys.readouterr().err


def test_per_input_equilibration_trains_the_occupancy_output():
    """Issue 11, part 1: the shape field's Linear(width, 1) output stays plain under
    equilibrate-in (its E(W) would be sign(W), frozen) and changes after a step."""
    import torch
    from torch.nn.utils import parametrize

    from wcnerf.shape.field import FieldConfig, build_field

    field = build_field(FieldConfig(width=16, depth=2), "equilibrate-in", 0)
    lins = [m for m in field.modules() if isinstance(m, torch.nn.Linear)]
    head = lins[-1]
    assert head.out_features == 1 and not parametrize.is_parametrized(head)
    assert all(parametrize.is_parametrized(m) for m in lins[:-1])
    before = head.weight.detach().clone()
    opt = torch.optim.SGD(field.parameters(), lr=0.1)
    field(torch.rand(64, 3) * 2 - 1).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(head.weight.detach(), before)
