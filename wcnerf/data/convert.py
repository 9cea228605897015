"""An LLFF scene as a nerfstudio ``nerfstudio-data`` dataset (``transforms.json`` + images).

So that any method that reads nerfstudio's own format (and the comparisons that need a scene
that is not read through the ``llff`` dataparser) trains on the same cameras::

    wcnerf-llff-to-nerfstudio llff/fern fern-ns --downscale-factor 4
    ns-train nerfacto nerfstudio-data --data fern-ns

What is written (``out/``):

* ``images/``: the LLFF ``images_<downscale_factor>/`` (``images/`` for 1) as PNGs with the same
  stems (hard links where possible; other formats are decoded and saved as PNG, the same
  pixels). ``transforms.json``'s ``w``, ``h``, ``fl_x`` = ``fl_y`` (full-resolution focal /
  factor), ``cx`` = w / 2, ``cy`` = h / 2 describe these: the LLFF dataparser's intrinsics.
* ``images_<k>/``: each coarser LLFF folder ``images_<k * downscale_factor>/`` whose images are
  exactly (w / k) x (h / k) (w and h divisible by k: nerfstudio's ``--downscale-factor k`` scales
  w, h, cx, cy by 1 / k), so ``nerfstudio-data --downscale-factor k`` gets the LLFF cameras at
  that factor too; other folders are skipped (listed in ``wcnerf_llff.skipped``).
* ``frames[i].transform_matrix``: the LLFF dataparser's camera-to-world poses (OpenGL axes,
  scaled so the nearest bound is 1 / bd_factor, recentred on the average pose), in LLFF's image
  order. ``nerfstudio-data`` normalises them once more (by default ``--orientation-method up``,
  ``--center-method poses``, ``--auto-scale-poses True``: a rotation, a shift and a scale it
  reports as ``dataparser_transform`` / ``dataparser_scale``); with ``--orientation-method none
  --center-method none --auto-scale-poses False`` it returns exactly the LLFF cameras.
* The split. nerfstudio sorts frames by file name (LLFF's order too). With ``holdout_every=N``
  (default 8) ``train_filenames`` / ``val_filenames`` / ``test_filenames`` are written: image i
  held out when i % N == 0 (N = 0: every image in every split), LLFF's ``llffhold`` split,
  whatever ``--eval-mode`` says (nerfstudio logs that the dataset overrides the indices). With
  ``holdout_every=None`` no lists are written and ``--eval-mode`` decides:
  ``--eval-mode interval --eval-interval 8`` holds out the same images as LLFF's every-8th
  (index % 8 == 0 of the name-sorted frames); nerfstudio's default ``fraction`` (0.9) does not.
* ``wcnerf_llff`` (ignored by nerfstudio): where it came from, the LLFF world ``scale`` and
  ``transform`` (``llff = scale * (transform @ original)``), the folders and any folder skipped.

NDC is the ``llff`` dataparser's: ``nerfstudio-data`` methods sample in world space.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tyro
from typing_extensions import Annotated

from wcnerf.data.llff_scene import (
    LLFFDataError,
    PathLike,
    _check_images,
    image_dir_for,
    list_images,
    load_llff_scene,
    resolve_data_path,
    split_indices,
)

__all__ = ["llff_to_nerfstudio", "available_factors", "ConvertConfig", "main", "CONVERSION_KEY", "LLFFDataError"]

CONVERSION_KEY = "wcnerf_llff"
"""Key of ``transforms.json`` that marks a folder as this converter's output (so it may be replaced)."""

TRANSFORMS = "transforms.json"


def available_factors(root: PathLike) -> List[int]:
    """Downscale factors with an image folder in the LLFF scene ``root`` (1 for ``images/``), sorted."""
    root = Path(root)
    found = [1] if (root / "images").is_dir() else []
    for p in root.glob("images_*"):
        if p.is_dir() and p.name[7:].isdigit() and int(p.name[7:]) > 0:
            found.append(int(p.name[7:]))
    return sorted(set(found))


