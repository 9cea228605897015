"""One prepared device check of a GPU machine: the cuda test tier, then NeRF and E-NeRF timed and evaluated.

``wcnerf-gpu-check`` (or, in a checkout, ``bash scripts/gpu_check.sh``; issue 29, point 3).

On one GPU of the H100 class, in about eight minutes, it

1. prints the device, torch, CUDA and cuDNN versions and whether ``tinycudann`` imports;
2. runs the ``cuda`` test tier (``pytest -m cuda tests/test_cuda.py``: conditioners on CUDA
   against the CPU, fp16 autocast, the weight cache, ``bake``, 100 iterations of ``e-nerf`` and
   ``e-nerfacto``, ``wcnerf-train nerfacto``, ``shape_fit.py``, a tiny sweep of the harness);
3. trains the paper-protocol pair ``nerf`` / ``e-nerf`` on fern at factor 4, 2,000 iterations
   each, the same seed, one after the other, and evaluates each run's held-out views: one child
   process per run calls ``ns-train``'s entry point (every training iteration timed with
   ``torch.cuda.synchronize`` on both sides, the process's ``torch.cuda.max_memory_allocated``
   when training ends), then ``ns-eval``'s;
4. prints the seconds per iteration of each (the median of the timed iterations after a
   warm-up), their ratio, the peak GPU memory of each and the held-out PSNR, and writes all of
   it to one JSON file (keys: :data:`JSON_KEYS`, per run :data:`RUN_KEYS`).

``--dry-run`` runs every step at toy size on the CPU (no GPU is used even where one is seen:
``CUDA_VISIBLE_DEVICES`` is emptied for every child, so the tier skips): the tiny model of the
tests (``tests/support/tiny.py``), a few iterations, fern at 1/32 (126 x 94) made from
``images_8/``. It checks the check itself, on any machine.

fern is looked up in each ``$WCNERF_DATA`` entry (``<entry>/fern`` or ``<entry>/llff/fern``),
then in the package's example data (the checkout's ``data/llff/fern``), unless ``--data``
names the scene folder. The tier needs the checkout's ``tests/`` (skipped, and said so, without it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import tyro
from typing_extensions import Annotated

from wcnerf.bounds import COUNT, THREADS, Bounds, OptionError, positive
from wcnerf.process import stop_process

__all__ = ["JSON_KEYS", "RUN_KEYS", "PAIR", "TOY", "find_fern", "main", "summarise_iterations"]

PAIR = ("nerf", "e-nerf")
"""The paper-protocol pair, trained in this order."""
SEED = 42
"""``--machine.seed`` of both runs (nerfstudio's default)."""
ITERATIONS = 2000
FACTOR = 4
"""The NeRF paper's LLFF images (1008 x 756)."""
WARMUP = 20
"""Iterations left out of the per-iteration figure (CUDA kernels' first launches, the allocator)."""

TOY_ITERATIONS = 6
TOY_FACTOR = 32
TOY_SIZE = (126, 94)
TOY = {
    "pipeline.model.base_mlp_num_layers": 3,
    "pipeline.model.base_mlp_layer_width": 16,
    "pipeline.model.skip_connections": 1,
    "pipeline.model.head_mlp_layer_width": 8,
    "pipeline.model.num_coarse_samples": 8,
    "pipeline.model.num_importance_samples": 8,
    "pipeline.model.position_frequencies": 4,
    "pipeline.model.direction_frequencies": 2,
    "pipeline.model.analysis_every": 2,
    "pipeline.model.analysis_max_samples": 64,
    "pipeline.model.eval_num_rays_per_chunk": 16384,
    "pipeline.model.cpu_eval_num_rays_per_chunk": 0,
    "pipeline.datamanager.train_num_rays_per_batch": 64,
    "pipeline.datamanager.eval_num_rays_per_batch": 64,
    "steps_per_eval_batch": 2,
}
"""``ns-train`` overrides of the dry run: the tests' tiny NeRF (``tests/support/tiny.py``'s ``NERF``)."""

JSON_KEYS = ("check", "mode", "started", "seconds", "command", "environment", "cuda_tier", "runs", "ratio", "ok",
             "problems")
RUN_KEYS = ("method", "iterations", "seed", "downscale_factor", "run_dir", "train_returncode", "train_seconds",
            "sec_per_iter", "sec_per_iter_mean", "iterations_timed", "peak_gpu_memory_bytes", "device",
            "mixed_precision", "loss_first", "loss_last", "loss_finite", "eval_returncode", "eval_seconds", "heldout")


def _log(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


# ----------------------------------------------------------------------------- 1. the environment
def environment() -> Dict[str, Any]:
    """Python, torch, CUDA, cuDNN, the device (name, memory, capability), nerfstudio, tinycudann."""
    import torch

    env: Dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": "cpu", "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }  # fmt: skip
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), device_memory_bytes=int(props.total_memory),
                   compute_capability=f"{props.major}.{props.minor}")  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        env["nvidia_smi"] = f"not available ({type(exc).__name__})"
    try:
        from importlib.metadata import version

        env["nerfstudio"] = version("nerfstudio")
    except Exception:  # noqa: BLE001 - reported, not needed
        env["nerfstudio"] = None
    try:
        import tinycudann  # noqa: F401

        env["tinycudann"] = {"imports": True, "version": getattr(tinycudann, "__version__", None), "error": None}
    except Exception as exc:  # noqa: BLE001 - any failure to import is the answer
        first = (str(exc).strip().splitlines() or [""])[0]
        env["tinycudann"] = {"imports": False, "version": None, "error": f"{type(exc).__name__}: {first}"[:300]}
    return env


