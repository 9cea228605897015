"""ndc_rays against a direct numpy transcription of the NeRF reference formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wcnerf.data.ndc import ndc_ray_mask, ndc_rays, ndc_t_to_world_z


def reference_ndc_rays_np(H, W, focal, near, rays_o, rays_d):
    """The reference ``ndc_rays(H, W, focal, near, rays_o, rays_d)``, transcribed to numpy."""
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d

    o0 = -1.0 / (W / (2.0 * focal)) * rays_o[..., 0] / rays_o[..., 2]
    o1 = -1.0 / (H / (2.0 * focal)) * rays_o[..., 1] / rays_o[..., 2]
    o2 = 1.0 + 2.0 * near / rays_o[..., 2]

    d0 = -1.0 / (W / (2.0 * focal)) * (rays_d[..., 0] / rays_d[..., 2] - rays_o[..., 0] / rays_o[..., 2])
    d1 = -1.0 / (H / (2.0 * focal)) * (rays_d[..., 1] / rays_d[..., 2] - rays_o[..., 1] / rays_o[..., 2])
    d2 = -2.0 * near / rays_o[..., 2]
    return np.stack([o0, o1, o2], -1), np.stack([d0, d1, d2], -1)


def random_forward_rays(rng, shape, spread=0.3):
    """Rays from around the origin looking roughly into -z (as in a recentred LLFF scene)."""
    origins = rng.normal(scale=spread, size=shape + (3,))
    directions = np.concatenate(
        [rng.uniform(-0.6, 0.6, size=shape + (2,)), -rng.uniform(0.5, 1.5, size=shape + (1,))], -1
    )
    return origins, directions


@pytest.mark.parametrize("shape", [(1,), (257,), (4, 33)])
@pytest.mark.parametrize("near", [1.0, 0.5, 2.0])
def test_matches_reference_formula(shape, near):
    rng = np.random.default_rng(hash((shape, near)) % 2**32)
    origins, directions = random_forward_rays(rng, shape)
    H, W, focal = 378, 504, 407.5657916100737
    ref_o, ref_d = reference_ndc_rays_np(H, W, focal, near, origins, directions)
    o, d = ndc_rays(
        torch.from_numpy(origins), torch.from_numpy(directions), focal=focal, width=W, height=H, near=near
    )
    assert o.shape == origins.shape and d.shape == directions.shape
    assert o.dtype == torch.float64
    np.testing.assert_allclose(o.numpy(), ref_o, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-12, atol=1e-12)


def test_float32_and_arbitrary_directions():
    """float32 in, float32 out; reference formula also for rays not looking into -z."""
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(500, 3))
    directions = rng.normal(size=(500, 3))
    directions[np.abs(directions[:, 2]) < 0.05, 2] = 0.5  # keep away from d_z = 0
    ref_o, ref_d = reference_ndc_rays_np(100, 200, 150.0, 1.0, origins, directions)
    o, d = ndc_rays(
        torch.from_numpy(origins).float(), torch.from_numpy(directions).float(), focal=150.0, width=200, height=100
    )
    assert o.dtype == torch.float32 and d.dtype == torch.float32
    np.testing.assert_allclose(o.numpy(), ref_o, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=2e-3, atol=2e-3)


def test_direction_norm_does_not_matter():
    rng = np.random.default_rng(1)
    origins, directions = (torch.from_numpy(a) for a in random_forward_rays(rng, (64,)))
    scale = torch.from_numpy(rng.uniform(0.1, 10.0, size=(64, 1)))
    a = ndc_rays(origins, directions, focal=300.0, width=400, height=300)
    b = ndc_rays(origins, directions * scale, focal=300.0, width=400, height=300)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_ndc_ray_geometry():
    """Origins on NDC z = -1, d_z = 2; points at t map back onto the world ray."""
    rng = np.random.default_rng(2)
    origins, directions = (torch.from_numpy(a) for a in random_forward_rays(rng, (128,)))
    focal, W, H, near = 400.0, 500, 380, 1.0
    o, d = ndc_rays(origins, directions, focal=focal, width=W, height=H, near=near)
    torch.testing.assert_close(o[:, 2], torch.full((128,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(d[:, 2], torch.full((128,), 2.0, dtype=torch.float64))

    for t in (0.0, 0.25, 0.5, 0.9):
        p = o + t * d
        assert torch.allclose(p[:, 2], torch.tensor(-1.0 + 2 * t, dtype=torch.float64))
        # Unproject the NDC point: z = 2 near / (z_ndc - 1), x = -x_ndc z W / (2 f), ...
        z = 2 * near / (p[:, 2] - 1)
        torch.testing.assert_close(z, ndc_t_to_world_z(torch.full_like(z, t), near=near))
        x = -p[:, 0] * z * W / (2 * focal)
        y = -p[:, 1] * z * H / (2 * focal)
        world = torch.stack([x, y, z], -1)
        # ... which lies on the original ray: (world - origin) parallel to direction.
        cross = torch.linalg.cross(world - origins, directions, dim=-1)
        assert cross.abs().max() < 1e-9 * (1 + (world - origins).abs().max())
        assert torch.all(z <= -near + 1e-12)


def test_centre_ray_of_average_camera():
    """The average camera's optical axis maps onto the NDC z axis."""
    o, d = ndc_rays(
        torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -1.0]]), focal=100.0, width=200, height=100, near=1.0
    )
    torch.testing.assert_close(o, torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 2.0]]))


def test_mask_and_gradients():
    dirs = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.3, 0.5], [0.0, 0.0, -1e-9]])
    assert ndc_ray_mask(dirs).tolist() == [True, False, False, False]

    origins = torch.zeros(2, 3, requires_grad=True)
    directions = torch.tensor([[0.1, 0.0, -1.0], [0.0, -0.2, -1.0]], requires_grad=True)
    o, d = ndc_rays(origins, directions, focal=10.0, width=20, height=10)
    (o.sum() + d.sum()).backward()
    assert torch.isfinite(origins.grad).all() and torch.isfinite(directions.grad).all()
