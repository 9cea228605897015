"""Config, training loop, checkpoint/resume and final evaluation of one shape fit.

A run lives in ``<output_dir>/<mesh name>/<run name>/``. The default run name is derived from
the training settings, so running the *same command* again finds the same folder and continues
from its last checkpoint (or just returns the metrics if it had finished). Batches are drawn
from a generator seeded by (seed, step), so a resumed run is bit-identical to one that was
never interrupted (on the same device and torch build).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
import typing
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Protocol, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from ..atomic import atomic_path, ensure_writable_dir, remove_stale_temporaries, write_text
from ..bounds import (COUNT, EVERY, EVERY_OR_OFF, LEARNING_RATE, PORT, SEED, THREADS, WEIGHT, Bounds, at_least, between,
                      positive)
from .extract import evaluate_grid, evaluate_points, marching_cubes, to_original, write_mesh
from ..conditioning import available, post_step
from .field import FieldConfig, build_field
from .mesh import ShapeMesh, load_mesh
from .metrics import iou, surface_metrics
from .sampling import SamplingConfig, load_or_compute_grid_occupancy, load_or_compute_samples

# The shipped example mesh (the checkout's data/meshes, installed as wcnerf.example_data).
DEFAULT_MESH = Path(str(resources.files("wcnerf.example_data") / "meshes" / "spot.obj"))

_NAMES = tuple(available())
# Literal built from the conditioning library at import time: a new conditioner is a CLI choice at once.
ConditionerName = Literal[_NAMES]  # type: ignore[valid-type]
_DEFAULT_CONDITIONING = "equilibrate"

# Adam: reaches IoU > 0.97 on the armadillo with the default settings. SGD (momentum 0.9): 0.3 was
# the best of {0.1, 0.3, 1, 3} for the default conditioner (equilibrate) on the armadillo and the
# bunny (unconditioned and weight-norm fields preferred 1.0).
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.3}


@dataclass(frozen=True)
class ConditionedFieldConfig(FieldConfig):
    """The field: an encoded MLP whose every Linear layer takes the conditioner. (On the armadillo 6
    octaves beat 8: higher IoU and Chamfer, fewer floaters.)"""

    width: int = 128
    """Units per hidden layer."""
    conditioning: ConditionerName = _DEFAULT_CONDITIONING  # type: ignore[valid-type]
    """Weight conditioner for every Linear layer (from wcnerf.conditioning.available())."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation: optimizer, learning rate and its schedule, steps, batch size."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Optional[float] = None
    """Learning rate; default 2e-3 for adam, 0.3 for sgd (momentum 0.9)."""
    momentum: float = 0.9
    """SGD momentum (heavy ball)."""
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    """cosine: decay to lr*final_lr_fraction; step: x0.1 at 50% and 75% of the steps."""
    final_lr_fraction: float = 0.01
    warmup_steps: int = 0
    steps: int = 2000
    batch_size: int = 8192
    """Training points per step, drawn from the sampled points."""

    def resolved_lr(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass(frozen=True)
class SdfConfig:
    """SDF task (--task sdf): L1 on clamped signed distances, optionally with an eikonal term."""

    clamp: float = 0.1
    """Distances are clamped to +-this before the L1 loss (unit coordinates)."""
    eikonal_weight: float = 0.0
    """Weight of the (|grad f| - 1)^2 term; 0 disables it (it doubles the step cost)."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: the IoU curve while training, then the final mesh and its metrics."""

    every: int = 100
    """Steps between two points of the IoU curve."""
    curve_points: int = 20_000
    """The IoU curve uses this many of the fixed IoU points (--sampling.n-eval; the final IoU uses all)."""
    resolution: int = 192
    """Marching-cubes grid resolution (also the grid IoU resolution)."""
    surface_points: int = 100_000
    """Points sampled on each surface for Chamfer / normal consistency / F-score."""
    chunk: int = 65536
    """Points per forward pass at evaluation time (bounds memory)."""


@dataclass(frozen=True)
class ViewerConfig:
    """Live web page (viser): the input mesh and each field's current mesh, step, loss and IoU."""

    enabled: Annotated[bool, tyro.conf.arg(name="viewer", prefix_name=False)] = False
    """Serve the page while training (with --compare too)."""
    host: str = "127.0.0.1"
    """Address the viewer binds; 127.0.0.1 keeps it local (use ssh port forwarding), 0.0.0.0 exposes it."""
    port: int = 8080
    every: int = 100
    """Refresh the viewer's mesh, loss and IoU every N steps (the mesh is extracted off the training thread)."""
    resolution: int = 64
    """Marching-cubes resolution of the viewer's live meshes (the final mesh uses --evaluation.resolution)."""
    keep_open: bool = True
    """After training, keep serving the page until Ctrl+C."""
    view: Annotated[Optional[Path], tyro.conf.arg(name="view", prefix_name=False, metavar="RUN_DIR")] = None
    """Train nothing: open a run folder, or a --compare folder, in the viewer (its meshes, metrics and curves)."""


@dataclass(frozen=True)
class CompareConfig:
    """Fit several conditioners with the same seeds and the same points, and compare them."""

    conditioners: Annotated[Tuple[ConditionerName, ...],  # type: ignore[valid-type]
                            tyro.conf.arg(name="compare", prefix_name=False,
                                          help_behavior_hint="(default: one fit, no comparison)")] = ()
    """Conditioners to fit and compare, e.g. none equilibrate weight-norm."""
    lrs: Annotated[Tuple[float, ...], tyro.conf.arg(help_behavior_hint="(default: --optim.lr)")] = ()
    """Learning rates; each conditioner uses its best (lowest final training loss)."""
    seeds: Annotated[Tuple[int, ...], tyro.conf.arg(aliases=("--seeds",), help_behavior_hint="(default: --seed)")] = ()
    """Seeds; every conditioner and learning rate is fitted with each (--seeds, as in wcnerf-compare)."""


@dataclass
class FitConfig:
    """Fit an occupancy or signed-distance field to a triangle mesh."""

    mesh: Annotated[Optional[Path], tyro.conf.Positional,
                    tyro.conf.arg(metavar="[MESH]",
                                  help_behavior_hint="(default: spot, the example mesh shipped with wcnerf)")] = None
    """Mesh file (obj, ply, stl, off, glb, ...)."""
    margin: float = 0.05
    """The mesh is normalised into [-1+margin, 1-margin]^3."""
    task: Literal["occupancy", "sdf"] = "occupancy"
    """occupancy: BCE with logits on winding-number labels; sdf: L1 on clamped signed distances."""
    seed: int = 0
    """Seed of the initial weights and of the batch order (the points have --sampling.seed)."""

    output_dir: Path = Path("outputs/shape")
    """Runs go to <output-dir>/<mesh name>/<run name>/."""
    run_name: Optional[str] = None
    """Default: derived from the settings, so the same command resumes the same run."""
    cache_dir: Optional[Path] = None
    """Where labels are cached; default <output_dir>/<mesh>/cache."""
    ckpt_every: int = 250
    """Steps between checkpoints (a killed run resumes from the last one)."""
    overwrite: bool = False
    """Start from scratch even if the run folder has a checkpoint."""
    wait: bool = False
    """When another wcnerf-shape-fit is writing the same run folder: wait for it to finish, then
    continue (or reuse) its run; without it this one refuses, naming the holder."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 0
    """torch CPU threads (0: torch's default). On a busy shared CPU, 1 is often several times faster."""
    stop_after: tyro.conf.Suppress[Optional[int]] = None
    """For tests: stop after this many steps of *this invocation* without saving, as if killed."""

    field: ConditionedFieldConfig = ConditionedFieldConfig()
    sampling: SamplingConfig = SamplingConfig()
    optim: OptimConfig = OptimConfig()
    sdf: SdfConfig = SdfConfig()
    evaluation: EvalConfig = EvalConfig()
    viewer: ViewerConfig = ViewerConfig()
    compare: CompareConfig = CompareConfig()

    TRAINING_GROUPS: ClassVar[Tuple[str, ...]] = ("field", "sampling", "optim", "sdf")
    """The groups that decide the trained weights, in full; the others (evaluation, viewer, compare) and the
    top-level paths, checkpoint cadence, threads and progress bar do not."""

    # ------------------------------------------------------------------------------------------
    def training_settings(self, shape: ShapeMesh) -> dict:
        """Everything that changes the trained weights: the mesh (its geometry and ``margin``, as
        ``shape.content_hash``), the task, the seed and the training groups (the lr resolved)."""
        groups = {name: asdict(getattr(self, name)) for name in self.TRAINING_GROUPS}
        groups["optim"]["lr"] = self.optim.resolved_lr()
        return {"mesh": shape.content_hash, "task": self.task, "seed": self.seed, **groups}

    def training_key(self, shape: ShapeMesh) -> str:
        """Hash of :meth:`training_settings`: a run folder is resumed only under the same key."""
        return hashlib.sha256(json.dumps(self.training_settings(shape), sort_keys=True).encode()).hexdigest()[:8]

    def default_run_name(self, shape: ShapeMesh) -> str:
        return (f"{self.field.conditioning}-{self.optim.optimizer}-lr{self.optim.resolved_lr():g}-s{self.seed}-"
                f"{self.training_key(shape)}")

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict) -> "FitConfig":
        """The inverse of :meth:`to_json` (a run folder's config.json, a checkpoint's config)."""
        return _from_json(cls, data)


FIT_BOUNDS = Bounds((
    ("margin", between(0, 1, strict_high=True)),
    ("seed", SEED), ("sampling.seed", SEED), ("compare.seeds", SEED),
    ("threads", THREADS),
    ("ckpt_every", EVERY), ("stop_after", COUNT),
    ("field.width", at_least(1, warn_above=8192)), ("field.depth", at_least(1, warn_above=64)),
    ("field.n_freqs", at_least(1, warn_above=24)), ("field.fourier_scale", positive(warn_above=1e3)),
    ("sampling.n_near", COUNT), ("sampling.n_uniform", COUNT), ("sampling.n_eval", COUNT),
    ("sampling.sigma_near", positive(warn_above=1, note="offsets in the unit box")),
    ("sampling.eval_padding", at_least(0, warn_above=1, note="a fraction of the mesh's extent")),
    ("optim.lr", LEARNING_RATE), ("compare.lrs", LEARNING_RATE),
    ("optim.momentum", between(0, 1, strict_high=True)),
    ("optim.final_lr_fraction", between(0, 1)),
    ("optim.warmup_steps", EVERY_OR_OFF), ("optim.steps", COUNT), ("optim.batch_size", COUNT),
    ("sdf.clamp", positive(warn_above=4, note="distances in the unit box")), ("sdf.eikonal_weight", WEIGHT),
    ("evaluation.every", EVERY), ("evaluation.curve_points", COUNT),
    ("evaluation.resolution", at_least(8, warn_above=1024)), ("evaluation.surface_points", COUNT),
    ("evaluation.chunk", COUNT),
    ("viewer.port", PORT), ("viewer.every", EVERY), ("viewer.resolution", at_least(8, warn_above=512)),
))
"""The bounds of every number the shape trainer takes (checked by wcnerf.shape.cli.run before anything is read)."""


OLDER_LAYOUT = "was written by an older shape trainer (flat settings)"


def older_layout(config: dict) -> bool:
    """Settings saved before they were grouped (one flat dict): such runs are not resumed or loaded."""
    return not isinstance(config.get("field"), dict)


def _from_json(cls, data: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_json(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and Path in (hint, *typing.get_args(hint)):
            value = Path(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def pick_device() -> torch.device:
    """CUDA when present, else CPU, decided at run time."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_factor(cfg: OptimConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return 0.1 ** (int(step >= 0.5 * cfg.steps) + int(step >= 0.75 * cfg.steps))
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    lo = cfg.final_lr_fraction
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.resolved_lr())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.resolved_lr(), momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _batch_indices(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Batch of step ``step`` depends only on (seed, step): resuming needs no RNG state."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return torch.randint(0, n, (batch,), generator=g)


def predict_inside(cfg: FitConfig, out):
    """Inside where the occupancy logit is positive, or the signed distance negative (tensor or array)."""
    return out < 0 if cfg.task == "sdf" else out > 0


class RunError(RuntimeError):
    pass


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict
    curves: dict


def _eval_settings(cfg: FitConfig) -> dict:
    return {"resolution": cfg.evaluation.resolution, "surface_points": cfg.evaluation.surface_points,
            "n_eval": cfg.sampling.n_eval}


class FitMonitor(Protocol):
    """Watches a fit (e.g. the shape viewer). Called on the training thread: implementations must
    return at once (copy what they need and do the work elsewhere), never block training."""

    def started(self, run: str, cfg: FitConfig, shape: ShapeMesh, model: torch.nn.Module) -> None: ...

    def progress(self, run: str, step: int, loss: float, curves: dict, model: torch.nn.Module) -> None: ...

    def finished(self, run: str, metrics: dict, curves: dict, mesh_unit) -> None: ...


def fit(cfg: FitConfig, run_dir: Optional[Path] = None, shape: Optional[ShapeMesh] = None,
        monitor: Optional[FitMonitor] = None, run_label: Optional[str] = None) -> FitResult:
    """Train (or resume) one field, then extract its mesh and measure it. Returns the metrics.

    ``monitor`` (optional) is told about the run every ``cfg.viewer.every`` steps and at the end;
    ``run_label`` names the run for it (default: the conditioner).

    The run folder is claimed by a lease (:mod:`wcnerf.lease`) for the whole fit: a second fit
    of the same folder (another process or host) refuses with a :class:`RunError` naming the
    folder and its holder, or, with ``cfg.wait``, waits for it and then resumes (or reuses) its run."""
    if cfg.field.conditioning not in available():
        raise ValueError(f"unknown conditioning {cfg.field.conditioning!r}; choose from {', '.join(available())}")
    shape = shape or load_mesh(cfg.mesh or DEFAULT_MESH, margin=cfg.margin)
    run_dir = Path(run_dir) if run_dir is not None else cfg.output_dir / shape.name / (cfg.run_name or cfg.default_run_name(shape))
    ensure_writable_dir(run_dir)
    with claim_run_dir(run_dir, wait=cfg.wait):
        return _fit(cfg, run_dir, shape, monitor, run_label)


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, wait: bool = False):
    """Hold the lease on ``run_dir`` while the block runs (see :func:`fit`)."""
    from ..lease import Lease, LeaseHeld, describe_holder

    lease = Lease(run_dir, info={"writer": "shape_fit"})
    if not lease.try_acquire():
        holder = lease.holder() or {}
        if not wait:
            raise RunError(f"{run_dir} is being written by another shape fit ({describe_holder(holder)}); "
                           "run this again when it is done, or pass --wait to wait for it and then continue its run")
        print(f"waiting for {run_dir}: being written by {describe_holder(holder)}", file=sys.stderr, flush=True)
        try:
            lease.acquire(wait=True)
        except LeaseHeld as exc:  # pragma: no cover - only with a timeout
            raise RunError(str(exc)) from exc
    try:
        yield lease
    finally:
        lease.release()


def _fit(cfg: FitConfig, run_dir: Optional[Path], shape: Optional[ShapeMesh],
         monitor: Optional[FitMonitor], run_label: Optional[str]) -> FitResult:
    """:func:`fit` in its claimed run folder."""
    conditioning, optim = cfg.field.conditioning, cfg.optim
    if conditioning not in available():
        raise ValueError(f"unknown conditioning {conditioning!r}; choose from {', '.join(available())}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    shape = shape or load_mesh(cfg.mesh or DEFAULT_MESH, margin=cfg.margin)
    run_dir = Path(run_dir) if run_dir is not None else cfg.output_dir / shape.name / (cfg.run_name or cfg.default_run_name(shape))
    cache_dir = cfg.cache_dir if cfg.cache_dir is not None else cfg.output_dir / shape.name / "cache"
    ckpt_path = run_dir / "checkpoint.pt"
    metrics_path = run_dir / "metrics.json"
    device = pick_device()
    if device.type == "cuda":  # CPU kernels are deterministic already (and this import is slow)
        torch.use_deterministic_algorithms(True, warn_only=True)

    ensure_writable_dir(run_dir)  # at start-up: a read-only disk or a path under a file, before any work
    ensure_writable_dir(cache_dir, "--cache-dir")
    remove_stale_temporaries(run_dir)  # half-written files of a run killed mid-write (never loaded)
    remove_stale_temporaries(cache_dir)
    if cfg.overwrite and run_dir.exists():
        for name in ("checkpoint.pt", "metrics.json", "mesh.ply", "curves.png", "fit.png", "config.json"):
            (run_dir / name).unlink(missing_ok=True)
    key = cfg.training_key(shape)
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None and ckpt.get("training_key") != key:
        why = (f"{OLDER_LAYOUT} and cannot be resumed" if older_layout(ckpt.get("config", {})) else "holds a run with different training settings")
        raise RunError(f"{run_dir}: {why}; use another --run-name or --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.json", json.dumps(cfg.to_json(), indent=2) + "\n")

    samples = load_or_compute_samples(shape, cfg.sampling, cache_dir)
    pts = torch.from_numpy(samples.points).to(device)
    target = torch.from_numpy(samples.occupancy.astype(np.float32) if cfg.task == "occupancy" else samples.sdf).to(device)
    ev_pts = torch.from_numpy(samples.eval_points).to(device)
    ev_occ = samples.eval_occupancy.astype(bool)
    n_curve = min(cfg.evaluation.curve_points, len(ev_pts))

    model = build_field(cfg.field, conditioning, cfg.seed).to(device)
    opt = make_optimizer(optim, model.parameters())
    base_lr = optim.resolved_lr()
    state = {"step": 0, "train_seconds": 0.0, "loss": [], "eval_step": [], "eval_iou": []}

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    label = run_label or conditioning
    if monitor is not None:
        monitor.started(label, cfg, shape, model)

    def save_checkpoint():  # atomically: a killed run never leaves half a checkpoint
        with atomic_path(ckpt_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                        "training_key": key, "config": cfg.to_json()}, tmp)

    def curve_iou() -> float:
        model.eval()
        out = evaluate_points(model, samples.eval_points[:n_curve], device, cfg.evaluation.chunk)
        model.train()
        return iou(predict_inside(cfg, out), ev_occ[:n_curve])

    start = state["step"]
    if start < optim.steps and not state.get("diverged"):
        from tqdm.auto import tqdm

        bar = tqdm(total=optim.steps, initial=start, disable=not cfg.progress, desc=f"{shape.name} {conditioning}",
                   dynamic_ncols=True, mininterval=1.0)
        if state["step"] == 0 and 0 not in state["eval_step"]:
            # The curve starts at the untrained field (a run of fewer steps than --evaluation.every
            # would have one point). Once per run: a resumed run has it in its checkpoint. No
            # training state is touched: batches come from per-step generators, not global RNG.
            state["eval_step"].append(0)
            state["eval_iou"].append(curve_iou())
        model.train()
        run_steps = 0
        try:
            for step in range(start, optim.steps):
                if cfg.stop_after is not None and run_steps >= cfg.stop_after:
                    bar.close()
                    return FitResult(run_dir, {"interrupted_at": step}, {})
                t0, c0 = time.perf_counter(), time.process_time()
                for group in opt.param_groups:
                    group["lr"] = base_lr * lr_factor(optim, step)
                idx = _batch_indices(cfg.seed, step, len(pts), optim.batch_size).to(device)
                x, y = pts[idx], target[idx]
                if cfg.task == "sdf" and cfg.sdf.eikonal_weight > 0:
                    x = x.clone().requires_grad_(True)
                out = model(x)
                if cfg.task == "occupancy":
                    loss = F.binary_cross_entropy_with_logits(out, y)
                else:
                    c = cfg.sdf.clamp
                    loss = (out.clamp(-c, c) - y.clamp(-c, c)).abs().mean()
                    if cfg.sdf.eikonal_weight > 0:
                        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
                        loss = loss + cfg.sdf.eikonal_weight * ((grad.norm(dim=-1) - 1) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                post_step(model, [opt])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                state["train_seconds"] += time.perf_counter() - t0
                state["train_cpu_seconds"] = state.get("train_cpu_seconds", 0.0) + time.process_time() - c0
                lv = float(loss.detach())
                state["loss"].append(lv)
                state["step"] = step + 1
                run_steps += 1
                if not math.isfinite(lv):  # diverged: stop, keep it, report it
                    state["diverged"] = True
                    bar.close()
                    save_checkpoint()
                    break
                last = step + 1 == optim.steps
                if (step + 1) % cfg.evaluation.every == 0 or last:
                    state["eval_step"].append(step + 1)
                    state["eval_iou"].append(curve_iou())
                    bar.set_postfix(loss=f"{lv:.4f}", iou=f"{state['eval_iou'][-1]:.4f}", refresh=False)
                if (step + 1) % cfg.ckpt_every == 0 or last:
                    save_checkpoint()
                if monitor is not None and ((step + 1) % cfg.viewer.every == 0 or last):
                    monitor.progress(label, step + 1, lv, _curves(state), model)
                bar.update(1)
        except KeyboardInterrupt:
            save_checkpoint()
            bar.close()
            raise
        bar.close()
    elif metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        # finished only with all its outputs: a lost mesh.ply or curves.png is evaluated again
        outputs = all((run_dir / name).is_file() for name in ("mesh.ply", "curves.png"))
        if metrics.get("eval_settings") == _eval_settings(cfg) and outputs:
            _render(run_dir, shape, metrics, conditioning, missing_only=True)  # finished before runs drew it
            if monitor is not None:
                monitor.finished(label, metrics, _curves(state), _mesh_unit(run_dir, shape))
            return FitResult(run_dir, metrics, _curves(state))

    metrics = evaluate(cfg, model, shape, samples, device, run_dir, cache_dir)
    diverged = bool(state.get("diverged"))
    steps_done = max(1, len(state["loss"]))
    tail = state["loss"][-max(1, len(state["loss"]) // 20):]
    metrics.update({
        "mesh": str(shape.path), "conditioning": conditioning, "optimizer": optim.optimizer,
        "lr": base_lr, "seed": cfg.seed, "task": cfg.task, "steps": state["step"],
        "diverged": diverged,
        "final_loss": float(np.mean(tail)) if tail and not diverged else None,
        "seconds_per_step": state["train_seconds"] / steps_done, "train_seconds": state["train_seconds"],
        # CPU seconds of this process (all threads): a load-independent cost on a shared machine
        "cpu_seconds_per_step": state.get("train_cpu_seconds", 0.0) / steps_done,
        "torch_threads": torch.get_num_threads(),
        "device": device.type, "eval_settings": _eval_settings(cfg),
    })
    # The pictures first: metrics.json is what marks the run finished (see above), so a run
    # killed before it is done never reports success without its curves and its fit.
    from .plot import plot_curves

    plot_curves({conditioning: _curves(state)}, run_dir / "curves.png", title=f"{shape.name}: {conditioning}")
    _render(run_dir, shape, metrics, conditioning)
    write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    if monitor is not None:
        monitor.finished(label, metrics, _curves(state), _mesh_unit(run_dir, shape))
    return FitResult(run_dir, metrics, _curves(state))


def _mesh_unit(run_dir: Path, shape: ShapeMesh):
    """The run's extracted mesh (mesh.ply, input coordinates) back in unit coordinates."""
    import trimesh

    path = run_dir / "mesh.ply"
    mesh = trimesh.load(path, force="mesh", process=False) if path.is_file() else None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        return None  # the field never crossed its level set: nothing to show
    return trimesh.Trimesh(vertices=shape.normalization.to_unit(mesh.vertices), faces=mesh.faces, process=False)


def _render(run_dir: Path, shape: ShapeMesh, metrics: dict, conditioning: str, missing_only: bool = False) -> None:
    """``fit.png``: the input and the run's mesh.ply side by side, IoU and Chamfer in the title."""
    from .render import FIT_PNG, render_fit

    if missing_only and (run_dir / FIT_PNG).is_file():
        return
    render_fit(shape.mesh, _mesh_unit(run_dir, shape), metrics, run_dir / FIT_PNG, name=shape.name, label=conditioning)


def _curves(state: dict) -> dict:
    return {"loss": list(state["loss"]), "eval_step": list(state["eval_step"]), "eval_iou": list(state["eval_iou"])}


@torch.no_grad()
def evaluate(cfg: FitConfig, model, shape: ShapeMesh, samples, device, run_dir: Path, cache_dir: Path) -> dict:
    """Final metrics (unit coordinates unless named *_original) and mesh.ply in input coordinates."""
    model.eval()
    t0 = time.perf_counter()
    out = evaluate_points(model, samples.eval_points, device, cfg.evaluation.chunk)
    iou_points = iou(predict_inside(cfg, out), samples.eval_occupancy.astype(bool))
    grid = evaluate_grid(model, cfg.evaluation.resolution, device, chunk=cfg.evaluation.chunk)
    if not np.isfinite(grid).all():
        grid = np.nan_to_num(grid, nan=1.0 if cfg.task == "sdf" else -1.0)
    pred_grid = predict_inside(cfg, grid)
    gt_grid = load_or_compute_grid_occupancy(shape, cfg.evaluation.resolution, cache_dir)
    iou_grid = iou(pred_grid, gt_grid)
    mesh_unit = marching_cubes(grid, 0.0, inside_is_negative=(cfg.task == "sdf"))
    surf = surface_metrics(mesh_unit, shape.mesh, n_points=cfg.evaluation.surface_points, seed=cfg.sampling.seed)
    mesh_orig = to_original(mesh_unit, shape.normalization)
    write_mesh(mesh_orig, run_dir / "mesh.ply")
    scale = shape.normalization.scale
    metrics = {"iou_points": _defined(iou_points), "iou_grid": _defined(iou_grid), **surf,
               "chamfer_l1_original": None if surf["chamfer_l1"] is None else surf["chamfer_l1"] / scale,
               "mesh_vertices": int(len(mesh_unit.vertices)), "mesh_faces": int(len(mesh_unit.faces)),
               "normalization": shape.normalization.as_dict(), "eval_seconds": time.perf_counter() - t0}
    model.train()
    return metrics


def _defined(value: float) -> Optional[float]:
    """None for an undefined (NaN) metric, e.g. the IoU of two empty sets (metrics.json stays JSON)."""
    return value if math.isfinite(value) else None


def load_field(run_dir: Path, device: Optional[torch.device] = None):
    """Rebuild a trained field from a run folder (config.json + checkpoint.pt)."""
    device = device or pick_device()
    raw = json.loads((Path(run_dir) / "config.json").read_text())
    if older_layout(raw):
        raise RunError(f"{run_dir}: {OLDER_LAYOUT}; fit it again")
    cfg = FitConfig.from_json(raw)
    model = build_field(cfg.field, cfg.field.conditioning, cfg.seed).to(device)
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
