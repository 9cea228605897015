"""Weight normalization (Salimans & Kingma, 2016): ``W = g * V / ||V||`` per output row.

We use torch's own ``torch.nn.utils.parametrizations.weight_norm`` (``dim=0``: one gain per
output neuron / output channel). Its ``right_inverse`` initialises ``g = ||W_i||`` and
``V = W``, so conditioning does not change the layer's function. The parameters are saved
as ``parametrizations.weight.original0`` (g) and ``original1`` (V).

Precision: torch's kernel accumulates ``||V||`` in float32 for half-precision ``V`` (the other
conditioners do the same, ``_common.reduction_dtype``), and under ``torch.autocast`` ``g`` and
``V`` stay float32, so it is used as it is. It has no epsilon: an all-zero row gives
``0 / 0 = NaN``, in float32 as in half precision.
"""

from __future__ import annotations

from torch.nn.utils.parametrizations import weight_norm


def apply(root, targets, *, dim: int = 0):
    for _, layer in targets:
        weight_norm(layer, name="weight", dim=dim)
    return root
