"""The LLFF spiral camera path, as a nerfstudio camera-path JSON (``ns-render camera-path``).

Pure numpy (no nerfstudio import). The path is the NeRF reference code's ``render_path_spiral``
(bmild/nerf ``load_llff.py``, ``load_llff_data`` with ``spherify=False, path_zflat=False``),
applied to the poses exactly as the ``llff`` dataparser hands them to nerfstudio
(:class:`wcnerf.data.llff_scene.LLFFScene`: OpenGL axes, scaled so the nearest bound is at
1 / bd_factor, recentred on the average pose). The reference computes its path from the same
poses, in the same order (axes, scale, recentre), so the path here is the reference's:

* centre pose ``c2w = poses_avg(poses)`` (about the identity after recentring), up vector
  ``normalize(sum of the poses' up axes)``;
* focus depth ``1 / ((1 - dt) / close + dt / inf)`` with ``dt = 0.75``,
  ``close = 0.9 * bounds.min()``, ``inf = 5 * bounds.max()`` (a weighted harmonic mean of the
  near and far depths);
* radii: the 90th percentile of ``|camera position|`` per axis;
* frame k of N at ``theta = 2 pi rots k / N`` (``rots = 2``, ``N = 120``): position
  ``c2w @ [r_x cos theta, -r_y sin theta, -r_z sin(zrate theta), 1]`` (``zrate = 0.5``),
  looking at ``c2w @ [0, 0, -focus, 1]`` with the up vector above.

Which frame the poses are in. nerfstudio's camera paths (written by the viewer, read by
``get_path_from_json`` in ``ns-render camera-path``) hold ``camera_to_world`` matrices (OpenGL
camera axes: x right, y up, looking along -z) in the frame of the cameras the model was
trained with, i.e. *after* the dataparser's transform and scale: ``ns-render`` builds
``Cameras`` from them as they are and renders them with the model; ``dataparser_transforms.json``
is only used to go back to the input's frame (``ns-export --save-world-frame``). The scene's
poses are already in that frame, so the path's poses go into the JSON unchanged.

Every run trained on the ``llff`` dataparser with wcnerf's trainer (``ns-train e-nerf*`` /
``e-nerfacto*`` / ``nerf*`` / ``nerfacto-plain*``, ``wcnerf-train``) writes its spiral to
``<run>/camera_paths/spiral.json`` when training starts (:func:`write_run_spiral`), so
``ns-render camera-path`` can render it at any time. nerfstudio's own ``ns-render spiral`` does
not suit these scenes: it circles the first held-out camera (not the average pose) with a
fixed radius of 0.1 and takes that camera's z axis (its backward direction) as the up vector
of a z-up scene, so on LLFF every frame is rolled (about 64 degrees on fern) and the path is
off the scene's axis (docs/after-training.md).

NDC (``e-nerf``, ``nerf``): camera poses stay in world coordinates; the model maps each world
ray to NDC with the *training* intrinsics (``metadata["llff"]``), as the reference renders its
spiral (``ndc_rays(H, W, focal, 1., ...)`` with the training H, W, focal). The JSON's field of
view is the training camera's, so a frame at a training pose renders that training view.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

from wcnerf.data.llff_scene import LLFFScene, poses_avg

__all__ = [
    "SPIRAL_FRAMES",
    "SPIRAL_FPS",
    "spiral_focus_depth",
    "spiral_radii",
    "view_matrix",
    "render_path_spiral",
    "llff_spiral",
    "vertical_fov_degrees",
    "camera_path_dict",
    "spiral_camera_path",
    "RUN_SPIRAL",
    "write_run_spiral",
]

SPIRAL_FRAMES = 120
"""Frames of the reference's spiral (``N_views``)."""
SPIRAL_FPS = 30.0
"""Frame rate of the reference's videos (``imageio.mimwrite(..., fps=30)``): 120 frames = 4 s."""


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def spiral_focus_depth(
    bounds: np.ndarray, dt: float = 0.75, close_factor: float = 0.9, inf_factor: float = 5.0
) -> float:
    """The reference's "reasonable focus depth": ``1 / ((1 - dt) / close + dt / inf)`` with
    ``close = close_factor * bounds.min()``, ``inf = inf_factor * bounds.max()``."""
    close_depth = float(np.min(bounds)) * close_factor
    inf_depth = float(np.max(bounds)) * inf_factor
    return 1.0 / ((1.0 - dt) / close_depth + dt / inf_depth)


