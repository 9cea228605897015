"""The README's main job: train E-NeRF on an LLFF scene with the variant that fits this machine.

On a CUDA machine this is ``ns-train e-nerf`` (the NeRF paper's LLFF protocol); without a GPU
it is ``ns-train e-nerf-small`` (4 x 64 MLPs, 32 + 32 samples, 512 rays: minutes on 2 CPU
cores). Every further argument is passed to ``ns-train`` unchanged, e.g.
``python scripts/train_enerf.py --data llff/flower --max-num-iterations 1000``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def main() -> None:
    import torch

    method = "e-nerf" if torch.cuda.is_available() else "e-nerf-small"
    why = "CUDA is available" if method == "e-nerf" else "no GPU found: the CPU-sized variant"
    args = sys.argv[1:]
    if not any(a == "--data" or a.startswith("--data=") for a in args):
        args = ["--data", "llff/fern", *args]
    ns_train = shutil.which("ns-train", path=str(Path(sys.executable).parent)) or "ns-train"
    print(f"[wcnerf] training {method} ({why}); outputs under ./outputs/<scene>/{method}/<timestamp>/,")
    print("[wcnerf] the viewer's address is printed below (127.0.0.1; forward the port over ssh to watch remotely)")
    print(f"[wcnerf] $ ns-train {method} {' '.join(args)}", flush=True)
    os.execv(ns_train, [ns_train, method, *args])


if __name__ == "__main__":
    main()
