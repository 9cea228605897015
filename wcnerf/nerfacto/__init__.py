"""E-nerfacto for nerfstudio: nerfacto with weight-conditioned MLPs.

- :mod:`wcnerf.nerfacto.model`: ``ENerfactoModelConfig`` / ``ENerfactoModel`` (nerfstudio's
  nerfacto; every Linear of the field and the proposal networks conditioned by
  ``wcnerf.conditioning``; LLFF with scene contraction, NDC optional).
- :mod:`wcnerf.nerfacto.tcnn`: tinycudann hash grids when usable, torch otherwise.
- :mod:`wcnerf.nerfacto.methods`: ``e-nerfacto``, ``nerfacto-plain``, ``e-nerfacto-small``,
  ``nerfacto-plain-small`` method specifications (nerfstudio entry points).
"""

import wcnerf.plugin  # noqa: F401  (applies wcnerf.plugin.compat.install())
