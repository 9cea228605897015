"""nerfstudio plumbing shared by every wcnerf method family (``wcnerf.nerf``, ``wcnerf.nerfacto``).

- :mod:`wcnerf.plugin.compat`: fixes for nerfstudio 1.1.5 on a current torch, offline, CPU
  (``weights_only``-safe checkpoints, nerfacc's CUDA JIT guard, LPIPS from local weights).
- :mod:`wcnerf.plugin.trainer`: ``WCTrainer`` (atomic, ``weights_only``-safe checkpoints,
  resume to the end) and the run-length learning-rate schedule.
- :mod:`wcnerf.plugin.cpu_allocator`: the steady glibc malloc that trainer sets on the CPU.
- :mod:`wcnerf.plugin.presets`: the typed ``Preset``, ``trainer_config`` / ``adam_decay`` (the
  trainer config of every method) and ``method_pair`` (a conditioned method and its baseline).
- :mod:`wcnerf.plugin.ndc`: ``NDCCollider``, the one NDC ray transform for ``RayBundle``s.
- :mod:`wcnerf.plugin.conditioned`: ``ConditionedModelConfig`` / ``ConditionedModel``, the
  settings, conditioning, post-step callback, layer-wise analysis and LPIPS of any model.
- :mod:`wcnerf.plugin.viewer_panel`: the viewer's "Weight conditioning" panel.

Importing this package applies :func:`wcnerf.plugin.compat.install` (numpy scalars allowed in
``torch.load(weights_only=True)``; nerfacc's CUDA JIT blocked when CUDA is unavailable). Every
method family imports it, so nerfstudio's entry-point discovery applies it before any command
reads a checkpoint. Nothing here imports a method family.
"""

from wcnerf.plugin import compat as compat

compat.install()

__all__ = ["compat"]
