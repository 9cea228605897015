#!/usr/bin/env python
"""Fit an occupancy / SDF field to a triangle mesh: a shim over :func:`wcnerf.shape.cli.main`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from wcnerf.shape.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
