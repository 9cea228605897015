"""tinycudann for the hash grids of E-nerfacto, when it is usable; torch otherwise.

Everything that touches tinycudann is in this file, and tinycudann is only imported inside
:func:`tcnn_status` (after ``importlib.util.find_spec`` found it and CUDA is present) and
:class:`TcnnHashGrid`. (nerfstudio's own ``nerfstudio.utils.external`` still tries
``import tinycudann`` when nerfstudio's MLP module is imported; that is nerfstudio's, not ours.)

Only the **hash grids** go to tinycudann. The MLPs stay ``torch.nn.Linear`` layers, for
every conditioner including ``"none"``: a conditioner reparametrizes each layer's weight
(``torch.nn.utils.parametrize``) or rewrites it after the optimizer step (ENorm), and
tinycudann's fused MLP keeps all its weights in one flat fp16 parameter buffer that its CUDA
kernels read directly; a parametrization cannot sit in front of that read. Feeding the
conditioned weights into the fused network every step would mean recomputing the
conditioned weights, casting and scattering them into that buffer, and routing the buffer's
gradient back through the conditioner by hand (a custom autograd function per conditioner,
plus tinycudann's internal weight layout and padding) -- fragile, and specific to each
conditioner. Running the small conditioned MLPs in torch next to a tinycudann grid keeps the
grid (the expensive part of nerfacto) fused and every conditioner working unchanged; the
plain model uses the same torch MLPs, so the two differ only by the conditioning.
``scripts/bench_nerfacto.py`` measures what this costs against tinycudann's fused MLP.

**The CUDA path is untested on the development machine** (no GPU, no tinycudann); it is
the small :class:`TcnnHashGrid` below and :func:`use_tcnn_hash_grids`, exercised in the
tests with a stand-in ``tinycudann`` module.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, Literal, Tuple

import torch
from torch import Tensor, nn

from nerfstudio.field_components.encodings import HashEncoding
from wcnerf.plugin.compat import say_once

__all__ = [
    "FALLBACK_MESSAGE",
    "TcnnHashGrid",
    "resolve_grid_implementation",
    "say_once",
    "tcnn_available",
    "tcnn_status",
    "use_tcnn_hash_grids",
]

FALLBACK_MESSAGE = "tinycudann not found: hash grid and MLPs use nerfstudio's torch implementation"
"""Said once per process when tinycudann cannot be imported (``implementation="auto"``)."""



def tcnn_status() -> Tuple[bool, str]:
    """``(usable, message)``: tinycudann is importable and CUDA is present, or why not."""
    if importlib.util.find_spec("tinycudann") is None:
        return False, FALLBACK_MESSAGE
    if not torch.cuda.is_available():
        return False, "tinycudann is installed but CUDA is not available: hash grid and MLPs use nerfstudio's torch implementation"
    try:
        import tinycudann  # noqa: F401
    except Exception as e:  # ImportError, or OSError on an unknown compute capability
        return False, (f"tinycudann failed to import ({type(e).__name__}: {e}): hash grid and MLPs use "
                       "nerfstudio's torch implementation").replace("\n", " ")
    return True, "tinycudann found: hash grids use tinycudann, the (conditioned) MLPs run in torch"


def tcnn_available() -> bool:
    """tinycudann importable and CUDA present (nothing is imported when it is not installed)."""
    return tcnn_status()[0]


def resolve_grid_implementation(requested: Literal["auto", "tcnn", "torch"]) -> Literal["tcnn", "torch"]:
    """The hash-grid backend for ``requested``; says once which one ``"auto"`` picked.
    ``"tcnn"`` raises when tinycudann is not usable."""
    if requested == "torch":
        return "torch"
    ok, message = tcnn_status()
    if requested == "tcnn" and not ok:
        raise RuntimeError(f"implementation='tcnn' requested but {message.split(':')[0]}")
    if requested not in ("auto", "tcnn"):
        raise ValueError(f"implementation must be 'auto', 'tcnn' or 'torch', got {requested!r}")
    say_once(message, style="bold yellow" if not ok else "bold green")
    return "tcnn" if ok else "torch"


class TcnnHashGrid(nn.Module):
    """tinycudann ``HashGrid`` encoding with the hyper-parameters of a nerfstudio
    :class:`HashEncoding`; output cast to float32 for the torch MLPs behind it."""

    def __init__(self, grid: HashEncoding) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.num_levels = grid.num_levels
        self.features_per_level = grid.features_per_level
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config=HashEncoding.get_tcnn_encoding_config(
                num_levels=grid.num_levels,
                features_per_level=grid.features_per_level,
                log2_hashmap_size=grid.log2_hashmap_size,
                min_res=grid.min_res,
                growth_factor=grid.growth_factor,
            ),
        )

    def get_out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def forward(self, in_tensor: Tensor) -> Tensor:
        return self.encoding(in_tensor).float()


def use_tcnn_hash_grids(root: nn.Module) -> int:
    """Replace every nerfstudio torch :class:`HashEncoding` under ``root`` by a
    :class:`TcnnHashGrid` (a grid reachable under several names, like a proposal network's
    ``encoding`` and ``mlp_base.0``, stays one module). Returns the number of grids."""
    new: Dict[int, nn.Module] = {}
    for name, module in list(root.named_modules(remove_duplicate=False)):
        if isinstance(module, HashEncoding) and name:
            if id(module) not in new:
                new[id(module)] = TcnnHashGrid(module).to(module.hash_table.device)
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, attr, new[id(module)])
    return len(new)
