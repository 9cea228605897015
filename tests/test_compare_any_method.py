"""``wcnerf-compare --method M --conditioners ...``: any nerfstudio method on any scene, end to
end at tiny sizes (nerfstudio's own vanilla-nerf on an LLFF scene; nerfstudio's own nerfacto
with torch hash grids on the same scene converted to nerfstudio-data), through the real
``ns-train --load-config`` and ``ns-eval`` subprocesses."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from support.tiny import NERFACTO, tiny_fern

# Each run's size: 4 iterations of 64 rays, checkpoints every 2; the method's own model, shrunk.
_RUN = ["max_num_iterations=4", "steps_per_save=2", "steps_per_eval_batch=2", "logging.steps_per_log=1",
        "pipeline.datamanager.train_num_rays_per_batch=64", "pipeline.datamanager.eval_num_rays_per_batch=64"]
_MODELS = {
    "vanilla-nerf": ["pipeline.model.num_coarse_samples=8", "pipeline.model.num_importance_samples=8"],
    "nerfacto": [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in NERFACTO.overrides().items()
                 if k.startswith("pipeline.model.") and "chunk" not in k],
}
_SCENES = {
    "llff": ["pipeline.datamanager.dataparser.downscale_factor=32", "pipeline.datamanager.dataparser.max_eval_views=2"],
    "nerfstudio-data": ["pipeline.datamanager.dataparser.downscale_factor=1"],
}


@pytest.mark.e2e
@pytest.mark.parametrize("method, dataparser", [("vanilla-nerf", "llff"), ("nerfacto", "nerfstudio-data")])
def test_any_method_any_dataparser_end_to_end(tmp_path, fern, method, dataparser):
    from rich.console import Console

    from wcnerf.eval.cli import Compare
    import tyro

    scene = tiny_fern(tmp_path / "data", fern)
    if dataparser == "nerfstudio-data":
        from wcnerf.data.convert import llff_to_nerfstudio

        llff_to_nerfstudio(scene, tmp_path / "fern-ns")  # LLFF's cameras and every-8th split as transforms.json
        scene = tmp_path / "fern-ns"
    out = tmp_path / "out"
    args = ["--protocol", "cpu", "--method", method, "--conditioners", "none", "equilibrate", "--data", str(scene),
            "--dataparser", dataparser, "--seeds", "0", "--threads", "1", "--output-root", str(out),
            "--set", *_RUN, *_MODELS[method], *_SCENES[dataparser]]
    buf = io.StringIO()
    code = tyro.cli(Compare, args=args).main(console=Console(file=buf, width=300))
    printed = buf.getvalue()
    assert code == 0, printed[-4000:]
    (folder,) = [d for d in out.iterdir() if d.is_dir()]
    assert folder.name.startswith(f"cpu-{dataparser}-{method}-set") if dataparser != "llff" else \
        folder.name.startswith(f"cpu-{method}-set")
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [(r["method"], r["status"]) for r in rows] == [("none", "done"), ("equilibrate", "done")]
    for r in rows:
        assert 5 < float(r["psnr"]) < 40 and 0 < float(r["ssim"]) <= 1 and r["iterations"] == "4"
        run = folder / r["run_dir"]
        config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)  # the run's one record
        assert config.method_name == method and config.max_num_iterations == 4 and config.machine.seed == 0
        assert config.pipeline.model.conditioning == r["method"]  # conditioned as wcnerf-train conditions it
        assert type(config.pipeline.datamanager.dataparser).__name__ == (
            "LLFFDataParserConfig" if dataparser == "llff" else "NerfstudioDataParserConfig")
        status = json.loads((run / "status.json").read_text())
        assert status["execution"]["threads"] == 1 and status["execution"]["device"] == "cpu"
        assert f"--load-config {run / 'config.yml'}" in (run / "train.log").read_text()
        # every held-out view of the dataparser's split (LLFF's every 8th: 3 of fern's 20; at most 2 evaluated)
        assert (r["views_evaluated"], r["views_held_out"]) == (("2", "3") if dataparser == "llff" else ("3", "3"))
    md = (folder / "table.md").read_text()
    assert "sample std" in md and "Δ PSNR" in md  # the gap to the unconditioned method
    assert (folder / "curves.png").stat().st_size > 1000
