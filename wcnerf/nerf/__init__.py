"""E-NeRF for nerfstudio: model, field and method specifications.

- :mod:`wcnerf.nerf.model`: ``ENeRFModelConfig`` / ``ENeRFModel`` (NeRF paper's LLFF model,
  every Linear weight-conditioned by ``wcnerf.conditioning``).
- :mod:`wcnerf.nerf.field`: ``ENeRFField`` (nerfstudio's ``NeRFField`` + raw-density noise).
- :mod:`wcnerf.nerf.methods`: the ``e-nerf``, ``nerf``, ``e-nerf-small``, ``nerf-small``
  method specifications (nerfstudio entry points).

The nerfstudio plumbing shared with the other method families (compatibility fixes, trainer,
presets, NDC, conditioning of the model) is :mod:`wcnerf.plugin`; importing this package
imports it, which applies :func:`wcnerf.plugin.compat.install` before nerfstudio reads any
checkpoint.
"""

import sys

import wcnerf.plugin  # noqa: F401  (applies wcnerf.plugin.compat.install())
from wcnerf.plugin import trainer as _trainer

# Run configs (config.yml) written before the trainer moved to wcnerf.plugin name its classes
# wcnerf.nerf.trainer.*; nerfstudio's YAML loader imports them by that name (ns-eval, ns-render,
# ns-export, --load-config). This alias of the module object keeps those runs loadable; nothing
# in the repository imports the old name.
sys.modules.setdefault(__name__ + ".trainer", _trainer)