def spiral_radii(poses: np.ndarray, percentile: float = 90.0) -> np.ndarray:
    """Per-axis radii of the spiral: the ``percentile`` of ``|camera position|`` (``(N, 3, >=4)``)."""
    return np.percentile(np.abs(np.asarray(poses)[:, :3, 3]), percentile, axis=0)


def view_matrix(z: np.ndarray, up: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``3 x 4`` camera-to-world with backward axis ``z``, roughly ``up``, at ``pos`` (OpenGL)."""
    z = _normalize(np.asarray(z, dtype=np.float64))
    x = _normalize(np.cross(up, z))
    y = _normalize(np.cross(z, x))
    return np.stack([x, y, z, np.asarray(pos, dtype=np.float64)], 1)


def render_path_spiral(
    c2w: np.ndarray,
    up: np.ndarray,
    rads: Sequence[float],
    focus: float,
    zrate: float = 0.5,
    rots: float = 2.0,
    n: int = SPIRAL_FRAMES,
) -> np.ndarray:
    """``(n, 3, 4)`` camera-to-worlds on the spiral around ``c2w`` (``3 x >=4``), all looking at
    the point ``focus`` in front of it (the reference's ``render_path_spiral``; its unused
    ``zdelta`` argument is left out)."""
    c2w = np.asarray(c2w, dtype=np.float64)[:3, :4]
    scale = np.array([*np.asarray(rads, dtype=np.float64)[:3], 1.0])
    target = c2w @ np.array([0.0, 0.0, -focus, 1.0])
    out = []
    for theta in np.linspace(0.0, 2.0 * np.pi * rots, n + 1)[:-1]:
        centre = c2w @ (np.array([np.cos(theta), -np.sin(theta), -np.sin(theta * zrate), 1.0]) * scale)
        out.append(view_matrix(centre - target, up, centre))
    return np.stack(out, 0) if out else np.zeros((0, 3, 4))


def llff_spiral(
    poses: np.ndarray,
    bounds: np.ndarray,
    n_frames: int = SPIRAL_FRAMES,
    *,
    rots: float = 2.0,
    zrate: float = 0.5,
    dt: float = 0.75,
) -> np.ndarray:
    """The reference's spiral for recentred, scaled OpenGL poses ``(N, 3, >=4)`` and their
    (scaled) bounds ``(N, 2)``: ``(n_frames, 3, 4)`` camera-to-worlds in the same frame."""
    poses = np.asarray(poses, dtype=np.float64)
    c2w = poses_avg(poses)
    up = _normalize(poses[:, :3, 1].sum(0))
    focus = spiral_focus_depth(bounds, dt=dt)
    rads = spiral_radii(poses)
    return render_path_spiral(c2w, up, rads, focus, zrate=zrate, rots=rots, n=n_frames)


def vertical_fov_degrees(focal: float, height: float) -> float:
    """Vertical field of view of a pinhole camera (what nerfstudio's camera paths store; it
    gives back ``focal`` through ``three_js_perspective_camera_focal_length(fov, height)``)."""
    return math.degrees(2.0 * math.atan(0.5 * float(height) / float(focal)))


def camera_path_dict(
    c2ws: np.ndarray,
    *,
    width: int,
    height: int,
    focal: float,
    seconds: Optional[float] = None,
    fps: float = SPIRAL_FPS,
    is_cycle: bool = True,
) -> Dict[str, Any]:
    """A nerfstudio camera path (the viewer's "Generate Command" format, read by
    ``ns-render camera-path --camera-path-filename``) for ``(N, 3, 4)`` OpenGL camera-to-worlds
    in the model's frame, all with the pinhole intrinsics ``focal`` (pixels), ``width x height``,
    principal point at the centre. ``seconds`` defaults to ``N / fps``. The frames are also
    written as ``keyframes``, so the viewer's Render tab ("Load Path") can show the path."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    if c2ws.ndim != 3 or c2ws.shape[1:] not in ((3, 4), (4, 4)) or len(c2ws) == 0:
        raise ValueError(f"expected (N, 3, 4) camera-to-worlds with N >= 1, got shape {c2ws.shape}")
    n = len(c2ws)
    seconds = float(n / fps if seconds is None else seconds)
    fov = vertical_fov_degrees(focal, height)
    aspect = float(width) / float(height)
    bottom = np.array([0.0, 0.0, 0.0, 1.0])

    def flat(m: np.ndarray) -> list:
        return [float(v) for v in np.concatenate([m[:3, :4], bottom[None]], 0).reshape(-1)]

    frames = [{"camera_to_world": flat(m), "fov": fov, "aspect": aspect} for m in c2ws]
    keyframes = [
        {"matrix": flat(m), "fov": fov, "aspect": aspect, "override_transition_enabled": False,
         "override_transition_sec": None}
        for m in c2ws
    ]  # fmt: skip
    return {
        "camera_type": "perspective",
        "render_height": int(height),
        "render_width": int(width),
        "fps": float(n / seconds) if seconds > 0 else float(fps),
        "seconds": seconds,
        "is_cycle": bool(is_cycle),
        "smoothness_value": 0.0,
        "default_fov": fov,
        "default_transition_sec": seconds / n,
        "keyframes": keyframes,
        "camera_path": frames,
    }


def spiral_camera_path(
    scene: LLFFScene,
    n_frames: int = SPIRAL_FRAMES,
    *,
    seconds: Optional[float] = None,
    rots: float = 2.0,
    zrate: float = 0.5,
    dt: float = 0.75,
) -> Dict[str, Any]:
    """The camera-path JSON dict of a scene's spiral, at the loaded images' size and focal
    (``ns-render --downscale-factor`` renders it smaller)."""
    c2ws = llff_spiral(scene.poses, scene.bounds, n_frames, rots=rots, zrate=zrate, dt=dt)
    return camera_path_dict(c2ws, width=scene.width, height=scene.height, focal=scene.focal, seconds=seconds)


RUN_SPIRAL = "camera_paths/spiral.json"
"""Where a run's spiral goes, relative to its run folder."""


def write_run_spiral(trainer: Any) -> Optional[Any]:
    """``<run>/camera_paths/spiral.json`` of a run on the ``llff`` dataparser (written atomically,
    from the scene the dataparser already loaded: no image is read again); the path written, or
    None for another dataparser. Called by wcnerf's trainer once it is set up, so every LLFF run
    has its spiral, not only those that ran ``wcnerf-summary`` (a failure to write it is said and
    training goes on: the path is a convenience)."""
    from pathlib import Path

    from wcnerf.data.llff import LLFF

    parser = getattr(getattr(getattr(trainer, "pipeline", None), "datamanager", None), "dataparser", None)
    if not isinstance(parser, LLFF) or getattr(trainer, "local_rank", 0) != 0:
        return None
    out = Path(trainer.base_dir) / RUN_SPIRAL
    try:
        from wcnerf.atomic import write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, spiral_camera_path(parser.load_scene()))
    except (OSError, ValueError) as exc:
        print(f"Warning: the LLFF spiral camera path was not written ({out}: {exc}); wcnerf-spiral RUN writes it",
              flush=True)
        return None
    return out
