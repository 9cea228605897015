"""Ground truth | render | error map of one held-out view of a finished run, from the renders
``ns-eval`` wrote (``<run>/eval/renders/eval_img_<i>.png``; ``ns-eval`` is run first when they
are missing)::

    wcnerf-heldout outputs/fern/e-nerf-small/<timestamp>              # <run>/heldout_view.png
    wcnerf-heldout RUN --view 2 --output-path view2.png --no-evaluate
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Optional, Sequence

import tyro
from typing_extensions import Annotated

from wcnerf.bounds import Bounds, at_least
from wcnerf.tools.runs import RunArgs, evaluate_run, load_run_config, run_tool, scene_of_run

__all__ = ["HELDOUT_PNG", "Heldout", "heldout_renders", "heldout_panel", "main"]

HELDOUT_PNG = "heldout_view.png"
"""The picture of the first held-out view, in the run folder."""


def heldout_renders(run_dir: Path) -> List[Path]:
    """``ns-eval``'s combined images of the held-out views (``<run>/eval/renders/``), in order."""
    return sorted((Path(run_dir) / "eval" / "renders").glob("eval_img_*.png"))


def heldout_panel(render: Path, width: int, out_path: Path, label: str, caption: str = "") -> Optional[Path]:
    """Ground truth | render | error map of one held-out view from ns-eval's combined image
    ``[gt | ... | render]`` (images ``width`` pixels wide); None if it cannot be split."""
    import imageio.v3 as iio
    import numpy as np

    from wcnerf.report.panels import compose_views, split_eval_image

    parts = split_eval_image(np.asarray(iio.imread(render)), int(width))
    if parts is None:
        return None
    gt, pred = parts
    return compose_views(gt, [(label, pred)], Path(out_path), caption=caption)


@dataclass
class Heldout(RunArgs):
    """Draw ground truth | render | error map of one held-out view of a finished run."""

    view: int = 0
    """Which held-out view (0: the first)."""
    output: Annotated[Optional[Path], tyro.conf.arg(aliases=("--output-path",))] = None
    """PNG to write (--output-path, as in ns-render; --output is the old name). Default:
    <run>/heldout_view.png (view 0) or <run>/heldout_view_<view>.png."""
    evaluate: bool = True
    """Run ns-eval (every held-out view) when <run>/eval/renders/ lacks the view."""
    image_width: Optional[int] = None
    """Width of one image in ns-eval's [ground truth | render] picture. Default: the LLFF scene's."""

    BOUNDS: ClassVar[Bounds] = Bounds((("view", at_least(0, warn_above=1e6)), ("image_width", at_least(1, warn_above=1e5))))

    def main(self) -> int:
        config_path = self.config_path()
        run_dir = config_path.parent
        config = load_run_config(config_path)
        method = str(getattr(config, "method_name", "") or "")
        scene, why = None, ""
        try:
            scene, _ = scene_of_run(config_path)
        except Exception as exc:  # noqa: BLE001 - only the width and the caption come from it
            why = f" ({exc})"
        width = self.image_width or (scene.width if scene is not None else None)
        if width is None:
            print(f"error: {config_path}: give --image-width; no LLFF scene to take it from{why}", file=sys.stderr)
            return 2
        renders = heldout_renders(run_dir)
        if len(renders) <= self.view and self.evaluate:
            print(f"[wcnerf] evaluating every held-out view with ns-eval (log: {run_dir / 'eval' / 'ns_eval.log'}) ...",
                  flush=True)  # fmt: skip
            evaluate_run(config_path, run_dir / "eval")
            renders = heldout_renders(run_dir)
        if not 0 <= self.view < len(renders):
            print(f"error: {run_dir / 'eval' / 'renders'}: {len(renders)} held-out render(s), no view {self.view}"
                  + ("" if self.evaluate else " (ns-eval writes them; drop --no-evaluate)"), file=sys.stderr)  # fmt: skip
            return 2
        out = self.output or run_dir / (HELDOUT_PNG if self.view == 0 else f"heldout_view_{self.view}.png")
        name = scene.root.name if scene is not None else run_dir.parent.parent.name
        caption = f"{name}, held-out view {self.view}" if self.view else f"{name}, first held-out view"
        if heldout_panel(renders[self.view], width, out, method or "render", caption) is None:
            print(f"error: {renders[self.view]}: not [ground truth | render] images {width} pixels wide", file=sys.stderr)
            return 2
        print(f"[wcnerf] ground truth | render | error map: {out}")
        return 0


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-heldout``: parse the command line (``sys.argv`` unless ``args``) and run."""
    return run_tool(Heldout, args)


if __name__ == "__main__":
    sys.exit(main())
