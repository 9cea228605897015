"""ndc_rays, and the RayBundle collider both model families use (wcnerf.plugin.ndc.NDCCollider),
against a direct numpy transcription of the NeRF reference formula."""

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


# ----------------------------------------------------------------------------- RayBundles
def _bundle(origins, directions):
    from nerfstudio.cameras.rays import RayBundle

    o, d = torch.from_numpy(origins), torch.from_numpy(directions)
    n = o.shape[0]
    return RayBundle(origins=o, directions=d, pixel_area=torch.ones(n, 1, dtype=o.dtype),
                     camera_indices=torch.zeros(n, 1, dtype=torch.long))


@pytest.mark.parametrize("t_far", [1.0, 0.8])
@pytest.mark.parametrize("near", [1.0, 0.5])
def test_collider_matches_reference_on_ray_bundles(near, t_far):
    """wcnerf.plugin.ndc.NDCCollider (both model families' NDC) against the reference transcription:
    NDC origins, normalised NDC directions, range [0, |d_ndc| t_far]; sideways/backward rays empty."""
    pytest.importorskip("nerfstudio")
    from wcnerf.plugin.ndc import NDCCollider

    rng = np.random.default_rng(3)
    origins, directions = random_forward_rays(rng, (200,))
    directions *= rng.uniform(0.2, 5.0, size=(200, 1))  # any length: the result must not depend on it
    back = np.arange(200) < 20
    directions[back, 2] = rng.uniform(0.0, 0.5, size=20)  # looking sideways/backwards
    directions[0] = [0.3, 0.0, 0.0]  # d_z = 0 exactly
    H, W, focal = 378, 504, 407.5657916100737
    with np.errstate(divide="ignore", invalid="ignore"):  # the d_z = 0 ray: the reference divides by 0
        ref_o, ref_d = reference_ndc_rays_np(H, W, focal, near, origins, directions)
    ref_scale = np.linalg.norm(ref_d, axis=-1, keepdims=True)

    out = NDCCollider(focal, W, H, near=near, t_far=t_far)(_bundle(origins, directions))
    ok = ~back
    assert out.origins.dtype == torch.float64
    np.testing.assert_allclose(out.origins.numpy()[ok], ref_o[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.directions.numpy()[ok], (ref_d / ref_scale)[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.fars.numpy()[ok], t_far * ref_scale[ok], rtol=1e-10)
    np.testing.assert_allclose(out.metadata["ndc_scale"].numpy()[ok], ref_scale[ok], rtol=1e-10)
    assert torch.all(out.nears == 0) and torch.all(out.fars[torch.from_numpy(back)] == 0)
    for key in ("origins", "directions", "fars"):
        assert torch.isfinite(getattr(out, key)).all(), key
    # a sample at distance s along the normalised NDC ray is the reference's point at t = s / |d_ndc|
    s = out.fars.numpy()[ok] * rng.uniform(0.0, 1.0, size=(int(ok.sum()), 1))
    np.testing.assert_allclose(out.origins.numpy()[ok] + s * out.directions.numpy()[ok],
                               ref_o[ok] + (s / ref_scale[ok]) * ref_d[ok], rtol=1e-9, atol=1e-9)


def test_world_depth_inverts_the_mapping():
    """A world point at a known distance along a ray -> its NDC depth (reference projection) ->
    NDCCollider.world_depth gives the distance back; empty rays read as 100 near."""
    pytest.importorskip("nerfstudio")
    from wcnerf.plugin.ndc import NDC_T_MAX, NDCCollider

    rng = np.random.default_rng(4)
    H, W, focal, near = 378, 504, 407.5657916100737, 1.0
    origins, directions = random_forward_rays(rng, (300,), spread=0.1)
    directions[:3] = [[1.0, 0.0, -1e-3], [0.0, 0.7, -0.01], [-0.2, 0.1, -1.0]]  # grazing rays too
    unit = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    # distances putting every point beyond the near plane, at NDC t < NDC_T_MAX
    z_target = -rng.uniform(1.5, 40.0, size=(300, 1)) * near
    s = (z_target - origins[:, 2:3]) / unit[:, 2:3]
    points = origins + s * unit
    # the reference's projection of a point (ndc_rays' o0, o1, o2 for a point on z < 0)
    p_ndc = np.stack([-1.0 / (W / (2.0 * focal)) * points[:, 0] / points[:, 2],
                      -1.0 / (H / (2.0 * focal)) * points[:, 1] / points[:, 2],
                      1.0 + 2.0 * near / points[:, 2]], -1)
    col = NDCCollider(focal, W, H, near=near)
    out = col(_bundle(origins, directions * 7.0))  # world_depth is along the *unit* world ray
    depth_ndc = ((torch.from_numpy(p_ndc) - out.origins) * out.directions).sum(-1, keepdim=True)
    t = depth_ndc / out.metadata["ndc_scale"]
    assert float(t.max()) < NDC_T_MAX
    torch.testing.assert_close(col.world_depth(depth_ndc, out), torch.from_numpy(s), rtol=1e-8, atol=1e-8)

    empty = col(_bundle(np.zeros((2, 3)), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])))
    torch.testing.assert_close(col.world_depth(torch.full((2, 1), 0.5, dtype=torch.float64), empty),
                               torch.full((2, 1), near / (1 - NDC_T_MAX), dtype=torch.float64))


def test_collider_mask_is_on_the_normalised_direction():
    """A ray is kept iff its *unit* world direction has d_z < -eps, whatever its length: then
    world_depth divides by |d_z| > eps and needs no clamp (see wcnerf.plugin.ndc)."""
    pytest.importorskip("nerfstudio")
    from wcnerf.plugin.ndc import NDCCollider

    dirs = np.array([[1.0, 0.0, -5e-7], [1.0, 0.0, -2e-6], [0.0, 0.0, -1.0]])
    col = NDCCollider(400.0, 500, 380)
    for length in (1.0, 1e3):
        out = col(_bundle(np.zeros((3, 3)), dirs * length))
        assert (out.fars[:, 0] > 0).tolist() == [False, True, True]
        assert out.metadata["world_directions"][0].tolist() == [0.0, 0.0, -1.0]
        assert torch.isfinite(col.world_depth(out.fars * 0.5, out)).all()
