"""Reading LLFF scenes (``poses_bounds.npy`` + ``images_<factor>/``) without nerfstudio.

Everything here is numpy / PIL / torch; :mod:`wcnerf.data.llff` wraps it as a nerfstudio
dataparser. The geometry follows the NeRF reference loader (``load_llff.py`` of bmild/nerf
and yenchenlin/nerf-pytorch, itself derived from Fyusion/LLFF) step by step:

1. ``poses_bounds.npy`` is ``N x 17``: per image a ``3 x 5`` matrix (a camera-to-world
   ``3 x 4`` whose rotation columns are [down, right, backwards], then the column
   ``[H, W, focal]`` at full resolution) followed by the near and far depth bounds.
2. The rotation columns become [right, up, backwards] (OpenGL, nerfstudio's convention):
   ``[c1, -c0, c2]``.
3. Translations and bounds are scaled by ``1 / (bounds.min() * bd_factor)`` (bd_factor 0.75),
   so the nearest bound sits at 1 / 0.75 and the NDC near plane z = -1 is in front of it.
4. The poses are recentred on their average pose (``poses_avg``: mean centre, summed
   viewing axis, summed up vector).
5. The focal length is divided by the downscale factor; H, W are the loaded images' size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "LLFFDataError",
    "LLFFScene",
    "IMAGE_SUFFIXES",
    "POSES_FILE",
    "data_search_roots",
    "scene_candidates",
    "scene_problem",
    "resolve_data_path",
    "load_poses_bounds",
    "list_images",
    "downsample_images",
    "DERIVED_RECORD",
    "derived_state",
    "image_dir_for",
    "scene_fingerprint",
    "check_recorded_scene",
    "parse_fingerprint",
    "poses_digest",
    "llff_to_opengl",
    "poses_avg",
    "recenter_poses",
    "load_llff_scene",
    "split_indices",
    "evenly_spaced",
    "check_geometry",
    "check_split",
    "ROTATION_TOLERANCE",
    "BASELINE_FRACTION",
    "BOUNDS_RATIO_WARN",
    "BOUNDS_RATIO_MAX",
]

POSES_FILE = "poses_bounds.npy"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PathLike = Union[str, "os.PathLike[str]"]


class LLFFDataError(ValueError):
    """A problem with an LLFF scene on disk. The message starts with the offending path."""


ROTATION_TOLERANCE = 1e-3
"""Largest accepted ``max |R^T R - I|`` and ``|det R - 1|`` of a pose's rotation block. Real
captures (COLMAP, float64) are orthonormal to ~1e-15 and float32 copies to ~1e-7; 1e-3 admits
poses rounded to about four digits and refuses anything that is not a rotation (a zero block,
two equal columns, a scale, a reflection)."""

BASELINE_FRACTION = 1e-4
"""Cameras must span a baseline: the largest distance of a camera centre from their mean must
be at least this fraction of the median near bound (fern: 0.29, flower: 0.26). Below it every
view sees the scene from one point and depth is not observable."""

MIN_IMAGE_SIDE = 4
"""Fewest pixels on an image's shorter side after downscaling: below it a view holds no scene
(fern at factor 1000 would be 4 x 3 pixels, trained on without a word)."""

BOUNDS_RATIO_WARN = 1e3
"""``max(far) / min(near)`` above this draws a warning (fern: 4.7, flower: 9.9)."""

BOUNDS_RATIO_MAX = 1e6
"""``max(far) / min(near)`` above this is refused: the scene is scaled by ``1 / min(near)``,
so one tiny near bound blows every camera position up by that factor (a near bound of 1e-30
scales the scene by 1e30) and float32 rays no longer resolve it."""


# --------------------------------------------------------------------------------------
# Where scenes are looked up
# --------------------------------------------------------------------------------------


def data_search_roots() -> List[Path]:
    """Folders a relative ``data`` path is looked up under, in order.

    The shipped example data (the checkout's ``data/`` folder, installed as the package
    ``wcnerf.example_data``), then each entry of ``$WCNERF_DATA`` (``os.pathsep``-separated).
    """
    roots = [Path(str(resources.files("wcnerf.example_data")))]
    for entry in os.environ.get("WCNERF_DATA", "").split(os.pathsep):
        if entry.strip():
            roots.append(Path(entry.strip()).expanduser())
    return roots


def scene_candidates(data: PathLike) -> List[Path]:
    """Every place the scene ``data`` is looked for, in order (the one lookup rule).

    ``data`` as given (absolute, or relative to the working directory); then, for a relative
    path, under each of :func:`data_search_roots` both ``<root>/<data>`` and
    ``<root>/llff/<data>`` (the repository keeps its scenes in ``data/llff/``; a
    ``$WCNERF_DATA`` entry may be a ``nerf_llff_data`` folder itself or hold one as ``llff/``).
    So ``ns-train ... llff --data fern`` and ``compare_llff --scenes fern`` find the same folder.
    """
    given = Path(data).expanduser()
    places = [given]
    if not given.is_absolute():
        for root in data_search_roots():
            places += [root / given, root / "llff" / given]
    return places


def scene_problem(folder: PathLike, downscale_factor: Optional[int] = None) -> Optional[str]:
    """Why ``folder`` is not a usable LLFF scene (for ``downscale_factor``, if given), or None.

    A usable scene is a folder with a readable ``poses_bounds.npy`` of possible cameras
    (:func:`check_geometry`) and either ``images_<factor>/`` or ``images/`` (from which :func:`load_llff_scene` makes ``images_<factor>/``). The message
    starts with the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: not a folder"
    if not (folder / POSES_FILE).is_file():
        return f"{folder}: no {POSES_FILE} (not an LLFF / nerf_llff_data scene folder)"
    try:  # the cameras themselves (cheap: no image is read)
        check_geometry(*load_poses_bounds(folder / POSES_FILE), folder / POSES_FILE)
    except LLFFDataError as exc:
        return str(exc)
    if downscale_factor is None:
        return None
    wanted = image_dir_for(folder, downscale_factor)
    if wanted.is_dir() or (folder / "images").is_dir():
        return None
    if wanted.name == "images":
        return f"{folder}: no images/ folder"
    others = sorted((p.name for p in folder.glob("images_*") if p.is_dir() and p.name[7:].isdigit()),
                    key=lambda name: int(name[7:]))
    if others:  # e.g. the paper-sized methods (factor 4) on a scene shipped at factor 8 only
        return (f"{folder}: neither {wanted.name}/ nor images/ to build it from (it has {', '.join(others)}/: "
                f"pick that factor with the llff dataparser's --downscale-factor, e.g. "
                f"`ns-train ... llff --downscale-factor {others[0][7:]}`)")
    return f"{folder}: neither {wanted.name}/ nor images/ to build it from"


