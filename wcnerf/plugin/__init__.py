"""nerfstudio plumbing shared by every wcnerf method family (``wcnerf.nerf``, ``wcnerf.nerfacto``).

- :mod:`wcnerf.plugin.compat`: fixes for nerfstudio 1.1.5 on a current torch, offline, CPU
  (``weights_only``-safe checkpoints, nerfacc's CUDA JIT guard, LPIPS from local weights).
- :mod:`wcnerf.plugin.trainer`: ``WCTrainer`` (atomic, ``weights_only``-safe checkpoints,
  resume to the end) and the run-length learning-rate schedule.

Importing this package applies :func:`wcnerf.plugin.compat.install` (numpy scalars allowed in
``torch.load(weights_only=True)``; nerfacc's CUDA JIT blocked when CUDA is unavailable). Every
method family imports it, so nerfstudio's entry-point discovery applies it before any command
reads a checkpoint. Nothing here imports a method family.
"""

from wcnerf.plugin import compat as compat

compat.install()

__all__ = ["compat"]
