"""LLFF data for nerfstudio: the ``llff`` dataparser and NDC rays.

- :mod:`wcnerf.data.llff`: ``LLFFDataParserConfig`` / ``LLFF`` (nerfstudio dataparser,
  entry point ``llff``), ``llff_dataparser``.
- :mod:`wcnerf.data.llff_scene`: reading and checking scenes without nerfstudio
  (``load_llff_scene``, ``resolve_data_path``, ``LLFFDataError``).
- :mod:`wcnerf.data.ndc`: ``ndc_rays`` (pure torch).

Names are imported lazily so that ``import wcnerf.data`` does not pull in nerfstudio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ndc_rays": "wcnerf.data.ndc",
    "ndc_ray_mask": "wcnerf.data.ndc",
    "ndc_t_to_world_z": "wcnerf.data.ndc",
    "LLFFDataError": "wcnerf.data.llff_scene",
    "LLFFScene": "wcnerf.data.llff_scene",
    "load_llff_scene": "wcnerf.data.llff_scene",
    "resolve_data_path": "wcnerf.data.llff_scene",
    "LLFFDataParserConfig": "wcnerf.data.llff",
    "LLFF": "wcnerf.data.llff",
    "llff_dataparser": "wcnerf.data.llff",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wcnerf.data' has no attribute {name!r}")