# ----------------------------------------------------------------------------- 2. the cuda tier
def _junit_counts(path: Path) -> Dict[str, Any]:
    """Totals and each test's outcome (with its ``peak_cuda_bytes`` when recorded) from pytest's junit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tests = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        entry: Dict[str, Any] = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                                 "seconds": float(case.get("time", 0.0))}  # fmt: skip
        for prop in case.iter("property"):
            if prop.get("name") == "peak_cuda_bytes":
                entry["peak_cuda_bytes"] = int(prop.get("value"))
        if outcome == "skipped":
            entry["reason"] = (case.find("skipped").get("message") or "")[:300]
        tests.append(entry)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["cases"] = tests
    return counts


def run_tier(repo: Optional[Path], out_dir: Path, env: Dict[str, str], timeout: float) -> Dict[str, Any]:
    """``pytest -m cuda tests/test_cuda.py`` in the checkout, its junit XML read back."""
    target = repo / "tests" / "test_cuda.py" if repo else None
    if target is None or not target.is_file():
        return {"ran": False, "reason": "no checkout with tests/test_cuda.py beside the package", "returncode": None}
    junit = out_dir / "cuda_tier.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", str(target), "-q", "-rs", "-p", "no:cacheprovider",
           "-o", "junit_family=xunit1", f"--junitxml={junit}", f"--basetemp={out_dir / 'pytest'}"]  # fmt: skip
    _log("cuda tier: " + " ".join(cmd[2:]))
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        returncode, output = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, output = None, f"{_text(exc.stdout)}{_text(exc.stderr)}\n(stopped after {timeout:.0f} seconds)"
    (out_dir / "cuda_tier.log").write_text(output)
    tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
    result: Dict[str, Any] = {"ran": True, "command": " ".join(cmd[2:]), "returncode": returncode,
                              "seconds": round(time.perf_counter() - t0, 1), "summary": tail[0],
                              "log": str(out_dir / "cuda_tier.log")}  # fmt: skip
    if junit.is_file():
        result.update(_junit_counts(junit))
    _log(f"cuda tier: {result['summary']} (exit {returncode})")
    return result


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


# ----------------------------------------------------------------------------- 3. the pair
def find_fern(factor: int) -> Optional[Path]:
    """fern with ``images_<factor>/``: ``$WCNERF_DATA`` entries first, then the example data."""
    roots = [Path(e.strip()).expanduser() for e in os.environ.get("WCNERF_DATA", "").split(os.pathsep) if e.strip()]
    try:
        from importlib import resources

        roots.append(Path(str(resources.files("wcnerf.example_data"))))
    except (ImportError, ModuleNotFoundError):
        pass
    for root in roots:
        for scene in (root / "fern", root / "llff" / "fern"):
            if (scene / "poses_bounds.npy").is_file() and (scene / f"images_{factor}").is_dir():
                return scene
    return None


def toy_fern(fern: Path, root: Path) -> Path:
    """``root/fern`` with ``images_32/`` (126 x 94) made from fern's ``images_8/``."""
    from PIL import Image

    scene = root / "fern"
    images = scene / f"images_{TOY_FACTOR}"
    if not images.is_dir():
        images.mkdir(parents=True)
        (scene / "poses_bounds.npy").write_bytes((fern / "poses_bounds.npy").read_bytes())
        for p in sorted((fern / "images_8").iterdir()):
            with Image.open(p) as im:
                im.convert("RGB").resize(TOY_SIZE, Image.BOX).save(images / f"{p.stem}.png")
    return scene


