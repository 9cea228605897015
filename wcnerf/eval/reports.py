"""The comparison's reports, rebuilt from the run folders: ``results.csv``, ``table.md``,
``curves.png`` and ``renders/`` in ``<output_root>/<protocol>/``.

A *record* is one run as a flat mapping (see :mod:`wcnerf.eval.table`): what its
``metrics.json`` says when it finished, else its state and error from ``status.json``
(:mod:`wcnerf.eval.runs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from rich.markup import escape

from wcnerf.atomic import write_text
from wcnerf.eval.protocols import Protocol
from wcnerf.eval.runs import CURVES_FILE, HELDOUT_DIR, METRICS_FILE, STATUS_FILE, RunSpec, read_json, run_state
from wcnerf.eval.table import order_methods, order_scenes, table_markdown, write_results_csv

__all__ = ["collect_records", "write_reports", "default_console"]


def default_console(console: Any = None) -> Any:
    """``console``, or a new rich console when it is None."""
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def _record(out_dir: Path, run_dir: Path, fallback: Optional[RunSpec] = None) -> Dict[str, Any]:
    metrics = read_json(run_dir / METRICS_FILE)
    status = read_json(run_dir / STATUS_FILE) or {}
    settings = dict(status.get("settings") or {})
    if fallback is not None:
        settings = {**fallback.settings(), **settings} if settings else fallback.settings()
    rec: Dict[str, Any] = {
        "protocol": settings.get("protocol"),
        "scene": settings.get("scene"),
        "method": settings.get("method"),
        "seed": settings.get("seed"),
        "ns_method": settings.get("ns_method"),
        "conditioning": settings.get("conditioning"),
        "iterations": settings.get("max_num_iterations"),
        # relative to the folder of results.csv / table.md
        "run_dir": os.path.relpath(Path(run_dir).resolve(), Path(out_dir).resolve()),
        "abs_run_dir": str(Path(run_dir).resolve()),
    }
    if metrics is not None:
        rec.update({k: metrics.get(k) for k in ("psnr", "ssim", "lpips", "sec_per_iter", "train_seconds", "eval_seconds")})
        for k in ("protocol", "scene", "method", "seed", "ns_method", "conditioning"):
            if metrics.get(k) is not None:
                rec[k] = metrics[k]
        rec["iterations"] = metrics.get("iterations") or metrics.get("max_num_iterations")
        rec["status"] = "done"
        rec["error"] = ""
    else:
        state = run_state(run_dir)
        rec["status"] = state
        rec["error"] = status.get("error") or ("" if state != "interrupted" else "interrupted; resumes on the next invocation")
    return rec


def collect_records(out_dir: Path, plan: Sequence[RunSpec] = ()) -> List[Dict[str, Any]]:
    """One record per run: the planned ones plus every other run folder found under
    ``out_dir/runs`` (earlier invocations with other scenes, methods or seeds)."""
    out_dir = Path(out_dir)
    by_dir: Dict[Path, Dict[str, Any]] = {}
    for spec in plan:
        by_dir[spec.run_dir.resolve()] = _record(out_dir, spec.run_dir, spec)
    runs = out_dir / "runs"
    if runs.is_dir():
        for status_path in sorted(runs.glob(f"*/*/seed-*/{STATUS_FILE}")):
            d = status_path.parent.resolve()
            if d not in by_dir:
                rec = _record(out_dir, status_path.parent)
                if rec.get("scene") is not None and rec.get("method") is not None:
                    by_dir[d] = rec
    records = list(by_dir.values())
    scenes = order_scenes(r["scene"] for r in records)
    methods = order_methods(r["method"] for r in records)
    records.sort(key=lambda r: (scenes.index(r["scene"]), methods.index(r["method"]), int(r["seed"] or 0)))
    return records


def _curves_and_views(records: Sequence[Mapping[str, Any]]):
    curves = []
    views: Dict[str, List[Tuple[str, Path, Path]]] = {}
    chosen: Dict[Tuple[str, str], Tuple[int, Path, Path]] = {}
    for r in records:
        if r.get("status") != "done":
            continue
        d = Path(r["abs_run_dir"])
        data = read_json(d / CURVES_FILE)
        if data:
            curves.append((r["scene"], r["method"], r["seed"], data))
        gt, pred = d / HELDOUT_DIR / "gt_0000.png", d / HELDOUT_DIR / "pred_0000.png"
        if gt.is_file() and pred.is_file():
            key = (r["scene"], r["method"])
            if key not in chosen or int(r["seed"]) < chosen[key][0]:
                chosen[key] = (int(r["seed"]), gt, pred)
    for (scene, method), (_, gt, pred) in chosen.items():
        views.setdefault(scene, []).append((method, gt, pred))
    return curves, views


def write_reports(
    out_dir: Path,
    records: Sequence[Dict[str, Any]],
    protocol: Optional[Protocol] = None,
    console: Any = None,
) -> Dict[str, Optional[Path]]:
    """results.csv, table.md, curves.png and renders/ from the records. A figure that fails is
    reported on the console (and skipped); the CSV and the table are always written."""
    console = default_console(console)
    out_dir = Path(out_dir)
    written: Dict[str, Optional[Path]] = {}
    written["results.csv"] = write_results_csv(records, out_dir / "results.csv")
    summary = protocol.summary() if protocol else ""
    if protocol and protocol.description:
        summary = f"{protocol.description}\n\n{summary}"
    title = f"E-NeRF vs NeRF on LLFF ({protocol.name} protocol)" if protocol else "E-NeRF vs NeRF on LLFF"
    curves, views = _curves_and_views(records)
    heldout: Dict[Tuple[str, str], List[Tuple[List[int], List[float]]]] = {}
    for scene, method, _seed, data in curves:
        held = data.get("heldout") or {}
        if held.get("step"):
            heldout.setdefault((scene, method), []).append((held["step"], held["psnr"]))
    write_text(out_dir / "table.md",
               table_markdown(records, title=title, protocol_summary=summary, heldout_curves=heldout))
    written["table.md"] = out_dir / "table.md"
    try:
        from wcnerf.eval.plots import plot_curves

        written["curves.png"] = plot_curves(
            curves, out_dir / "curves.png", title=f"Train and held-out PSNR ({protocol.name if protocol else ''})"
        )
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]curves.png not written[/]: {escape(f'{type(exc).__name__}: {exc}')}")
        written["curves.png"] = None
    try:
        from wcnerf.eval.plots import write_scene_renders

        paths = write_scene_renders(views, out_dir / "renders")
        written["renders"] = (out_dir / "renders") if paths else None
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]renders/ not written[/]: {escape(f'{type(exc).__name__}: {exc}')}")
        written["renders"] = None
    console.print(
        "reports: " + escape(", ".join(str(p) for p in written.values() if p is not None))
    )
    return written
