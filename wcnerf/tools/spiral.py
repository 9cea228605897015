"""Write the LLFF spiral camera path of a scene (the NeRF paper's videos) as a nerfstudio
camera-path JSON, and print the ``ns-render`` command that renders it::

    wcnerf-spiral outputs/fern/e-nerf-small/<timestamp>           # or --load-config .../config.yml
    ns-render camera-path --load-config outputs/fern/e-nerf-small/<timestamp>/config.yml \\
        --camera-path-filename outputs/fern/e-nerf-small/<timestamp>/camera_paths/spiral.json \\
        --output-path renders/fern/spiral.mp4

    wcnerf-spiral --data llff/fern --downscale-factor 8 --output-path spiral.json

With a run (``RUN`` or ``--load-config``) the scene and its dataparser settings are the run's
own (the ``llff`` dataparser of its config.yml, read like ``ns-render`` reads it), the path goes
to ``<run>/camera_paths/spiral.json`` and the scene's transform is checked against the run's
``dataparser_transforms.json``. The path itself is :func:`wcnerf.data.spiral.llff_spiral`
(the reference ``render_path_spiral``: 120 frames, 2 turns, 4 s at 30 fps), in the frame of the
training cameras, at the training images' size and focal; ``ns-render --downscale-factor 4``
renders it smaller. Put a copy in ``<scene>/camera_paths/`` to load it in the viewer's Render tab.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence, Tuple

import tyro
from typing_extensions import Annotated

from wcnerf.bounds import BD_FACTOR, DOWNSCALE_FACTOR, Bounds, at_least, positive
from wcnerf.tools.runs import RunArgs, run_tool, scene_of_run

__all__ = ["Spiral", "write_spiral", "main"]


@dataclass
class Spiral(RunArgs):
    """Write the LLFF spiral camera path of a run's scene (or of --data) as a nerfstudio
    camera-path JSON, for ns-render camera-path."""

    data: Optional[Path] = None
    """Scene folder or name (llff/fern), when no run is given."""
    downscale_factor: int = 8
    """Without a run: the images_<factor>/ the model was trained on (sets size and focal)."""
    bd_factor: float = 0.75
    """Without a run: the dataparser's bd_factor (the scene's scale)."""
    output: Annotated[Optional[Path], tyro.conf.arg(aliases=("--output-path",))] = None
    """JSON to write (--output-path, as in ns-render; --output is the old name). Default:
    <run>/camera_paths/spiral.json, or camera_paths/<scene>_spiral.json."""
    frames: int = 120
    """Number of frames (the reference's N_views)."""
    seconds: Optional[float] = None
    """Length of the video; default frames / 30 (the reference's 30 fps)."""
    rots: float = 2.0
    """Turns of the spiral."""
    zrate: float = 0.5
    """Turns of the in-out (z) motion per turn."""

    BOUNDS: ClassVar[Bounds] = Bounds((
        ("downscale_factor", DOWNSCALE_FACTOR), ("bd_factor", BD_FACTOR), ("frames", at_least(1, warn_above=1e5)),
        ("seconds", positive(warn_above=86400)), ("rots", at_least(0, warn_above=1e3)),
        ("zrate", at_least(0, warn_above=1e3)),
    ))

    def main(self) -> int:
        from wcnerf.data.llff_scene import LLFFDataError

        try:
            scene, run_dir = self.scene()
        except (LLFFDataError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out = self.output_path(scene, run_dir)
        path = write_spiral(scene, out, frames=self.frames, seconds=self.seconds, rots=self.rots, zrate=self.zrate)
        print(f"[wcnerf] spiral of {scene.root.name}: {self.frames} frames, {path['seconds']:g} s, "
              f"{path['render_width']}x{path['render_height']} -> {out}")
        if run_dir is not None:
            render = Path("renders") / scene.root.name / "spiral.mp4"
            cmd = ["ns-render", "camera-path", "--load-config", str(self.config_path()),
                   "--camera-path-filename", str(out), "--output-path", str(render)]  # fmt: skip
            print("[wcnerf] render it with:\n  " + " ".join(shlex.quote(c) for c in cmd))
        return 0

    # ---- the scene ---------------------------------------------------------------------
    def scene(self) -> Tuple["object", Optional[Path]]:
        """``(LLFFScene, run folder or None)``."""
        if self.given_run() is not None:
            return scene_of_run(self.config_path())
        if self.data is None:
            raise ValueError("give RUN (a run folder or its config.yml), --load-config <run>/config.yml or --data <scene>")
        from wcnerf.data.llff_scene import load_llff_scene, resolve_data_path

        root = resolve_data_path(self.data, self.downscale_factor)
        return load_llff_scene(root, self.downscale_factor, bd_factor=self.bd_factor), None

    def output_path(self, scene, run_dir: Optional[Path]) -> Path:
        if self.output is not None:
            return self.output
        if run_dir is not None:
            return run_dir / "camera_paths" / "spiral.json"
        return Path("camera_paths") / f"{scene.root.name}_spiral.json"


def write_spiral(scene, out: Path, *, frames: int = 120, seconds: Optional[float] = None,
                 rots: float = 2.0, zrate: float = 0.5) -> dict:  # fmt: skip
    """Write the scene's spiral camera path to ``out`` (atomically); returns the JSON dict."""
    from wcnerf.atomic import write_json
    from wcnerf.data.spiral import spiral_camera_path

    path = spiral_camera_path(scene, frames, seconds=seconds, rots=rots, zrate=zrate)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out), path)
    return path


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-spiral``: parse the command line (``sys.argv`` unless ``args``) and run."""
    import wcnerf.plugin  # noqa: F401 - its filters of known dependency warnings, before nerfstudio is imported

    return run_tool(Spiral, args)


if __name__ == "__main__":
    sys.exit(main())