def _flags(overrides: Dict[str, Any]) -> List[str]:
    return [w for path, value in overrides.items() for w in ("--" + path.replace("_", "-"), str(value))]


def summarise_iterations(seconds: Sequence[float], warmup: int = WARMUP) -> Dict[str, Any]:
    """Median and mean seconds of the timed iterations after ``warmup`` (at most half of them)."""
    skip = min(warmup, len(seconds) // 2)
    kept = list(seconds[skip:])
    if not kept:
        return {"sec_per_iter": None, "sec_per_iter_mean": None, "iterations_timed": 0}
    return {"sec_per_iter": statistics.median(kept), "sec_per_iter_mean": statistics.fmean(kept),
            "iterations_timed": len(kept)}  # fmt: skip


def train_and_eval(method: str, scene: Path, factor: int, iterations: int, out_dir: Path, env: Dict[str, str],
                   extra: Sequence[str], timeout: float) -> Dict[str, Any]:  # fmt: skip
    """``ns-train method``, then ``ns-eval`` of its held-out views, both in one child process
    (:func:`_train_child`: one interpreter start instead of two)."""
    runs = out_dir / "runs"
    run_dir = runs / "fern" / method / "gpu-check"
    record = out_dir / f"{method}.json"
    config, metrics = run_dir / "config.yml", run_dir / "heldout.json"
    args = [method, "--output-dir", str(runs), "--experiment-name", "fern", "--timestamp", "gpu-check",
            "--max-num-iterations", str(iterations), "--machine.seed", str(SEED), "--vis", "tensorboard",
            "--steps-per-save", str(max(1, iterations // 4)), "--logging.steps-per-log", str(min(10, iterations)),
            *extra, "llff", "--data", str(scene), "--downscale-factor", str(factor)]  # fmt: skip
    cmd = [sys.executable, "-m", "wcnerf.tools.gpu_check", "--train-child", str(record), str(config), str(metrics),
           "--", *args]  # fmt: skip
    _log(f"{method}: ns-train " + " ".join(args) + f"; then ns-eval --load-config {config} --output-path {metrics}")
    out: Dict[str, Any] = {"method": method, "iterations": iterations, "seed": SEED, "downscale_factor": factor,
                           "run_dir": str(run_dir), "ns_train_args": args}  # fmt: skip
    t0 = time.perf_counter()
    returncode = _run_logged(cmd, out_dir / f"{method}.log", env, timeout)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out["child_returncode"] = returncode
    rec = json.loads(record.read_text()) if record.is_file() else {}
    out.update(summarise_iterations(rec.get("iter_seconds", [])))
    losses = rec.get("losses", [])
    out.update(train_returncode=rec.get("train_returncode"), train_seconds=rec.get("train_seconds"),
               steps_done=len(rec.get("iter_seconds", [])), peak_gpu_memory_bytes=rec.get("peak_gpu_memory_bytes"),
               device=rec.get("device"), mixed_precision=rec.get("mixed_precision"),
               loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
               loss_finite=bool(losses) and all(math.isfinite(v) for v in losses),
               eval_returncode=rec.get("eval_returncode"), eval_seconds=rec.get("eval_seconds"), heldout=None)  # fmt: skip
    if returncode is None:
        out["train_returncode" if out["train_returncode"] is None else "eval_returncode"] = "timeout"
    out["iteration_seconds"] = [round(v, 6) for v in rec.get("iter_seconds", [])]
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        results = saved.get("results", {})
        out["heldout"] = {k: results.get(k) for k in ("psnr", "ssim", "lpips", "num_rays_per_sec", "fps")}
        out["heldout"]["checkpoint"] = saved.get("checkpoint")
    return out


def _run_logged(cmd: List[str], log: Path, env: Dict[str, str], timeout: float) -> Optional[int]:
    """Run ``cmd`` with its output in ``log``; its exit code, or None when stopped at ``timeout``."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            fh.write(f"\n[gpu-check] stopped after {timeout:.0f} seconds\n")
            return None


def _exit_code(exc: BaseException) -> int:
    code = exc.code if isinstance(exc, SystemExit) else 1
    return code if isinstance(code, int) else (0 if code is None else 1)


def _train_child(record: Path, config: Path, metrics: Path, argv: List[str]) -> int:
    """``ns-train argv`` in this process, each training iteration timed (synchronized on CUDA)
    and its loss kept, the process's peak GPU memory (set-up, training, the final save) taken
    when training ends; then ``ns-eval --load-config config --output-path metrics``. Written to
    ``record`` (also every 100 steps, so a run stopped at its timeout says how far it got)."""
    import torch
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.scripts import eval as ns_eval
    from nerfstudio.scripts import train as ns_train

    cuda = torch.cuda.is_available()
    rec: Dict[str, Any] = {"argv": argv, "iter_seconds": [], "losses": [], "device": None, "mixed_precision": None,
                           "train_returncode": None, "eval_returncode": None}  # fmt: skip

    def write() -> None:
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(record)

    original = Trainer.train_iteration

    def timed(self, step):
        if rec["device"] is None:
            rec["device"], rec["mixed_precision"] = str(self.device), bool(self.mixed_precision)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = original(self, step)
        loss = float(out[0])
        if cuda:
            torch.cuda.synchronize()
        rec["iter_seconds"].append(time.perf_counter() - t0)
        rec["losses"].append(loss)
        if len(rec["iter_seconds"]) % 100 == 0:
            if cuda:
                rec["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            write()
        return out

    Trainer.train_iteration = timed  # type: ignore[method-assign]
    sys.argv = ["ns-train", *argv]
    t0 = time.perf_counter()
    try:
        ns_train.entrypoint()
        rec["train_returncode"] = 0
    except BaseException as exc:  # noqa: BLE001 - recorded; the traceback goes to the log
        rec["train_returncode"] = _exit_code(exc)
        import traceback

        traceback.print_exc()
    finally:
        rec["train_seconds"] = round(time.perf_counter() - t0, 3)
        if cuda and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            rec["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        write()
    if rec["train_returncode"] != 0 or not config.is_file():
        return 1
    Trainer.train_iteration = original  # type: ignore[method-assign]
    sys.argv = ["ns-eval", "--load-config", str(config), "--output-path", str(metrics)]
    t0 = time.perf_counter()
    try:
        ns_eval.entrypoint()
        rec["eval_returncode"] = 0
    except BaseException as exc:  # noqa: BLE001
        rec["eval_returncode"] = _exit_code(exc)
        import traceback

        traceback.print_exc()
    rec["eval_seconds"] = round(time.perf_counter() - t0, 3)
    write()
    return 0 if rec["eval_returncode"] == 0 else 1


# ----------------------------------------------------------------------------- the check
def _child_env(dry_run: bool, threads: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the toy run stays on the CPU even where a GPU is seen
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _repo() -> Optional[Path]:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "tests" / "test_cuda.py").is_file() else None


def _fmt_bytes(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def check(opts: GpuCheck) -> Dict[str, Any]:
    started = time.time()
    out_dir = Path(opts.out_dir or Path("outputs") / "gpu_check" / datetime.now().strftime("%Y-%m-%d_%H%M%S"))
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dry = opts.dry_run
    report: Dict[str, Any] = {"check": "wcnerf gpu check (issue 29)", "mode": "dry-run" if dry else "gpu",
                              "started": datetime.now().isoformat(timespec="seconds"),
                              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                              "out_dir": str(out_dir), "problems": []}  # fmt: skip
    problems: List[str] = report["problems"]
    env = _child_env(dry, opts.threads)

    report["environment"] = environment()
    e = report["environment"]
    tcnn = e["tinycudann"]
    _log(f"device: {e['device']} ({e.get('nvidia_smi') or 'no nvidia-smi'}); torch {e['torch']}, CUDA {e['torch_cuda']}, "
         f"cuDNN {e['cudnn']}, nerfstudio {e['nerfstudio']}")
    _log("tinycudann: " + ("imports" + (f" ({tcnn['version']})" if tcnn["version"] else "") if tcnn["imports"]
                           else f"does not import ({tcnn['error']})"))
    if not dry and not e["cuda_available"]:
        problems.append("torch sees no CUDA GPU: run with --dry-run on a CPU-only machine")

    if opts.skip_tier:
        report["cuda_tier"] = {"ran": False, "reason": "--skip-tier"}
    else:
        report["cuda_tier"] = run_tier(_repo(), out_dir, env, opts.tier_timeout)
        tier = report["cuda_tier"]
        if tier["ran"] and (tier["returncode"] != 0 or tier.get("failures") or tier.get("errors")):
            problems.append(f"cuda tier: {tier['summary']} (exit {tier['returncode']})")

    factor = TOY_FACTOR if dry else FACTOR
    iterations = opts.iterations or (TOY_ITERATIONS if dry else ITERATIONS)
    fern = Path(opts.data) if opts.data else find_fern(8 if dry else FACTOR)
    report["runs"] = {}
    if fern is None:
        problems.append(f"fern with images_{8 if dry else FACTOR}/ not found (set $WCNERF_DATA or pass --data)")
    else:
        scene = toy_fern(fern, out_dir / "data") if dry else fern
        extra = _flags(TOY) if dry else []
        for method in PAIR:
            r = train_and_eval(method, scene, factor, iterations, out_dir, env, extra, opts.run_timeout)
            report["runs"][method] = r
            if r["train_returncode"] != 0:
                problems.append(f"{method}: ns-train {r['train_returncode']} ({out_dir / (method + '.log')})")
            if not r["loss_finite"]:
                problems.append(f"{method}: a loss that is not finite (or none logged)")
            elif r["eval_returncode"] != 0:
                problems.append(f"{method}: ns-eval {r['eval_returncode']} ({out_dir / (method + '.log')})")
            psnr = (r["heldout"] or {}).get("psnr")
            _log(f"{method}: {r['sec_per_iter'] if r['sec_per_iter'] is None else round(r['sec_per_iter'], 5)} "
                 f"seconds per iteration (median of {r['iterations_timed']}), peak GPU memory "
                 f"{_fmt_bytes(r['peak_gpu_memory_bytes'])}, held-out PSNR "
                 f"{'n/a' if psnr is None else round(psnr, 3)} at {r['steps_done']} iterations")
    a, b = (report["runs"].get(m, {}) for m in ("e-nerf", "nerf"))
    report["ratio"] = {
        "sec_per_iter_e_nerf_over_nerf": _ratio(a.get("sec_per_iter"), b.get("sec_per_iter")),
        "peak_gpu_memory_e_nerf_over_nerf": _ratio(a.get("peak_gpu_memory_bytes"), b.get("peak_gpu_memory_bytes")),
        "heldout_psnr_e_nerf_minus_nerf": (a["heldout"]["psnr"] - b["heldout"]["psnr"]
                                           if a.get("heldout") and b.get("heldout") and a["heldout"].get("psnr") is not None
                                           and b["heldout"].get("psnr") is not None else None),
    }  # fmt: skip
    ratio = report["ratio"]["sec_per_iter_e_nerf_over_nerf"]
    _log(f"e-nerf / nerf seconds per iteration: {'n/a' if ratio is None else round(ratio, 4)}")
    report["seconds"] = round(time.time() - started, 1)
    report["ok"] = not problems
    path = Path(opts.json) if opts.json else out_dir / "gpu_check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    _log(f"{'ok' if report['ok'] else 'PROBLEMS: ' + '; '.join(problems)}; {report['seconds']} seconds; wrote {path}")
    return report


@dataclass
class GpuCheck:
    """The prepared device check (see the module docstring)."""

    dry_run: bool = False
    """Every step at toy size on the CPU (checks the check)."""
    out_dir: Annotated[Optional[Path], tyro.conf.arg(aliases=("--output-dir",))] = None
    """Folder of the runs, logs and JSON (default outputs/gpu_check/<time>; --out-dir is the old name)."""
    json: Optional[Path] = None
    """The JSON file (default <output-dir>/gpu_check.json)."""
    data: Optional[Path] = None
    """The fern scene folder (default: fern in $WCNERF_DATA, then in wcnerf's example data)."""
    iterations: Optional[int] = None
    """Iterations of each run (default ITERATIONS; dry run TOY_ITERATIONS)."""
    threads: int = 0
    """OMP/MKL threads of every child (0: torch's default)."""
    skip_tier: bool = False
    """Leave out the cuda test tier."""
    tier_timeout: float = 210.0
    """Seconds of the cuda tier."""
    run_timeout: float = 135.0
    """Seconds of each run, training and ns-eval."""

    BOUNDS: ClassVar[Bounds] = Bounds((
        ("iterations", COUNT), ("threads", THREADS),
        ("tier_timeout", positive(warn_above=86400)), ("run_timeout", positive(warn_above=86400)),
    ))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--train-child"]:
        record, config, metrics, rest = Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4:]
        return _train_child(record, config, metrics, rest[1:] if rest[:1] == ["--"] else rest)
    import tyro

    opts = tyro.cli(GpuCheck, args=argv, prog="wcnerf-gpu-check", description=__doc__.split("\n\n")[0])
    try:
        GpuCheck.BOUNDS.check(opts)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = check(opts)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
