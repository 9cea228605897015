"""Weight conditioning of any nerfstudio method: ``wcnerf-train <method> --conditioning NAME -- ...``.

Conditioning is a property of a model's ``nn.Linear`` / ``nn.Conv2d`` layers, so it can be
applied to any nerfstudio model after the model has built itself. This module does that for
every registered method -- nerfstudio's own and any other plugin's -- without a model class
per method:

* :func:`conditioned_model_config` turns a method's model config (say ``NerfactoModelConfig``)
  into an instance of a generated subclass ``(AnyConditionedModelConfig, NerfactoModelConfig)``
  with the same field values plus the settings of
  :class:`~wcnerf.plugin.conditioned.ConditionedModelConfig` (``conditioning``, its options and
  exclude patterns, ``analysis_every``, ...) and ``conditioning_scope``. Its ``setup`` builds a
  generated subclass ``(AnyConditionedModel, NerfactoModel)`` of the method's own model class:
  the model is the method's model (``isinstance`` checks, attributes, state-dict keys are the
  method's), whose ``populate_modules`` runs the method's own and then conditions it.
* The generated classes are named after the class they extend (``ConditionedConfig_<escaped
  module and name>``) and resolved by this module's ``__getattr__``, so the ``config.yml`` that
  ``ns-train`` writes (a YAML dump naming its classes) rebuilds the conditioned model in
  ``ns-eval``, ``ns-render``, ``ns-viewer``, ``ns-export`` and ``ns-train --load-config``.
  The method name is left unchanged: ``ns-eval`` looks it up in nerfstudio's registry.
* What is conditioned (``conditioning_scope="fields"``, the default): every Linear and Conv2d
  inside the model's fields, i.e. every top-most submodule that is a nerfstudio ``Field``
  (nerfacto's field and proposal networks, vanilla-NeRF's coarse and fine fields, ...), through
  :func:`wcnerf.conditioning.condition`, which applies the head rule of "Which E is E-NeRF?"
  (a layer the conditioner would freeze, like a ``Linear(n, 1)`` head under
  ``equilibrate-in``, is left plain and named). ``conditioning_scope="model"`` takes every
  Linear / Conv2d of the model instead (for a plugin whose networks are not ``Field``\\ s);
  metric modules (torchmetrics) are never touched.
* What cannot be conditioned is listed, never skipped silently: tinycudann modules (a fused
  MLP keeps all its weights in one flat buffer that its CUDA kernels read directly; a
  parametrization cannot sit in front of that read, see :mod:`wcnerf.nerfacto.tcnn`), layers the
  method already reparametrizes (``torch.nn.utils.weight_norm`` in the SDF field of NeuS, or a
  parametrization), and weight layers of other kinds (Conv1d, Conv3d, ...). A model with nothing
  conditionable is refused (:class:`NothingToCondition`) instead of training a plain model
  under a conditioned name.
* At start-up one report says how many layers were conditioned, where, which were left plain
  and which could not be conditioned (:class:`ConditioningReport`, also kept on the model as
  ``model.conditioning_report``).
* Post-step (ENorm), the layer-wise analysis (one part per field) and the viewer's "Weight
  conditioning" panel are the :class:`~wcnerf.plugin.conditioned.ConditionedModel` mixin's,
  exactly as for ``e-nerf``.
* LPIPS: nerfstudio's models build torchmetrics' LPIPS in ``populate_modules``, which downloads
  AlexNet's weights. Here it is built from local weights only
  (:func:`wcnerf.plugin.compat.build_lpips`), lazily, outside the module tree (not in
  checkpoints); without weights the ``*lpips`` metrics are omitted, never computed at random.

Why a wrapper command and not ``ns-train wc-<method>``: see docs/any-method.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
from torch import nn

from nerfstudio.fields.base_field import Field
from nerfstudio.models.base_model import Model, ModelConfig

from wcnerf import conditioning as wc
from wcnerf.plugin.conditioned import AnalysedPart, ConditionedModel, ConditionedModelConfig
from wcnerf.plugin.compat import say_once

__all__ = [
    "AnyConditionedModel",
    "AnyConditionedModelConfig",
    "ConditioningReport",
    "NothingToCondition",
    "check_device",
    "conditioned_model_class",
    "conditioned_model_config",
    "conditioned_trainer_config",
    "plan",
    "settle_cuda_default",
    "wc_trainer_config",
]

_CONFIG_PREFIX = "ConditionedConfig_"
_MODEL_PREFIX = "ConditionedModel_"
_CLASSES: Dict[str, type] = {}


class NothingToCondition(ValueError):
    """The model has no layer the conditioner can reach."""


# --------------------------------------------------------------------------- what is conditioned
def _is_tcnn(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "tinycudann"


def _is_metric(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "torchmetrics"


def _reparametrized(layer: nn.Module) -> Optional[str]:
    """Why ``layer``'s weight cannot take a parametrization, or None."""
    if hasattr(layer, "parametrizations") and "weight" in getattr(layer, "parametrizations", {}):
        return "its weight is already parametrized by the method"
    if hasattr(layer, "weight_g") and hasattr(layer, "weight_v"):
        return "the method already weight-normalises it (torch.nn.utils.weight_norm: weight_g, weight_v)"
    if not isinstance(getattr(layer, "weight", None), nn.Parameter):
        return "its weight is not a parameter"
    return None


