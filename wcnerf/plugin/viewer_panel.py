"""The "Weight conditioning" panel of the nerfstudio web viewer, for any conditioned model.

nerfstudio's viewer installs every :class:`~nerfstudio.viewer.viewer_elements.ViewerElement`
it finds on the model (``Custom Elements`` folder of the Control tab). This one element builds
a small folder of viser widgets:

- the model's conditioner (read only);
- a checkbox that switches the layer-wise conditioning analysis (:mod:`wcnerf.analysis`) on
  or off while training runs, and its cadence in steps;
- per-layer condition numbers of each analysed part of the model (E-NeRF: the coarse and fine
  fields; E-nerfacto: the field and the proposal networks) from the last analysis: kappa of
  the effective weight (the one the forward pass multiplies by, i.e. after conditioning), the
  generalised kappa_90 of the layer-input and output-gradient second moments (Huang et al.),
  the kappa of the same second moments over their nonzero eigenvalues (κ₊), and the numbers of
  dead and saturated units of the layer (definitions in :mod:`wcnerf.analysis.layerwise`).

The panel holds only the switch and the last numbers; the model's conditioning callback
(:class:`wcnerf.plugin.conditioned.ConditioningCallback`) asks :meth:`ConditioningPanel.due`
before each step and attaches the analysis hooks only on analysis steps. With the analysis off a step costs one boolean test, nothing is attached. The
panel exists without a viewer too (``ns-train --vis tensorboard``, ``ns-eval``); it is then
never installed and its values are the config's.

A finished run (``ns-viewer --load-config``) trains no more, so no analysis arrives: the panel
is also a :class:`~nerfstudio.viewer.viewer_elements.ViewerControl`, which the viewer hands
itself to, and from the viewer's log file it knows the run folder. It then reads the last
analysis the run logged (:func:`last_logged_analysis`: the ``analysis/...`` scalars of the run's
tensorboard event files, on a thread so the viewer starts at once) and shows it with its step;
the switch is greyed out. While training, a run resumed in its folder shows its last logged
analysis until the first new one, marked as logged earlier.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

__all__ = ["ConditioningPanel", "format_layer_table", "last_logged_analysis"]

ANALYSIS_TAG = "analysis/"
"""Prefix of the scalars the analysis writes: ``analysis/<part>/<layer>/<metric>``."""

# (column title, metric suffix of wcnerf.analysis) shown per layer. The covariances use Huang et
# al.'s generalised kappa_90 (largest over the 90th-percentile eigenvalue) and the kappa over the
# nonzero eigenvalues (κ₊): ReLU layers have dead units, so their full kappa is often infinite and
# says nothing more. "dead" / "sat." count the layer's units whose activation output is zero /
# whose activation is flat on every sample ("–": no activation module seen after the layer).
COLUMNS = (
    ("κ(W)", "kappa_w"),
    ("κ₉₀(Σx)", "input/kappa_p90"),
    ("κ₉₀(Σδ)", "output_grad/kappa_p90"),
    ("κ₊(Σx)", "input/kappa_nz"),
    ("κ₊(Σδ)", "output_grad/kappa_nz"),
    ("dead", "dead_units"),
    ("sat.", "saturated_units"),
)
LEGEND = ("κ₊: over the nonzero eigenvalues (λ > d·eps·λ_max). dead: units whose activation output is "
          "zero on every sample; sat.: units in the activation's flat region on every sample "
          "(for ReLU the same units).")


class ConditioningPanel(ViewerElement[bool], ViewerControl):
    """Conditioner name, analysis switch and cadence, per-layer kappa tables (see module doc).

    ``parts``: ``{part name: heading}`` of the analysed parts, in display order (the names are
    the keys of :meth:`show`'s results, e.g. ``{"coarse": "coarse field", "fine": "fine field"}``).
    A ViewerControl too only to be handed the viewer (:meth:`_setup`): the run folder, and
    whether the run still trains.
    """

    def __init__(self, conditioner: str, enabled: bool, every: int, parts: Mapping[str, str]) -> None:
        super().__init__(name="Weight conditioning")
        self.conditioner = conditioner
        self.enabled = bool(enabled)
        self.every = max(1, int(every))
        self.parts: Dict[str, str] = dict(parts)
        self.step: Optional[int] = None
        self.tables: Dict[str, str] = {}  # part name -> markdown
        self.finished = False  # a finished run in ns-viewer: nothing trains, the analysis is the logged one
        self.logged: Optional[str] = None  # what the run's logs gave: None (not read yet), "read", "none", or why not
        self._from_log = False
        self._lock = threading.Lock()
        self._handles: dict = {}

    # ------------------------------------------------------------------ training side
    def due(self, step: int) -> bool:
        """True when the analysis should run on this step (called before every step)."""
        return self.enabled and step % self.every == 0

    def show(self, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
        """New analysis results: ``{part name: wcnerf.analysis metrics dict}``."""
        with self._lock:
            self.step = step
            self.tables = {name: format_layer_table(metrics) for name, metrics in results.items()}
            self._from_log = False
        self._render()

    # ------------------------------------------------------------------ a run's logged analysis
    def _setup(self, viewer) -> None:  # called by nerfstudio's viewer (ViewerControl), after install
        super()._setup(viewer)
        self.finished = getattr(viewer, "trainer", None) is None  # ns-viewer --load-config
        log_file = getattr(viewer, "log_filename", None)  # <run>/viewer_log_filename.txt
        if log_file is None:
            self.logged = "none"
            return
        if self.finished:
            for key in ("enabled", "every"):  # nothing trains: the switch would act on nothing
                if key in self._handles:
                    self._handles[key].disabled = True
        self._render()
        threading.Thread(target=self.load_logged, args=(Path(log_file).parent,), daemon=True,
                         name="conditioning-panel-log").start()

    def load_logged(self, run_dir: Path) -> None:
        """Show the last analysis logged in ``run_dir`` unless a newer one was shown meanwhile."""
        try:
            found = last_logged_analysis(run_dir, self.parts)
        except Exception as exc:  # noqa: BLE001 - the panel says why; the viewer goes on
            found, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "read" if found else "none"
        with self._lock:
            self.logged = why
            if found is not None and self.step is None:
                self.step, results = found
                self.tables = {name: format_layer_table(metrics) for name, metrics in results.items()}
                self._from_log = True
        self._render()

    # ------------------------------------------------------------------ viewer side
    def install(self, viser_server) -> None:  # called by nerfstudio's viewer, once
        self._create_gui_handle(viser_server)

    def _create_gui_handle(self, viser_server) -> None:
        gui = viser_server.gui
        with gui.add_folder(self.name):
            h = self._handles
            h["conditioner"] = gui.add_text("Conditioner", self.conditioner, disabled=True)
            h["enabled"] = gui.add_checkbox("Layer-wise analysis", self.enabled,
                                            hint="Huang et al.: per-layer spectra of the input and "
                                                 "output-gradient second moments; off costs nothing")
            h["every"] = gui.add_number("Analysis every N steps", self.every, min=1, step=1)
            h["status"] = gui.add_markdown("")
            h["parts"] = {name: gui.add_markdown("") for name in self.parts}
            h["legend"] = gui.add_markdown("")
        h["enabled"].on_update(lambda _: self._set_enabled(bool(h["enabled"].value)))
        h["every"].on_update(lambda _: self._set_every(h["every"].value))
        self.gui_handle = h["enabled"]
        self._render()

    def _set_enabled(self, value: bool) -> None:
        self.enabled = value
        self._render()

    def _set_every(self, value) -> None:
        self.every = max(1, int(value))
        self._render()

    def _render(self) -> None:
        h = self._handles
        if not h:
            return
        with self._lock:
            if self.finished:
                status = self._finished_status()
            elif not self.enabled:
                status = "Analysis **off**: no hooks, no cost."
                if self._from_log:
                    status += f" Shown: step {self.step}, logged earlier in this run folder."
            elif self.step is None:
                status = f"Analysis **on**: first result at the next multiple of {self.every} steps."
            else:
                earlier = " (logged earlier in this run folder)" if self._from_log else ""
                status = f"Analysis **on**, every {self.every} steps; shown: step {self.step}{earlier}."
            h["status"].content = status
            for name, heading in self.parts.items():
                table = self.tables.get(name)
                h["parts"][name].content = f"**{heading}**\n\n{table}" if table else ""
            h["legend"].content = f"*{LEGEND}*" if self.tables else ""

    def _finished_status(self) -> str:
        if self.step is not None:
            return (f"Finished run: the last analysis it logged, step **{self.step}** "
                    "(its tensorboard events; the switch acts while training).")
        if self.logged is None:
            return "Finished run: reading the analysis it logged..."
        if self.logged == "none":
            return ("Finished run: it logged no layer-wise analysis (train with "
                    "--pipeline.model.analysis-every N and tensorboard in --vis to log one).")
        return f"Finished run: its logged analysis could not be read ({self.logged})."


def format_layer_table(metrics: Mapping[str, float]) -> str:
    """Markdown table, one row per layer, of the :data:`COLUMNS` of a wcnerf.analysis dict."""
    layers: Dict[str, Dict[str, float]] = {}
    for key, value in metrics.items():
        for _, suffix in COLUMNS:
            if key.endswith("/" + suffix):
                layers.setdefault(key[: -len(suffix) - 1], {})[suffix] = value
    rows = ["| layer | " + " | ".join(t for t, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for layer, vals in layers.items():
        cells = [_fmt(vals.get(suffix)) for _, suffix in COLUMNS]
        rows.append(f"| {_short(layer)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


_SHORT_NAMES = {"field_output_density.net": "density", "field_heads.0.net": "rgb", "feature_linear": "feature"}


def _short(layer: str) -> str:
    """``mlp_base.layers.3`` -> ``base.3``, ``field_heads.0.net`` -> ``rgb``: the table must fit
    the viewer's narrow panel (a wider one makes the whole panel scroll sideways)."""
    return _SHORT_NAMES.get(layer, layer.replace(".layers.", ".").replace("mlp_", ""))


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "–"
    if v != v or v == float("inf"):
        return "∞"
    return f"{v:.3g}" if v < 1e4 else f"{v:.1e}"


def _event_files(run_dir: Path) -> Iterable[Path]:
    return sorted(Path(run_dir).rglob("events.out.tfevents.*"))


def last_logged_analysis(
    run_dir: Path, parts: Optional[Iterable[str]] = None
) -> Optional[Tuple[int, Dict[str, Dict[str, float]]]]:
    """``(step, {part: {"<layer>/<metric>": value}})`` of the last analysis the run in ``run_dir``
    wrote to its tensorboard event files (the results :meth:`ConditioningPanel.show` takes; part
    totals left out), or None when it logged none. Only ``parts`` when given. A step written
    twice (a resumed run replays the steps after its checkpoint) keeps the value written last;
    a truncated event file (a killed run) gives what it holds."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.util import tensor_util

    wanted = None if parts is None else set(parts)
    latest: Dict[str, Tuple[int, float, float]] = {}  # tag -> (step, wall time, value)
    for path in _event_files(run_dir):
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                if not event.HasField("summary"):
                    continue
                for v in event.summary.value:
                    if not v.tag.startswith(ANALYSIS_TAG):
                        continue
                    if v.HasField("simple_value"):
                        value = float(v.simple_value)
                    elif v.HasField("tensor"):
                        value = float(tensor_util.make_ndarray(v.tensor).reshape(-1)[0])
                    else:
                        continue
                    key = (int(event.step), float(event.wall_time))
                    if v.tag not in latest or key >= latest[v.tag][:2]:
                        latest[v.tag] = (*key, value)
        except Exception:  # noqa: BLE001 - a truncated file: keep what was read
            continue
    if not latest:
        return None
    step = max(s for s, _, _ in latest.values())
    results: Dict[str, Dict[str, float]] = {}
    for tag, (s, _, value) in latest.items():
        part, _, key = tag[len(ANALYSIS_TAG):].partition("/")
        if s != step or not key or key.startswith("total/") or (wanted is not None and part not in wanted):
            continue
        results.setdefault(part, {})[key] = value
    return (step, results) if results else None
