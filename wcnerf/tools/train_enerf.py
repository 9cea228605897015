"""The README's main job (``scripts/train_enerf.py``): train E-NeRF on an LLFF scene with the
variant that fits this machine, then say how well it did and what to run next.

On a CUDA machine this is ``ns-train e-nerf`` (the NeRF paper's LLFF protocol); without a GPU
it is ``ns-train e-nerf-small`` (4 x 64 MLPs, 32 + 32 samples, 512 rays: minutes on 2 CPU
cores). Every argument but this command's own (:class:`TrainEnerf`) is passed to ``ns-train``
unchanged, e.g. ``python scripts/train_enerf.py --data llff/flower --max-num-iterations 1000``.

When training has finished, the run is summarised (:mod:`wcnerf.tools.summary`, the same as
``wcnerf-summary RUN``). The run folder is the one nerfstudio wrote: the ``ns-train`` arguments
are parsed by nerfstudio's own command line into its ``TrainerConfig``, whose
``get_base_dir()`` is where ``ns-train`` saved ``config.yml``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import tyro
from typing_extensions import Annotated

from wcnerf.tools.runs import RunPathError, find_run_config, resolve_run

__all__ = ["TrainEnerf", "own_options", "ns_train_option", "ns_train_run_config", "main"]


@dataclass
class TrainEnerf:
    """Train E-NeRF on an LLFF scene (ns-train e-nerf with CUDA, e-nerf-small without), then
    summarise the run (wcnerf-summary). Every other argument goes to ns-train unchanged
    (default --data llff/fern); `ns-train e-nerf-small --help` lists them."""

    summary: bool = True
    """Summarise the run when ns-train stops (--no-summary: stop there)."""
    summary_only: Annotated[Optional[Path], tyro.conf.arg(metavar="RUN")] = None
    """No training: only the summary of a finished run (its folder or config.yml)."""


def own_options(argv: Sequence[str]) -> Tuple[List[str], bool, Optional[str]]:
    """Split off this command's options (:class:`TrainEnerf`, parsed by tyro):
    ``(ns-train args, summary?, summary-only run)``."""
    own, rest = tyro.cli(TrainEnerf, args=list(argv), return_unknown_args=True)
    only = None if own.summary_only is None else str(own.summary_only)
    return list(rest), own.summary, only


def ns_train_option(args: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name value`` / ``--name=value`` in ns-train's arguments (the last one)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def ns_train_run_config(method: str, args: Sequence[str]) -> Optional[Path]:
    """The ``config.yml`` that ``ns-train method *args`` wrote: the arguments parsed by
    nerfstudio's command line (as ``ns-train`` parses them, ``--data`` and ``--load-config`` as
    its ``main`` applies them), the folder from ``TrainerConfig.get_base_dir()``. ``args`` must
    hold ``--timestamp``; None when that file is not there or the arguments do not parse."""
    import yaml
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    try:
        config = tyro.cli(AnnotatedBaseConfigUnion, args=[method, *args])
    except SystemExit:  # tyro said why (ns-train, parsing the same arguments, did not stop on them)
        return None
    if config.data:
        config.pipeline.datamanager.data = config.data
    if config.load_config:
        config = yaml.load(Path(config.load_config).read_text(), Loader=yaml.Loader)
    path = config.get_base_dir() / "config.yml"
    if path.is_file():
        return path
    return find_run_config(Path(config.output_dir), str(config.method_name), str(config.timestamp))


def summarize(run: Path) -> int:
    """Print the summary of a finished run (a folder or its config.yml)."""
    from wcnerf.tools.summary import format_summary, summarize_run

    try:
        config = resolve_run(run)
        print(format_summary(summarize_run(config)), flush=True)
    except RunPathError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/train_enerf.py``: parse the command line (``sys.argv`` unless ``argv``), train
    and summarise; returns the exit code."""
    args, summary, only = own_options(sys.argv[1:] if argv is None else argv)
    if only is not None:
        return summarize(Path(only))

    import torch

    method = "e-nerf" if torch.cuda.is_available() else "e-nerf-small"
    why = "CUDA is available" if method == "e-nerf" else "no GPU found: the CPU-sized variant"
    if not any(a == "--data" or a.startswith("--data=") for a in args):
        args = ["--data", "llff/fern", *args]
    if ns_train_option(args, "--timestamp") is None:  # nerfstudio's own format; names the run folder
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
    if rc != 0 or not summary:
        return rc if rc >= 0 else 128 - rc

    config = ns_train_run_config(method, args)
    if config is None:
        print(f"[wcnerf] no config.yml of the run found (ns-train {method} {' '.join(args)}); no summary", flush=True)
        return rc
    return summarize(config)


if __name__ == "__main__":
    sys.exit(main())
