"""``ns-eval`` that also keeps each held-out view's metrics, can be sized, and says how far it is:
``python -m wcnerf.eval.ns_eval``.

nerfstudio's ``ns-eval`` computes PSNR / SSIM / LPIPS per evaluated image and writes only
their mean and std. The harness wants the per-image values too, so that an outlier view can be
found. This runs nerfstudio's own ``ns-eval`` command (``nerfstudio.scripts.eval``, the same
arguments, the same ``--output-path`` JSON) and, on the loaded model instance only, records
what ``get_image_metrics_and_images`` returns for each image; they are written beside the
output as ``<output stem>.per_image.json``: one entry per evaluated view, in the eval split's
order, with its image file name.

Held-out evaluation is most of a run's cost on a CPU, so it can be sized (options of its own,
beside ``ns-eval``'s): ``--max-eval-views N`` evaluates N of the eval split's views, evenly
spaced, the first and the last included (the llff dataparser's rule); ``--eval-image-scale S``
renders every evaluated view at S times its size, its ground truth area-averaged to that size
(:func:`wcnerf.tools.scaled_eval.rescale_view`); PSNRs at different scales are not comparable.
While it renders it prints a plain line every ``--progress-every`` seconds and after each view
(``eval progress: 1.45/3 views, 2m05s elapsed, ETA 2m36s``), which a log file keeps and the
harness reads (:mod:`wcnerf.eval.ns_runner`). The JSON's ``evaluation`` says what was evaluated.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from wcnerf.report.tables import format_duration

__all__ = ["per_image_path", "EVAL_PROGRESS", "parse_progress", "progress_line", "SizedViews", "EVAL_BOUNDS", "main"]

EVAL_PROGRESS = re.compile(r"^eval progress: (\d+(?:\.\d+)?)/(\d+) views")
"""A progress line of this command (what :func:`progress_line` prints)."""


def per_image_path(output_path: Path) -> Path:
    """Where the per-image metrics of an ``ns-eval --output-path`` JSON go."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.stem + ".per_image.json")


def progress_line(done: float, total: int, elapsed: float) -> str:
    """``eval progress: 1.45/3 views, 2m05s elapsed, ETA 2m36s`` (ETA from the views' pace so far)."""
    eta = elapsed / done * (total - done) if done > 0 else None
    shown = f"{done:.2f}".rstrip("0").rstrip(".") if done != int(done) else str(int(done))
    return f"eval progress: {shown}/{total} views, {format_duration(elapsed)} elapsed, ETA {format_duration(eta)}"


def parse_progress(line: str) -> Optional[Tuple[float, int]]:
    """``(views done, views in all)`` of a progress line, else None."""
    m = EVAL_PROGRESS.match(line.strip())
    return (float(m.group(1)), int(m.group(2))) if m else None


