"""The catalogue of broken LLFF scenes: copies of fern with one thing broken, each defined once.

:data:`BROKEN` maps a case's name (as the probe's table prints it) to a :class:`Broken`: the edit
that breaks a copied scene in place (:attr:`Broken.breaker`) and what the pure reader's refusal
says (:attr:`Broken.says`: fragments of the message's first line; empty where the reader accepts
the scene, with or without a warning). :meth:`Broken.build` copies a scene and breaks it.

The edits work on fern's ``images_8/`` and on :func:`support.tiny.tiny_fern`'s ``images_32/``
alike (a copied scene has one ``images_<factor>/`` folder). One-row edits change row
:data:`ROW` (rotations) or :data:`BOUNDS_ROW` (near / far), one-image edits image
:data:`ODD_IMAGE`, so a test can name the row or the image its message must mention.

Used by tests/test_reliability_llff.py (the pure reader), tests/test_reliability_ns.py
(``ns-train`` on some of them) and tests/reliability_probe.py (every case, as a table).

No nerfstudio import here.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

from wcnerf.data.llff_scene import BOUNDS_RATIO_WARN

POSES = "poses_bounds.npy"

ROW = 5
"""The row whose rotation block the one-row rotation edits break."""

BOUNDS_ROW = 3
"""The row whose near and far bounds :func:`swap_bounds` swaps."""

ODD_IMAGE = 4
"""The index (in name order) of the image that the one-image edits change."""

Breaker = Callable[[Path], object]
"""Breaks the scene folder it is given, in place."""

PoseEdit = Callable[[np.ndarray], object]
"""Edits the N x 17 poses_bounds array in place, or returns the array that replaces it."""


# ----------------------------------------------------------------------------- copying
def copy_fern(fern: Path, dst: Path, factor: int = 8) -> Path:
    """``dst`` (created) with ``fern``'s poses_bounds.npy and images_<factor>/ (only)."""
    dst.mkdir(parents=True)
    shutil.copy(fern / POSES, dst / POSES)
    shutil.copytree(fern / f"images_{factor}", dst / f"images_{factor}")
    return dst


def image_dir(scene: Path) -> Path:
    """The scene's one ``images_<factor>/`` folder."""
    found = sorted(scene.glob("images_*"))
    if len(found) != 1:
        raise ValueError(f"{scene}: expected one images_<factor>/ folder, found {[p.name for p in found]}")
    return found[0]


def images(scene: Path) -> List[Path]:
    """The scene's images, in name order."""
    return sorted(image_dir(scene).iterdir())


def odd_image(scene: Path) -> Path:
    """The image the one-image edits change (:data:`ODD_IMAGE`)."""
    return images(scene)[ODD_IMAGE]


# ----------------------------------------------------------------------------- pose edits
def rot(arr: np.ndarray, i: int) -> np.ndarray:
    """Row i's 3x3 rotation block (a view into arr)."""
    return arr[i, :15].reshape(3, 5)[:, :3]


def edit_poses(scene: Path, edit: PoseEdit) -> Path:
    """Apply ``edit`` to the scene's poses_bounds.npy; its path."""
    path = scene / POSES
    arr = np.load(path)
    out = edit(arr)
    np.save(path, out if isinstance(out, np.ndarray) else arr)
    return path


def pose_edit(edit: PoseEdit) -> Breaker:
    """A breaker applying ``edit`` (:func:`edit_poses`)."""
    return lambda scene: edit_poses(scene, edit)


def setting(index, value) -> PoseEdit:
    """``a[index] = value`` (``value`` may be a function of the array)."""
    def edit(a):
        a[index] = value(a) if callable(value) else value
    return edit


def swap_bounds(a: np.ndarray) -> None:
    """Near and far of row :data:`BOUNDS_ROW` swapped (near >= far)."""
    a[BOUNDS_ROW, 15], a[BOUNDS_ROW, 16] = a[BOUNDS_ROW, 16], a[BOUNDS_ROW, 15]


ROTATION_BREAKS = ("zero", "two-equal-columns", "reflection", "scaled", "rounded")


def break_rotation(how: str, rows=(ROW,)) -> PoseEdit:
    """Each of ``rows``' rotation block (None: every row) made ``how``: "zero", "two-equal-columns"
    (singular), "reflection" (det -1), "scaled" (2 R: not orthonormal) or "rounded" (to four digits,
    within the reader's tolerance)."""
    if how not in ROTATION_BREAKS:
        raise ValueError(f"unknown rotation break {how!r}; one of {ROTATION_BREAKS}")

    def edit(a):
        for i in range(len(a)) if rows is None else rows:
            R = rot(a, i)
            if how == "zero":
                R[:] = 0
            elif how == "two-equal-columns":
                R[:, 1] = R[:, 0]
            elif how == "reflection":
                R[:, 2] *= -1
            elif how == "scaled":
                R *= 2
            else:
                R[:] = np.round(R, 4)
    return edit


def keep_poses(n: int) -> PoseEdit:
    """The first ``n`` rows only."""
    return lambda a: a[:n]


# ----------------------------------------------------------------------------- image edits
def truncate(p: Path) -> None:
    """``p`` cut to its first 200 bytes."""
    p.write_bytes(p.read_bytes()[:200])


def image_edit(fn: Callable[[Path], object]) -> Breaker:
    """A breaker applying ``fn`` to the scene's :func:`odd_image`."""
    return lambda scene: fn(odd_image(scene))


