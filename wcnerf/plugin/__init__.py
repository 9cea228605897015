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

It first filters :data:`KNOWN_WARNINGS`, the deprecation notices nerfstudio 1.1.5 and
torchmetrics print on a current torch (about ten per command, each about their own code, none
actionable by a user): every filter names the module that warns, the category and the
message, so our own warnings and any other one still show. This import is our entry point in
every ``ns-*`` command (nerfstudio's entry-point discovery loads the plugin) and in our console
scripts that use nerfstudio: a script's ``main`` imports this package before nerfstudio
(``wcnerf-spiral`` does so first thing), so even the notices of nerfstudio's import are
filtered. ``ns-*`` commands import part of nerfstudio before they discover the plugin, so the
three notices printed at that import (``torch.jit.script``, ``custom_fwd`` / ``custom_bwd``)
still show there. A ``-W`` option or ``$PYTHONWARNINGS``
(e.g. ``PYTHONWARNINGS=default``) turns the filtering off: the user's choice wins.
"""

import sys
import warnings

KNOWN_WARNINGS = (
    # (category, warning module, message start): the warning module is where the warning is
    # attributed (the file Python prints), matched whole; the message is a regular expression.
    (FutureWarning, "torch.jit._script", r"`torch\.jit\.script` is deprecated"),
    (FutureWarning, "nerfstudio.field_components.activations",
     r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated"),
    (FutureWarning, "nerfstudio.engine.trainer", r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated"),
    (UserWarning, "nerfstudio.cameras.cameras",
     r"Using a non-tuple sequence for multidimensional indexing is deprecated"),
    (UserWarning, "nerfstudio.utils.writer", r"Converting a tensor with requires_grad=True to a scalar"),
    (FutureWarning, "torchmetrics.utilities.prints",
     r"Importing `spectral_angle_mapper` from `torchmetrics\.functional` was deprecated"),
)
"""Third-party warnings filtered by :func:`filter_known_warnings` (see the module doc)."""


def filter_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS`, each only from its module and with its message, unless
    the user chose warning filters (``-W`` / ``$PYTHONWARNINGS``). Idempotent."""
    if sys.warnoptions:
        return
    for category, module, message in KNOWN_WARNINGS:
        module_re = module.replace(".", r"\.") + r"\Z"
        warnings.filterwarnings("ignore", message=message, category=category, module=module_re)


filter_known_warnings()  # before compat: it imports nerfstudio, which warns at import

from wcnerf.plugin import compat as compat  # noqa: E402

compat.install()

__all__ = ["KNOWN_WARNINGS", "compat", "filter_known_warnings"]