_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


@dataclass
class ConditioningReport:
    """What :func:`plan` and the conditioning did to one model."""

    conditioner: str
    scope: str
    parts: Dict[str, int]
    """Top-level part (a field, or ``"model"``) -> number of layers conditioned in it."""
    conditioned: List[str]
    """Qualified names of the parametrized (or ENorm-paired / EquiNorm-replaced) layers."""
    left_plain: List[Tuple[str, str]]
    """Layers the conditioner would freeze (the head rule), left plain, with the reason."""
    not_conditionable: List[Tuple[str, str]]
    """Layers or modules that cannot be conditioned (tinycudann, already reparametrized, other kinds)."""
    excluded: List[str]
    """Layers in scope skipped by ``conditioning_exclude``."""
    outside: List[str]
    """Linear / Conv2d layers outside the scope (e.g. outside the fields)."""

    @property
    def count(self) -> int:
        return len(self.conditioned)

    def lines(self) -> List[str]:
        where = ", ".join(f"{part} ({n})" for part, n in self.parts.items()) or "nowhere"
        verb = "would condition" if self.conditioner == "none" else "conditioned"
        out = [f"wcnerf: {self.conditioner!r} {verb} {self.count} layer(s) in {where}"
               + (" -- conditioning 'none': the plain model" if self.conditioner == "none" else "")]
        if self.left_plain:
            out.append(f"  left plain by the head rule ({len(self.left_plain)}): "
                       + "; ".join(f"{n}: {why}" for n, why in self.left_plain))
        if self.not_conditionable:
            out.append(f"  could not be conditioned ({len(self.not_conditionable)}): "
                       + "; ".join(f"{n}: {why}" for n, why in self.not_conditionable))
        if self.excluded:
            out.append(f"  excluded by --pipeline.model.conditioning-exclude ({len(self.excluded)}): "
                       + ", ".join(self.excluded))
        if self.outside:
            out.append(f"  outside the {self.scope} scope, left plain ({len(self.outside)}): " + ", ".join(self.outside))
        return out


def _field_roots(model: nn.Module) -> List[str]:
    """Qualified names of the top-most ``Field`` submodules, in definition order."""
    roots: List[str] = []
    for name, m in model.named_modules():
        if name and isinstance(m, Field) and not any(name.startswith(r + ".") for r in roots):
            roots.append(name)
    return roots


def _under(name: str, roots: List[str]) -> Optional[str]:
    for r in roots:
        if name == r or name.startswith(r + "."):
            return r
    return None


