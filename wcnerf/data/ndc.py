"""Normalized device coordinates (NDC) for forward-facing scenes, pure torch.

The NeRF paper (Mildenhall et al. 2020, appendix C) renders forward-facing LLFF scenes in
NDC space: the frustum of the (recentred) average camera, from the world plane
``z = -near`` to ``z = -inf``, is mapped to the cube ``[-1, 1]^3``. A world ray is first
moved along itself onto the near plane, then projected; the projected ray is a straight
line in NDC and its points for ``t`` in ``[0, 1]`` go from the near plane (NDC z = -1) to
infinity (NDC z = +1). Samples are therefore taken linearly in ``t`` in ``[0, 1]``
(linear in NDC depth = linear in inverse world depth).

``ndc_rays`` is a faithful port of the reference ``ndc_rays(H, W, focal, near, rays_o,
rays_d)`` of the NeRF code (bmild/nerf, yenchenlin/nerf-pytorch), with keyword arguments.
The NDC space is defined by the *training* intrinsics (focal, width, height of the loaded
images) and the world near plane (1.0 after the LLFF loader's rescaling); use the same
values for every ray, including rays of cameras that were not in the data set.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["ndc_rays", "ndc_ray_mask", "ndc_t_to_world_z"]


def ndc_rays(
    origins: Tensor,
    directions: Tensor,
    *,
    focal: float,
    width: float,
    height: float,
    near: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Map world-space rays to NDC rays (NeRF reference ``ndc_rays``).

    Args:
        origins: ``(..., 3)`` ray origins in world space (OpenGL camera convention: the
            scene lies towards ``-z``).
        directions: ``(..., 3)`` ray directions in world space, any length (the result
            does not depend on their norm); ``directions[..., 2]`` must be non-zero,
            negative for rays looking into the scene (see :func:`ndc_ray_mask`).
        focal: focal length in pixels of the images the NDC space is built for.
        width, height: their size in pixels.
        near: world depth of the near plane that maps to NDC z = -1.

    Returns:
        ``(origins_ndc, directions_ndc)``, both ``(..., 3)``. ``origins_ndc`` lies on the
        NDC plane z = -1 and ``origins_ndc + t * directions_ndc`` for ``t`` in ``[0, 1]``
        runs from the near plane to infinity (``directions_ndc[..., 2] = 2`` for rays that
        look towards ``-z``). ``directions_ndc`` is not normalised: when integrating
        densities over ``t``, multiply the ``t`` intervals by its norm as the reference
        does.
    """
    # Shift the origins along the rays onto the near plane z = -near.
    t = -(near + origins[..., 2]) / directions[..., 2]
    origins = origins + t[..., None] * directions

    ox, oy, oz = origins[..., 0], origins[..., 1], origins[..., 2]
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
    ax = -1.0 / (width / (2.0 * focal))
    ay = -1.0 / (height / (2.0 * focal))

    # Projection.
    o0 = ax * ox / oz
    o1 = ay * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = ax * (dx / dz - ox / oz)
    d1 = ay * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def ndc_ray_mask(directions: Tensor, eps: float = 1e-6) -> Tensor:
    """Rays that NDC can represent: those looking into the scene (``d_z < -eps``).

    A ray with ``d_z >= 0`` (sideways or backwards, possible for free viewer cameras) never
    reaches world depths beyond the near plane; :func:`ndc_rays` would give infinities
    (``d_z = 0``) or the mirrored ray behind it. Render such rays as background.
    """
    return directions[..., 2] < -eps


def ndc_t_to_world_z(t: Tensor, near: float = 1.0) -> Tensor:
    """World z of the point at parameter ``t`` of an NDC ray from :func:`ndc_rays`.

    On those rays NDC z is ``-1 + 2 t`` and NDC z = ``1 + 2 near / z``, so
    ``z = -near / (1 - t)``: ``-near`` at ``t = 0``, ``-inf`` at ``t = 1``. Depth along the
    (recentred) average viewing axis is ``-z``; useful for turning NDC depth maps into
    world depths.
    """
    return -near / (1.0 - t)
