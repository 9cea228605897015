#!/usr/bin/env python
"""E-NeRF vs NeRF on LLFF scenes (the paper's Table 4): a resumable sweep over
scenes x methods x seeds under a protocol of configs/protocols/.

    python scripts/compare_llff.py --protocol cpu --scenes fern,flower --seeds 0,1,2
    python scripts/compare_llff.py --protocol paper --scenes fern,flower,fortress,horns,leaves,orchids,room,trex
    python scripts/compare_llff.py --methods nerf,e-nerf,weight-norm     # any conditioner name too

Writes outputs/compare/<protocol>/{results.csv, table.md, curves.png, renders/, runs/}. Running
the same command again skips finished runs, resumes interrupted ones from their last
checkpoint and retries failed ones. Exit code 1 when some run is failed.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

try:
    import wcnerf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tyro


@dataclass
class CompareLLFF:
    """Train and evaluate NeRF and E-NeRF (and other conditioners) on LLFF scenes."""

    protocol: str = "cpu"
    """Protocol name (configs/protocols/<name>.yaml: paper, cpu) or path to a protocol YAML."""
    scenes: Tuple[str, ...] = ()
    """Scene names or folders (comma- or space-separated); names are looked up under the repo's
    data/ and $WCNERF_DATA. Default: the protocol's scenes."""
    methods: Tuple[str, ...] = ("nerf", "e-nerf")
    """nerf, e-nerf, or any conditioner name (weight-norm, equinorm, ...) for the same protocol
    with that conditioning."""
    seeds: Tuple[str, ...] = ()
    """Seeds (comma- or space-separated). Default: the protocol's seeds."""
    output_root: Path = Path("outputs/compare")
    """Outputs go to <output-root>/<protocol>/."""
    data_root: Tuple[Path, ...] = ()
    """Extra folders to look scene names up in (put before $WCNERF_DATA)."""
    max_num_iterations: Optional[int] = None
    """Override the protocol's iteration count; outputs then go to <protocol>-<N>it/."""
    retry_failed: bool = True
    """Run failed runs again (interrupted ones are always continued)."""
    redo: bool = False
    """Delete the selected runs' folders and run them from scratch."""
    report_only: bool = False
    """Only rebuild results.csv, table.md, curves.png and renders/ from the run folders."""
    dry_run: bool = False
    """Print each run's state and its ns-train command; run nothing."""
    threads: Optional[int] = None
    """OMP/MKL threads of the training / evaluation subprocesses (default: the protocol's)."""

    def main(self) -> int:
        import os

        from rich.console import Console
        from rich.markup import escape

        from wcnerf.eval.reports import collect_records, write_reports
        from wcnerf.eval.runs import run_state
        from wcnerf.eval.sweep import parse_list, plan_runs, resolve_methods, resolve_scenes, run_sweep
        from wcnerf.eval.ns_runner import NerfstudioRunner
        from wcnerf.eval.protocols import load_protocol

        console = Console()
        if self.data_root:
            extra = os.pathsep.join(str(Path(p).expanduser().resolve()) for p in self.data_root)
            os.environ["WCNERF_DATA"] = os.pathsep.join(x for x in (extra, os.environ.get("WCNERF_DATA", "")) if x)
        protocol = load_protocol(self.protocol)
        if self.max_num_iterations is not None and self.max_num_iterations != protocol.max_num_iterations:
            # another iteration count is another protocol: its own output folder, never mixed
            protocol = protocol.with_overrides(
                name=f"{protocol.name}-{self.max_num_iterations}it", max_num_iterations=self.max_num_iterations
            )
        scenes = resolve_scenes(parse_list(self.scenes) or protocol.scenes, protocol.downscale_factor)
        methods = resolve_methods(self.methods, protocol)
        seeds = [int(s) for s in parse_list(self.seeds)] or list(protocol.seeds)
        runner = NerfstudioRunner(threads=self.threads)
        console.print(f"[bold]{protocol.summary()}[/]")
        for sc in scenes:
            console.print(f"  scene {sc.label}: " + (escape(str(sc.path)) if sc.error is None else "[red]" + escape(sc.error)))
        out_dir = self.output_root / protocol.name
        if self.dry_run:
            for spec in plan_runs(protocol, scenes, methods, seeds, out_dir):
                state = run_state(spec.run_dir)
                cmd = runner.train_command(spec) if spec.scene.path else ["(scene not found)"]
                console.print(escape(f"[{state}] {spec.scene.label} {spec.method.label} seed {spec.seed}: {' '.join(cmd)}"),
                              soft_wrap=True)
            return 0
        if self.report_only:
            plan = plan_runs(protocol, scenes, methods, seeds, out_dir) if self.scenes else []
            records = collect_records(out_dir, plan)
            write_reports(out_dir, records, protocol, console=console)
            return 1 if any(r["status"] == "failed" for r in records) else 0

        def _sigterm(signum, frame):  # `kill PID`: stop like Ctrl-C (status + reports written)
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _sigterm)
        summary = run_sweep(
            protocol,
            scenes,
            methods,
            seeds,
            runner=runner,
            output_root=self.output_root,
            retry_failed=self.retry_failed,
            redo=self.redo,
            console=console,
        )
        failed = summary.n_failed_total
        console.print(
            f"[bold]{summary.planned} planned[/]: {summary.skipped_done} were finished, {summary.done} finished now, "
            f"{summary.failed} failed now; {failed} failed in total -> {summary.out_dir / 'table.md'}"
        )
        if summary.interrupted:
            return 130
        return 1 if failed else 0


def main() -> None:
    sys.exit(tyro.cli(CompareLLFF).main())


if __name__ == "__main__":
    main()