def plan(model: nn.Module, conditioner: str, scope: str = "fields", exclude: Tuple[str, ...] = ()):
    """``(selected layer names, report)``: the layers ``conditioner`` would be applied to in
    ``model`` and everything left out, with the reason. Nothing is changed."""
    from wcnerf.conditioning.api import _matches

    if scope not in ("fields", "model"):
        raise ValueError(f"conditioning_scope must be 'fields' or 'model', got {scope!r}")
    kinds = wc.REGISTRY[conditioner].layer_types if conditioner != "none" else (nn.Linear, nn.Conv2d)
    metrics = [n for n, m in model.named_modules() if n and _is_metric(m)]
    roots = _field_roots(model) if scope == "fields" else [""]
    tcnn_seen: List[str] = []
    selected: List[str] = []
    report = ConditioningReport(conditioner, scope, {}, [], [], [], [], [])
    for name, m in model.named_modules():
        if not name or _under(name, metrics) or any(name.startswith(t + ".") for t in tcnn_seen):
            continue
        root = _under(name, roots) if scope == "fields" else "model"
        if _is_tcnn(m):
            tcnn_seen.append(name)
            if root is not None:
                what = {"Network": "fused MLP", "NetworkWithInputEncoding": "fused encoding + MLP",
                        "Encoding": "encoding (no weight matrix)"}.get(type(m).__name__, "module")
                report.not_conditionable.append((name, f"tinycudann {type(m).__name__} ({what}: its weights are one "
                                                       "flat buffer read by CUDA kernels; a parametrization cannot reach them)"))
            continue
        is_target = isinstance(m, (nn.Linear, nn.Conv2d))
        if not is_target and isinstance(m, _WEIGHT_LAYERS):
            if root is not None:
                report.not_conditionable.append((name, f"{type(m).__name__} (conditioners take Linear and Conv2d)"))
            continue
        if not is_target:
            continue
        if root is None:
            report.outside.append(name)
            continue
        if not isinstance(m, kinds):
            report.not_conditionable.append((name, f"{type(m).__name__} ({conditioner} takes "
                                                   f"{'/'.join(k.__name__ for k in kinds)} only)"))
            continue
        why = _reparametrized(m)
        if why:
            report.not_conditionable.append((name, why))
            continue
        if exclude and _matches(name, m, list(exclude)):
            report.excluded.append(name)
            continue
        selected.append(name)
    return selected, report


def condition_model(model: nn.Module, conditioner: str, scope: str = "fields", exclude: Tuple[str, ...] = (),
                    **options: Any) -> ConditioningReport:
    """Condition ``model`` in place (see the module docstring); returns the report. Raises
    :class:`NothingToCondition` when no layer can be conditioned (unless ``conditioner`` is
    ``"none"``, the plain model)."""
    import warnings

    selected, report = plan(model, conditioner, scope, exclude)
    if not selected:
        if conditioner == "none":
            return report
        lines = report.lines()[1:]
        method_class = next(c for c in type(model).__mro__ if not issubclass(c, AnyConditionedModel))
        raise NothingToCondition(
            f"{method_class.__name__}"
            f": nothing to condition with {conditioner!r} in the {scope} scope "
            f"({'no nerfstudio Field with a Linear or Conv2d layer' if scope == 'fields' else 'no Linear or Conv2d layer'})"
            + ("; " + " ".join(s.strip() for s in lines) if lines else "")
            + ". Refusing to train a plain model under a conditioned name."
            + (" A plugin whose networks are not nerfstudio Fields: --pipeline.model.conditioning-scope model."
               if scope == "fields" and report.outside else "")
            + (" nerfstudio's MLPs run in torch with --pipeline.model.implementation torch."
               if any("tinycudann" in why for _, why in report.not_conditionable) else "")
            + (" Switch the method's own weight normalisation off (NeuS: --pipeline.model.sdf-field.weight-norm False) "
               "to condition those layers instead." if any("weight_norm" in why for _, why in report.not_conditionable) else ""))
    chosen = set(selected)
    if conditioner != "none":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = wc.condition(model, conditioner, include=lambda name, m: name in chosen, **options)
        for w in caught:
            if "left" not in str(w.message) or "plain" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if out is not model:  # only when the root itself is a replaced layer
            raise RuntimeError("the model itself was replaced by the conditioner")
        report.left_plain = [(n, why) for n, why in wc.left_plain(model)]
        plain = {n for n, _ in report.left_plain}
        selected = [n for n in selected if n not in plain]
    report.conditioned = selected
    roots = _field_roots(model) if scope == "fields" else [""]
    for name in selected:
        part = _under(name, roots) if scope == "fields" else "model"
        report.parts[part] = report.parts.get(part, 0) + 1
    return report


# --------------------------------------------------------------------------- LPIPS, offline
class _OfflineLPIPS:
    """Stands where a nerfstudio model keeps torchmetrics' LPIPS: computed with local AlexNet
    weights (the mixin's holder), NaN otherwise (those metrics are then dropped). Not an
    ``nn.Module``: not in the state dict, not moved by ``.to()``."""

    def __init__(self, model: "AnyConditionedModel") -> None:
        self._model = model

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        metric = self._model.lpips_metric(a.device) if getattr(self._model, "_lpips_holder", None) else None
        if metric is None:
            return torch.tensor(float("nan"), device=a.device)
        return metric(a.clamp(0, 1), b.clamp(0, 1))