def convert(mode: str) -> Callable[[Path], None]:
    """The image converted to PIL mode ``mode`` in place."""
    def apply(p: Path) -> None:
        Image.open(p).convert(mode).save(p)
    return apply


def _resize(p: Path) -> None:
    Image.open(p).resize((100, 80)).save(p)


def _sixteen_bit(p: Path) -> None:
    Image.fromarray(np.asarray(Image.open(p).convert("L"), np.uint16) * 256).save(p)


def drop_images(keep: int) -> Breaker:
    """All but the first ``keep`` images deleted."""
    def apply(scene: Path) -> None:
        for p in images(scene)[keep:]:
            p.unlink()
    return apply


def one_image(scene: Path) -> None:
    """One pose and one image (held out with holdout_every 8: no training image)."""
    edit_poses(scene, keep_poses(1))
    drop_images(1)(scene)


# ----------------------------------------------------------------------------- the catalogue
@dataclasses.dataclass(frozen=True)
class Broken:
    """One broken scene: ``breaker`` breaks a copy in place; ``says``: fragments of the pure
    reader's refusal (first line; empty: the reader accepts the scene)."""

    breaker: Breaker
    says: Tuple[str, ...] = ()

    def build(self, src: Path, dst: Path, factor: int = 8) -> Path:
        """``dst``: a copy of ``src`` (:func:`copy_fern`), broken."""
        self.breaker(copy_fern(src, dst, factor))
        return dst


_NOT_NPY = ("cannot read as a .npy array",)
_NOT_ROTATION = ("not a rotation", f"row {ROW}")

BROKEN: Dict[str, Broken] = {
    "fern unchanged": Broken(lambda s: None),
    # poses_bounds.npy unreadable
    "poses_bounds.npy missing": Broken(lambda s: (s / POSES).unlink(), ("file not found",)),
    "poses_bounds.npy empty file": Broken(lambda s: (s / POSES).write_bytes(b""), _NOT_NPY),
    "poses_bounds.npy random bytes": Broken(lambda s: (s / POSES).write_bytes(bytes(range(256)) * 4), _NOT_NPY),
    "poses_bounds.npy truncated": Broken(lambda s: truncate(s / POSES), _NOT_NPY),
    "shape N x 16": Broken(pose_edit(lambda a: a[:, :16]), ("expected an N x 17 array",)),
    "shape 0 x 17": Broken(pose_edit(keep_poses(0)), ("expected an N x 17 array",)),
    # impossible values
    "NaN in a pose": Broken(pose_edit(setting((3, 3), np.nan)), ("non-finite",)),
    "inf in a bound": Broken(pose_edit(setting((3, 16), np.inf)), ("non-finite",)),
    "negative near bound": Broken(pose_edit(setting((3, 15), -1.0)), ("depth bounds must be positive",)),
    "zero focal": Broken(pose_edit(setting((0, 14), 0.0)), ("focal] column must be positive",)),
    "near >= far in one row": Broken(pose_edit(swap_bounds), ("near bound >= far bound", f"row {BOUNDS_ROW}")),
    # rotation blocks that are not rotations
    "zero rotation blocks": Broken(pose_edit(break_rotation("zero", rows=None)), ("not a rotation",)),
    "zero rotation block in one row": Broken(pose_edit(break_rotation("zero")), _NOT_ROTATION),
    "singular rotation (two equal columns)": Broken(pose_edit(break_rotation("two-equal-columns")), _NOT_ROTATION),
    "reflection (det -1)": Broken(pose_edit(break_rotation("reflection")), _NOT_ROTATION),
    "rotation scaled by 2": Broken(pose_edit(break_rotation("scaled")), _NOT_ROTATION),
    "rotations rounded to 4 digits": Broken(pose_edit(break_rotation("rounded", rows=None))),
    # degenerate geometry
    "all cameras at one pose": Broken(pose_edit(setting((slice(None), slice(0, 15)), lambda a: a[0, :15])),
                                      ("do not span a baseline",)),
    "near bound 1e-30 (scene x1e30)": Broken(pose_edit(setting((2, 15), 1e-30)), ("depth bounds span", "1e-30")),
    # accepted with one warning (depth bounds span); tied to the reader's threshold
    "bounds span 10 x BOUNDS_RATIO_WARN": Broken(
        pose_edit(setting((2, 15), lambda a: a[:, 16].max() / (10 * BOUNDS_RATIO_WARN)))),
    "whole scene scaled by 1e-30": Broken(pose_edit(setting((slice(None), [3, 8, 13, 15, 16]),
                                                            lambda a: a[:, [3, 8, 13, 15, 16]] * 1e-30))),
    # images
    "one image (holdout_every 8)": Broken(one_image, ("no training image", "--holdout-every 0")),
    "one image fewer than poses": Broken(drop_images(19), ("19 images but",)),
    "images_8 missing": Broken(lambda s: shutil.rmtree(image_dir(s)), ("folder not found",)),
    "an image truncated": Broken(image_edit(truncate), ("cannot read image",)),
    "an image of another size": Broken(image_edit(_resize), ("all images of a scene must have the same size",)),
    "RGBA among RGB": Broken(image_edit(convert("RGBA")), ("4 channels", "convert")),
    "grey among RGB": Broken(image_edit(convert("L"))),
    "palette image": Broken(image_edit(convert("P")), ("mode P",)),
    "16-bit image": Broken(image_edit(_sixteen_bit), ("mode I;16",)),
}
"""Every broken scene, by name (the probe's table rows, in order)."""
