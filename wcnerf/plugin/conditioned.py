"""Weight conditioning of any nerfstudio model: settings, conditioning, post-step, analysis, LPIPS.

A method family makes its model conditioned with two mixins placed *before* the nerfstudio
classes::

    @dataclass
    class ENeRFModelConfig(ConditionedModelConfig, ModelConfig): ...

    class ENeRFModel(ConditionedModel, Model):
        def populate_modules(self):
            self.check_conditioning()          # unknown names fail before anything is built
            ...                                # build the model
            self.field = self.condition(self.field)
            self.setup_conditioning()          # LPIPS holder, viewer panel

        def analysis_parts(self):             # what the layer-wise analysis looks at
            return {"field": AnalysedPart("field", self.field)}

:class:`ConditionedModelConfig` holds the settings every conditioned method has (the conditioner
by name, its options and exclude patterns, the analysis cadence, local LPIPS weights);
:class:`ConditionedModel` adds to the model's own training callbacks one
:class:`ConditioningCallback`: after every training step ``wcnerf.conditioning.post_step``
(ENorm's rebalancing; a no-op for the other conditioners), and the layer-wise conditioning
analysis (:mod:`wcnerf.analysis`) of the model's :meth:`~ConditionedModel.analysis_parts`
during the ordinary training step every ``analysis_every`` steps (hooks attached before the
step, removed after it; nothing is attached on other steps). Results are written with
``nerfstudio.utils.writer.put_scalar`` as ``analysis/<part>/<layer>/<metric>`` (among them
``.../kappa_nz``, the kappa over the nonzero eigenvalues, and ``<layer>/dead_units`` /
``<layer>/saturated_units``), plus the part totals ``analysis/<part>/total/dead_units`` and
``.../total/saturated_units`` over the layers whose activation the analysis sees, and shown in
the web viewer's "Weight conditioning" panel (:mod:`wcnerf.plugin.viewer_panel`), which also
switches the analysis on or off during training.

Evaluation (``get_outputs_for_camera_ray_bundle``: held-out images, ``ns-eval``, ``ns-render``,
the viewer) renders under ``torch.no_grad`` (as nerfstudio's own render; not
``inference_mode``, inside which a method that needs input gradients at evaluation, such as an
SDF model's normals under ``torch.enable_grad``, cannot get them) with each conditioned weight
computed once per image (``wcnerf.conditioning.cached``, per thread) instead of once per chunk; the analysis'
hooks are only ever attached inside a training step, so no evaluation passes through them in
the training thread.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import tyro
from torch import nn
from typing_extensions import Annotated

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.utils import writer

from wcnerf import conditioning as wc
from wcnerf.plugin.compat import RunInputError, lpips_holder, say_once
from wcnerf.plugin.viewer_panel import ConditioningPanel

__all__ = [
    "DEFAULT_PANEL_EVERY",
    "AnalysedPart",
    "ConditionedModel",
    "ConditionedModelConfig",
    "ConditioningAnalysis",
    "ConditioningCallback",
    "check_conditioner",
    "check_conditioning_options",
    "parse_options",
    "unmatched_patterns",
]

_CONDITIONERS = ", ".join(wc.available())
DEFAULT_PANEL_EVERY = 100
"""Analysis cadence offered in the viewer when the config has the analysis off."""


def parse_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Command-line strings to Python values (``"8"`` -> 8, ``"true"`` -> True, ``"in"`` -> "in")."""
    out: Dict[str, Any] = {}
    for key, value in dict(options).items():
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "false"):
                value = low == "true"
            else:
                try:
                    value = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    pass
        out[key] = value
    return out


def check_conditioner(name: str) -> None:
    """ValueError unless ``name`` is in the registry of :mod:`wcnerf.conditioning`."""
    if name not in wc.available():
        raise ValueError(f"unknown conditioning {name!r}; available: {_CONDITIONERS}")


