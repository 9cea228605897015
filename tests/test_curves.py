"""Steps to target (issue 11, part 4): the training-speed measure from held-out curves."""

from __future__ import annotations

from wcnerf.analysis.curves import first_reach, mean_curve, steps_to_target, value_at_fraction
from wcnerf.eval.table import table_markdown

STEPS = list(range(0, 101, 10))


def linear(slope, cap=None):
    return STEPS, [min(slope * s, cap) if cap is not None else slope * s for s in STEPS]


def test_mean_curve_uses_common_steps_and_drops_nan():
    a = ([0, 10, 20], [1.0, 2.0, 3.0])
    b = ([0, 10, 30], [3.0, float("nan"), 5.0])
    assert mean_curve([a, b]) == ([0], [2.0])


def test_value_at_fraction_and_first_reach():
    c = linear(0.1)
    assert value_at_fraction(c, 0.15, 100) in (1.0, 2.0)  # nearest of steps 10 / 20
    assert value_at_fraction(c, 0.5, 100) == 5.0
    assert first_reach(c, 4.5) == 50 and first_reach(c, 11.0) is None


def test_steps_to_target_fraction_of_plain_steps():
    # plain: 0.1 per step, final value = mean(9, 10, 10 capped) -> reaches at ...
    plain = [linear(0.1), linear(0.1)]
    fast = [linear(0.2, cap=10.0), linear(0.2, cap=10.0)]
    slow = [linear(0.05)]
    res = steps_to_target({"nerf": plain, "fast": fast, "slow": slow}, "nerf")
    target = (8.0 + 9.0 + 10.0) / 3  # mean of the plain curve's last 3 points
    assert res["nerf"] == 0.9  # first step >= 9.0 is 90 (of 100)
    assert res["fast"] == 0.5  # 0.2 * 50 = 10 >= 9.0, 0.2 * 40 = 8 < 9
    assert res["slow"] is None
    assert target == 9.0
    assert steps_to_target({"fast": fast}, "nerf") == {}
    assert "unmeasured" not in steps_to_target({"nerf": plain, "unmeasured": []}, "nerf")


def test_table_has_a_steps_to_target_row_per_method():
    records = [
        {"scene": "fern", "method": m, "seed": 0, "status": "done", "psnr": 20.0, "ssim": 0.5, "lpips": None}
        for m in ("nerf", "equilibrate-out", "weight-norm")
    ]
    curves = {("fern", "nerf"): [linear(0.1)], ("fern", "equilibrate-out"): [linear(0.2, cap=10.0)],
              ("fern", "weight-norm"): [linear(0.01)]}
    md = table_markdown(records, heldout_curves=curves)
    section = md.split("## Steps to the plain model's final held-out PSNR")[1].split("##")[0]
    assert "| NeRF | 0.90 | 0.90 |" in section
    assert "| equilibrate-out | 0.50 | 0.50 |" in section
    assert "| weight-norm | not reached | not reached on 1/1 |" in section


def test_table_has_seconds_to_target_from_the_runs_measured_seconds_per_iteration():
    records = [
        {"scene": "fern", "method": m, "seed": seed, "status": "done", "psnr": 20.0, "ssim": 0.5, "lpips": None,
         "sec_per_iter": spi}
        for m, spis in (("nerf", (0.2, 0.4)), ("e-nerf", (0.5, 0.5)), ("weight-norm", (1.0, 1.0)))
        for seed, spi in enumerate(spis)
    ]
    curves = {("fern", "nerf"): [linear(0.1)], ("fern", "e-nerf"): [linear(0.2, cap=10.0)],
              ("fern", "weight-norm"): [linear(0.01)]}
    md = table_markdown(records, heldout_curves=curves)
    section = md.split("## Training seconds to the plain model's final held-out PSNR")[1].split("##")[0]
    last = linear(0.1)[0][-1]
    assert f"| NeRF | {0.9 * last * 0.3:.0f} s |" in section  # mean of its runs' 0.2 and 0.4 s/iteration
    assert f"| E-NeRF | {0.5 * last * 0.5:.0f} s |" in section
    assert "| weight-norm | not reached |" in section
    # without measured times, no seconds table
    for r in records:
        r["sec_per_iter"] = None
    assert "Training seconds to" not in table_markdown(records, heldout_curves=curves)
