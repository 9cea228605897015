#!/usr/bin/env python
"""Fit an occupancy / SDF field to a triangle mesh: a shim over :func:`wcnerf.shape.cli.main`."""

from __future__ import annotations

import sys

from wcnerf.shape.cli import main

if __name__ == "__main__":
    sys.exit(main())
