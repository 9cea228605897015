"""The one reporting stack (issue 27, point 4): seed statistics, table cells, bolding and the
seed-band curve plotter of :mod:`wcnerf.report`, and the reports built on it.

- ``seed_stats`` is the mean and the *sample* std (n-1) over seeds, std None for one seed;
- one cell format ("18.51 ± 0.08"), one bolding rule (best mean, ties all win, needs two rows)
  and one header sentence, printed by every table (LLFF table.md, shape comparison.md,
  the orientation study);
- the curve plotter draws the seeds' mean and a min-max or ±std band.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from support.helpers import REPO
from wcnerf.report import (
    STAT,
    Stats,
    best_keys,
    draw_band,
    format_cell,
    mean_band,
    plot_seed_curves,
    seed_stats,
    stat_sentence,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------- statistics
def test_seed_stats_is_the_sample_std():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.normal(20.0, 2.0, n)
        st = seed_stats(x.tolist())
        assert st.n == n and st.mean == pytest.approx(x.mean())
        assert st.std == pytest.approx(x.std(ddof=1)) and st.std != pytest.approx(x.std())
    # by hand: 1, 2, 3, 4 -> mean 2.5, squared deviations 5.0, / (4 - 1)
    assert seed_stats([1, 2, 3, 4]) == Stats(2.5, pytest.approx(math.sqrt(5.0 / 3.0)), 4)
    # the three seeds: sample std 0.229, not the population std 0.187
    st = seed_stats([0.05, 0.2, 0.5])
    assert f"{st.std:.3f}" == "0.229" and f"{np.std([0.05, 0.2, 0.5]):.3f}" == "0.187"


def test_seed_stats_one_seed_none_and_non_finite():
    assert seed_stats([18.5]) == Stats(18.5, None, 1)
    assert seed_stats([]) == Stats(None, None, 0)
    assert seed_stats([None, "", float("nan"), float("inf")]) == Stats(None, None, 0)
    assert seed_stats([1.0, None, float("nan"), 3.0]) == Stats(2.0, pytest.approx(math.sqrt(2.0)), 2)
    assert seed_stats(v for v in ("1", "3")).mean == 2.0  # CSV strings and generators


# ------------------------------------------------------------------------ cells and bolding
def test_format_cell():
    assert format_cell(Stats(18.514, 0.0812, 3), 2) == "18.51 ± 0.08"
    assert format_cell(Stats(0.71, 0.01414, 2), 3, bold_it=True) == "**0.710 ± 0.014**"
    assert format_cell(Stats(18.514, None, 1), 2) == "18.51"  # one seed: the value alone
    assert format_cell(Stats(), 2) == "–" and format_cell(Stats(), 2, empty="n/a") == "n/a"


def test_best_keys_rule():
    assert best_keys({"a": 1.0, "b": 2.0, "c": None}) == {"b"}
    assert best_keys({"a": 0.3, "b": 0.2}, higher=False) == {"b"}  # e.g. LPIPS, Chamfer
    assert best_keys({"a": 2.0, "b": 2.0, "c": 1.0}) == {"a", "b"}  # ties all win
    assert best_keys({"a": 2.0, "b": None}) == set()  # nothing to beat


def test_stat_sentence_says_what_plus_minus_is():
    assert STAT == "mean ± sample std (n-1)"
    assert stat_sentence(3).startswith("mean ± sample std (n-1) over 3 seeds")
    assert "over the seeds that finished" in stat_sentence() and "single seed" in stat_sentence()


# ------------------------------------------------------------------------------- the plotter
def test_mean_band_minmax_and_std():
    a = ([0, 10, 20], [1.0, 2.0, 3.0])
    b = ([0, 10, 20, 30], [3.0, 4.0, float("nan"), 9.0])
    steps, mean, low, high = mean_band([a, b], "minmax")
    assert steps.tolist() == [0, 10] and mean.tolist() == [2.0, 3.0]  # steps both seeds recorded
    assert low.tolist() == [1.0, 2.0] and high.tolist() == [3.0, 4.0]
    _, mean, low, high = mean_band([a, b], "std")
    assert (high - mean).tolist() == pytest.approx([math.sqrt(2.0)] * 2) and (mean - low)[0] == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match="band"):
        mean_band([a], "sem")


def test_draw_band_shades_only_several_seeds():
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    assert draw_band(ax, [([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1, 2], [2.0, 3.0, 5.0])], band="minmax")
    (poly,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = poly.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(5.0)  # the seeds' range
    assert ax.lines[0].get_ydata().tolist() == [1.5, 2.5, 4.0]
    ax = Figure().add_subplot(1, 1, 1)
    assert draw_band(ax, [([0, 1], [1.0, 2.0])]) and not ax.collections  # one seed: a line
    assert not draw_band(ax, [([], [])])


def test_plot_seed_curves_writes_a_png_with_bands(tmp_path):
    import imageio.v3 as iio

    steps = list(range(0, 100, 10))
    series = {m: [(steps, [off + 0.1 * s + seed for s in steps]) for seed in range(3)]
              for m, off in (("none", 0.0), ("equilibrate", 5.0))}
    for band in ("minmax", "std"):
        path = plot_seed_curves(series, tmp_path / f"{band}.png", band=band, title="t", ylabel="PSNR")
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = iio.imread(path)[..., :3].astype(int)
        # a band is a light, translucent fill of a method's colour: many pale non-grey pixels
        pale = (img.min(axis=-1) > 150) & (img.max(axis=-1) < 250) & (np.ptp(img, axis=-1) > 20)
        assert pale.sum() > 2000, band
    assert plot_seed_curves({"none": [([], [])]}, tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()


def test_llff_and_shape_curves_use_the_plotter(tmp_path):
    from wcnerf.eval.plots import plot_curves as llff_curves
    from wcnerf.shape.plot import plot_curves as shape_curves

    steps = list(range(0, 200, 20))
    curves = [("fern", m, seed, {"train": {"step": steps, "psnr": [10 + 0.05 * s + seed for s in steps]},
                                 "heldout": {"step": steps, "psnr": [9 + 0.04 * s + seed for s in steps]}})
              for m in ("nerf", "e-nerf") for seed in (0, 1)]
    assert llff_curves(curves, tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert llff_curves([("fern", "nerf", 0, {})], tmp_path / "none.png") is None
    runs = [{"loss": list(np.geomspace(1, 0.01, 300) * (1 + seed)), "eval_step": [0, 100, 200],
             "eval_iou": [0.1, 0.5 + 0.1 * seed, 0.9]} for seed in range(3)]
    shape_curves({"none": runs, "one run": runs[0]}, tmp_path / "shape.png", title="t")
    assert (tmp_path / "shape.png").read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------- the tables built on it
def _shape_summary(per_seed: dict) -> dict:
    keys = ("iou_early", "iou_points", "iou_grid", "chamfer_l1", "normal_consistency", "fscore",
            "seconds_per_step", "cpu_seconds_per_step")
    methods = {}
    for m, values in per_seed.items():
        seeds = {str(i): {k: v for k in keys} for i, v in enumerate(values)}
        methods[m] = {"lr": 0.01, "final_loss": 0.1, "per_seed": seeds,
                      **{k: seed_stats(values).mean for k in keys}}
    return {"seeds": [0, 1, 2], "task": "occupancy", "optimizer": "adam", "steps": 100, "batch_size": 512,
            "lrs": [0.01], "lr_selection": "lowest final loss", "methods": methods, "sweep": {}}


def test_shape_comparison_prints_the_sample_std():
    from wcnerf.shape.compare import to_markdown

    md = to_markdown(_shape_summary({"none": [0.05, 0.2, 0.5], "equilibrate": [0.6, 0.6, 0.6]}), "blob")
    assert "Metrics are mean ± sample std (n-1) over 3 seeds" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| none |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0.2500 ± 0.2291"  # was 0.1871, the population std
    assert cells[6] == "**0.25000 ± 0.22913**"  # Chamfer-L1: lower is better
    row = next(ln for ln in md.splitlines() if ln.startswith("| equilibrate |"))
    assert "**0.6000 ± 0.0000**" in row
    one = to_markdown(_shape_summary({"none": [0.4]}), "blob")
    assert "| none | 0.01 | 0.4000 | – | 0.4000 |" in one  # one seed: the value alone, nothing bold


def test_llff_table_states_the_statistic():
    from wcnerf.eval.table import table_markdown

    rec = {"scene": "fern", "method": "nerf", "seed": 0, "status": "done", "psnr": 20.0, "ssim": 0.5, "lpips": None}
    assert f"cells are {stat_sentence()};" in table_markdown([rec])


def test_orientation_study_tables(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("orientation_study", REPO / "scripts" / "orientation_study.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    folder = tmp_path / "shape" / "armadillo" / "compare-occupancy-adam-400steps-abc123"
    folder.mkdir(parents=True)
    data = _shape_summary({"none": [0.05, 0.2, 0.5], "equilibrate-out": [0.6, 0.7, 0.8]})
    data["mesh"], data["steps_to_target"] = "meshes/armadillo.obj", {"none": 0.9, "equilibrate-out": None}
    (folder / "comparison.json").write_text(json.dumps(data))
    study = mod.Study(out=tmp_path, meshes=(Path("armadillo.obj"),), optimizers=("adam",))
    text = "\n".join(mod.shape_section(study))
    assert stat_sentence() in text
    assert "| none | 0.01 | 0.250 ± 0.229 | 0.90 | 0.250 ± 0.229 |" in text
    assert "| equilibrate-out | 0.01 | **0.700 ± 0.100** | not reached | **0.700 ± 0.100** |" in text
