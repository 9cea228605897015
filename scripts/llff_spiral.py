#!/usr/bin/env python
"""Write the LLFF spiral camera path of a scene (the NeRF paper's videos) as a nerfstudio
camera-path JSON, and print the ``ns-render`` command that renders it (the same as
``wcnerf-spiral``)::

    python scripts/llff_spiral.py --load-config outputs/fern/e-nerf-small/<timestamp>/config.yml
    python scripts/llff_spiral.py --data llff/fern --downscale-factor 8 --output spiral.json

A thin shim over :func:`wcnerf.tools.spiral.main` (see there, or ``--help``).
"""

import sys

from wcnerf.tools.spiral import main

if __name__ == "__main__":
    sys.exit(main())
