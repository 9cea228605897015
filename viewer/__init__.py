"""Shipped as ``wcnerf.viewer``: viewers over the wcnerf package.

- :mod:`wcnerf.viewer.shape_viewer`: the live page of ``scripts/shape_fit.py --viewer``.
- The nerfstudio panel of the conditioned methods (``e-nerf``, ``e-nerfacto``, ...) lives in
  :mod:`wcnerf.plugin.viewer_panel`, because nerfstudio loads it with the model.

``viewer/screenshots/`` (not shipped) holds the screenshots in the README; the browser tests
make them (``WCNERF_SCREENSHOTS=viewer/screenshots pytest -m browser``).
"""