class _lpips_offline:
    """During the method's ``populate_modules``: torchmetrics' LPIPS class builds an
    :class:`_OfflineLPIPS` instead of downloading AlexNet."""

    def __init__(self, model: "AnyConditionedModel") -> None:
        self.model = model

    def __enter__(self):
        import torchmetrics.image.lpip as lpip_module

        self._module = lpip_module
        self._original = lpip_module.LearnedPerceptualImagePatchSimilarity
        lpip_module.LearnedPerceptualImagePatchSimilarity = lambda *a, **k: _OfflineLPIPS(self.model)  # type: ignore
        return self

    def __exit__(self, *exc) -> None:
        self._module.LearnedPerceptualImagePatchSimilarity = self._original  # type: ignore[assignment]


# --------------------------------------------------------------------------- config and model
@dataclass
class AnyConditionedModelConfig(ConditionedModelConfig):
    """A method's model config plus the conditioning settings; generated per method as a subclass
    ``(AnyConditionedModelConfig, <method's model config>)`` by :func:`conditioned_model_config`."""

    conditioning_scope: Literal["fields", "model"] = "fields"
    """What is conditioned: every Linear / Conv2d inside the model's nerfstudio Fields (fields and proposal networks), or in the whole model (metrics excepted)."""

    def setup(self, **kwargs: Any) -> Any:
        """The method's own model class (``_target``) extended by :class:`AnyConditionedModel`."""
        return conditioned_model_class(self._target)(self, **kwargs)  # type: ignore[attr-defined]


class AnyConditionedModel(ConditionedModel):
    """Extends a method's model class: its ``populate_modules``, then the conditioning."""

    config: AnyConditionedModelConfig
    conditioning_report: ConditioningReport

    def populate_modules(self) -> None:
        self.check_conditioning()
        with _lpips_offline(self):
            super().populate_modules()  # type: ignore[misc]
        cfg = self.config
        from wcnerf.plugin.conditioned import parse_options

        selected, report = plan(self, cfg.conditioning, cfg.conditioning_scope, tuple(cfg.conditioning_exclude))  # type: ignore[arg-type]
        in_scope = set(selected) | set(report.excluded)
        self.note_exclude_candidates([n for n, _ in self.named_modules() if n in in_scope])  # type: ignore[attr-defined]
        self.check_exclude_patterns()  # a typo is named before "nothing to condition" is said
        self.conditioning_report = condition_model(
            self, cfg.conditioning, cfg.conditioning_scope, tuple(cfg.conditioning_exclude),
            **parse_options(cfg.conditioning_options))
        for line in self.conditioning_report.lines():
            say_once(line, style="bold green" if line.startswith("wcnerf") else "bold yellow")
        self.setup_conditioning()

    def analysis_parts(self) -> Dict[str, AnalysedPart]:
        """One part per field (scope ``fields``) holding a Linear, or the whole model."""
        if self.config.conditioning_scope == "model":
            return {"model": AnalysedPart("model", self)}  # type: ignore[arg-type]
        parts = {}
        for name in _field_roots(self):  # type: ignore[arg-type]
            module = self.get_submodule(name)  # type: ignore[attr-defined]
            if any(isinstance(m, nn.Linear) for m in module.modules()):
                parts[name.replace(".", "_")] = AnalysedPart(name, module)
        return parts

    def get_image_metrics_and_images(self, outputs, batch):  # type: ignore[override]
        metrics, images = super().get_image_metrics_and_images(outputs, batch)  # type: ignore[misc]
        for key in [k for k, v in metrics.items() if "lpips" in k and isinstance(v, float) and math.isnan(v)]:
            del metrics[key]
        return metrics, images