def _numbers(metrics: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            x = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[key] = x
    return out


class SizedViews:
    """nerfstudio's fixed-indices eval loader with each view rescaled (``scale``), counting the
    rays rendered so that ``say`` gets a progress line every ``every`` seconds and after each view."""

    def __init__(self, loader: Any, scale: float, every: float, say: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loader, self.scale, self.every, self.say, self.clock = loader, scale, every, say, clock
        self.views = len(loader.image_indices)
        self.done = 0
        self.view_rays = 0
        self.rays = 0
        self.start = self.last = None  # type: Optional[float]
        self.said: Optional[float] = None

    def __len__(self) -> int:
        return self.views

    def __iter__(self) -> Iterator[Tuple[Any, Dict[str, Any]]]:
        from wcnerf.tools.scaled_eval import rescale_view

        self.start = self.last = self.clock()
        self.done, self.said = 0, None
        for camera, batch in self.loader:
            camera, batch = rescale_view(camera, batch, self.scale)
            self.view_rays = int(camera.height.flatten()[0]) * int(camera.width.flatten()[0])
            self.rays = 0
            yield camera, batch
            self.done += 1
            self.rays = 0
            self._say(force=True)

    def rendered(self, rays: int) -> None:
        """``rays`` more rays of the current view rendered."""
        self.rays += rays
        self._say()

    def _say(self, force: bool = False) -> None:
        now = self.clock()
        if self.start is None or self.last is None or not (force or now - self.last >= self.every):
            return
        part = min(1.0, self.rays / self.view_rays) if self.view_rays else 0.0
        done = min(self.views, self.done + part)
        if done == self.said:  # a view's last chunk said it already
            return
        self.say(progress_line(done, self.views, now - self.start))
        self.last, self.said = now, done


def _say(line: str) -> None:
    print(line, flush=True)


def _sized_eval_class():
    """nerfstudio's ``ComputePSNR`` with the sizing and progress options (built when called:
    nerfstudio is imported only then)."""
    import nerfstudio.scripts.eval as ns_eval

    @dataclass
    class SizedEval(ns_eval.ComputePSNR):
        """Load a checkpoint, compute the held-out metrics (optionally of fewer views, at a smaller
        size) and save them to a JSON file, with each view's metrics beside it."""

        max_eval_views: int = 0
        """Evaluate at most this many of the eval split's views, evenly spaced (0: all)."""
        eval_image_scale: float = 1.0
        """Render every evaluated view at this fraction of its size, in (0, 1] (1: full size)."""
        progress_every: float = 30.0
        """Seconds between two progress lines (views done / total, ETA)."""

    return SizedEval


def _eval_bounds():
    from wcnerf.bounds import EVAL_IMAGE_SCALE, EVAL_VIEWS, Bounds, positive

    return Bounds((
        ("max_eval_views", EVAL_VIEWS), ("eval_image_scale", EVAL_IMAGE_SCALE),
        ("progress_every", positive(warn_above=86400)),
    ))


EVAL_BOUNDS = _eval_bounds()
"""The bounds of this command's own numbers."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    import tyro

    import nerfstudio.scripts.eval as ns_eval
    from wcnerf.bounds import OptionError
    from wcnerf.data.llff_scene import evenly_spaced

    cmd = tyro.cli(_sized_eval_class(), args=list(sys.argv[1:] if argv is None else argv))
    try:
        EVAL_BOUNDS.check_values({k: getattr(cmd, k) for k in ("max_eval_views", "eval_image_scale", "progress_every")})
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records: List[Dict[str, Any]] = []
    names: List[str] = []
    evaluation: Dict[str, Any] = {}
    original_setup = ns_eval.eval_setup

    def eval_setup(*args: Any, **kwargs: Any):
        config, pipeline, checkpoint, step = original_setup(*args, **kwargs)
        datamanager = pipeline.datamanager
        dataset = getattr(datamanager, "eval_dataset", None)
        files = [str(p) for p in getattr(getattr(dataset, "_dataparser_outputs", None), "image_filenames", [])]
        loader = datamanager.fixed_indices_eval_dataloader
        available = list(loader.image_indices)
        loader.image_indices = evenly_spaced(available, cmd.max_eval_views)
        names.extend(files[i] if i < len(files) else "" for i in loader.image_indices)
        views = SizedViews(loader, cmd.eval_image_scale, cmd.progress_every, _say)
        datamanager.fixed_indices_eval_dataloader = views
        cameras = dataset.cameras if dataset is not None else None
        if cameras is not None and len(cameras):
            from wcnerf.tools.scaled_eval import rescale_view

            first = rescale_view(cameras[0:1], {}, cmd.eval_image_scale)[0]
            evaluation["resolution_hw"] = [int(first.height.flatten()[0]), int(first.width.flatten()[0])]
            evaluation["full_resolution_hw"] = [int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0])]
        evaluation.update(max_eval_views=cmd.max_eval_views, image_scale=cmd.eval_image_scale,
                          views=len(loader.image_indices), views_available=len(available))
        _say(f"eval: {len(loader.image_indices)} of the eval split's {len(available)} views"
             + (f" at {cmd.eval_image_scale:g} of their size" if cmd.eval_image_scale != 1 else ""))
        model = pipeline.model
        compute = model.get_image_metrics_and_images
        forward = model.forward

        def recording(outputs: Any, batch: Any):
            metrics, images = compute(outputs, batch)
            records.append(_numbers(metrics))
            return metrics, images

        def counting(*a: Any, **k: Any):
            out = forward(*a, **k)
            bundle = k.get("ray_bundle", a[0] if a else None)
            try:
                views.rendered(len(bundle))
            except TypeError:
                pass
            return out

        model.get_image_metrics_and_images = recording  # this instance only
        model.forward = counting
        return config, pipeline, checkpoint, step

    ns_eval.eval_setup = eval_setup
    try:
        cmd.main()
    finally:
        ns_eval.eval_setup = original_setup
    per_image = [{"image": names[i] if i < len(names) else None, **m} for i, m in enumerate(records)]
    per_image_path(cmd.output_path).write_text(json.dumps(per_image, indent=2), "utf8")
    result = json.loads(Path(cmd.output_path).read_text("utf8"))
    result["evaluation"] = evaluation
    Path(cmd.output_path).write_text(json.dumps(result, indent=2), "utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
