"""conditioning.png of the LLFF sweep's reports (issue 16, point 6), from synthetic tensorboard
event files written with the tags the conditioned models log (``analysis/<part>/<layer>/<metric>``,
:mod:`wcnerf.plugin.conditioned`): one panel per field and metric, median and max over the
layers per method; nothing drawn (and the report says so) when no run logged the analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wcnerf.eval.kappa import KAPPA_FILE, extract_kappa, parse_tag, run_kappa
from wcnerf.eval.plots import kappa_figure, plot_conditioning
from wcnerf.eval.protocols import Protocol
from wcnerf.eval.runs import MethodSpec, RunResult, SceneSpec
from wcnerf.eval.sweep import run_sweep

LAYERS = ("mlp_base.layers.0", "mlp_base.layers.1", "mlp_head.layers.0", "field_output_density.net")


def write_events(run_dir: Path, scalars: dict) -> None:
    """``{tag: [(step, value)]}`` as a tensorboard event file under ``run_dir/ns/...`` (where
    nerfstudio's writer puts it in a sweep run)."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(run_dir / "ns" / "scene" / "method" / "run"))
    for tag, points in scalars.items():
        for step, value in points:
            w.add_scalar(tag, value, step)
    w.close()


def analysis_scalars(parts=("coarse", "fine"), fim=True, scale=1.0, steps=(0, 500, 1000)) -> dict:
    """What a NeRF run logs: per part and layer kappa_w (the density head's is 1: one output),
    the Fisher block's kappa_nz, other analysis metrics, and the usual training scalars."""
    out = {"Train Loss": [(s, 0.1) for s in steps], "Eval Metrics Dict/psnr": [(s, 20.0) for s in steps]}
    for part in parts:
        for k, layer in enumerate(LAYERS):
            single = layer == "field_output_density.net"
            out[f"analysis/{part}/{layer}/kappa_w"] = [(s, 1.0 if single else scale * (10 + k) * (1 + s / 1000))
                                                       for s in steps]
            out[f"analysis/{part}/{layer}/sigma_max_w"] = [(s, 2.0) for s in steps]
            if fim:
                out[f"analysis/{part}/{layer}/fim/kappa_nz"] = [(s, scale * 1e6 * (k + 1)) for s in steps]
                out[f"analysis/{part}/{layer}/fim/kappa_p100"] = [(s, 1e9) for s in steps]
        out[f"analysis/{part}/total/dead_units"] = [(s, 3.0) for s in steps]
    return out


def test_tags_are_the_ones_the_models_log():
    assert parse_tag("analysis/coarse/mlp_base.layers.0/kappa_w") == ("coarse", "mlp_base.layers.0", "kappa_w")
    assert parse_tag("analysis/proposal_0/mlp.layers.1/fim/kappa_nz") == ("proposal_0", "mlp.layers.1", "fim/kappa_nz")
    for tag in ("analysis/coarse/mlp_base.layers.0/input/kappa_nz", "analysis/coarse/total/dead_units",
                "analysis/fine/mlp_base.layers.0/sigma_max_w", "Train Loss", "analysis/kappa_w"):
        assert parse_tag(tag) is None, tag
    # the names the analysis writes (wcnerf.analysis.layerwise), as the callback prefixes them
    import torch

    from wcnerf.analysis import LayerwiseAnalyzer

    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with LayerwiseAnalyzer(net) as a:
        net(torch.randn(16, 3)).pow(2).mean().backward()
    logged = {f"analysis/coarse/{k}": [(0, v)] for k, v in a.compute().items()}
    kappa = extract_kappa(logged)
    assert set(kappa["coarse"]) == {"kappa_w", "fim/kappa_nz"}
    assert set(kappa["coarse"]["kappa_w"]) == {"0", "2"}


def test_run_kappa_reads_events_and_caches(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_events(run, analysis_scalars())
    kappa = run_kappa(run)
    assert set(kappa) == {"coarse", "fine"}
    assert set(kappa["fine"]["kappa_w"]) == set(LAYERS)
    assert kappa["coarse"]["kappa_w"]["mlp_base.layers.1"] == [(0, 11.0), (500, 16.5), (1000, 22.0)]
    assert (run / KAPPA_FILE).is_file()
    import wcnerf.eval.ns_runner as ns_runner

    def no_reading(*a, **k):
        raise AssertionError("read the event files again")

    monkeypatch.setattr(ns_runner, "read_scalars", no_reading)
    assert run_kappa(run) == kappa  # from kappa.json
    assert run_kappa(tmp_path / "empty") == {}


def runs_of(tmp_path: Path, methods=("nerf", "e-nerf"), seeds=(0, 1), **kw):
    out = []
    for m, method in enumerate(methods):
        for seed in seeds:
            d = tmp_path / method / str(seed)
            write_events(d, analysis_scalars(scale=1.0 + m + 0.1 * seed, **kw))
            out.append(("fern", method, seed, run_kappa(d)))
    return out


def test_figure_has_a_panel_per_field_and_metric_and_two_lines_per_method(tmp_path):
    runs = runs_of(tmp_path)
    fig = kappa_figure(runs)
    assert len(fig.axes) == 4  # (coarse, fine) x (kappa_w, fim/kappa_nz)
    for ax in fig.axes:
        assert len(ax.get_lines()) == 4  # per method: median and max over the layers
        assert ax.get_yscale() == "log"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["coarse (3 layers)", "fine (3 layers)"]  # kappa_w = 1 left out
    # median over the 3 kept layers, geometric mean over the seeds: NeRF at step 0
    median = fig.axes[0].get_lines()[0]
    assert list(median.get_xdata()) == [0, 500, 1000]
    assert median.get_ydata()[0] == pytest.approx(11.0 * (1.0 * 1.1) ** 0.5)
    path = plot_conditioning(runs, tmp_path / "conditioning.png")
    assert path.is_file() and path.stat().st_size > 10_000
    # runs that logged the weights' kappa only: one row
    only_w = runs_of(tmp_path / "w", methods=("nerf", "e-nerf", "weight-norm"), seeds=(0,), fim=False,
                     parts=("field", "proposal_0"))
    fig = kappa_figure(only_w)
    assert len(fig.axes) == 2 and all(len(ax.get_lines()) == 6 for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes] == ["field (3 layers)", "proposal_0 (3 layers)"]


def test_no_scalars_draws_nothing(tmp_path):
    d = tmp_path / "run"
    scalars = analysis_scalars()
    write_events(d, {k: v for k, v in scalars.items() if not k.startswith("analysis/")})
    runs = [("fern", "nerf", 0, run_kappa(d)), ("fern", "e-nerf", 0, {})]
    assert kappa_figure(runs) is None
    old = tmp_path / "conditioning.png"
    old.write_bytes(b"an earlier figure")
    assert plot_conditioning(runs, old) is None
    assert not old.exists()


class KappaRunner:
    """A fake sweep runner: metrics, and the event files of a run that logged the analysis
    (or did not, ``logged=False``)."""

    def __init__(self, logged=True):
        self.logged = logged

    def __call__(self, spec):
        scalars = analysis_scalars(scale=2.0 if spec.method.label == "nerf" else 1.0)
        if not self.logged:
            scalars = {k: v for k, v in scalars.items() if not k.startswith("analysis/")}
        write_events(spec.run_dir, scalars)
        return RunResult(psnr=20.0, ssim=0.5, iterations=10, sec_per_iter=0.01)


@pytest.mark.parametrize("logged", [True, False])
def test_sweep_report_links_the_figure_or_says_why_not(tmp_path, logged):
    proto = Protocol(name="fake", methods={"nerf": "nerf-small", "e-nerf": "e-nerf-small"},
                     base_method="nerf-small", overrides={"max_num_iterations": 10})
    summary = run_sweep(proto, [SceneSpec("fern", Path("/nonexistent/fern"))],
                        [MethodSpec("nerf", "nerf-small"), MethodSpec("e-nerf", "e-nerf-small")], [0],
                        runner=KappaRunner(logged), output_root=tmp_path, show_progress=False)
    out = tmp_path / "fake"
    md = (out / "table.md").read_text()
    assert "## Figures" in md
    if logged:
        assert summary.reports["conditioning.png"] == out / "conditioning.png"
        assert (out / "conditioning.png").is_file()
        assert "![Layer-wise condition numbers](conditioning.png)" in md
        cached = json.loads((out / "runs/fern/nerf/seed-0" / KAPPA_FILE).read_text())
        assert set(cached["kappa"]) == {"coarse", "fine"}
    else:
        assert summary.reports["conditioning.png"] is None
        assert not (out / "conditioning.png").exists()
        assert "`conditioning.png` not drawn: no finished run logged the layer-wise analysis" in md
