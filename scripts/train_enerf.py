"""The README's main job: train E-NeRF on an LLFF scene with the variant that fits this machine,
then say how well it did and what to run next.

On a CUDA machine this is ``ns-train e-nerf`` (the NeRF paper's LLFF protocol); without a GPU
it is ``ns-train e-nerf-small`` (4 x 64 MLPs, 32 + 32 samples, 512 rays: minutes on 2 CPU
cores). Every further argument is passed to ``ns-train`` unchanged, e.g.
``python scripts/train_enerf.py --data llff/flower --max-num-iterations 1000``.

When training has finished, the run is summarised (:mod:`wcnerf.eval.after_training`):
``ns-eval`` over every held-out view (PSNR, SSIM; ``<run>/eval/metrics.json``), a PNG with the
ground truth, render and error map of the first held-out view (``<run>/heldout_view.png``),
the LLFF spiral camera path (``<run>/camera_paths/spiral.json``) and the next commands
(evaluate, render the spiral, open the viewer, export a point cloud).

Options of this script (not passed to ns-train):

* ``--no-summary``: stop when ns-train stops;
* ``--summary-only <run>/config.yml``: no training, only the summary of a finished run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple


def _option(args: List[str], name: str) -> Optional[str]:
    """The value of ``--name value`` / ``--name=value`` in ns-train's arguments (the last one)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _own_options(argv: List[str]) -> Tuple[List[str], bool, Optional[str]]:
    """Split off this script's options: ``(ns-train args, summary?, summary-only config)``."""
    args, summary, only = [], True, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--no-summary":
            summary = False
        elif a == "--summary-only" and i + 1 < len(argv):
            only = argv[i + 1]
            i += 1
        elif a.startswith("--summary-only="):
            only = a.split("=", 1)[1]
        else:
            args.append(a)
        i += 1
    return args, summary, only


def summarize(config: Path) -> int:
    from wcnerf.eval.after_training import format_summary, summarize_run

    print(format_summary(summarize_run(config)), flush=True)
    return 0


def main() -> int:
    args, summary, only = _own_options(sys.argv[1:])
    if only is not None:
        return summarize(Path(only))

    import torch

    method = "e-nerf" if torch.cuda.is_available() else "e-nerf-small"
    why = "CUDA is available" if method == "e-nerf" else "no GPU found: the CPU-sized variant"
    if not any(a == "--data" or a.startswith("--data=") for a in args):
        args = ["--data", "llff/fern", *args]
    wants_help = any(a in ("-h", "--help") for a in args)
    timestamp = _option(args, "--timestamp")
    if timestamp is None and not wants_help:  # nerfstudio's own format; lets us find the run afterwards
        timestamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
        args = ["--timestamp", timestamp, *args]  # first: before any dataparser subcommand
    ns_train = shutil.which("ns-train", path=str(Path(sys.executable).parent)) or "ns-train"
    print(f"[wcnerf] training {method} ({why}); outputs under ./outputs/<scene>/{method}/<timestamp>/,")
    print("[wcnerf] the viewer's address is printed below (127.0.0.1; forward the port over ssh to watch remotely)")
    print(f"[wcnerf] $ ns-train {method} {' '.join(args)}", flush=True)

    proc = subprocess.Popen([ns_train, method, *args])
    # Ctrl-C reaches ns-train directly (same process group; it stops cleanly); we wait for it.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if rc != 0 or not summary or wants_help:
        return rc if rc >= 0 else 128 - rc

    from wcnerf.eval.after_training import find_run_config

    output_dir = Path(_option(args, "--output-dir") or "outputs")
    config = find_run_config(output_dir, _option(args, "--method-name") or method, timestamp,
                             _option(args, "--experiment-name"))  # fmt: skip
    if config is None:
        print(f"[wcnerf] no run folder {output_dir}/*/{method}/{timestamp}/ found; no summary", flush=True)
        return rc
    return summarize(config)


if __name__ == "__main__":
    sys.exit(main())
