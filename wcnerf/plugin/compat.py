"""Fixes for running nerfstudio 1.1.5 on a current torch, offline, on CPU-only machines.

Everything here is applied by ``import wcnerf.plugin`` (which every method family does, so
nerfstudio's entry-point discovery does it before any command touches a checkpoint) through
:func:`install`, or used by our models and trainer:

* **Checkpoints and ``weights_only``.** torch >= 2.6 loads with ``weights_only=True``.
  nerfstudio's ``ExponentialDecayScheduler`` computes learning rates with numpy, so its
  checkpoints hold ``numpy.float64`` (``_last_lr``, optimizer ``lr``) and ``ns-eval``,
  ``ns-render``, ``ns-export`` and ``ns-train --load-dir`` fail to unpickle them. Our
  trainer saves only tensors and Python scalars (:func:`sanitize`) and our scheduler returns
  Python floats; :func:`register_safe_globals` additionally allow-lists numpy scalars so
  checkpoints written by stock nerfstudio load too.
* **Atomic checkpoints.** :func:`atomic_torch_save` writes to a temporary file next to the
  target's folder, fsyncs it and renames it into place.
* **nerfacc's CUDA JIT.** nerfacc compiles its CUDA extension on first use of a CUDA op when
  ``nvcc`` exists, which takes minutes and then fails without a GPU. Our CPU path never calls
  those ops; :func:`guard_nerfacc_cuda_jit` makes any accidental call fail at once with a
  clear message (only when CUDA is unavailable; ``WCNERF_ALLOW_NERFACC_JIT=1`` disables it).
* **LPIPS, as nerfstudio users get it.** torchmetrics' LPIPS ships its linear layers
  (``lpips_models/alex.pth``) but reads torchvision's AlexNet ImageNet weights
  (``alexnet-owt-7be5be79.pth``) from the torch hub cache, downloading them with no timeout.
  :func:`build_lpips` uses a local copy (a path given in the model config, ``$WCNERF_LPIPS_WEIGHTS``
  or the hub cache), else fetches the file once into the hub cache (:mod:`wcnerf.lpips_weights`:
  a timeout, atomic, hash-checked; never with ``$WCNERF_NO_DOWNLOAD``), else returns ``None``
  with the reason; LPIPS is then omitted, never computed from random weights.
  :func:`lpips_holder` does all this only when a metric is first computed, so commands that
  compute none (``ns-render``, ``ns-export``, ``ns-viewer``) neither fetch nor warn.
* **Input errors without a traceback.** :func:`install_input_error_hook` (applied by
  :func:`install`) turns our input-error types (an unusable LLFF scene,
  a run that cannot start as asked, e.g. a wrong ``--load-dir``, an output that cannot be
  written, :class:`wcnerf.atomic.WriteError`) raised anywhere in ``ns-train``
  / ``ns-eval`` / ``ns-render`` into ``error: <message>`` on stderr and exit code 2, and removes
  the run folder this process created if it holds nothing but ``config.yml``. Every other
  exception (a genuine bug) keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch

from wcnerf.atomic import atomic_path

__all__ = [
    "ALEXNET_WEIGHTS_FILE",
    "LPIPS_ENV",
    "LazyLPIPS",
    "atomic_torch_save",
    "build_lpips",
    "find_alexnet_weights",
    "guard_nerfacc_cuda_jit",
    "install",
    "install_input_error_hook",
    "lpips_holder",
    "INPUT_ERROR_EXIT",
    "RunInputError",
    "register_safe_globals",
    "sanitize",
]

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's AlexNet ImageNet weights, the only file torchmetrics' LPIPS (alex) downloads
(:data:`wcnerf.lpips_weights.ALEXNET_URL`)."""

LPIPS_ENV = "WCNERF_LPIPS_WEIGHTS"
"""Environment variable naming a local copy of :data:`ALEXNET_WEIGHTS_FILE`."""

_INSTALLED = False


# --------------------------------------------------------------------------- checkpoints
def _numpy_safe_globals() -> list:
    import importlib
    import warnings

    out: list = [np.dtype]
    for modname in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x, 2.x
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scalar = getattr(importlib.import_module(modname), "scalar", None)
        except ImportError:
            continue
        if scalar is not None and scalar not in out:
            out.append(scalar)
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


