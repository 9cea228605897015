#!/usr/bin/env python
"""E-NeRF vs NeRF on LLFF scenes (the paper's Table 4): a resumable sweep over
scenes x methods x seeds under a protocol of configs/protocols/.

    python scripts/compare_llff.py --protocol cpu --scenes fern flower --seeds 0 1 2
    python scripts/compare_llff.py --methods nerf e-nerf weight-norm     # any conditioner name too

A thin shim over :func:`wcnerf.eval.cli.main` (see there, or ``--help``).
"""

import sys

from wcnerf.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
