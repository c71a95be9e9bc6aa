"""Motion supervision: bilinear patches (gooddrag.md §10 item 6), loss structure (item 7), mask sizes (item 11)."""
import pytest
import torch
import torch.nn.functional as F

from comfyui_dragedit.kernels import motion
from comfyui_dragedit.kernels.errors import ArgumentError
from comfyui_dragedit.kernels.motion import MotionSupervision


def _map(channels=5, height=12, width=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, height, width, generator=g, dtype=torch.float64)


def test_integer_centers_are_exact_slices():
    fmap = _map()
    patch = motion.sample_patch(fmap, torch.tensor([[4, 5], [6, 9]]), 2)
    assert patch.shape == (2, 5, 5, 5)
    assert torch.equal(patch[0], fmap[0, :, 2:7, 3:8])
    assert torch.equal(patch[1], fmap[0, :, 4:9, 7:12])


def test_half_pixel_offset_is_the_mean_of_two_slices():
    fmap = _map()
    patch = motion.sample_patch(fmap, torch.tensor([[4.5, 5.0]], dtype=torch.float64), 1)[0]
    expected = (fmap[0, :, 3:6, 4:7] + fmap[0, :, 4:7, 4:7]) / 2
    torch.testing.assert_close(patch, expected, rtol=0, atol=1e-15)


