"""Centered weight normalization (Huang et al., ICCV 2017, Sec. 3): gain initialised to 1, so
each effective row starts with zero mean and unit norm; ``gain_init="row-norm"`` keeps the
project's earlier start (the original layer's centred rows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wcnerf.conditioning import condition

D = torch.float64


def _cwn(layer):
    return layer.parametrizations.weight[0]


@pytest.mark.parametrize("make", [lambda: nn.Linear(9, 6), lambda: nn.Conv2d(3, 5, 3)])
def test_gain_is_one_and_rows_are_centred_unit_norm(make):
    torch.manual_seed(0)
    layer = condition(make().to(D), "centered-weight-norm")
    assert torch.equal(_cwn(layer).gain.detach(), torch.ones(layer.weight.shape[0], dtype=D))
    rows = layer.weight.detach().flatten(1)
    torch.testing.assert_close(rows.mean(1), torch.zeros(rows.shape[0], dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(rows.shape[0], dtype=D))


def test_row_norm_option_keeps_the_original_centred_rows():
    torch.manual_seed(0)
    lin = nn.Linear(9, 6).to(D)
    W = lin.weight.detach().clone()
    C = W - W.mean(1, keepdim=True)
    condition(lin, "centered-weight-norm", gain_init="row-norm")
    torch.testing.assert_close(_cwn(lin).gain.detach(), C.norm(dim=1))
    torch.testing.assert_close(lin.weight.detach(), C)
    assert _cwn(lin).gain.detach().mean() < 0.9  # about 0.58 for torch's default init


def test_unknown_gain_init_is_rejected():
    with pytest.raises(ValueError, match="gain_init"):
        condition(nn.Linear(4, 3), "centered-weight-norm", gain_init="two")
