"""E-NeRF for nerfstudio: model, field, trainer and method specifications.

- :mod:`wcnerf.nerf.model`: ``ENeRFModelConfig`` / ``ENeRFModel`` (NeRF paper's LLFF model,
  every Linear weight-conditioned by ``wcnerf.conditioning``).
- :mod:`wcnerf.nerf.field`: ``ENeRFField`` (nerfstudio's ``NeRFField`` + raw-density noise).
- :mod:`wcnerf.nerf.trainer`: ``WCTrainer`` (atomic, ``weights_only``-safe checkpoints).
- :mod:`wcnerf.nerf.methods`: the ``e-nerf``, ``nerf``, ``e-nerf-small``, ``nerf-small``
  method specifications (nerfstudio entry points).
- :mod:`wcnerf.nerf.compat`: fixes for nerfstudio 1.1.5 on a current torch, offline, CPU.

Importing this package applies :func:`wcnerf.nerf.compat.install` (numpy scalars allowed in
``torch.load(weights_only=True)``; nerfacc's CUDA JIT blocked when CUDA is unavailable).
nerfstudio imports it through the entry points before any checkpoint is read.
"""

from wcnerf.nerf import compat as compat

compat.install()

__all__ = ["compat"]