def check_conditioning_options(config: "ConditionedModelConfig") -> None:
    """RunInputError naming a conditioning option the chosen conditioner does not take, or a
    value it refuses (``wcnerf.conditioning.check_options``): called by the trainer's pre-flight,
    before any run folder exists, instead of a traceback once the model is built."""
    try:
        wc.check_options(config.conditioning, parse_options(config.conditioning_options))
    except ValueError as exc:
        raise RunInputError(f"--pipeline.model.conditioning-options: {exc}") from None


def unmatched_patterns(patterns: Any, names: List[str]) -> List[str]:
    """The fnmatch patterns (``wcnerf.conditioning.condition``'s rule) that match none of ``names``."""
    from wcnerf.conditioning.api import _matches

    return [p for p in patterns if not any(_matches(n, None, [p]) for n in names)]


def _exclude_error(config: "ConditionedModelConfig", missed: List[str], names: List[str]) -> RunInputError:
    shown = ", ".join(names[:16]) + (f", ... ({len(names)} in all)" if len(names) > 16 else "")
    return RunInputError(f"--pipeline.model.conditioning-exclude {' '.join(repr(p) for p in missed)}: matches no layer "
                         f"{config.conditioning!r} could condition (a typo?); the layers it could match: {shown or 'none'}")


@dataclass
class ConditionedModelConfig:
    """Settings of a weight-conditioned model; inherit it before the nerfstudio model config."""

    conditioning: Annotated[
        str,
        tyro.conf.arg(help=f"Weight conditioner for every Linear of the model's MLPs, one of: {_CONDITIONERS}."),
    ] = "equilibrate"
    """Weight conditioner applied to every Linear of the model's MLPs (see wcnerf.conditioning)."""
    conditioning_options: Dict[str, str] = field(default_factory=dict)
    """Options of the conditioner, e.g. `mode in detach True` (values parsed as Python literals)."""
    conditioning_exclude: Tuple[str, ...] = ()
    """fnmatch patterns of submodules left unconditioned, relative to what the method conditions (e-nerf: each field, e.g. `field_heads.*`; e-nerfacto: the model, e.g. `proposal_networks.*`, `field.mlp_head.*`)."""
    analysis_every: int = 0
    """Layer-wise conditioning analysis of the model's MLPs every N training steps (0: off; switchable in the viewer)."""
    analysis_max_samples: int = 4096
    """Rows (ray samples) per layer used for the analysis' second moments."""
    cpu_eval_num_rays_per_chunk: int = 0
    """Rays per chunk when rendering on a CPU (0: eval_num_rays_per_chunk). A chunk's layer activations above glibc's 32 MiB mmap ceiling are mapped and page-faulted anew for every layer of every chunk (docs/results.md)."""
    lpips_weights: Optional[Path] = None
    """Local AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) for LPIPS; default: $WCNERF_LPIPS_WEIGHTS, else the torch hub cache, fetched there once when a metric is first computed ($WCNERF_NO_DOWNLOAD=1: never; then LPIPS is omitted with one warning)."""


class AnalysedPart(NamedTuple):
    """A module the layer-wise analysis looks at, and its heading in the viewer panel."""

    title: str
    module: nn.Module


class ConditioningAnalysis:
    """Layer-wise analysis of named parts of a model, switched and shown by a panel."""

    def __init__(self, parts: Mapping[str, AnalysedPart], panel: ConditioningPanel, max_samples: int) -> None:
        from wcnerf.analysis import LayerwiseAnalyzer

        self.panel = panel
        self.analyzers = {name: LayerwiseAnalyzer(part.module, max_samples=max_samples) for name, part in parts.items()}
        self._running: List[int] = []  # the step whose capture is attached (the switch may flip mid-step)

    def attach(self, step: int) -> None:
        """Before a step: attach the hooks if the panel says the step is due."""
        if not self.panel.due(step):  # the whole cost of the analysis when it is off
            return
        for a in self.analyzers.values():
            a.reset()
            a.attach()
        self._running.append(step)

    def report(self, step: int) -> None:
        """After a step: detach, compute, write the scalars and show them in the panel."""
        if not self._running:
            return
        self._running.clear()
        results = {}
        for name, a in self.analyzers.items():
            a.detach()
            try:
                results[name] = a.compute()
            except Exception as e:  # never let the analysis stop a training run
                say_once(f"WARNING: conditioning analysis of the {name} part failed: {type(e).__name__}: {e}")
                continue
            finally:
                a.reset()
            for key, value in results[name].items():
                writer.put_scalar(name=f"analysis/{name}/{key}", scalar=float(value), step=step)
            for count in ("dead_units", "saturated_units"):
                per_layer = [v for k, v in results[name].items() if k.endswith("/" + count)]
                if per_layer:
                    writer.put_scalar(name=f"analysis/{name}/total/{count}", scalar=float(sum(per_layer)), step=step)
        self.panel.show(step, results)


