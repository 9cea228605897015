"""The comparison's reports, rebuilt from the run folders: ``results.csv`` (and its companion
``results_per_image.csv``, one row per evaluated view), ``table.md``,
``curves.png``, ``conditioning.png`` (the layer-wise kappa the runs logged,
:mod:`wcnerf.eval.kappa`) and ``renders/`` in ``<output_root>/<protocol>/``; ``table.md``
ends with the figures, linked relatively.

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
from wcnerf.eval.runs import (CURVES_FILE, HELDOUT_DIR, METRICS_FILE, STATUS_FILE, RunSpec, config_downscale_factor,
                              config_iterations, read_json, run_state)
from wcnerf.eval.table import (order_methods, order_scenes, scene_display, table_markdown, write_per_image_csv,
                               write_results_csv)

__all__ = ["collect_records", "write_reports", "default_console", "figures_markdown"]


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
        "iterations": config_iterations(run_dir) or settings.get("max_num_iterations"),
        "downscale_factor": config_downscale_factor(run_dir),
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
        extra = metrics.get("extra") or {}  # runs before max_eval_views evaluated all they held out
        rec["views_evaluated"] = extra.get("num_evaluated_images", extra.get("num_heldout_images"))
        rec["views_held_out"] = extra.get("num_heldout_images")
        rec["per_image"] = extra.get("per_image") or []
        rec["eval_image_scale"] = (extra.get("evaluation") or {}).get("image_scale", 1.0)  # runs before it: 1
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


def _kappa_runs(records: Sequence[Mapping[str, Any]], console: Any):
    """``(scene, method, seed, kappa)`` of every finished run (kappa empty: none logged)."""
    from wcnerf.eval.kappa import run_kappa

    out = []
    for r in records:
        if r.get("status") != "done":
            continue
        try:
            kappa = run_kappa(Path(r["abs_run_dir"]))
        except Exception as exc:  # noqa: BLE001 - one unreadable run does not stop the figure
            console.print(f"[yellow]layer-wise kappa of {escape(str(r['run_dir']))} not read[/]: "
                          f"{escape(f'{type(exc).__name__}: {exc}')}")
            continue
        out.append((r["scene"], r["method"], r["seed"], kappa))
    return out


NO_KAPPA = ("no finished run logged the layer-wise analysis (the conditioned models log it every "
            "`analysis_every` steps, `--pipeline.model.analysis-every N`; 0 switches it off)")


def figures_markdown(written: Mapping[str, Optional[Path]], notes: Mapping[str, str]) -> str:
    """The report's "Figures" section: the figures written (relative links), and why the
    others are missing."""
    lines = ["", "## Figures", ""]
    if written.get("curves.png"):
        lines += ["Train (dashed, smoothed) and held-out (solid) PSNR against iterations:", "",
                  "![Train and held-out PSNR](curves.png)", ""]
    if written.get("conditioning.png"):
        lines += ["Layer-wise condition numbers over training, per field: for each method the median (solid) "
                  "and the maximum (dashed) over the field's layers of the weights' κ (top) and, when logged, "
                  "of each layer's Fisher block over its nonzero eigenvalues (bottom); "
                  "geometric mean over the method's runs:", "",
                  "![Layer-wise condition numbers](conditioning.png)", ""]
    if written.get("renders"):
        renders = sorted(Path(written["renders"]).glob("*.png"))
        if renders:
            lines += ["First held-out view of each scene (ground truth, renders, error maps): "
                      + ", ".join(f"[{scene_display(p.stem)}](renders/{p.name})" for p in renders), ""]
    for name, why in notes.items():
        lines += [f"`{name}` not drawn: {why}.", ""]
    return "\n".join(lines)


def write_reports(
    out_dir: Path,
    records: Sequence[Dict[str, Any]],
    protocol: Optional[Protocol] = None,
    console: Any = None,
) -> Dict[str, Optional[Path]]:
    """results.csv, curves.png, conditioning.png, renders/ and table.md (which links the
    figures) from the records. A figure that fails is reported on the console and in
    table.md (and skipped); the CSV and the table are always written."""
    console = default_console(console)
    out_dir = Path(out_dir)
    written: Dict[str, Optional[Path]] = {}
    notes: Dict[str, str] = {}
    written["results.csv"] = write_results_csv(records, out_dir / "results.csv")
    written["results_per_image.csv"] = write_per_image_csv(records, out_dir / "results_per_image.csv")
    summary = protocol.summary() if protocol else ""
    if protocol and protocol.description and not protocol.changes:  # the file's words describe these runs
        summary = f"{protocol.description}\n\n{summary}"
    title = "E-NeRF vs NeRF on LLFF"
    if protocol and not protocol.methods:  # `--method M`: any method under conditioners
        title = f"{protocol.base_method} under weight conditioners on {protocol.dataparser} scenes"
    title += f" ({protocol.name} protocol)" if protocol else ""
    curves, views = _curves_and_views(records)
    heldout: Dict[Tuple[str, str], List[Tuple[List[int], List[float]]]] = {}
    for scene, method, _seed, data in curves:
        held = data.get("heldout") or {}
        if held.get("step"):
            heldout.setdefault((scene, method), []).append((held["step"], held["psnr"]))

    def failed(name: str, exc: Exception) -> None:
        console.print(f"[red]{name} not written[/]: {escape(f'{type(exc).__name__}: {exc}')}")
        notes[name] = f"it failed ({type(exc).__name__}: {exc})"
        written[name] = None

    try:
        from wcnerf.eval.plots import plot_curves

        written["curves.png"] = plot_curves(
            curves, out_dir / "curves.png", title=f"Train and held-out PSNR ({protocol.name if protocol else ''})"
        )
    except Exception as exc:  # noqa: BLE001
        failed("curves.png", exc)
    try:
        from wcnerf.eval.plots import plot_conditioning

        written["conditioning.png"] = plot_conditioning(
            _kappa_runs(records, console), out_dir / "conditioning.png",
            title=f"Layer-wise condition numbers over training ({protocol.name if protocol else ''})",
        )
        if written["conditioning.png"] is None:
            notes["conditioning.png"] = NO_KAPPA
            console.print(f"conditioning.png not drawn: {escape(NO_KAPPA)}")
    except Exception as exc:  # noqa: BLE001
        failed("conditioning.png", exc)
    try:
        from wcnerf.eval.plots import write_scene_renders

        paths = write_scene_renders(views, out_dir / "renders")
        written["renders"] = (out_dir / "renders") if paths else None
    except Exception as exc:  # noqa: BLE001
        failed("renders", exc)
    write_text(out_dir / "table.md",
               table_markdown(records, title=title, protocol_summary=summary, heldout_curves=heldout)
               + figures_markdown(written, notes))
    written["table.md"] = out_dir / "table.md"
    console.print(
        "reports: " + escape(", ".join(str(p) for p in written.values() if p is not None))
    )
    return written