# --------------------------------------------------------------------------- generated classes
def _escape(text: str) -> str:
    return text.replace("_", "_0").replace(".", "_1").replace(":", "_2")


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "_" and i + 1 < len(text):
            out.append({"0": "_", "1": ".", "2": ":"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _import(path: str) -> type:
    import importlib

    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _generated(prefix: str, base: type, make) -> type:
    name = prefix + _escape(f"{base.__module__}:{base.__qualname__}")
    cls = _CLASSES.get(name)
    if cls is None:
        cls = make(name)
        cls.__module__ = __name__
        cls.__qualname__ = name
        _CLASSES[name] = cls
    return cls


def conditioned_model_class(base: Type[Model]) -> type:
    """``(AnyConditionedModel, base)``: the method's model class, conditioned after it is built."""
    if isinstance(base, type) and issubclass(base, AnyConditionedModel):
        return base
    if not (isinstance(base, type) and issubclass(base, Model)):
        raise TypeError(f"{base!r} is not a nerfstudio Model class")
    doc = f"{base.__name__}, weight-conditioned after it is built (wcnerf.plugin.any_method)."
    return _generated(_MODEL_PREFIX, base,
                      lambda name: type(name, (AnyConditionedModel, base), {"__doc__": doc, "__module__": __name__}))


def conditioned_config_class(base: Type[ModelConfig]) -> type:
    """``(AnyConditionedModelConfig, base)`` as a dataclass."""
    if issubclass(base, AnyConditionedModelConfig):
        return base
    if issubclass(base, ConditionedModelConfig):
        raise ValueError(f"{base.__name__} is already a conditioned model config: use its --pipeline.model.conditioning")
    if not issubclass(base, ModelConfig):
        raise TypeError(f"{base!r} is not a nerfstudio ModelConfig class")
    doc = f"{base.__name__} with wcnerf's conditioning settings (wcnerf.plugin.any_method)."

    def make(name: str) -> type:
        return dataclass(type(name, (AnyConditionedModelConfig, base), {"__doc__": doc, "__module__": __name__}))

    return _generated(_CONFIG_PREFIX, base, make)


def __getattr__(name: str) -> type:  # PEP 562: config.yml and pickle find the generated classes here
    for prefix, factory in ((_CONFIG_PREFIX, conditioned_config_class), (_MODEL_PREFIX, conditioned_model_class)):
        if name.startswith(prefix):
            return factory(_import(_unescape(name[len(prefix):])))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def conditioned_model_config(model: ModelConfig, conditioning: str = "equilibrate", **settings: Any) -> ModelConfig:
    """A copy of ``model`` (a method's model config) as the generated conditioned config with
    the same field values; ``settings`` are fields of :class:`AnyConditionedModelConfig`."""
    from wcnerf.plugin.conditioned import check_conditioner

    check_conditioner(conditioning)
    cls = conditioned_config_class(type(model))
    values = {f.name: copy.deepcopy(getattr(model, f.name)) for f in dataclasses.fields(model) if f.init}
    if isinstance(model, AnyConditionedModelConfig):
        values.update(settings, conditioning=conditioning)
        return cls(**values)
    return cls(**values, conditioning=conditioning, **settings)


def conditioned_trainer_config(config: Any, conditioning: str = "equilibrate", **settings: Any) -> Any:
    """A deep copy of a method's ``TrainerConfig`` whose ``pipeline.model`` is conditioned; the
    method name, and everything else, unchanged."""
    out = copy.deepcopy(config)
    model = getattr(getattr(out, "pipeline", None), "model", None)
    if not isinstance(model, ModelConfig):
        raise ValueError(f"method {getattr(config, 'method_name', '?')!r} has no nerfstudio model config to condition "
                         f"({type(config).__name__}; an external method that is not installed?)")
    out.pipeline.model = conditioned_model_config(model, conditioning, **settings)
    return out


def wc_trainer_config(config: Any) -> Any:
    """A nerfstudio ``TrainerConfig`` as wcnerf's :class:`~wcnerf.plugin.trainer.WCTrainerConfig`
    (same field values), so the run gets the pre-flight of ``ns-train`` for wcnerf's methods
    (scene, output folder, ``--load-dir``, conditioning options, device) and wcnerf's trainer
    (atomic checkpoints, a mismatched ``--load-dir`` named); the harness builds its runs the
    same way. A subclass from another plugin keeps its own trainer and is returned as it is."""
    from nerfstudio.engine.trainer import TrainerConfig

    from wcnerf.plugin.trainer import WCTrainerConfig

    if type(config) is not TrainerConfig:
        return config
    return WCTrainerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainerConfig)
                              if f.init and f.name != "_target"})


def settle_cuda_default(config: Any) -> bool:
    """A config that asks for CUDA on a machine without it gets the CPU (and no mixed precision),
    as wcnerf's own methods choose their device; True when changed."""
    if str(config.machine.device_type) != "cuda" or torch.cuda.is_available():
        return False
    config.machine.device_type = "cpu"
    config.mixed_precision = False
    return True


def check_device(config: Any) -> None:
    """RunInputError when ``--machine.device-type`` names an accelerator this machine lacks
    (nerfstudio would end in "Found no NVIDIA driver" after making the run folder)."""
    from wcnerf.plugin.compat import RunInputError

    device = str(config.machine.device_type)
    mps = getattr(torch.backends, "mps", None)
    missing = (device == "cuda" and not torch.cuda.is_available()) or (
        device == "mps" and not (mps is not None and mps.is_available()))
    if missing:
        raise RunInputError(f"--machine.device-type {device}: this machine has no {device.upper()} device "
                            "(torch sees none); train on the CPU with --machine.device-type cpu")