def _previous_conversion(out: Path) -> Optional[dict]:
    """The ``wcnerf_llff`` record of ``out/transforms.json``, or None if ``out`` is not our output."""
    try:
        meta = json.loads((out / TRANSFORMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = meta.get(CONVERSION_KEY) if isinstance(meta, dict) else None
    if isinstance(record, dict) and isinstance(record.get("folders"), dict):
        return record
    return None


def _check_out(out: Path, scene_root: Path) -> None:
    """Refuse an ``out`` we must not replace: a file, the scene itself or a folder holding it, or a
    non-empty folder that is not a previous conversion (or holds more than one)."""
    if out.resolve() == scene_root.resolve() or scene_root.resolve().is_relative_to(out.resolve()):
        raise LLFFDataError(f"{out}: is the LLFF scene {scene_root} or holds it; choose another output folder")
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise LLFFDataError(f"{out}: exists and is not a folder; choose a new or empty output folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    record = _previous_conversion(out)
    if record is None:
        raise LLFFDataError(
            f"{out}: folder is not empty and is not a previous conversion (no {TRANSFORMS} with"
            f" '{CONVERSION_KEY}'); not overwriting it: choose a new or empty output folder"
        )
    others = [n for n in entries if n != TRANSFORMS and n not in record["folders"]]
    if others:
        raise LLFFDataError(
            f"{out}: a previous conversion, but it also holds {', '.join(others[:5])}"
            f"{' ...' if len(others) > 5 else ''}; not overwriting it: move those away or choose another folder"
        )


def _put_images(sources: Sequence[Path], dst: Path, names: Sequence[str], link: bool) -> None:
    """``dst/<name>`` for each source: a hard link (or copy) of a PNG, else the decoded pixels as PNG."""
    from PIL import Image

    dst.mkdir()
    for src, name in zip(sources, names):
        target = dst / name
        if src.suffix.lower() == ".png":
            try:
                if not link:
                    raise OSError("copy asked for")
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
        else:
            with Image.open(src) as im:
                im.save(target, format="PNG")


def _coarser_folder_problem(folder: Path, stems: Sequence[str], size: Tuple[int, int]) -> Optional[str]:
    """Why ``folder`` cannot serve as a nerfstudio ``images_<k>/`` of the base images, or None."""
    files = list_images(folder)
    if [p.stem for p in files] != list(stems):
        return f"{folder}: {len(files)} images whose names do not match the {len(stems)} base images"
    try:
        h, w = _check_images(files)
    except LLFFDataError as exc:
        return str(exc)
    if (h, w) != size:
        return f"{folder}: images are {w}x{h}, nerfstudio's downscale expects {size[1]}x{size[0]} (base size / factor)"
    return None


def llff_to_nerfstudio(
    scene: PathLike,
    out: PathLike,
    downscale_factor: Optional[int] = None,
    *,
    holdout_every: Optional[int] = 8,
    bd_factor: float = 0.75,
    link: bool = True,
) -> Path:
    """Write the LLFF scene ``scene`` as a nerfstudio-data folder ``out``; returns ``out/transforms.json``.

    ``scene`` is a scene folder or a name the ``llff`` dataparser looks up (``llff/fern``).
    ``downscale_factor``: the LLFF images that become ``out/images/`` (None: the finest folder the
    scene has; a missing ``images_<f>/`` is made from ``images/`` as the ``llff`` dataparser does).
    ``holdout_every``: the split written into ``transforms.json`` (None: none, ``--eval-mode``
    decides). ``link``: hard-link PNGs (else copy). Bad input (no ``poses_bounds.npy``, image count
    mismatch, unreadable images, impossible cameras) and an ``out`` that must not be replaced raise
    :class:`LLFFDataError`, naming the file and the problem, before anything is written.
    Geometry, folders and split: the module docstring.
    """
    from wcnerf.bounds import OptionError
    from wcnerf.data.llff import LLFF_BOUNDS

    out = Path(out)
    try:
        LLFF_BOUNDS.check_values({"downscale_factor": downscale_factor, "holdout_every": holdout_every,
                                  "bd_factor": bd_factor})
    except OptionError as exc:
        raise LLFFDataError(str(exc)) from None
    root = resolve_data_path(scene, downscale_factor)
    if not (root / "poses_bounds.npy").is_file():
        raise LLFFDataError(f"{root / 'poses_bounds.npy'}: file not found (an LLFF scene needs poses_bounds.npy)")
    _check_out(out, root)
    factors = available_factors(root)
    if downscale_factor is None:
        if not factors:
            raise LLFFDataError(f"{root}: no images/ or images_<factor>/ folder")
        downscale_factor = factors[0]
    f = downscale_factor
    llff = load_llff_scene(root, f, bd_factor=bd_factor, show_progress=False, holdout_every=holdout_every)
    stems = [p.stem for p in llff.image_paths]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise LLFFDataError(f"{image_dir_for(root, f)}: several images share a name stem ({', '.join(dup)})")

    names = [s + ".png" for s in stems]
    n = len(names)
    folders: Dict[str, int] = {"images": f}
    skipped: List[str] = []
    coarser = []
    for g in available_factors(root):
        if g <= f:
            continue
        if g % f:
            skipped.append(f"{image_dir_for(root, g)}: factor {g} is not a multiple of {f}")
            continue
        k = g // f
        if llff.height % k or llff.width % k:
            # nerfstudio would scale cx = w / 2 by 1 / k while LLFF centres it on the smaller image
            skipped.append(f"{image_dir_for(root, g)}: the {llff.width}x{llff.height} base images do not divide by {k}"
                           f" (nerfstudio's --downscale-factor {k} would shift the principal point from LLFF's)")
            continue
        problem = _coarser_folder_problem(image_dir_for(root, g), stems, (llff.height // k, llff.width // k))
        if problem:
            skipped.append(problem)
        else:
            coarser.append(g)

    frames = []
    for name, pose in zip(names, llff.poses):
        c2w = np.eye(4)
        c2w[:3, :4] = pose
        frames.append({"file_path": f"images/{name}", "transform_matrix": c2w.tolist()})
    meta: dict = {
        "camera_model": "PINHOLE",
        "fl_x": float(llff.focal),
        "fl_y": float(llff.focal),
        "cx": llff.width / 2.0,
        "cy": llff.height / 2.0,
        "w": int(llff.width),
        "h": int(llff.height),
        "frames": frames,
    }
    if holdout_every is not None:
        for split in ("train", "val", "test"):
            meta[f"{split}_filenames"] = [f"images/{names[i]}" for i in split_indices(n, holdout_every, split)]
    for g in coarser:
        folders[f"images_{g // f}"] = g
    meta[CONVERSION_KEY] = {
        "source": str(root.resolve()),
        "source_factor": f,
        "folders": folders,
        "holdout_every": holdout_every,
        "bd_factor": bd_factor,
        "scale": float(llff.scale),
        "transform": llff.transform.tolist(),
        "skipped": skipped,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for folder, g in folders.items():
            src = llff.image_paths if g == f else list_images(image_dir_for(root, g))
            _put_images(src, tmp / folder, names, link)
        (tmp / TRANSFORMS).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():  # empty, or a previous conversion (_check_out)
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / TRANSFORMS


@dataclass
class ConvertConfig:
    """Convert an LLFF scene (poses_bounds.npy + images_<factor>/) to nerfstudio's nerfstudio-data
    format (transforms.json + images/), the same cameras; then
    `ns-train <method> nerfstudio-data --data OUT`."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """LLFF scene folder, or a name the llff dataparser looks up (llff/fern)."""
    out: Annotated[Optional[Path], tyro.conf.Positional, tyro.conf.arg(metavar="[OUT]")] = None
    """Output folder: new, empty, or a previous conversion (replaced)."""
    output_dir: Optional[Path] = None
    """The output folder as ns-process-data takes it (the same as OUT; give one of them)."""
    downscale_factor: Optional[int] = None
    """LLFF images_<factor>/ that become out/images/ (1: images/; default: the finest there is).
    Coarser folders that fit become out/images_<k>/ (nerfstudio-data --downscale-factor k)."""
    holdout_every: Optional[int] = 8
    """Split written into transforms.json: image i held out when i % N == 0 (LLFF's; 0: every image
    in every split). None: no split lists, nerfstudio-data's --eval-mode decides."""
    bd_factor: float = 0.75
    """LLFF scale: nearest depth bound at 1 / bd_factor (the llff dataparser's)."""
    copy: bool = False
    """Copy the PNGs instead of hard-linking them."""


def main(args: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-llff-to-nerfstudio SCENE OUT [--downscale-factor N]`` (or ``--output-dir OUT``);
    exit code 2 on bad input."""
    import wcnerf.plugin  # noqa: F401 - its filter of known third-party warnings, before nerfstudio is imported

    cfg = tyro.cli(ConvertConfig, args=args, description=inspect.cleandoc(ConvertConfig.__doc__ or ""))
    if cfg.out is not None and cfg.output_dir is not None and cfg.out != cfg.output_dir:
        print(f"error: OUT {cfg.out} and --output-dir {cfg.output_dir} name different folders; give one", file=sys.stderr)
        return 2
    cfg.out = cfg.out if cfg.out is not None else cfg.output_dir
    if cfg.out is None:
        print("error: no output folder: give OUT or --output-dir", file=sys.stderr)
        return 2
    try:
        path = llff_to_nerfstudio(cfg.scene, cfg.out, cfg.downscale_factor, holdout_every=cfg.holdout_every,
                                  bd_factor=cfg.bd_factor, link=not cfg.copy)
    except LLFFDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads(path.read_text(encoding="utf-8"))
    record = meta[CONVERSION_KEY]
    for note in record["skipped"]:
        print(f"skipped: {note}")
    folders = ", ".join(f"{k}/ (LLFF factor {g})" for k, g in record["folders"].items())
    print(f"{path}: {len(meta['frames'])} frames, {meta['w']}x{meta['h']}, {folders}")
    split = "" if cfg.holdout_every is not None else " --eval-mode interval --eval-interval 8"
    print(f"train with: ns-train <method> nerfstudio-data --data {cfg.out}{split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
