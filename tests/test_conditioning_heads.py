"""Heads that train (issue 11, part 1) and names that say what they do (part 2).

Per-input equilibration of a ``Linear(n, 1)`` head gives ``E(W) = sign(W)``, whose gradient is
zero: that head would never train. ``condition`` leaves such layers plain unless forced.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from wcnerf.conditioning import REGISTRY, available, condition, left_plain, post_step
from wcnerf.conditioning.equilibrate import DEFAULT_MODE, degenerate, equilibrate

D = torch.float64
CONDITIONERS = [name for name in REGISTRY if name != "none"]


def head_mlp(seed=0, out=1, inp=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, out)).to(D)


def one_step(model, x, y, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    post_step(model, opt)


def _data(n=64, d=5, out=1):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, d, dtype=D, generator=g), torch.randn(n, out, dtype=D, generator=g)


@pytest.mark.parametrize("method", CONDITIONERS)
def test_single_output_head_trains(method):
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = condition(head_mlp(), method)
    model(x)  # EquiNorm: the first forward sets its statistics
    head = model[4]
    before = head.weight.detach().clone()
    one_step(model, x, y)
    assert not torch.allclose(head.weight.detach(), before), f"{method}: the Linear(16, 1) head did not train"


def test_forced_per_input_head_is_frozen():
    """Why the rule exists: forced, the head's effective weight is sign(W) and never moves."""
    x, y = _data()
    model = condition(head_mlp(), "equilibrate-in", force_degenerate=True)
    head = model[4]
    before = head.weight.detach().clone()
    torch.testing.assert_close(before, torch.sign(before))
    for _ in range(3):
        one_step(model, x, y)
    torch.testing.assert_close(head.weight.detach(), before)
    assert left_plain(model) == []


def test_degenerate_layers_are_named_once_and_listed():
    with pytest.warns(UserWarning, match=r"left 1 layer\(s\) plain: 4: equilibrate mode 'in' on a single-output"):
        model = condition(head_mlp(), "equilibrate-in")
    assert [name for name, _ in left_plain(model)] == ["4"]
    assert not hasattr(model[4], "parametrizations")
    assert hasattr(model[2], "parametrizations")


@pytest.mark.parametrize(("mode", "shape", "frozen"), [
    ("in", (1, 8), True), ("in", (3, 8), False), ("in", (8, 1), False),
    ("out", (8, 1), True), ("out", (1, 8), False),
    ("both", (1, 8), True), ("both", (8, 1), True), ("both", (3, 4), False),
])
def test_which_shapes_are_degenerate(mode, shape, frozen):
    layer = nn.Linear(shape[1], shape[0])
    assert (degenerate(layer, mode) is not None) == frozen
    # and the reason is real: when flagged, every effective weight has (nearly) one magnitude,
    # so E(W) is a function of sign(W) alone (exactly sign(W) for in/out; Ruiz's "both" ends
    # within a few percent of sign(W)/sqrt(n))
    E = equilibrate(layer.weight.detach(), mode).abs()
    assert bool(torch.allclose(E, E.mean().expand_as(E), rtol=0.05)) == frozen


def test_all_layers_degenerate_is_an_error():
    with pytest.raises(ValueError, match="every selected layer is degenerate"):
        condition(nn.Linear(4, 1), "equilibrate-in")


def test_names_say_which_orientation():
    d = available()
    assert "rows" in d["equilibrate-out"] and "per output" in d["equilibrate-out"]
    assert "columns" in d["equilibrate-in"] and "per input" in d["equilibrate-in"]
    assert f"alias of equilibrate-{DEFAULT_MODE}" in d["equilibrate"]
    # the alias conditions with the default orientation; explicit names refuse a conflicting mode
    model = condition(head_mlp(out=3), "equilibrate")
    assert model[0].parametrizations.weight[0].mode == DEFAULT_MODE
    with pytest.raises(ValueError, match="conflicting mode"):
        condition(head_mlp(out=3), "equilibrate-out", mode="in")
    # no description calls a mode "the paper's E" without saying which reading
    for name, text in d.items():
        assert "paper's E" not in text or "reads" in text, name


def test_default_orientation_is_the_one_the_study_chose():
    """Issue 11, part 3: `equilibrate` (and so e-nerf, e-nerfacto, shape_fit.py) is the
    orientation the results page states, and the README and the conditioners page (the
    registry's table) say the same."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    stated = f"Default: `equilibrate` = `equilibrate-{DEFAULT_MODE}`"
    assert stated in (repo / "docs" / "results.md").read_text()
    alias = f"alias of the default orientation, `equilibrate-{DEFAULT_MODE}`"
    assert alias in (repo / "README.md").read_text()
    assert alias in (repo / "docs" / "conditioners.md").read_text()
    assert REGISTRY["equilibrate"].description.startswith(f"alias of equilibrate-{DEFAULT_MODE}")


def test_every_conditioned_default_uses_the_equilibrate_alias():
    """e-nerf, e-nerfacto (and their -small variants) and the shape trainer name `equilibrate`,
    so all follow DEFAULT_MODE."""
    from wcnerf.nerf.methods import e_nerf, e_nerf_small
    from wcnerf.nerfacto.methods import e_nerfacto, e_nerfacto_small
    from wcnerf.shape.train import FitConfig

    for spec in (e_nerf, e_nerf_small, e_nerfacto, e_nerfacto_small):
        assert spec.config.pipeline.model.conditioning == "equilibrate"
    assert FitConfig().field.conditioning == "equilibrate"
