"""The real "train and evaluate one run" step: ``ns-train`` then ``ns-eval`` subprocesses.

Per run folder (``runs/<scene>/<method>/seed-<seed>/``)::

    config.yml                         the run's TrainerConfig (written when planned, wcnerf.eval.plan)
    ns/<scene>/<ns-method>/run/        nerfstudio's output: its copy of config.yml, nerfstudio_models/, tensorboard events
    train.log, train.err.log           ns-train stdout / stderr (appended over attempts)
    eval/ns_eval.json, eval/renders/   ns-eval output (metrics over the evaluated held-out images, PNGs)
    eval.log, eval.err.log
    curves.json                        train / held-out PSNR read back from the tensorboard events
    heldout/gt_0000.png, pred_0000.png the first held-out view (from ns-eval's renders)

Training is ``ns-train <method> --load-config <run>/config.yml``. Resuming: a partially trained
run continues from its last nerfstudio checkpoint through ``resume.yml``, the same config with
``load_dir`` set (wcnerf's trainer, which every run uses, then stops at ``max_num_iterations``
in total and keeps the learning-rate schedule of the whole run; stock nerfstudio 1.1.5 would
train ``max_num_iterations`` more steps). A checkpoint that is not a
complete archive is moved aside; with no usable checkpoint the nerfstudio folder is removed and the run restarts
from scratch. A trained run whose evaluation was interrupted is only evaluated again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from wcnerf.atomic import write_json, write_text
from wcnerf.eval.execution import Execution
from wcnerf.eval.runs import CONFIG_FILE, CURVES_FILE, HELDOUT_DIR, RunFailed, RunResult, RunSpec
from wcnerf.eval.ns_eval import parse_progress, per_image_path
from wcnerf.process import stop_process
from wcnerf.report.panels import psnr_from_mse, split_eval_image

__all__ = [
    "NerfstudioRunner",
    "latest_checkpoint",
    "read_scalars",
    "extract_curves",
    "split_eval_image",
    "TRAIN_PSNR_TAGS",
    "HELDOUT_PSNR_TAGS",
]

# Tags written by nerfstudio 1.1.5's trainer (writer.put_dict(name, d) -> "name/key").
TRAIN_PSNR_TAGS = ["Train Metrics Dict/psnr", "Train Metrics Dict/fine_psnr"]
TRAIN_LOSS_TAGS = ["Train Loss Dict/rgb_loss_fine", "Train Loss Dict/rgb_loss"]
HELDOUT_PSNR_TAGS = [
    "Eval Images Metrics Dict (all images)/psnr",  # every held-out image (steps_per_eval_all_images)
    "Eval Images Metrics/psnr",  # one held-out image (steps_per_eval_image)
    "Eval Metrics Dict/psnr",  # a batch of held-out rays (steps_per_eval_batch)
]
HELDOUT_LOSS_TAGS = ["Eval Loss Dict/rgb_loss_fine", "Eval Loss Dict/rgb_loss"]
ITER_TIME_TAG = "Train Iter (time)"

EVAL_STAGE = "eval (held-out views)"
"""The stage a run reports while ns-eval renders (its progress: views done / total)."""
EVAL_PROGRESS_EVERY = 20.0
"""Seconds between two progress lines of ns-eval in eval.log (the harness shows them at its own pace)."""

_STEP_LINE = re.compile(r"^\s*(\d+) \((\d+(?:\.\d+)?)%\)")
_CKPT = re.compile(r"^step-(\d+)\.ckpt$")


def _tail(path: Path, lines: int = 20, max_bytes: int = 64_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf8", "replace")
    except OSError:
        return ""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # terminal escapes
    kept = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def read_json_list(path: Path) -> List[Dict[str, Any]]:
    """A JSON list of mappings, or [] when absent or unreadable (per-image metrics are a
    companion of the result, not the result)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def latest_checkpoint(ckpt_dir: Path, quarantine: Optional[Path] = None) -> Optional[Tuple[int, Path]]:
    """The newest readable ``step-*.ckpt`` of a folder as ``(step, path)``. Files that are not
    complete zip archives (a kill during ``torch.save``) are moved to ``quarantine`` (nerfstudio
    loads whatever has the highest step in the folder) or deleted."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
        elif p.is_file():  # nerfstudio parses every file name of the folder as a step
            _set_aside(p, quarantine)
    for step, path in sorted(found, reverse=True):
        try:
            with zipfile.ZipFile(path) as zf:
                if zf.testzip() is None:
                    return step, path
        except (zipfile.BadZipFile, OSError, EOFError):
            pass
        _set_aside(path, quarantine)
    return None


def _set_aside(path: Path, quarantine: Optional[Path]) -> None:
    if quarantine is None:
        path.unlink(missing_ok=True)
        return
    quarantine.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(quarantine / f"{path.name}.{int(time.time())}"))


def read_scalars(logdir: Path) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of every tensorboard event file under ``logdir``: ``{tag: [(step, value)]}``
    sorted by step; a step written twice (a resumed run replays steps after its checkpoint)
    keeps the value written last."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    merged: Dict[str, Dict[int, Tuple[float, float]]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        try:
            acc.Reload()
        except Exception:  # noqa: BLE001 - a truncated event file (killed run): keep what was read
            pass
        for tag in acc.Tags().get("scalars", []):
            bucket = merged.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                prev = bucket.get(ev.step)
                if prev is None or ev.wall_time >= prev[0]:
                    bucket[ev.step] = (ev.wall_time, float(ev.value))
    return {tag: sorted((s, v) for s, (_, v) in d.items()) for tag, d in merged.items()}


def _thin(points: List[Tuple[int, float]], max_points: int = 2000) -> List[Tuple[int, float]]:
    if len(points) <= max_points:
        return points
    stride = math.ceil(len(points) / max_points)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def extract_curves(scalars: Dict[str, List[Tuple[int, float]]]) -> Dict[str, Any]:
    """Train and held-out PSNR against iterations from nerfstudio's scalars.

    Train: ``Train Metrics Dict/psnr`` if the model logs it, else ``-10 log10`` of the fine
    MSE loss. Held-out: every held-out image when evaluated at least twice, else one held-out
    image, else a held-out ray batch (metrics or loss)."""

    def pick(psnr_tags: Sequence[str], loss_tags: Sequence[str], min_points: int) -> Dict[str, Any]:
        for tag in psnr_tags:
            pts = [(s, v) for s, v in scalars.get(tag, []) if math.isfinite(v)]
            if len(pts) >= min_points:
                return {"step": [s for s, _ in _thin(pts)], "psnr": [v for _, v in _thin(pts)], "source": tag}
        for tag in loss_tags:
            pts = [(s, psnr_from_mse(v)) for s, v in scalars.get(tag, []) if v > 0]
            if pts:
                pts = _thin(pts)
                return {"step": [s for s, _ in pts], "psnr": [v for _, v in pts], "source": f"-10 log10({tag})"}
        return {"step": [], "psnr": [], "source": None}

    out = {"train": pick(TRAIN_PSNR_TAGS, TRAIN_LOSS_TAGS, 1)}
    held = None
    for i, tag in enumerate(HELDOUT_PSNR_TAGS[:2]):
        pts = scalars.get(tag, [])
        if len(pts) >= 2:
            held = pick([tag], [], 2)
            break
    out["heldout"] = held or pick(HELDOUT_PSNR_TAGS[2:], HELDOUT_LOSS_TAGS, 1)
    times = [v for _, v in scalars.get(ITER_TIME_TAG, []) if math.isfinite(v) and v > 0]
    out["sec_per_iter"] = sum(times) / len(times) if times else None
    return out


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the sweep process dies (no orphaned trainings)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


RESUME_FILE = "resume.yml"


def resume_config(config_file: Path, ckpt_dir: Path, out: Path) -> Path:
    """``config_file`` with ``load_dir`` set to ``ckpt_dir`` (and wcnerf's resume-to-the-total),
    written to ``out``: what ``ns-train --load-config`` resumes an interrupted run from."""
    import yaml

    config = yaml.load(Path(config_file).read_text(encoding="utf8"), Loader=yaml.Loader)
    config.load_dir = Path(ckpt_dir)
    if hasattr(config, "resume_to_max_iterations"):
        config.resume_to_max_iterations = True
    write_text(out, yaml.dump(config))
    return out


_AUTO_DEVICE = re.compile(r"^(\s+device_type: )auto$", re.M)


def settle_device(config_file: Path) -> Optional[str]:
    """A config planned with device ``auto`` (on Ray or SLURM) gets the device of the machine
    that trains it, written into the file before training (cuda when a GPU is visible, else
    cpu without mixed precision); returns the device set, or None when it was set already."""
    from wcnerf.eval.execution import resolve_device

    text = Path(config_file).read_text(encoding="utf8")
    if not _AUTO_DEVICE.search(text):
        return None
    device = resolve_device("auto")
    text = _AUTO_DEVICE.sub(lambda m: m.group(1) + device, text)
    if device != "cuda":
        text = re.sub(r"^mixed_precision: true$", "mixed_precision: false", text, flags=re.M)
    write_text(Path(config_file), text)
    return device


@dataclass
class NerfstudioRunner:
    """Runs ``ns-train`` and ``ns-eval`` as subprocesses of ``python`` (the same interpreter)."""

    python: str = sys.executable
    execution: Optional[Execution] = None
    """The sweep's execution policy (threads of each stage); None: decided for one local worker."""
    keep_checkpoints: bool = True
    env: Dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 1.0

    # ---- paths -----------------------------------------------------------------------
    @staticmethod
    def ns_dir(spec: RunSpec) -> Path:
        return spec.run_dir / "ns"

    def base_dir(self, spec: RunSpec) -> Path:
        return self.ns_dir(spec) / spec.scene.label / spec.method.ns_method / "run"

    # ---- commands --------------------------------------------------------------------
    def train_command(self, spec: RunSpec, config_file: Optional[Path] = None) -> List[str]:
        """``ns-train <method> --load-config <run>/config.yml`` (or the resume config)."""
        config_file = config_file or spec.run_dir / CONFIG_FILE
        return [self.python, "-m", "nerfstudio.scripts.train", spec.method.ns_method, "--load-config", str(config_file)]

    def eval_command(self, spec: RunSpec, config: Path) -> List[str]:
        """nerfstudio's ns-eval through :mod:`wcnerf.eval.ns_eval` (per-image metrics, progress
        lines), sized by the protocol's ``eval_views`` and ``eval_image_scale``."""
        out = spec.run_dir / "eval"
        sizing = []
        if spec.protocol.eval_views:
            sizing += ["--max-eval-views", str(spec.protocol.eval_views)]
        if spec.protocol.eval_image_scale != 1:
            sizing += ["--eval-image-scale", f"{spec.protocol.eval_image_scale:g}"]
        return [
            self.python, "-m", "wcnerf.eval.ns_eval",  # nerfstudio's ns-eval, keeping per-image metrics
            "--load-config", str(config),
            "--output-path", str(out / "ns_eval.json"),
            "--render-output-path", str(out / "renders"),
            *sizing, "--progress-every", f"{EVAL_PROGRESS_EVERY:g}",
        ]  # fmt: skip

    # ---- running ---------------------------------------------------------------------
    def _env(self, spec: RunSpec, stage: str = "train") -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.update((self.execution or Execution.decide(spec.protocol)).env(stage))
        env.update(self.env)
        return env

    def _call(self, spec: RunSpec, cmd: List[str], stage: str, log: Path, err_log: Path, total: Optional[int],
              note: str = "") -> float:
        """Run a command, following its progress; raises RunFailed with stderr's last lines.
        ``note`` is added to the command line in the logs."""
        timeout = spec.protocol.timeout_minutes * 60 if spec.protocol.timeout_minutes else None
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out, open(err_log, "ab") as err:
            header = f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(cmd)}{note}\n".encode()
            out.write(header)
            err.write(header)
            out.flush()
            err.flush()
            start = time.monotonic()
            offset = log.stat().st_size
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self._env(spec, stage),
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
            )
            try:
                while True:
                    try:
                        rc = proc.wait(timeout=self.poll_seconds)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    offset = self._follow(spec, log, offset, stage, total)
                    if timeout is not None and time.monotonic() - start > timeout:
                        stop_process(proc)
                        raise RunFailed(
                            f"{stage}: timed out after {spec.protocol.timeout_minutes:g} min "
                            "(timeout_minutes of the protocol)",
                            _tail(err_log),
                            err_log,
                        )
            except BaseException:
                stop_process(proc)
                raise
        elapsed = time.monotonic() - start
        if rc != 0:
            what = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            raise RunFailed(f"{stage} failed ({what}); stderr: {err_log}", _tail(err_log), err_log)
        return elapsed

    @staticmethod
    def _follow(spec: RunSpec, log: Path, offset: int, stage: str, total: Optional[int]) -> int:
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return offset
        if not chunk:
            return offset
        cut = chunk.rfind(b"\n") + 1
        step: Optional[float] = None
        for line in chunk[:cut].decode("utf8", "replace").splitlines():
            if stage == "eval":  # wcnerf.eval.ns_eval's progress lines: views done / total
                views = parse_progress(line)
                if views is not None:
                    step, total = views
                continue
            m = _STEP_LINE.match(line)
            if m:
                step = int(m.group(1))
        if step is not None:
            spec.report(EVAL_STAGE if stage == "eval" else stage, step, total)
        return offset + cut

    # ---- the run ---------------------------------------------------------------------
    def __call__(self, spec: RunSpec) -> RunResult:
        if spec.scene.path is None:
            raise RunFailed(spec.scene.error or f"{spec.scene.label}: scene not found")
        if not (spec.run_dir / CONFIG_FILE).is_file():
            raise RunFailed(f"no {CONFIG_FILE} in {spec.run_dir}: the run was not planned (wcnerf.eval.plan.write_configs)")
        settle_device(spec.run_dir / CONFIG_FILE)
        total = spec.iterations
        base = self.base_dir(spec)
        ckpt_dir = base / "nerfstudio_models"
        timing_path = spec.run_dir / "timing.json"
        timing: Dict[str, Any] = {}
        if timing_path.is_file():
            try:
                timing = json.loads(timing_path.read_text())
            except ValueError:
                timing = {}
        latest = latest_checkpoint(ckpt_dir, quarantine=spec.run_dir / "bad_checkpoints")
        if latest is not None and latest[0] >= total - 1:
            spec.report("trained; evaluating", total, total)
        else:
            config_file, note = None, ""
            if latest is not None:
                note = f"  # {RESUME_FILE}: {CONFIG_FILE} with --load-dir {ckpt_dir}"
                config_file = resume_config(spec.run_dir / CONFIG_FILE, ckpt_dir, spec.run_dir / RESUME_FILE)
                timing.setdefault("resumed_from", []).append(latest[0] + 1)
                spec.report(f"train (resume from step {latest[0] + 1})", latest[0] + 1, total)
            else:
                if self.ns_dir(spec).exists():  # a start without any checkpoint: begin anew
                    shutil.rmtree(self.ns_dir(spec))
                spec.report("train", 0, total)
            cmd = self.train_command(spec, config_file)
            seconds = self._call(spec, cmd, "train", spec.run_dir / "train.log", spec.run_dir / "train.err.log", total,
                                 note)
            timing["train_seconds"] = timing.get("train_seconds", 0.0) + seconds
            write_json(timing_path, timing)
            latest = latest_checkpoint(ckpt_dir, quarantine=spec.run_dir / "bad_checkpoints")
            if latest is None or latest[0] < total - 1:
                got = "no checkpoint" if latest is None else f"last checkpoint at step {latest[0]}"
                raise RunFailed(
                    f"train ended without its final checkpoint ({got}, expected step {total - 1})",
                    _tail(spec.run_dir / "train.err.log"),
                    spec.run_dir / "train.err.log",
                )
        config = base / "config.yml"
        if not config.is_file():
            raise RunFailed(f"no nerfstudio config at {config}")
        spec.report(EVAL_STAGE, None, None)
        eval_dir = spec.run_dir / "eval"
        if eval_dir.exists():
            shutil.rmtree(eval_dir)
        eval_seconds = self._call(
            spec, self.eval_command(spec, config), "eval", spec.run_dir / "eval.log", spec.run_dir / "eval.err.log", None
        )
        try:
            results = json.loads((eval_dir / "ns_eval.json").read_text())["results"]
        except (OSError, ValueError, KeyError) as exc:
            raise RunFailed(f"ns-eval wrote no readable metrics: {exc}", _tail(spec.run_dir / "eval.err.log"))

        def metric(*keys: str) -> Optional[float]:
            for k in keys:
                v = results.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    return float(v)
            return None

        per_image = read_json_list(per_image_path(eval_dir / "ns_eval.json"))
        psnr = metric("psnr", "fine_psnr")
        if psnr is None:
            raise RunFailed(f"ns-eval reported no PSNR (keys: {sorted(results)})")
        renders = sorted((eval_dir / "renders").glob("eval_img_*.png"))
        evaluation = json.loads((eval_dir / "ns_eval.json").read_text()).get("evaluation") or {}
        size = evaluation.get("resolution_hw") or [None, None]
        self._save_heldout(spec, renders, size[1] if evaluation.get("image_scale", 1) != 1 else None)
        curves: Dict[str, Any] = {}
        try:
            curves = extract_curves(read_scalars(base))
            write_json(spec.run_dir / CURVES_FILE, curves)
        except Exception as exc:  # noqa: BLE001 - curves are a figure, not a result
            curves = {"error": f"{type(exc).__name__}: {exc}"}
        if not self.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return RunResult(
            psnr=psnr,
            ssim=metric("ssim", "fine_ssim"),
            lpips=metric("lpips", "fine_lpips"),
            iterations=(latest[0] + 1) if latest else total,
            sec_per_iter=curves.get("sec_per_iter"),
            train_seconds=timing.get("train_seconds"),
            eval_seconds=eval_seconds,
            extra={
                "ns_eval": results,
                "per_image": per_image,
                "num_evaluated_images": len(renders),
                "num_heldout_images": spec.scene.views_held_out or len(renders),
                "evaluation": evaluation,  # what ns_eval evaluated: views, image scale, resolution
                "resumed_from": timing.get("resumed_from", []),
                "config": str(config),
                "curves_source": {k: (curves.get(k) or {}).get("source") for k in ("train", "heldout")},
            },
        )

    def _save_heldout(self, spec: RunSpec, renders: Sequence[Path], width: Optional[int] = None) -> None:
        """First held-out view: ground truth and render from ns-eval's combined image (``width``:
        of one image in it, when evaluated at another size than the dataparser's)."""
        if not renders or spec.scene.path is None:
            return
        import imageio.v3 as iio
        import numpy as np

        combined = np.asarray(iio.imread(renders[0]))
        width = width or spec.scene.image_width or 0  # the dataparser's evaluated images
        parts = split_eval_image(combined, width) if width else None
        if parts is None:  # unknown width: vanilla NeRF's [gt | coarse | fine]
            parts = split_eval_image(combined, combined.shape[1] // 3) if combined.shape[1] % 3 == 0 else None
        if parts is None:
            return
        out = spec.run_dir / HELDOUT_DIR
        out.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out / "gt_0000.png", parts[0])
        iio.imwrite(out / "pred_0000.png", parts[1])
