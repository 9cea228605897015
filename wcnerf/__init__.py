"""wcnerf: weight conditioning for neural fields.

Sub-packages (dependencies point one way, see README "Architecture"):

- ``wcnerf.conditioning``: weight conditioners for any torch module (pure torch).
- ``wcnerf.analysis``: layer-wise conditioning analysis (pure torch).
- ``wcnerf.shape``: SDF / occupancy shape fitting (no nerfstudio).
- ``wcnerf.data``: the LLFF dataparser for nerfstudio.
- ``wcnerf.plugin``: nerfstudio plumbing shared by every method family (compatibility,
  trainer, presets, NDC, conditioning of any model).
- ``wcnerf.nerf``: E-NeRF / NeRF models and nerfstudio method specifications.
- ``wcnerf.nerfacto``: E-nerfacto (nerfacto with conditioned MLPs).
- ``wcnerf.eval``: image metrics and the comparison harness.
"""

__version__ = "0.1.0"
