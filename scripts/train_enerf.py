"""The README's main job: train E-NeRF on an LLFF scene with the variant that fits this machine,
then say how well it did and what to run next.

On a CUDA machine this is ``ns-train e-nerf`` (the NeRF paper's LLFF protocol); without a GPU
it is ``ns-train e-nerf-small`` (4 x 64 MLPs, 32 + 32 samples, 512 rays: minutes on 2 CPU
cores). Every further argument is passed to ``ns-train`` unchanged, e.g.
``python scripts/train_enerf.py --data llff/flower --max-num-iterations 1000``.

When training has finished, the run is summarised (``wcnerf-summary RUN``,
:mod:`wcnerf.tools.summary`): ``ns-eval`` over every held-out view (PSNR, SSIM;
``<run>/eval/metrics.json``), a PNG with the ground truth, render and error map of the first
held-out view (``<run>/heldout_view.png``), the LLFF spiral camera path
(``<run>/camera_paths/spiral.json``) and the next commands (evaluate, render the spiral, open
the viewer, export a point cloud).

Options of this script (not passed to ns-train; ``--help`` lists them):

* ``--no-summary``: stop when ns-train stops;
* ``--summary-only RUN``: no training, only the summary of a finished run (its folder or config.yml).

A thin shim over :func:`wcnerf.tools.train_enerf.main`.
"""

import sys

from wcnerf.tools.train_enerf import main
from wcnerf.tools.train_enerf import ns_train_option as _option  # noqa: F401  (tests/test_after_training.py)
from wcnerf.tools.train_enerf import own_options as _own_options  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