def resolve_data_path(data: PathLike, downscale_factor: Optional[int] = None) -> Path:
    """Find an LLFF scene folder (the dataparser's ``--data`` and the comparison's scenes).

    A path that exists is used as given (a path to ``poses_bounds.npy`` itself means its
    folder). Otherwise it is looked up at the places of :func:`scene_candidates`; among the
    folders found there, the first one that has ``poses_bounds.npy`` and images for
    ``downscale_factor`` (``images_<factor>/`` or ``images/``, see :func:`scene_problem`) wins,
    else the first one (:func:`load_llff_scene` then says what is missing).
    Raises :class:`LLFFDataError` listing every place looked at when none exists.
    """
    given = Path(data).expanduser()
    if given.exists():
        if given.is_file() and given.name == POSES_FILE:
            return given.parent
        return given
    places = scene_candidates(data)[1:]
    found = [p for p in places if p.is_dir()]
    if found:
        for candidate in found:
            if scene_problem(candidate, downscale_factor) is None:
                return candidate
        return found[0]
    tried = [given.absolute(), *places]
    env = os.environ.get("WCNERF_DATA")
    hint = (
        f"($WCNERF_DATA={env!r})"
        if env
        else "(set $WCNERF_DATA to folders holding scenes, os.pathsep-separated, to look there too)"
    )
    if "fern" in str(data) or "flower" in str(data):  # the README's scenes: not in a pip install's wheel
        hint += ("\nThe example scenes are not in the pip package: export WCNERF_DATA=<a wcnerf checkout>/data, "
                 "or download LLFF's nerf_llff_data and set WCNERF_DATA to it (the package's data/README.md).")
    raise LLFFDataError(
        f"{data}: LLFF scene folder not found. Looked in:\n" + "\n".join(f"  - {p}" for p in tried) + "\n" + hint
    )


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def load_poses_bounds(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``poses_bounds.npy``: returns ``(poses (N, 3, 5), bounds (N, 2))`` as float64."""
    path = Path(path)
    if not path.is_file():
        raise LLFFDataError(f"{path}: file not found (an LLFF scene needs {POSES_FILE})")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise LLFFDataError(f"{path}: cannot read as a .npy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise LLFFDataError(f"{path}: expected a single numpy array (.npy), got {type(arr).__name__}")
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise LLFFDataError(
            f"{path}: expected an N x 17 array (3x5 pose + near, far per image), got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise LLFFDataError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise LLFFDataError(f"{path}: contains non-finite values (nan or inf)")
    poses = arr[:, :15].reshape(-1, 3, 5)
    bounds = arr[:, 15:17].copy()
    if bounds.min() <= 0:
        raise LLFFDataError(f"{path}: depth bounds must be positive, smallest is {bounds.min():g}")
    hwf = poses[:, :, 4]
    if np.any(hwf <= 0):
        raise LLFFDataError(f"{path}: the [H, W, focal] column must be positive")
    return poses, bounds


def list_images(folder: PathLike) -> List[Path]:
    """Image files (png/jpg/jpeg, any case) of a folder, sorted by name like the reference."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )


def image_dir_for(root: PathLike, downscale_factor: int) -> Path:
    """``images_<factor>/`` (``images/`` itself for factor 1)."""
    root = Path(root)
    return root / "images" if downscale_factor == 1 else root / f"images_{downscale_factor}"


def _read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001
        raise LLFFDataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if img.ndim not in (2, 3) or img.size == 0:
        raise LLFFDataError(f"{path}: not a single 2-D image (array shape {img.shape})")
    return img


def _resize_area(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area (box) downsampling: PIL's BOX filter for 8-bit L/RGB/RGBA, torch otherwise."""
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (3, 4)):
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BOX))

    import torch
    import torch.nn.functional as F

    squeeze = img.ndim == 2
    arr = img[..., None] if squeeze else img
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(height, width), mode="area")[0].permute(1, 2, 0).numpy()
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    y = y.astype(img.dtype)
    return y[..., 0] if squeeze else y


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit copy (nerfstudio's InputDataset reads images as uint8)."""
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.integer):
        scale = 255.0 / np.iinfo(img.dtype).max
        return np.clip(np.rint(img.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    return np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)  # floats in [0, 1]


DERIVED_RECORD = ".wcnerf-source.json"
"""The record :func:`downsample_images` writes in each ``images_<factor>/`` it derives from
``images/``: per source image its name, size, modification time and sha256, and the file made
from it (name, size). A folder with it is wcnerf's: made again when ``images/`` changes or a file
of it is missing or changed (:func:`derived_state`). A folder without it is the user's (e.g. the
``images_8/`` shipped with nerf_llff_data) and is never rewritten."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_RECORD_KEYS = {"source", "size", "mtime_ns", "sha256", "output", "output_size"}


def _read_record(folder: Path) -> Optional[dict]:
    """``folder``'s :data:`DERIVED_RECORD`: None when it has none, ``{}`` when it is unreadable."""
    path = Path(folder) / DERIVED_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf8"))
        if all(isinstance(e, dict) and _RECORD_KEYS <= set(e) for e in record["files"]):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _origins(img_dir: Path) -> Dict[Path, Path]:
    """Each file of a folder wcnerf derived -> the source image it was made from."""
    record = _read_record(img_dir) or {}
    src = img_dir.parent / str(record.get("source", "images"))
    return {img_dir / e["output"]: src / e["source"] for e in record.get("files", [])}


def _clear_debris(dst: Path) -> None:
    """Remove what a killed :func:`downsample_images` left beside ``dst`` (``<name>.tmp-<pid>``,
    ``.<name>.old-<pid>``) when its process is gone; another live process's is left alone."""
    pattern = re.compile(rf"^(?:{re.escape(dst.name)}\.tmp|\.{re.escape(dst.name)}\.old)-(\d+)$")
    try:
        siblings = list(dst.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pattern.match(p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # alive: another process is building it
            except ProcessLookupError:
                pass
            except OSError:
                continue
        shutil.rmtree(p, ignore_errors=True)


def _install(tmp: Path, dst: Path) -> None:
    """Put the finished folder ``tmp`` in the place of ``dst``: a missing or empty ``dst`` is
    replaced by one rename; one with :data:`DERIVED_RECORD` (ours) is moved aside first and
    removed after. When another process put its own in place meanwhile, that one is kept."""
    old: Optional[Path] = None
    if (dst / DERIVED_RECORD).is_file():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        try:
            os.rename(dst, old)
        except FileNotFoundError:
            old = None  # another process moved it aside first
    try:
        os.rename(tmp, dst)  # rename(2) replaces a missing or empty folder, never a full one
    except OSError:
        if not dst.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def downsample_images(
    src: PathLike, dst: PathLike, factor: int, *, show_progress: bool = True, reason: str = "missing"
) -> List[Path]:
    """Downsample every image of ``src`` by ``factor`` (area filter) into 8-bit PNGs in ``dst``,
    with the :data:`DERIVED_RECORD` of what they were made from.

    The size is ``round(W / factor) x round(H / factor)`` (the reference runs ImageMagick's
    ``mogrify -resize {100/factor}% -format png``). Files keep their stem. All images must have
    one size: the first that does not is named (not its downsampled copy). The images are written
    to a temporary sibling folder that then takes the place of ``dst`` (a missing or empty one, or
    one this function made; a full folder of the user's is never replaced), so an interrupted run
    leaves the previous ``dst`` as it was. ``reason``: why ``dst`` is made, for the progress line.
    Returns the written files, sorted.
    """
    import errno

    import imageio.v3 as iio
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import track

    from wcnerf.atomic import WriteError, write_error, write_json

    src, dst = Path(src), Path(dst)
    files = list_images(src)
    if not files:
        raise LLFFDataError(f"{src}: no images (png/jpg/jpeg) to downsample")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise LLFFDataError(f"{src}: several images share a name stem ({', '.join(dup)}); cannot cache as PNG")
    _clear_debris(dst)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise WriteError(exc.errno or errno.EIO, f"{dst}: cannot write the images downsampled from {src} "
                                                 f"({exc.strerror or exc}); make {dst.parent} writable, or make "
                                                 f"{dst.name}/ yourself") from None
    try:
        iterable: Iterable[Path] = files
        if show_progress:
            console = Console()
            console.print(
                f"[bold]LLFF:[/bold] {escape(str(dst))} {escape(reason)}: downsampling the {len(files)} images of"
                f" {escape(str(src))} by {factor}" + (" (once; cached there)" if reason == "missing" else "")
            )
            iterable = track(files, description="Downsampling", console=console, transient=True)
        entries = []
        size0: Optional[Tuple[int, int]] = None
        for path in iterable:
            st = path.stat()  # before reading: a change while it is read makes the record stale
            img = _read_image(path)
            h, w = img.shape[:2]
            if size0 is None:
                size0 = (w, h)
            elif (w, h) != size0:
                raise LLFFDataError(f"{path}: image is {w}x{h} but {files[0].name} is {size0[0]}x{size0[1]}"
                                    " (all images of a scene must have the same size)")
            nh, nw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
            small = _to_uint8(_resize_area(img, nh, nw))
            out = tmp / f"{path.stem}.png"
            iio.imwrite(out, small)
            entries.append({"source": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                            "sha256": _sha256(path), "output": out.name, "output_size": out.stat().st_size})
        write_json(tmp / DERIVED_RECORD, {"made_by": "wcnerf.data.llff_scene.downsample_images", "source": src.name,
                                          "factor": factor, "files": entries})
        _install(tmp, dst)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(dst, exc) from exc
        raise
    return list_images(dst)


def derived_state(img_dir: PathLike, factor: int) -> Tuple[str, str]:
    """What the scene folder's ``images_<factor>/`` ``img_dir`` is, as ``(state, why)``:

    * ``missing`` / ``empty``: to be made from ``images/`` (an empty folder, ours or not, holds
      nothing to lose);
    * ``stale``: made by :func:`downsample_images` from an ``images/`` that has changed since (an
      image added, removed, or of another size; of another modification time and another
      sha256), or a file of it is missing or changed: to be made again (``why`` says what changed);
    * ``ours``: made by :func:`downsample_images` and up to date, or its ``images/`` is gone (it
      is then used as it is);
    * ``user``: not made by wcnerf (no :data:`DERIVED_RECORD`, not empty): used as it is, never rewritten.

    A source whose time changed but whose content did not (a copy, ``touch``) keeps the folder;
    its new time is written to the record so that it is not hashed again.
    """
    from wcnerf.atomic import write_json

    img_dir = Path(img_dir)
    originals = img_dir.parent / "images"
    if not img_dir.exists():
        return "missing", "missing"
    if not img_dir.is_dir():
        raise LLFFDataError(f"{img_dir}: is a file, not a folder of images; remove it (it is made from images/)"
                            if originals.is_dir() else f"{img_dir}: is a file, not a folder of images")
    record = _read_record(img_dir)
    if record is None:
        try:
            empty = next(img_dir.iterdir(), None) is None
        except OSError:
            empty = False
        return ("empty", "is empty") if empty else ("user", "")
    if not originals.is_dir():
        return "ours", ""
    if not record:
        return "stale", f"is out of date (its {DERIVED_RECORD} is unreadable)"
    if record.get("factor") != factor:
        return "stale", f"is out of date (made at factor {record.get('factor')})"
    entries = record["files"]
    current = list_images(originals)
    names, recorded = [p.name for p in current], [e["source"] for e in entries]
    if names != recorded:
        added, removed = sorted(set(names) - set(recorded)), sorted(set(recorded) - set(names))
        what = [f"{len(added)} added, e.g. {added[0]}" if added else "",
                f"{len(removed)} removed, e.g. {removed[0]}" if removed else ""]
        return "stale", f"is out of date (images in {originals}: {'; '.join(w for w in what if w)})"
    touched = []
    for path, entry in zip(current, entries):
        st = path.stat()
        if st.st_size != entry["size"] or (st.st_mtime_ns != entry["mtime_ns"] and _sha256(path) != entry["sha256"]):
            return "stale", f"is out of date ({path} changed since it was made)"
        if st.st_mtime_ns != entry["mtime_ns"]:
            touched.append((entry, st.st_mtime_ns))
    made = {p.name: p.stat().st_size for p in list_images(img_dir)}
    wanted = {e["output"]: e["output_size"] for e in entries}
    if made != wanted:
        missing = sorted(set(wanted) - set(made))
        what = f"{missing[0]} is missing" if missing else "a file of it was added or changed"
        return "stale", f"is incomplete ({what})"
    if touched:
        for entry, mtime in touched:
            entry["mtime_ns"] = mtime
        try:
            write_json(img_dir / DERIVED_RECORD, record)
        except OSError:
            pass  # a read-only scene: the hashes are compared again next time
    return "ours", ""


# --------------------------------------------------------------------------------------
# Geometry (NeRF reference loader)
# --------------------------------------------------------------------------------------


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def llff_to_opengl(poses: np.ndarray) -> np.ndarray:
    """Rotation columns [down, right, backwards] -> [right, up, backwards]; ``(..., 3, >=4)``."""
    out = np.array(poses, dtype=np.float64, copy=True)
    out[..., 0] = poses[..., 1]
    out[..., 1] = -poses[..., 0]
    return out


def poses_avg(poses: np.ndarray) -> np.ndarray:
    """Average camera-to-world ``3 x 4`` of OpenGL poses ``(N, 3, >=4)`` (reference ``poses_avg``)."""
    center = poses[:, :3, 3].mean(0)
    z = _normalize(poses[:, :3, 2].sum(0))
    up = poses[:, :3, 1].sum(0)
    x = _normalize(np.cross(up, z))
    y = _normalize(np.cross(z, x))
    return np.stack([x, y, z, center], 1)


def recenter_poses(poses: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Express ``(N, 3, 4)`` poses in the frame of their average pose.

    Returns ``(recentred poses, world transform 3 x 4)`` with
    ``recentred = transform @ [pose; 0 0 0 1]`` (the transform is the inverse average pose).
    """
    avg = np.eye(4)
    avg[:3, :4] = poses_avg(poses)
    inv = np.linalg.inv(avg)
    n = poses.shape[0]
    homog = np.concatenate([poses[:, :3, :4], np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (n, 1, 4))], 1)
    return (inv @ homog)[:, :3, :4], inv[:3, :4]


def _rows(idx: Sequence[int], limit: int = 3) -> str:
    shown = ", ".join(str(int(i)) for i in list(idx)[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def check_geometry(poses: np.ndarray, bounds: np.ndarray, path: PathLike) -> List[str]:
    """Refuse impossible camera geometry of ``poses_bounds.npy`` (``poses (N, 3, 5)``,
    ``bounds (N, 2)`` as from :func:`load_poses_bounds`); return warnings for usable but
    unusual geometry (one string each, with the numbers). Raises :class:`LLFFDataError`
    starting with ``path`` for:

    * a row whose near bound is not below its far bound;
    * a rotation block that is not a rotation: ``max |R^T R - I|`` or ``|det R - 1|`` above
      :data:`ROTATION_TOLERANCE` (a zero block trains to NaN, a singular one to nonsense);
    * cameras that do not span a baseline: every centre within :data:`BASELINE_FRACTION` of
      the median near bound of their mean (all cameras at one pose); not checked for one image;
    * bounds spanning more than :data:`BOUNDS_RATIO_MAX` (``max far / min near``).

    Warns when the bounds span more than :data:`BOUNDS_RATIO_WARN`.
    """
    poses = np.asarray(poses, dtype=np.float64)
    bounds = np.asarray(bounds, dtype=np.float64)
    warnings_: List[str] = []
    bad = np.flatnonzero(bounds[:, 0] >= bounds[:, 1])
    if len(bad):
        i = int(bad[0])
        raise LLFFDataError(
            f"{path}: near bound >= far bound in {_rows(bad)} (row {i}: near {bounds[i, 0]:g}, far {bounds[i, 1]:g});"
            " columns 15 and 16 of each row are the near and far depth of that image, near < far"
        )
    rot = poses[:, :, :3]
    ortho = np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero((ortho > ROTATION_TOLERANCE) | (np.abs(det - 1.0) > ROTATION_TOLERANCE))
    if len(bad):
        i = int(bad[0])
        raise LLFFDataError(
            f"{path}: the rotation block (columns 0-2 of the 3x5 pose) is not a rotation in {_rows(bad)} "
            f"(row {i}: max |R^T R - I| = {ortho[i]:.3g}, det R = {det[i]:.3g}; a rotation has 0 and 1, "
            f"tolerance {ROTATION_TOLERANCE:g}); the poses must be camera-to-world rotations"
        )
    centres = poses[:, :, 3]
    depth = float(np.median(bounds[:, 0]))
    if len(centres) > 1:
        spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).max())
        if not spread >= BASELINE_FRACTION * depth:
            raise LLFFDataError(
                f"{path}: the {len(centres)} cameras do not span a baseline: every centre is within {spread:.3g} "
                f"of their mean, {spread / depth:.3g} of the median near depth {depth:g} (at least "
                f"{BASELINE_FRACTION:g} is needed to see depth); the views must be taken from different places"
            )
    ratio = float(bounds.max() / bounds.min())
    if not ratio <= BOUNDS_RATIO_MAX:
        raise LLFFDataError(
            f"{path}: depth bounds span {ratio:.3g}x (nearest {bounds.min():g}, farthest {bounds.max():g}); the "
            f"scene is scaled by 1/nearest, which at more than {BOUNDS_RATIO_MAX:g}x leaves float32 rays unable to "
            "resolve it; check the near bounds (column 15)"
        )
    if ratio > BOUNDS_RATIO_WARN:
        warnings_.append(
            f"{path}: depth bounds span {ratio:.3g}x (nearest {bounds.min():g}, farthest {bounds.max():g}; typical "
            f"LLFF scenes span under 20x): most samples will go to the near range; check the near bounds"
        )
    return warnings_


def check_split(num_images: int, holdout_every: int, path: PathLike, need_eval: bool = True) -> None:
    """Refuse a :func:`split_indices` split that leaves no training image, or no held-out image
    when ``need_eval``; the message says which ``holdout_every`` would work."""
    train = split_indices(num_images, holdout_every, "train")
    held = split_indices(num_images, holdout_every, "eval")
    if not train:
        if num_images == 1:
            fix = "only --holdout-every 0 (train and evaluate on that one image) would run"
        else:
            fix = "e.g. --holdout-every 8 (NeRF's), or 0 to train and evaluate on every image"
        raise LLFFDataError(
            f"{path}: {num_images} image{'s' if num_images != 1 else ''} with holdout_every={holdout_every} "
            f"(image i held out when i % {holdout_every} == 0) leaves no training image; {fix}"
        )
    if need_eval and not held:
        raise LLFFDataError(
            f"{path}: {num_images} images with holdout_every={holdout_every} leave no held-out image for evaluation;"
            f" use a holdout_every between 2 and {max(2, num_images)}, or 0 to evaluate on the training images"
        )


def split_indices(num_images: int, holdout_every: int, split: str, max_eval_views: int = 0) -> List[int]:
    """Reference ``llffhold`` split: index % holdout_every == 0 is held out for eval.

    ``holdout_every <= 0`` puts every image in every split (no held-out set).
    ``max_eval_views > 0`` keeps at most that many of the eval images, evenly spaced over them
    (:func:`evenly_spaced`); the held-out images left out are in no split, so training never
    sees them and the training split does not change.
    """
    if split not in ("train", "val", "test", "eval"):
        raise ValueError(f"unknown split {split!r} (train, val, test)")
    idx = range(num_images)
    if holdout_every <= 0:
        return list(idx) if split == "train" else evenly_spaced(list(idx), max_eval_views)
    if split == "train":
        return [i for i in idx if i % holdout_every != 0]
    return evenly_spaced([i for i in idx if i % holdout_every == 0], max_eval_views)


def evenly_spaced(items: Sequence[int], k: int) -> List[int]:
    """At most ``k`` of ``items`` spread evenly over them, the first and the last included
    (item ``round(j (n - 1) / (k - 1))`` for j < k); all of them when ``k <= 0`` or ``k >= n``."""
    n = len(items)
    if k <= 0 or n <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    return [items[int(j * (n - 1) / (k - 1) + 0.5)] for j in range(k)]


@dataclass
class LLFFScene:
    """A loaded LLFF scene (all images, before the train/eval split)."""

    root: Path
    image_paths: List[Path]
    poses: np.ndarray
    """``(N, 3, 4)`` camera-to-world, OpenGL axes, recentred and rescaled (float64)."""
    bounds: np.ndarray
    """``(N, 2)`` near/far depth bounds, rescaled."""
    height: int
    width: int
    focal: float
    """Focal length in pixels of the loaded images (full-resolution focal / factor)."""
    downscale_factor: int
    scale: float
    """World scale applied: ``1 / (min bound * bd_factor)``."""
    transform: np.ndarray
    """``3 x 4`` world transform with ``new = scale * (transform @ old)`` (nerfstudio's)."""
    full_hwf: Tuple[float, float, float]
    """``(H, W, focal)`` at full resolution, as stored in poses_bounds.npy (first row)."""
    warnings: List[str] = dataclasses.field(default_factory=list)
    """Unusual but usable input found while loading (each with its numbers), for the caller to show."""


_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
"""8-bit PIL modes nerfstudio reads correctly (it repeats a grey channel to RGB), by channel count."""


def _check_images(paths: Sequence[Path], origin: Optional[Dict[Path, Path]] = None) -> Tuple[int, int]:
    """Decode every image fully; all must share one size and be 8-bit grey, RGB or RGBA, with
    alpha in all or none. Returns ``(H, W)``. ``origin``: the source image of each file of a
    folder wcnerf derived, named in the messages instead (the file to fix is the source)."""
    from PIL import Image

    def named(p: Path) -> Path:
        return (origin or {}).get(p, p)

    size0: Optional[Tuple[int, int]] = None
    mode0 = ""
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                size = im.size  # (W, H)
                mode = im.mode
        except Exception as exc:  # noqa: BLE001
            raise LLFFDataError(f"{named(path)}: cannot read image ({type(exc).__name__}: {exc})") from exc
        if mode not in _CHANNELS:
            raise LLFFDataError(
                f"{named(path)}: image mode {mode} is not 8-bit grey, RGB or RGBA (nerfstudio would misread it);"
                " convert it to 8-bit RGB (e.g. PIL: Image.open(p).convert('RGB').save(p))"
            )
        if size0 is None:
            size0, mode0 = size, mode
        elif size != size0:
            raise LLFFDataError(
                f"{named(path)}: image is {size[0]}x{size[1]} but {named(paths[0]).name} is {size0[0]}x{size0[1]}"
                " (all images of a scene must have the same size)"
            )
        elif (mode == "RGBA") != (mode0 == "RGBA"):
            raise LLFFDataError(
                f"{named(path)}: image has {_CHANNELS[mode]} channels ({mode}) but {named(paths[0]).name} has"
                f" {_CHANNELS[mode0]}"
                f" ({mode0}); an alpha channel must be in all images of a scene or in none: convert it"
                f" (e.g. PIL: Image.open(p).convert('{'RGB' if mode == 'RGBA' else 'RGBA'}').save(p))"
            )
    assert size0 is not None
    return size0[1], size0[0]


def check_image_size(raw_poses: np.ndarray, downscale_factor: int, poses_file: Path) -> None:
    """Refuse a ``--downscale-factor`` that leaves fewer than :data:`MIN_IMAGE_SIDE` pixels on the
    shorter side (the full size is the [H, W, focal] column of ``poses_bounds.npy``)."""
    full_h, full_w = float(raw_poses[0, 0, 4]), float(raw_poses[0, 1, 4])
    h, w = max(1, int(round(full_h / downscale_factor))), max(1, int(round(full_w / downscale_factor)))
    if min(h, w) < MIN_IMAGE_SIDE:
        largest = max(1, int(min(full_h, full_w) // MIN_IMAGE_SIDE))
        raise LLFFDataError(
            f"--downscale-factor {downscale_factor}: leaves {w}x{h}-pixel images of a {full_w:g}x{full_h:g} scene "
            f"({poses_file}); it must leave at least {MIN_IMAGE_SIDE} pixels a side: a factor of at most {largest}"
        )


def load_llff_scene(
    root: PathLike,
    downscale_factor: int = 8,
    *,
    bd_factor: float = 0.75,
    show_progress: bool = True,
    holdout_every: Optional[int] = None,
) -> LLFFScene:
    """Load an LLFF scene folder, downsampling ``images/`` into ``images_<factor>/`` if needed.

    An ``images_<factor>/`` that wcnerf made is made again when ``images/`` changed or it is
    incomplete, an empty one is made, the user's own is used as it is (:func:`derived_state`);
    problems in a derived image name its source, in the user's folder they say how to have it
    made from ``images/``. The geometry is checked first (:func:`check_geometry`: impossible cameras or bounds are
    refused, unusual ones listed in ``LLFFScene.warnings``), and, when ``holdout_every`` is
    given, the train / held-out split (:func:`check_split`)."""
    root = Path(root)
    if not root.is_dir():
        raise LLFFDataError(f"{root}: not a folder (an LLFF scene is a folder with {POSES_FILE})")
    if downscale_factor < 1:
        raise ValueError(f"downscale_factor must be >= 1, got {downscale_factor}")
    poses_file = root / POSES_FILE
    raw_poses, bounds = load_poses_bounds(poses_file)
    n = raw_poses.shape[0]
    notes = check_geometry(raw_poses, bounds, poses_file)
    if holdout_every is not None:
        check_split(n, holdout_every, poses_file)
    check_image_size(raw_poses, downscale_factor, poses_file)

    img_dir = image_dir_for(root, downscale_factor)
    originals = root / "images"
    state = "user"  # factor 1: images/ itself
    if downscale_factor != 1:
        state, why = derived_state(img_dir, downscale_factor)
        if state in ("missing", "empty", "stale"):
            if not originals.is_dir():  # (a stale folder has its images/)
                what = "folder not found" if state == "missing" else "is empty"
                raise LLFFDataError(
                    f"{img_dir}: {what}, and there is no {originals.name}/ folder with the"
                    f" full-resolution images to make it from (LLFF layout: {POSES_FILE}, images/,"
                    " images_<factor>/)"
                )
            n_orig = len(list_images(originals))
            if n_orig != n:
                raise LLFFDataError(
                    f"{originals}: {n_orig} images but {poses_file.name} has {n} poses; not downsampling"
                )
            downsample_images(originals, img_dir, downscale_factor, show_progress=show_progress, reason=why)
            state = "ours"
    origin = _origins(img_dir) if state == "ours" and originals.is_dir() else {}
    fix = ""
    if state == "user" and downscale_factor != 1 and originals.is_dir():
        fix = (f"; {img_dir.name}/ was not made by wcnerf (it has no {DERIVED_RECORD}): delete it to have it"
               f" made again from {originals.name}/")

    image_paths = list_images(img_dir)
    if len(image_paths) != n:
        counted = originals if origin and originals.is_dir() else img_dir  # ours mirrors images/
        raise LLFFDataError(
            f"{counted}: {len(image_paths)} images but {poses_file} has {n} poses"
            " (one image per row of poses_bounds.npy, matched in sorted name order)" + fix
        )
    try:
        height, width = _check_images(image_paths, origin)
    except LLFFDataError as exc:
        if not fix:
            raise
        raise LLFFDataError(f"{exc}{fix}") from None

    full_h, full_w, full_f = (float(v) for v in raw_poses[0, :, 4])
    focal = full_f / downscale_factor

    # Geometry, in the reference's order: axes, scale, recentre.
    poses = llff_to_opengl(raw_poses[:, :, :4])
    scale = 1.0 / (bounds.min() * bd_factor)
    poses[:, :, 3] *= scale
    bounds = bounds * scale
    poses, inv_avg = recenter_poses(poses)
    # inv_avg acts on scaled world points; on unscaled ones the translation is /scale.
    transform = inv_avg.copy()
    transform[:, 3] /= scale

    return LLFFScene(
        root=root,
        image_paths=image_paths,
        poses=poses,
        bounds=bounds,
        height=height,
        width=width,
        focal=focal,
        downscale_factor=downscale_factor,
        scale=float(scale),
        transform=transform,
        full_hwf=(full_h, full_w, full_f),
        warnings=notes,
    )


# --------------------------------------------------------------------------------------
# Which scene a run trained on
# --------------------------------------------------------------------------------------

_FINGERPRINT = re.compile(r"^poses (?P<poses>[0-9a-f]{12}), (?P<n>\d+) images (?P<images>[0-9a-f]{12})$")


def poses_digest(root: PathLike) -> str:
    """12 hex digits of the sha256 of the scene folder's ``poses_bounds.npy`` (part of :func:`scene_fingerprint`)."""
    return hashlib.sha256((Path(root) / POSES_FILE).read_bytes()).hexdigest()[:12]


def scene_fingerprint(root: PathLike, downscale_factor: int) -> str:
    """What a loaded scene holds, in one line a run's config.yml keeps:
    ``poses <digest>, <N> images <digest>`` (12 hex digits of the sha256 of ``poses_bounds.npy``,
    and of the images' names and sha256s). The images are those of ``images_<factor>/``; for a
    folder wcnerf derived, the source images its record lists (so a folder made again from the
    same ``images/`` keeps the fingerprint). Call it after :func:`load_llff_scene`, which brings
    a derived folder up to date."""
    root = Path(root)
    img_dir = image_dir_for(root, downscale_factor)
    record = _read_record(img_dir) if downscale_factor != 1 else None
    if record:
        items = [(str(e["source"]), str(e["sha256"])) for e in record["files"]]
    else:
        items = [(p.name, _sha256(p)) for p in list_images(img_dir)]
    h = hashlib.sha256()
    for name, digest in items:
        h.update(f"{name}\0{digest}\n".encode())
    return f"poses {poses_digest(root)}, {len(items)} images {h.hexdigest()[:12]}"


def parse_fingerprint(text: str, option: str = "--scene-fingerprint") -> Optional[re.Match]:
    """The parts of a :func:`scene_fingerprint` (None for an empty one: nothing recorded);
    anything else is refused naming ``option``."""
    text = (text or "").strip()
    if not text:
        return None
    m = _FINGERPRINT.match(text)
    if m is None:
        raise LLFFDataError(f"{option} {text!r}: not a scene fingerprint (the trainer records 'poses <12 hex digits>, "
                            "<N> images <12 hex digits>' in config.yml); leave it empty to check nothing")
    return m


def check_recorded_scene(
    root: PathLike, downscale_factor: int, recorded: str, gone_from: Optional[PathLike] = None, *,
    poses_only: bool = False,
) -> None:
    """Refuse the scene folder ``root`` when it is not the scene a run trained on: ``recorded``
    is the run's :func:`scene_fingerprint` (from its config.yml); ``gone_from``: the folder the
    run trained on when that is not there any more and ``root`` was found by its name instead.
    ``poses_only``: compare ``poses_bounds.npy`` only, before the images are read (and a derived
    folder made). The one-line message names the folder(s), what differs and the way out."""
    m = parse_fingerprint(recorded)
    if m is None:
        return
    root = Path(os.path.abspath(root))
    try:
        poses = poses_digest(root)
    except OSError:
        return  # no poses_bounds.npy: load_llff_scene says so
    differs = []
    if poses != m["poses"]:
        differs.append(f"its {POSES_FILE} differs (sha256 {poses}..., recorded {m['poses']}...)")
    if not poses_only and not differs:
        found = _FINGERPRINT.match(scene_fingerprint(root, downscale_factor))
        assert found is not None
        if found["n"] != m["n"]:
            differs.append(f"it has {found['n']} images, the run's had {m['n']}")
        elif found["images"] != m["images"]:
            differs.append(f"its images differ (sha256 {found['images']}..., recorded {m['images']}...)")
    if not differs:
        return
    if gone_from is None:
        raise LLFFDataError(
            f"{root}: is not the scene this run trained on there ({'; '.join(differs)}); the run's config.yml records "
            f"'{recorded.strip()}': put that scene back at {root}, or train a new run on this one"
        )
    gone = Path(os.path.abspath(gone_from))
    raise LLFFDataError(
        f"{root}: is not the scene this run trained on, {gone}, which is not there any more "
        f"({'; '.join(differs)}); put that scene back at {gone} (or where --data's lookup finds it by name), "
        f"or train a new run on {root}"
    )
