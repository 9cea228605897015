"""The one NDC ray transform for nerfstudio ``RayBundle``s, used by every method family.

:class:`NDCCollider` wraps the pure :func:`wcnerf.data.ndc.ndc_rays` (NeRF's reference
``ndc_rays``) for ray bundles, as the NeRF reference renders forward-facing LLFF scenes:

* a world ray ``o + s d`` becomes the NDC ray ``o' + t d'``, ``t`` in ``[0, 1]`` from the near
  plane (NDC z = -1) to infinity (NDC z = +1), with the *training* intrinsics and world near
  plane for every ray (also for cameras that were not in the data set);
* the bundle's direction is the normalised ``d' / |d'|`` and its range ``[0, |d'| t_far]``
  (nears 0, fars ``|d'| t_far``): sampling it uniformly is sampling ``t`` uniformly with the
  reference's ``|d_ndc|`` scaling of the intervals;
* rays NDC cannot represent (``d_z >= -eps`` for the *normalised* world direction, i.e. looking
  sideways or backwards, possible for free viewer cameras) get ``nears = fars = 0`` and render
  empty; rays whose transform is not finite likewise;
* :meth:`NDCCollider.world_depth` turns a depth along the normalised NDC ray back into the
  distance along the unit world ray, from the ray's own origin.

``metadata`` of the returned bundle keeps ``ndc_scale`` (``|d'|``, 1 for invalid rays),
``world_origins`` and ``world_directions`` (unit; ``(0, 0, -1)`` for invalid rays) for
:meth:`NDCCollider.world_depth`.

**No clamp of the world direction's z in** :meth:`~NDCCollider.world_depth`. The distance is
``(z(t) - o_z) / d_z`` with ``d_z`` the unit world direction's z. Every ray the collider keeps
has ``d_z < -eps`` (the mask is taken on the normalised direction, so this holds whatever the
length of the camera's directions), and every ray it drops carries ``d_z = -1`` and gets the
far value; so the division is never by a number in ``(-eps, 0]`` and a clamp would either do
nothing or, for a grazing ray, replace its true (large) distance with a wrong smaller one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle

from wcnerf.data.ndc import ndc_ray_mask, ndc_rays, ndc_t_to_world_z

__all__ = ["NDC_T_MAX", "NDCCollider"]

NDC_T_MAX = 0.99
"""Largest NDC ``t`` converted back to a world distance (``t = 1`` is infinitely far): depths
beyond it, and rays that render empty, read as ``near / (1 - NDC_T_MAX)`` = 100 near."""


class NDCCollider(nn.Module):
    """World rays -> NDC rays with normalised directions, ``nears = 0`` and
    ``fars = |d_ndc| * t_far``; rays NDC cannot represent get ``nears = fars = 0``.

    Args:
        focal, width, height: intrinsics (pixels) of the training images the NDC space is
            built for.
        near: world depth of the near plane (NDC z = -1); 1.0 after the LLFF loader's scaling.
        t_far: the far end of the sampled NDC range (1: infinity).
    """

    def __init__(self, focal: float, width: float, height: float, near: float = 1.0, t_far: float = 1.0) -> None:
        super().__init__()
        self.focal, self.width, self.height = float(focal), float(width), float(height)
        self.near, self.t_far = float(near), float(t_far)

    def forward(self, ray_bundle: RayBundle) -> RayBundle:
        dirs = ray_bundle.directions
        unit_dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        forward = torch.tensor([0.0, 0.0, -1.0], device=dirs.device, dtype=dirs.dtype)
        valid = ndc_ray_mask(unit_dirs)[..., None]
        # ndc_rays does not depend on the directions' length: given as they come (bit for bit
        # what both models computed before the transform was shared)
        origins, dirs_ndc = ndc_rays(
            ray_bundle.origins, torch.where(valid, dirs, forward), focal=self.focal, width=self.width,
            height=self.height, near=self.near,
        )
        scale = dirs_ndc.norm(dim=-1, keepdim=True)
        valid = valid & torch.isfinite(origins).all(-1, keepdim=True) & torch.isfinite(scale) & (scale > 1e-12)
        origins = torch.where(valid, origins, torch.zeros_like(origins))
        unit = torch.where(valid, dirs_ndc / scale.clamp_min(1e-12), forward.expand_as(dirs_ndc))
        scale = torch.where(valid, scale, torch.ones_like(scale))
        world_dirs = torch.where(valid, unit_dirs, forward.expand_as(unit_dirs))
        metadata = dict(ray_bundle.metadata)
        metadata["ndc_scale"] = scale
        metadata["world_origins"] = ray_bundle.origins
        metadata["world_directions"] = world_dirs
        return RayBundle(
            origins=origins,
            directions=unit,
            pixel_area=ray_bundle.pixel_area,
            camera_indices=ray_bundle.camera_indices,
            nears=torch.zeros_like(scale),
            fars=torch.where(valid, scale * self.t_far, torch.zeros_like(scale)),
            metadata=metadata,
            times=ray_bundle.times,
        )

    def world_depth(self, depth: Tensor, bundle: RayBundle) -> Tensor:
        """Distance along the unit world ray (from its origin) of ``depth``, a distance along the
        normalised NDC ray of ``bundle`` (this collider's output); rays that render empty
        (``fars == 0``) get ``near / (1 - NDC_T_MAX)``."""
        meta = bundle.metadata
        t = (depth / meta["ndc_scale"]).clamp(0.0, NDC_T_MAX)
        z = ndc_t_to_world_z(t, near=self.near)  # world z of the point (NDC z = -1 + 2 t)
        d_z = meta["world_directions"][..., 2:3]  # < -eps on valid rays, -1 on the others: no clamp
        dist = (z - meta["world_origins"][..., 2:3]) / d_z
        assert bundle.fars is not None
        far = torch.full_like(dist, self.near / (1.0 - NDC_T_MAX))
        return torch.where(bundle.fars > 0, dist.clamp_min(0.0), far)