def test_gradient_wrt_the_map_is_the_bilinear_weights():
    fmap = _map().requires_grad_(True)
    motion.sample_patch(fmap, torch.tensor([[3.25, 7.75]], dtype=torch.float64), 0).sum().backward()
    expected = torch.zeros_like(fmap)
    expected[0, :, 3, 7] = 0.75 * 0.25
    expected[0, :, 4, 7] = 0.25 * 0.25
    expected[0, :, 3, 8] = 0.75 * 0.75
    expected[0, :, 4, 8] = 0.25 * 0.75
    torch.testing.assert_close(fmap.grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("center", [(0.0, 0.0), (0.3, 13.6), (11.0, 2.5), (-0.7, 6.2), (11.9, 13.9)])
def test_patches_at_the_border_replicate_the_edge_like_grid_sample(center):
    fmap = _map()
    r = 2
    patch = motion.sample_patch(fmap, torch.tensor([center], dtype=torch.float64), r)[0]
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    rows, cols = center[0] + offsets, center[1] + offsets
    _, _, height, width = fmap.shape
    grid = torch.stack(torch.broadcast_tensors(cols[None, :] / (width - 1) * 2 - 1,
                                               rows[:, None] / (height - 1) * 2 - 1), dim=-1)
    expected = F.grid_sample(fmap, grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    assert patch.shape == (5, 2 * r + 1, 2 * r + 1)
    torch.testing.assert_close(patch, expected, rtol=0, atol=1e-12)


def test_step_length_is_min_beta_dist_for_gooddrag_and_one_for_dragdiffusion():
    handles = torch.tensor([[10, 10], [10, 10], [10, 10], [10, 10]])
    targets = torch.tensor([[10, 40], [13, 14], [10.5, 10.5], [10, 10]])
    gd = motion.step_vectors(MotionSupervision("gooddrag", beta=4.0), handles, targets, torch.float64)
    dd = motion.step_vectors(MotionSupervision("dragdiffusion"), handles, targets, torch.float64)
    torch.testing.assert_close(gd.norm(dim=1), torch.tensor([4.0, 4.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(dd.norm(dim=1), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(gd[1], torch.tensor([2.4, 3.2], dtype=torch.float64))
    assert torch.isfinite(gd).all() and torch.isfinite(dd).all()
    short = motion.step_vectors(MotionSupervision("gooddrag", beta=4.0), handles[:1], torch.tensor([[10, 13]]),
                                torch.float64)
    torch.testing.assert_close(short, torch.tensor([[0.0, 3.0]], dtype=torch.float64))


def test_gooddrag_loss_is_64_times_the_mean_against_the_original_patch():
    spec = MotionSupervision("gooddrag", r1=4, beta=4.0)
    assert spec.patch_weight == 64
    cur, ref = _map(3, 32, 32, seed=1).requires_grad_(True), _map(3, 32, 32, seed=2).requires_grad_(True)
    handles, origins, targets = torch.tensor([[14, 12]]), torch.tensor([[15, 13]]), torch.tensor([[14, 22]])
    loss = motion.drag_loss(spec, cur, handles, targets, ref, origins)
    moved = cur[0, :, 10:19, 12:21]  # handle + (0, 4): an integer shift, an exact slice
    expected = 64 * (moved - ref[0, :, 11:20, 9:18]).abs().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=0)
    loss.backward()
    assert ref.grad is None  # stop-gradient on the target


def test_dragdiffusion_loss_is_9_times_the_mean_against_the_current_patch():
    spec = MotionSupervision("dragdiffusion", r1=1)
    assert spec.patch_weight == 9
    cur = _map(3, 16, 16, seed=3).requires_grad_(True)
    handles, targets = torch.tensor([[6, 6]]), torch.tensor([[6, 12]])
    loss = motion.drag_loss(spec, cur, handles, targets)
    expected = 9 * (cur[0, :, 5:8, 6:9] - cur[0, :, 5:8, 5:8].detach()).abs().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=0)
    loss.backward()
    manual = cur.detach().clone().requires_grad_(True)
    (9 * (manual[0, :, 5:8, 6:9] - cur.detach()[0, :, 5:8, 5:8]).abs().mean()).backward()
    torch.testing.assert_close(cur.grad, manual.grad, rtol=0, atol=0)


def test_weight_rule_overrides_the_variant():
    assert MotionSupervision("gooddrag", r1=4, weight_rule="2r+1").patch_weight == 81
    assert MotionSupervision("dragdiffusion", r1=1, weight_rule="2r").patch_weight == 4


@pytest.mark.parametrize("variant", ["gooddrag", "dragdiffusion"])
def test_points_within_reach_contribute_nothing(variant):
    spec = MotionSupervision(variant, r1=2, reach=motion.OFFICIAL_REACH)
    cur, ref = _map(3, 32, 32, seed=4).requires_grad_(True), _map(3, 32, 32, seed=5)
    handles = torch.tensor([[10, 10], [20, 20]])
    origins = handles.clone()
    near = torch.tensor([[10, 18], [21, 21]])  # point 1 is 1.41 px away
    both = motion.drag_loss(spec, cur, handles, near, ref, origins)
    first = motion.drag_loss(spec, cur, handles[:1], near[:1], ref, origins[:1])
    assert both.item() > 0
    torch.testing.assert_close(both, first, rtol=0, atol=0)
    done = motion.drag_loss(spec, cur, handles, handles + torch.tensor([[0, 1], [1, 1]]), ref, origins)
    assert done.item() == 0.0
    assert motion.active_points(spec, handles, near).tolist() == [True, False]
    assert motion.active_points(spec, handles, handles + torch.tensor([[1, 1], [0, -1]])).tolist() == [False, False]


@pytest.mark.parametrize("variant", ["gooddrag", "dragdiffusion"])
def test_the_default_reach_makes_the_one_cell_drags_the_official_reach_leaves_undone(variant):
    cur, ref = _map(3, 32, 32, seed=4).requires_grad_(True), _map(3, 32, 32, seed=5)
    handles = torch.tensor([[10, 10], [20, 20]])
    neighbours = torch.tensor([[10, 11], [21, 21]])   # the engine's points are whole sup px: one cell over, diagonal
    official = MotionSupervision(variant, r1=2, reach=motion.OFFICIAL_REACH)
    default = MotionSupervision(variant, r1=2)
    assert default.reach == 1.0
    assert motion.drag_loss(official, cur, handles, neighbours, ref, handles).item() == 0.0
    assert motion.drag_loss(default, cur, handles, neighbours, ref, handles).item() > 0
    step = motion.step_vectors(default, handles, neighbours, torch.float64)
    lengths = [1.0, 2 ** 0.5] if variant == "gooddrag" else [1.0, 1.0]   # min(beta, dist); DragDiffusion: unit
    torch.testing.assert_close(step.norm(dim=1), torch.tensor(lengths, dtype=torch.float64))
    assert motion.active_points(default, handles, handles).tolist() == [False, False]


def test_reach_must_be_positive():
    with pytest.raises(ArgumentError) as err:
        MotionSupervision("gooddrag", reach=0.0)
    assert err.value.argument == "reach"


def test_gooddrag_needs_the_reference():
    with pytest.raises(ValueError, match="ref_features"):
        motion.drag_loss(MotionSupervision(), _map(), torch.tensor([[5, 5]]), torch.tensor([[5, 9]]))


def test_latent_term_is_zero_inside_the_mask_and_sums_outside():
    spec = MotionSupervision("gooddrag", lam=0.1, regularize_empty_mask=True)
    z_prev, orig = _map(4, 8, 8, seed=6), _map(4, 8, 8, seed=7)
    full = motion.latent_keep(torch.ones(64, 64), (32, 32), (8, 8), spec)
    assert motion.latent_term(spec, z_prev, orig, full).item() == 0.0
    empty = motion.latent_keep(torch.zeros(64, 64), (32, 32), (8, 8), spec)
    torch.testing.assert_close(motion.latent_term(spec, z_prev, orig, empty), 0.1 * (z_prev - orig).abs().sum())
    assert motion.latent_keep(None, (32, 32), (8, 8), spec).shape == (1, 1, 8, 8)


def test_empty_mask_means_no_latent_term_by_default():
    spec = MotionSupervision("dragdiffusion", lam=0.1)
    assert motion.latent_keep(torch.zeros(64, 64), (32, 32), (8, 8), spec) is None
    assert motion.latent_keep(None, (32, 32), (8, 8), spec) is None
    assert motion.latent_keep(torch.ones(64, 64), (32, 32), (8, 8), MotionSupervision(lam=0.0)) is None
    assert motion.latent_keep(torch.ones(1, 1, 64, 64), (32, 32), (8, 8), spec) is not None


def test_mask_goes_image_to_sup_to_latent_by_nearest_twice():
    spec = MotionSupervision()
    g = torch.Generator().manual_seed(8)
    mask = (torch.rand(1, 60, 44, generator=g) > 0.6).float() * 0.7
    keep = motion.latent_keep(mask, (30, 22), (7, 5), spec)
    binary = (mask > 0).float()[None]
    expected = 1 - F.interpolate(F.interpolate(binary, size=(30, 22), mode="nearest"), size=(7, 5), mode="nearest")
    assert torch.equal(keep, expected)
    with pytest.raises(ValueError, match="mask"):
        motion.latent_keep(torch.ones(2, 1, 8, 8), (4, 4), (2, 2), spec)


@pytest.mark.parametrize("kwargs, name", [
    (dict(variant="draggan"), "variant"), (dict(r1=0), "r1"), (dict(r1=2.0), "r1"), (dict(beta=0), "beta"),
    (dict(lam=-0.1), "lam"), (dict(weight_rule="2r+2"), "weight_rule")])
def test_bad_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MotionSupervision(**kwargs)


def test_payload_is_frozen():
    with pytest.raises(Exception):
        motion.GOODDRAG_MOTION.r1 = 2
