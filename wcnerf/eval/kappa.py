"""The layer-wise condition numbers a run logged while training, read back for the reports.

A conditioned model (:mod:`wcnerf.plugin.conditioned`) writes its layer-wise analysis to
tensorboard every ``analysis_every`` steps as ``analysis/<part>/<layer>/<metric>`` (parts:
``coarse`` / ``fine`` for NeRF, ``field`` / ``proposal_<i>`` for nerfacto; metrics from
:mod:`wcnerf.analysis.layerwise`). Of those, the reports draw :data:`KAPPA_METRICS`:

- ``kappa_w``: ``σ_max / σ_min`` of the layer's weight matrix;
- ``fim/kappa_nz``: the layer's Fisher (K-FAC) block over its nonzero eigenvalues.

:func:`run_kappa` reads them from a run folder's event files (``read_scalars``, as the PSNR
curves) and keeps them in ``<run>/kappa.json``, reused while no event file is newer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from wcnerf.atomic import write_json
from wcnerf.eval.runs import read_json

__all__ = ["KAPPA_FILE", "KAPPA_METRICS", "TAG_PREFIX", "extract_kappa", "parse_tag", "run_kappa"]

TAG_PREFIX = "analysis/"
KAPPA_METRICS: Dict[str, str] = {
    "kappa_w": "κ(W): weights, σ_max/σ_min",
    "fim/kappa_nz": "κ(FIM block), nonzero eigenvalues",
}
"""Metric suffix -> axis label, in the figure's row order."""
KAPPA_FILE = "kappa.json"

Kappa = Dict[str, Dict[str, Dict[str, List[Tuple[int, float]]]]]
"""``{part: {metric: {layer: [(step, value), ...]}}}``."""


def parse_tag(tag: str) -> Optional[Tuple[str, str, str]]:
    """``analysis/coarse/mlp_base.layers.0/kappa_w`` -> ``("coarse", "mlp_base.layers.0", "kappa_w")``;
    None for other tags (other metrics, part totals, PSNR, ...)."""
    if not tag.startswith(TAG_PREFIX):
        return None
    rest = tag[len(TAG_PREFIX):]
    for metric in KAPPA_METRICS:
        if rest.endswith("/" + metric):
            part, _, layer = rest[: -len(metric) - 1].partition("/")
            if part and layer and layer != "total":
                return part, layer, metric
    return None


def extract_kappa(scalars: Dict[str, List[Tuple[int, float]]]) -> Kappa:
    """The :data:`KAPPA_METRICS` of every part and layer from ``{tag: [(step, value)]}``."""
    out: Kappa = {}
    for tag, points in scalars.items():
        parsed = parse_tag(tag)
        if parsed is None or not points:
            continue
        part, layer, metric = parsed
        out.setdefault(part, {}).setdefault(metric, {})[layer] = [(int(s), float(v)) for s, v in points]
    return out


def _event_files(run_dir: Path) -> List[Path]:
    return sorted(Path(run_dir).rglob("events.out.tfevents.*"))


def run_kappa(run_dir: Path, cache: bool = True) -> Kappa:
    """The run's layer-wise kappa over training (empty when it logged none), from
    ``kappa.json`` when it is newer than every event file, else from the event files (then
    written to ``kappa.json`` when ``cache``)."""
    run_dir = Path(run_dir)
    events = _event_files(run_dir)
    cached_path = run_dir / KAPPA_FILE
    if cached_path.is_file() and all(f.stat().st_mtime <= cached_path.stat().st_mtime for f in events):
        data = read_json(cached_path)
        if data is not None and "kappa" in data:
            return {part: {metric: {layer: [(int(s), float(v)) for s, v in pts] for layer, pts in layers.items()}
                           for metric, layers in metrics.items()} for part, metrics in data["kappa"].items()}
    if not events:
        return {}
    from wcnerf.eval.ns_runner import read_scalars

    kappa = extract_kappa(read_scalars(run_dir))
    if cache:
        # JSON has no inf/nan: a singular layer's kappa is kept as a string the reader turns back
        safe = {part: {metric: {layer: [(s, v if math.isfinite(v) else str(v)) for s, v in pts]
                                for layer, pts in layers.items()} for metric, layers in metrics.items()}
                for part, metrics in kappa.items()}
        try:
            write_json(cached_path, {"source": [str(f.relative_to(run_dir)) for f in events], "kappa": safe})
        except OSError:  # a read-only run folder: read the events every time
            pass
    return kappa