class ConditioningCallback(TrainingCallback):
    """A conditioned model's training callback. Before a step: the analysis' hooks, if due.
    After it: ``wcnerf.conditioning.post_step(model, optimizers)``, then the analysis' report.
    Without ``analysis`` only the post-step runs."""

    def __init__(
        self, model: nn.Module, optimizers: Optional[Optimizers], analysis: Optional[ConditioningAnalysis] = None
    ) -> None:
        super().__init__(
            [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
            self.after_step,
        )
        self.model = model
        self.optimizers = optimizers
        self.analysis = analysis

    def before_step(self, step: int) -> None:
        if self.analysis is not None:
            self.analysis.attach(step)

    def after_step(self, step: int) -> None:
        opts = list(self.optimizers.optimizers.values()) if self.optimizers is not None else None
        wc.post_step(self.model, opts)
        if self.analysis is not None:
            self.analysis.report(step)

    def run_callback_at_location(self, step: int, location: TrainingCallbackLocation) -> None:
        if location == TrainingCallbackLocation.BEFORE_TRAIN_ITERATION:
            self.before_step(step)
        elif location == TrainingCallbackLocation.AFTER_TRAIN_ITERATION:
            self.after_step(step)


def render_in_chunks(model: Any, camera_ray_bundle: Any, chunk: int) -> Dict[str, torch.Tensor]:
    """nerfstudio's ``Model.get_outputs_for_camera_ray_bundle`` with ``chunk`` rays per chunk
    (nerfstudio reads the size from the shared config; a per-call size keeps the viewer's
    renders and the trainer's independent). Call without autograd."""
    height, width = camera_ray_bundle.origins.shape[:2]
    input_device = camera_ray_bundle.directions.device
    lists: Dict[str, List[torch.Tensor]] = {}
    for start in range(0, len(camera_ray_bundle), chunk):
        bundle = camera_ray_bundle.get_row_major_sliced_ray_bundle(start, start + chunk).to(model.device)
        for name, out in model.forward(ray_bundle=bundle).items():
            if isinstance(out, torch.Tensor):  # as nerfstudio: other outputs are dropped
                lists.setdefault(name, []).append(out.to(input_device))
    return {name: torch.cat(outs).view(height, width, -1) for name, outs in lists.items()}


class ConditionedModel:
    """Mixin for a nerfstudio ``Model`` whose config is a :class:`ConditionedModelConfig`
    (see the module docstring for the calls the model makes)."""

    config: ConditionedModelConfig

    def check_conditioning(self) -> None:
        """ValueError for an unknown conditioner name, an option it does not take or a negative
        CPU chunk (call before building anything)."""
        check_conditioner(self.config.conditioning)
        wc.check_options(self.config.conditioning, parse_options(self.config.conditioning_options))
        chunk = self.config.cpu_eval_num_rays_per_chunk
        if chunk < 0:
            raise ValueError(f"cpu_eval_num_rays_per_chunk must be >= 0 (0: eval_num_rays_per_chunk), got {chunk}")

    def condition(self, module: nn.Module, *, include: Any = None) -> nn.Module:
        """``wcnerf.conditioning.condition`` of ``module`` with the config's conditioner,
        options and exclude patterns (relative to ``module``); returns the module to use."""
        cfg = self.config
        exclude = list(cfg.conditioning_exclude) or None
        from wcnerf.conditioning.api import _matches

        kinds = wc.REGISTRY[cfg.conditioning].layer_types
        self.note_exclude_candidates([n for n, m in module.named_modules() if n and isinstance(m, kinds)
                                      and (include is None or _matches(n, m, include))])
        return wc.condition(
            module, cfg.conditioning, include=include, exclude=exclude, **parse_options(cfg.conditioning_options)
        )

    def note_exclude_candidates(self, names: List[str]) -> None:
        """Record layer names an exclude pattern could match (over every ``condition`` call: a
        pattern need only match in one of the conditioned modules)."""
        seen = self.__dict__.setdefault("_exclude_candidates", [])
        seen.extend(n for n in names if n not in seen)

    def check_exclude_patterns(self) -> None:
        """RunInputError for an exclude pattern that matched no layer the conditioner could take
        (a typo would otherwise train the default model silently). Layer names exist only once
        the model is built, after ``ns-train`` made the run folder: the input-error hook prints
        one line and removes that folder."""
        names = self.__dict__.get("_exclude_candidates", [])
        missed = unmatched_patterns(self.config.conditioning_exclude, names)
        if missed:
            raise _exclude_error(self.config, missed, names)

    def analysis_parts(self) -> Dict[str, AnalysedPart]:
        """``{name: AnalysedPart}`` of the modules the layer-wise analysis looks at (the names
        appear in the logged scalars, ``analysis/<name>/...``). Every model defines it."""
        raise NotImplementedError

    def setup_conditioning(self) -> None:
        """End of ``populate_modules``: the exclude patterns checked against the layers seen,
        the LPIPS metric from local weights (or none, said once) and the viewer panel, on when
        ``analysis_every > 0``."""
        cfg = self.config
        self.check_exclude_patterns()
        self._lpips_holder: List[Any] = lpips_holder(cfg.lpips_weights)  # see compat.lpips_holder
        # A nerfstudio ViewerElement, found by the viewer on the model, holding the analysis switch.
        titles = {name: part.title for name, part in self.analysis_parts().items()}
        self.conditioning_panel = ConditioningPanel(
            cfg.conditioning, enabled=cfg.analysis_every > 0, every=cfg.analysis_every or DEFAULT_PANEL_EVERY, parts=titles
        )

    @property
    def has_lpips(self) -> bool:
        return bool(self._lpips_holder)

    def lpips_metric(self, device: Any) -> Optional[nn.Module]:
        """The LPIPS metric on ``device``, or None when it is omitted."""
        return self._lpips_holder[0].to(device) if self._lpips_holder else None

    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: Any) -> Dict[str, Any]:
        """nerfstudio's chunked render of a camera (evaluation, ``ns-eval``, ``ns-render``, the
        viewer) under ``torch.no_grad`` and with each conditioned weight computed once per image
        instead of once per chunk (``wcnerf.conditioning.cached``, per thread: the viewer's
        renders leave the training thread's weights alone). The outputs equal those of the
        uncached render. On a CPU the chunks hold ``cpu_eval_num_rays_per_chunk`` rays when set.
        """
        chunk = self.config.cpu_eval_num_rays_per_chunk
        with torch.no_grad(), wc.cached(self):  # type: ignore[arg-type]
            if not chunk or self.device.type != "cpu":  # type: ignore[attr-defined]
                return super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)  # type: ignore[misc]
            return render_in_chunks(self, camera_ray_bundle, chunk)

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        """The model's own callbacks plus one :class:`ConditioningCallback`."""
        callbacks = list(super().get_training_callbacks(training_callback_attributes))  # type: ignore[misc]
        analysis = ConditioningAnalysis(self.analysis_parts(), self.conditioning_panel, self.config.analysis_max_samples)
        callbacks.append(ConditioningCallback(self, training_callback_attributes.optimizers, analysis))  # type: ignore[arg-type]
        return callbacks