def register_safe_globals() -> bool:
    """Allow numpy scalars in ``torch.load(weights_only=True)``; False if torch is too old."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:
        return False
    add(_numpy_safe_globals())
    return True


def sanitize(obj: Any) -> Any:
    """Copy of ``obj`` with numpy scalars as Python scalars and numpy arrays as tensors
    (dicts, lists and tuples recursed into; everything else returned as is)."""
    if isinstance(obj, dict):
        try:
            out = type(obj)()
        except TypeError:
            out = {}
        for k, v in obj.items():
            out[k] = sanitize(v)
        if hasattr(obj, "_metadata"):  # state_dict version info
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [sanitize(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(sanitize(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj


def atomic_torch_save(obj: Any, path: Path, tmp_dir: Optional[Path] = None) -> None:
    """``torch.save`` to ``path`` atomically (:func:`wcnerf.atomic.atomic_path`); the temporary
    file goes to ``tmp_dir``, default the parent of ``path``'s folder, so no partial file ever
    sits among the checkpoints (nerfstudio parses their names to find the latest)."""
    path = Path(path)
    with atomic_path(path, tmp_dir=tmp_dir if tmp_dir is not None else path.parent.parent) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- nerfacc
class _NoNerfaccCuda(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            "nerfacc CUDA op requested but CUDA is not available: wcnerf blocks nerfacc's CUDA JIT build "
            "on CPU-only machines (it compiles for minutes, then fails). Set WCNERF_ALLOW_NERFACC_JIT=1 to allow it."
        )


def guard_nerfacc_cuda_jit(force: bool = False) -> bool:
    """Without CUDA, make nerfacc's lazy CUDA backend raise at once instead of JIT-compiling.
    Returns True if the guard is in place."""
    if os.environ.get("WCNERF_ALLOW_NERFACC_JIT") == "1":
        return False
    if torch.cuda.is_available() and not force:
        return False
    name = "nerfacc.cuda._backend"
    if name in sys.modules and not isinstance(sys.modules[name], _NoNerfaccCuda):
        return False  # already loaded (built earlier): leave it alone
    sys.modules[name] = _NoNerfaccCuda(name)
    return True


# --------------------------------------------------------------------------- LPIPS
def find_alexnet_weights(explicit: Optional[Path] = None) -> Tuple[Optional[Path], str]:
    """Locate AlexNet ImageNet weights for LPIPS without downloading.

    Order: ``explicit``, ``$WCNERF_LPIPS_WEIGHTS``, the torch hub cache (torchvision's file, or
    the file of ``$WCNERF_LPIPS_URL``). Returns ``(path or None, where/why)``.
    """
    from wcnerf.lpips_weights import cache_path

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE
    for label, cand in (("given path", explicit), (f"${LPIPS_ENV}", os.environ.get(LPIPS_ENV) or None)):
        if cand:
            p = Path(cand).expanduser()
            if p.is_file():
                return p, label
            return None, f"{label} {p} is not a file"
    for cached in (hub_file, cache_path()):
        if cached.is_file():
            return cached, "torch hub cache"
    return None, (
        f"AlexNet ImageNet weights ({ALEXNET_WEIGHTS_FILE}) are not in the torch hub cache ({hub_file.parent}) "
        f"and no --pipeline.model.lpips-weights or ${LPIPS_ENV} was given"
    )


def build_lpips(explicit: Optional[Path] = None):
    """torchmetrics' LPIPS (AlexNet, inputs in [0, 1]) from local weights; when none is given
    or cached, they are fetched once into the torch hub cache (:mod:`wcnerf.lpips_weights`).

    Returns ``(metric, "")`` or ``(None, reason)``; never falls back to random weights.
    """
    path, why = find_alexnet_weights(explicit)
    if path is None and not explicit and not os.environ.get(LPIPS_ENV):  # a copy named but missing: no fetch
        from wcnerf.lpips_weights import NO_DOWNLOAD_ENV, downloads_allowed, fetch_alexnet_weights

        path, fetched = fetch_alexnet_weights()
        if path is None:
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            why = (f"{fetched}; place {ALEXNET_WEIGHTS_FILE} in {hub} or name a copy with ${LPIPS_ENV}"
                   + (f" (${NO_DOWNLOAD_ENV}=1: never download)" if downloads_allowed() else ""))
    if path is None:
        return None, why
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE
        if path.resolve() == hub_file.resolve():
            metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        else:
            # torchvision only reads the hub cache: point a temporary hub dir at the file.
            old = torch.hub.get_dir()
            with tempfile.TemporaryDirectory(prefix="wcnerf-hub-") as tmp:
                (Path(tmp) / "checkpoints").mkdir()
                link = Path(tmp) / "checkpoints" / ALEXNET_WEIGHTS_FILE
                try:
                    link.symlink_to(path.resolve())
                except OSError:
                    import shutil

                    shutil.copyfile(path, link)
                torch.hub.set_dir(tmp)
                try:
                    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
                finally:
                    torch.hub.set_dir(old)
    except Exception as e:  # corrupt file, incompatible torchmetrics, ...
        return None, f"LPIPS could not be built from {path}: {type(e).__name__}: {e}".replace("\n", " ")
    metric.eval()
    for p in metric.parameters():
        p.requires_grad_(False)
    return metric, ""


# --------------------------------------------------------------------------- input errors
INPUT_ERROR_EXIT = 2
"""Exit code of a command refused for its input (as argparse / tyro use for bad arguments)."""


class RunInputError(RuntimeError):
    """A run that cannot start or continue as asked (a ``--load-dir`` that holds no usable
    checkpoint, an output folder that cannot be written). The message starts with the path."""


_CREATED_RUN_DIRS: list = []


_FIRST_MADE: dict = {}


def first_missing(path: Path) -> Path:
    """The outermost folder of ``path`` (absolute) that does not exist yet; ``path`` when it exists.
    Call it before making the run folder, so a refusal can remove every folder the run made."""
    path = Path(path).absolute()
    top = next((p for p in reversed((path, *path.parents)) if not p.exists()), path)
    _FIRST_MADE.setdefault(path, top)
    return _FIRST_MADE[path]


def note_run_dir(path: Path, top: Optional[Path] = None) -> None:
    """Record a run folder this process created (nerfstudio's ``save_config``) and ``top``, the
    outermost folder above it that did not exist before; an input error removes the run folder
    again if it holds nothing but ``config.yml``, and then the folders up to ``top`` left empty."""
    _CREATED_RUN_DIRS.append((Path(path), Path(top) if top is not None else Path(path)))


def _input_errors() -> tuple:
    from wcnerf.atomic import WriteError
    from wcnerf.data.llff_scene import LLFFDataError

    return (LLFFDataError, RunInputError, WriteError)


def _input_error_in(exc: Optional[BaseException]) -> Optional[BaseException]:
    """``exc`` or an exception it was raised from / during that is one of our input errors."""
    kinds, seen = _input_errors(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def remove_config_only_run_dirs() -> list:
    """Remove the run folders this process created that hold only ``config.yml``; returns them."""
    import shutil

    removed = []
    for run, top in _CREATED_RUN_DIRS:
        try:
            if run.is_dir() and {p.name for p in run.iterdir()} <= {"config.yml"}:
                shutil.rmtree(run)
                removed.append(run)
                parent = run.parent
                while top in (parent, *parent.parents) and not any(parent.iterdir()):  # up to top, not past it
                    parent.rmdir()
                    parent = parent.parent
        except OSError:
            pass
    return removed


def _input_error_hook(exc_type, exc, tb, _previous=[sys.excepthook]) -> None:  # noqa: B006
    err = _input_error_in(exc)
    if err is None:
        _previous[0](exc_type, exc, tb)
        return
    remove_config_only_run_dirs()
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    print(f"error: {err}", file=sys.stderr, flush=True)
    # os._exit: the exit code of an uncaught exception cannot be chosen otherwise, and the
    # viewer's / writers' threads must not keep a refused run alive.
    os._exit(INPUT_ERROR_EXIT)


def install_input_error_hook() -> None:
    """Make our input errors end the process with one line and exit code 2 (see module doc)."""
    if sys.excepthook is not _input_error_hook:
        _input_error_hook.__defaults__[0][0] = sys.excepthook  # type: ignore[index]
        sys.excepthook = _input_error_hook
    try:
        from nerfstudio.configs.experiment_config import ExperimentConfig
    except ImportError:
        return
    save = ExperimentConfig.save_config
    if getattr(save, "_wcnerf_noted", False):
        return

    def save_config(self) -> None:
        base = Path(self.get_base_dir()).absolute()
        top = first_missing(base)  # remembered by the pre-flight check, which makes the folder first
        save(self)
        note_run_dir(base, top)

    save_config._wcnerf_noted = True  # type: ignore[attr-defined]
    ExperimentConfig.save_config = save_config  # type: ignore[method-assign]


# --------------------------------------------------------------------------- install
def install() -> None:
    """Apply the process-wide fixes once (safe globals, nerfacc guard, input-error hook)."""
    global _INSTALLED
    if _INSTALLED:
        return
    register_safe_globals()
    guard_nerfacc_cuda_jit()
    install_input_error_hook()
    _INSTALLED = True


_SAID: set = set()


def say_once(message: str, style: str = "bold yellow") -> None:
    """Print ``message`` on nerfstudio's console the first time it is given in this process."""
    if message not in _SAID:
        _SAID.add(message)
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(f"[{style}]{message}", soft_wrap=True, highlight=False)


class LazyLPIPS:
    """``[metric]`` or ``[]`` (truth, ``len``, ``[0]``) built by :func:`build_lpips` when first
    looked at, i.e. when a metric is first computed: building a model (``ns-render``,
    ``ns-export``, ``ns-viewer``) then neither downloads nor warns. Not a module: not in
    checkpoints, not moved by ``.to()``; copying it does not build it."""

    def __init__(self, explicit: Optional[Path] = None) -> None:
        self.explicit = explicit
        self.built = False
        self._items: list = []

    def _build(self) -> list:
        if not self.built:
            self.built = True
            lpips, why = build_lpips(self.explicit)
            if lpips is None:
                say_once(f"WARNING: LPIPS omitted from the metrics: {why}.")
            else:
                self._items.append(lpips)
        return self._items

    def __len__(self) -> int:
        return len(self._build())

    def __bool__(self) -> bool:
        return bool(self._build())

    def __getitem__(self, index: int) -> Any:
        return self._build()[index]

    def __iter__(self):
        return iter(self._build())

    def __repr__(self) -> str:
        return f"LazyLPIPS({'built: ' + repr(self._items) if self.built else 'not built'})"


def lpips_holder(explicit: Optional[Path] = None) -> LazyLPIPS:
    """The LPIPS metric as ``[metric]`` or ``[]`` (said once why), decided when first used
    (:class:`LazyLPIPS`). A list-like rather than the module, so a model keeps the metric out of
    its module tree (not in checkpoints, not moved by ``.to()``)."""
    return LazyLPIPS(explicit)
