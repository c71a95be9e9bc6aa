"""The AlDD drag engine on stub UNets: gooddrag.md §10 items 1, 3, 8, 9, 10, 11, 13, and bad input."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from comfyui_dragedit.kernels import aldd, ddim, motion, schedule
from comfyui_dragedit.kernels.aldd import DRAGDIFFUSION, GOODDRAG, AlDDPolicy, AlDDSettings
from comfyui_dragedit.kernels.schedule import alpha_bar_at

ALPHAS = schedule.scaled_linear_alphas_cumprod()
IMAGE = (64, 64)          # (W, H) -> sup 32x32, latent 8x8
F64 = torch.float64


class StubUNet:
    """Fixed random convs standing in for the UNet: eps from a 3x3 conv, features from another, upsampled.

    `eps_fn(z, step)` is the host's batched call: with step.bank_attention every item also reads item 0
    (MasaCtrl's "attend to the source"), otherwise each item reads itself, so equal items stay equal.
    """

    def __init__(self, seed=0, channels=6, sup=(32, 32)):
        g = torch.Generator().manual_seed(seed)
        self.w_feat = torch.randn(channels, 4, 3, 3, generator=g, dtype=F64) * 0.4
        self.w_eps = torch.randn(4, 4, 3, 3, generator=g, dtype=F64) * 0.05
        self.w_bank = torch.randn(4, 4, 1, 1, generator=g, dtype=F64) * 0.05
        self.sup = sup
        self.forward_ts = []
        self.steps = []

    def _eps(self, z, source, t):
        return F.conv2d(z, self.w_eps, padding=1) + F.conv2d(torch.tanh(source), self.w_bank) + 0.01 * t / 1000

    def forward(self, z, t, need_eps=True):
        self.forward_ts.append(t)
        h = torch.tanh(F.conv2d(z, self.w_feat, padding=1) * (1 + t / 1000))
        return self._eps(z, z, t), [F.interpolate(h, size=self.sup, mode="bilinear", align_corners=False)]

    def eps_fn(self, z, step):
        self.steps.append(step)
        return self._eps(z, z[:1].expand_as(z) if step.bank_attention else z, step.t)


def _latent(seed=1):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _run(settings, motion_spec, tracker_spec, handles, targets, unet=None, z=None, mask=None, callback=None):
    unet = StubUNet() if unet is None else unet
    z = _latent() if z is None else z
    plan = settings.plan(50)
    policy = AlDDPolicy(unet.forward, plan, ALPHAS, handles, targets, IMAGE, settings=settings, motion=motion_spec,
                        tracker=tracker_spec, mask=mask, callback=callback)
    with torch.enable_grad():
        out = ddim.denoise(unet.eps_fn, torch.cat([z, z]), plan, ALPHAS, policy)
    return out, policy, unet


def _xy(*points):
    return torch.tensor(points, dtype=F64)


# ---- item 1: schedule bookkeeping -------------------------------------------------------------------------------

def test_gooddrag_schedule_counts():
    settings = dataclasses.replace(GOODDRAG.settings, lr=1e-7, max_no_change=0)
    _, policy, unet = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, _xy([10, 10]), _xy([56, 56]))
    assert policy.stop_reason is None
    assert policy.grad_steps == 210 == policy.total
    assert policy.trackings == 70 and policy.start_trackings == 7
    assert sorted(set(unet.forward_ts), reverse=True) == [741, 721, 701, 681, 661, 641, 621]
    assert len(unet.forward_ts) == 7 + 210  # one reference forward per drag step + one per gradient step
    assert [s.t for s in unet.steps][0] == 741 and len(unet.steps) == 38
    bank = [s.t for s in unet.steps if s.bank_attention]
    assert bank[0] == 601 and len(bank) == 31
    assert len(policy.trajectory_xy()) == 1 + 70 + 7


# ---- item 3: zero drag ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [GOODDRAG, DRAGDIFFUSION], ids=["gooddrag", "dragdiffusion"])
@pytest.mark.parametrize("targets", [_xy([20, 30], [40, 12]), _xy([20.6, 30], [40.5, 12.5])],
                         ids=["equal", "within_reach"])
def test_no_drag_gives_the_source_reconstruction(preset, targets):
    handles = _xy([20, 30], [40, 12])
    out, policy, _ = _run(preset.settings, preset.motion, preset.tracker, handles, targets,
                          mask=torch.ones(64, 64))
    assert policy.grad_steps == 0 and policy.stop_reason == "reached"
    assert torch.equal(out[1], out[0])
    plain_plan = preset.settings.plan(50)
    z = _latent()
    source = ddim.denoise(StubUNet().eps_fn, torch.cat([z, z]), plain_plan, ALPHAS)
    assert torch.equal(out, source)


@pytest.mark.parametrize("preset", [GOODDRAG, DRAGDIFFUSION], ids=["gooddrag", "dragdiffusion"])
def test_a_one_cell_drag_is_made_at_the_default_reach_and_skipped_at_the_official_one(preset):
    handles, targets = _xy([20, 30]), _xy([22, 30])   # 2 image px: one sup cell to the right
    official = dataclasses.replace(preset.motion, reach=motion.OFFICIAL_REACH)
    out, policy, _ = _run(preset.settings, official, preset.tracker, handles, targets, mask=torch.ones(64, 64))
    assert policy.grad_steps == 0 and policy.stop_reason == "reached" and torch.equal(out[1], out[0])
    out, policy, _ = _run(preset.settings, preset.motion, preset.tracker, handles, targets, mask=torch.ones(64, 64))
    assert policy.grad_steps > 0 and not torch.equal(out[1], out[0])


def test_zero_drag_steps_is_a_plain_denoise():
    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=0)
    out, policy, unet = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, _xy([10, 10]), _xy([50, 50]))
    assert policy.grad_steps == 0 and unet.forward_ts == []
    assert torch.equal(out[0], out[1])


# ---- item 8: descent on a smooth stub ---------------------------------------------------------------------------

class BlobStub:
    """Features = z upsampled x4 and blurred (smooth, linear); eps depends on t only."""

    def __init__(self):
        x = torch.arange(-4, 5, dtype=F64)
        k = torch.exp(-x ** 2 / 4.5)
        self.kernel = (k[:, None] * k[None, :] / k.sum() ** 2)[None, None].expand(4, 1, 9, 9)

    def forward(self, z, t, need_eps=True):
        up = F.interpolate(z, size=(64, 64), mode="bilinear", align_corners=False)
        return self.eps(z, t), [F.conv2d(F.pad(up, (4, 4, 4, 4), mode="replicate"), self.kernel, groups=4)]

    @staticmethod
    def eps(z, t):
        return torch.full_like(z, 0.1 * t / 1000)


@pytest.mark.parametrize("timing", ["after", "before"])
def test_gooddrag_descends_and_reaches_the_target_on_a_smooth_stub(timing):
    rows, cols = torch.meshgrid(torch.arange(16, dtype=F64), torch.arange(16, dtype=F64), indexing="ij")
    z = torch.exp(-((rows - 8.125) ** 2 + (cols - 5.125) ** 2) / 2).expand(1, 4, 16, 16).clone()
    stub = BlobStub()
    settings = dataclasses.replace(GOODDRAG.settings, track_timing=timing)
    plan = settings.plan(50)
    losses = []
    # the blob sits at sup (34, 22) = image (44, 68) of 128x128; the target is 24 sup px to the right
    policy = AlDDPolicy(stub.forward, plan, ALPHAS, _xy([44, 68]), _xy([92, 68]), (128, 128), settings=settings,
                        motion=GOODDRAG.motion, tracker=GOODDRAG.tracker,
                        callback=lambda info: losses.append(float(info["loss"])) if info["active"] else None)
    with torch.enable_grad():
        ddim.denoise(lambda zz, step: stub.eps(zz, step.t), torch.cat([z, z]), plan, ALPHAS, policy)
    assert policy.stop_reason == "reached" and policy.grad_steps < policy.total
    dist = (torch.stack(policy.trajectory).double() - policy.targets.double()).norm(dim=-1)[:, 0]
    assert (dist[1:] <= dist[:-1]).all(), dist
    per_drag = torch.tensor(losses[:len(losses) // 3 * 3]).view(-1, 3)
    assert (per_drag[:, 2] < per_drag[:, 0]).double().mean() > 0.9


# ---- item 9: early stop -----------------------------------------------------------------------------------------

def test_early_stop_counts_unmoved_trackings_across_timesteps():
    fixed = torch.randn(1, 6, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    unet = StubUNet()

    def frozen_features(z, t, need_eps=True):  # a map constant in time and in z: the tracker never moves
        eps, _ = unet.forward(z, t)
        return eps, [fixed + 0 * F.interpolate(z[:, :1], size=(32, 32))]

    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=4, drags_per_step=3, grad_steps_per_drag=2,
                                   max_no_change=5)
    plan = settings.plan(50)
    policy = AlDDPolicy(frozen_features, plan, ALPHAS, _xy([10, 10]), _xy([50, 50]), IMAGE, settings=settings,
                        motion=GOODDRAG.motion, tracker=GOODDRAG.tracker)
    z = _latent()
    with torch.enable_grad():
        ddim.denoise(unet.eps_fn, torch.cat([z, z]), plan, ALPHAS, policy)
    assert policy.stop_reason == "no_change"
    assert policy.trackings == 5 and policy.start_trackings == 2 and policy.grad_steps == 10
    # the two skipped drag steps run with MasaCtrl, as GoodDrag registers it once dragging ends
    assert [s.bank_attention for s in unet.steps[:5]] == [False, False, True, True, True]
    assert not any(s.drag for s in unet.steps[2:4])


# ---- item 10: DragDiffusion equivalence -------------------------------------------------------------------------

def _reference_track(F0, F1, handles, origins, r2):
    """DragDiffusion's tracker, written as plainly as in its paper: cut window, L1 argmin, cut origin."""
    _, _, height, width = F1.shape
    new = []
    for h, p0 in zip(handles.tolist(), origins.tolist()):
        r_lo, r_hi = max(0, int(h[0]) - r2), min(height, int(h[0]) + r2 + 1)
        c_lo, c_hi = max(0, int(h[1]) - r2), min(width, int(h[1]) + r2 + 1)
        f0 = F0[0, :, int(p0[0]), int(p0[1])]
        dist = (F1[0, :, r_lo:r_hi, c_lo:c_hi] - f0[:, None, None]).abs().sum(dim=0)
        row, col = divmod(int(dist.argmin()), dist.shape[1])
        new.append([r_lo + row, c_lo + col])
    return torch.tensor(new, dtype=F64)


def _reference_dragdiffusion(unet, z_t, handles, targets, keep, steps=80, lr=0.01, r1=1, r2=3, lam=0.1):
    """DragDiffusion (gooddrag.md §2): optimize z at t=681 alone, then denoise [source, edit] with MasaCtrl."""
    plan = [dataclasses.replace(s, bank_attention=True) for s in schedule_plan(0.7)]
    t, t_prev = plan[0].t, plan[0].t_prev
    a_t, a_prev = alpha_bar_at(ALPHAS, t), alpha_bar_at(ALPHAS, t_prev)
    with torch.no_grad():
        eps0, feats0 = unet.forward(z_t, t)
        F0 = feats0[0]
        z_prev_0, _ = ddim.ddim_step(z_t, eps0, a_t, a_prev)
    z = z_t.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    origins = handles.clone()
    taken = 0
    for k in range(steps):
        eps, feats = unet.forward(z, t)
        F1 = feats[0]
        z_prev, _ = ddim.ddim_step(z, eps, a_t, a_prev)
        if k != 0:
            handles = _reference_track(F0, F1, handles, origins, r2)
        if all((g - h).norm() < 2.0 for h, g in zip(handles, targets)):
            break
        loss = 0.0
        for h, g in zip(handles, targets):
            if (g - h).norm() < 2.0:
                continue
            d = (g - h) / (g - h).norm()
            f0_patch = motion.sample_patch(F1.detach(), h[None], r1)[0]
            f1_patch = motion.sample_patch(F1, (h + d)[None], r1)[0]
            loss = loss + (2 * r1 + 1) ** 2 * (f1_patch - f0_patch).abs().mean()
        if keep is not None:
            loss = loss + lam * ((z_prev - z_prev_0) * keep).abs().sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        taken += 1
    zz = torch.cat([z_t, z.detach()])
    with torch.no_grad():
        for s in plan:
            zz, _ = ddim.ddim_step(zz, unet.eps_fn(zz, s), alpha_bar_at(ALPHAS, s.t), alpha_bar_at(ALPHAS, s.t_prev))
    return zz, handles, taken


def schedule_plan(strength):
    from comfyui_dragedit.kernels.plan import ddim_plan
    return ddim_plan(50, strength)


def test_dragdiffusion_switches_reproduce_a_plain_dragdiffusion_loop_bit_for_bit():
    handles, targets = _xy([12, 14], [46, 50]), _xy([30, 20], [40, 36])
    mask = torch.zeros(64, 64)
    mask[4:40, 4:60] = 1
    official = dataclasses.replace(DRAGDIFFUSION.motion, reach=motion.OFFICIAL_REACH)   # the loop's "< 2.0"
    out, policy, _ = _run(DRAGDIFFUSION.settings, official, DRAGDIFFUSION.tracker, handles, targets, mask=mask)
    sup = aldd.supervision_size(IMAGE)
    keep = motion.latent_keep(mask, sup, (8, 8), official)
    h_rc = aldd.to_supervision(handles, IMAGE, sup).to(F64)
    g_rc = aldd.to_supervision(targets, IMAGE, sup).to(F64)
    with torch.enable_grad():
        expected, final, taken = _reference_dragdiffusion(StubUNet(), _latent(), h_rc, g_rc, keep)
    assert taken == policy.grad_steps > 10
    assert torch.equal(policy.handles.to(F64), final) and not torch.equal(final, h_rc)
    assert torch.equal(out, expected)
    assert not torch.equal(out[1], out[0])


def test_gooddrag_defaults_differ_from_the_dragdiffusion_loop():
    handles, targets = _xy([12, 14]), _xy([30, 20])
    settings = dataclasses.replace(GOODDRAG.settings, strength=0.7, drag_steps=1, bank_from_start=True)
    out, _, _ = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, handles, targets)
    sup = aldd.supervision_size(IMAGE)
    with torch.enable_grad():
        expected, _, _ = _reference_dragdiffusion(StubUNet(), _latent(), aldd.to_supervision(handles, IMAGE, sup).to(F64),
                                                  aldd.to_supervision(targets, IMAGE, sup).to(F64), None)
    assert not torch.equal(out, expected)


# ---- item 11: coordinates ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [(512, 512), (512, 384), (513, 301)])
def test_image_to_sup_round_trips_within_one_pixel(image_size):
    width, height = image_size
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(500, 2, generator=g, dtype=F64) * torch.tensor([width - 1, height - 1], dtype=F64)
    xy = torch.cat([xy, _xy([0, 0], [width - 1, height - 1], [width - 1, 0])])
    sup = aldd.supervision_size(image_size)
    rc = aldd.to_supervision(xy, image_size, sup)
    assert rc.dtype == torch.long and (rc >= 0).all() and (rc < torch.tensor(sup)).all()
    back = aldd.to_image(rc, image_size, sup)
    err = (back - xy).abs()
    assert err.max() <= 1.01  # half a sup cell; a cell is 2.004 px for odd sizes
    # the official rounding sends the last pixel column past the map (sup_w); it is clipped to the last column
    edge = aldd.to_supervision(_xy([width - 0.01, height - 0.01]), image_size, sup)
    assert edge.tolist() == [[sup[0] - 1, sup[1] - 1]]


def test_official_point_conversion():
    assert aldd.supervision_size((512, 512)) == (256, 256)
    rc = aldd.to_supervision(_xy([100, 200], [101, 3]), (512, 512), (256, 256))
    assert rc.tolist() == [[100, 50], [2, 50]]  # round half to even: 50.5 -> 50, 1.5 -> 2
    handles, targets = aldd.split_points([[1, 2], [3, 4], [5, 6], [7, 8]])
    assert handles.tolist() == [[1, 2], [5, 6]] and targets.tolist() == [[3, 4], [7, 8]]


# ---- item 13: scale guard ---------------------------------------------------------------------------------------

def test_the_optimized_variable_is_the_vp_latent():
    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=1, drags_per_step=2)
    handles, targets = _xy([12, 14]), _xy([40, 20])
    z = _latent()
    out, policy, _ = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, handles, targets, z=z)
    sigma = schedule.sigma_from_alpha_bar(alpha_bar_at(ALPHAS, 741))
    for scale in (0.5, 1.0, 3.0):  # any sigma parametrization the host sees converts back to the same z
        x = schedule.x_from_z(z, sigma * scale)
        again, _, _ = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, handles, targets,
                           z=schedule.z_from_x(x, sigma * scale))
        torch.testing.assert_close(again, out, rtol=1e-12, atol=1e-12)
    # feeding sigma-space x (about 4x z at t=741) instead changes Adam's trajectory, so the guard can fail
    unscaled, _, _ = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, handles, targets,
                          z=schedule.x_from_z(z, sigma))
    assert not torch.allclose(schedule.z_from_x(unscaled, schedule.sigma_from_alpha_bar(ALPHAS[0].item())), out)


# ---- policy plumbing --------------------------------------------------------------------------------------------

def test_callback_trajectory_and_final_handles():
    infos = []
    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=2, drags_per_step=2, grad_steps_per_drag=2,
                                   max_no_change=0)
    _, policy, _ = _run(settings, GOODDRAG.motion, GOODDRAG.tracker, _xy([12, 14]), _xy([50, 20]),
                        callback=infos.append)
    assert [info["grad_step"] for info in infos] == list(range(1, 9))
    assert [info["t"] for info in infos] == [741] * 4 + [721] * 4
    assert all(info["total"] == 8 for info in infos)
    assert infos[-1]["loss"].dim() == 0
    assert policy.trajectory_xy().shape == (1 + 4 + 2, 1, 2)
    torch.testing.assert_close(policy.final_handles_xy(), policy.trajectory_xy()[-1])
    torch.testing.assert_close(policy.trajectory_xy()[0], _xy([12, 14]))


def test_drags_touch_only_the_edit_item():
    handles, targets = _xy([12, 14]), _xy([40, 20])
    z = _latent()
    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=1, drags_per_step=2)
    unet = StubUNet()
    policy = AlDDPolicy(unet.forward, settings.plan(50), ALPHAS, handles, targets, IMAGE, settings=settings)
    step = settings.plan(50)[0]
    policy.start(settings.plan(50), torch.cat([z, z]))
    with torch.enable_grad():
        moved = policy.before_step(step, torch.cat([z, z]))
    assert torch.equal(moved[0], z[0]) and not torch.equal(moved[1], z[0])
    assert policy.before_step(settings.plan(50)[1], moved) is moved


# ---- keep_outside (not in the papers) ------------------------------------------------------------------------

def _masked_drag(mask, keep_outside):
    """Two drag timesteps of a drag from inside the mask to its edge, then the plain denoising to t=0."""
    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=2, drags_per_step=2)
    plan = settings.plan(50)
    unet, z = StubUNet(), _latent()
    policy = AlDDPolicy(unet.forward, plan, ALPHAS, _xy([12, 14]), _xy([40, 20]), IMAGE, settings=settings,
                        motion=GOODDRAG.motion, tracker=GOODDRAG.tracker, mask=mask, keep_outside=keep_outside)
    with torch.enable_grad():
        return ddim.denoise(unet.eps_fn, torch.cat([z, z]), plan, ALPHAS, policy), policy


def _left_of(x_px):
    mask = torch.zeros(64, 64)
    mask[:, :x_px] = 1.0
    return mask


def test_keep_outside_holds_the_latent_outside_the_mask_on_the_source_path():
    out, policy = _masked_drag(_left_of(48), keep_outside=True)   # latent columns 0-5 editable, 6-7 not
    assert policy.grad_steps > 0
    assert torch.equal(out[1, ..., 6:], out[0, ..., 6:])
    assert (out[1, ..., :6] - out[0, ..., :6]).abs().max() > 1e-3


def test_without_keep_outside_the_region_outside_the_mask_drifts_as_officially():
    out, _ = _masked_drag(_left_of(48), keep_outside=False)
    assert (out[1, ..., 6:] - out[0, ..., 6:]).abs().max() > 1e-3


def test_keep_outside_with_an_empty_mask_leaves_the_whole_image_editable():
    kept, _ = _masked_drag(torch.zeros(64, 64), keep_outside=True)
    official, _ = _masked_drag(torch.zeros(64, 64), keep_outside=False)
    assert torch.equal(kept, official) and not torch.equal(kept[1], kept[0])


# ---- bad input --------------------------------------------------------------------------------------------------

def _policy(**overrides):
    kwargs = dict(forward_fn=StubUNet().forward, plan=GOODDRAG.settings.plan(50), alphas_cumprod=ALPHAS,
                  handles=_xy([10, 10]), targets=_xy([20, 20]), image_size=IMAGE)
    kwargs.update(overrides)
    return AlDDPolicy(**kwargs)


def test_odd_number_of_points():
    with pytest.raises(ValueError, match="points"):
        aldd.split_points([[1, 2], [3, 4], [5, 6]])


def test_handle_count_must_match_target_count():
    with pytest.raises(ValueError, match="targets"):
        _policy(handles=_xy([10, 10], [12, 12]))


@pytest.mark.parametrize("name, points", [("handles", _xy([64, 10])), ("handles", _xy([-1, 10])),
                                          ("targets", _xy([10, 64.5])), ("handles", torch.zeros(0, 2))])
def test_points_outside_the_image(name, points):
    with pytest.raises(ValueError, match=name):
        _policy(**{name: points})


def test_drag_steps_beyond_the_inverted_steps():
    with pytest.raises(ValueError, match="drag_steps"):
        AlDDSettings(drag_steps=39).plan(50)
    assert len(AlDDSettings(drag_steps=38).plan(50)) == 38


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-0.01), "lr"), (dict(drags_per_step=0), "drags_per_step"),
    (dict(grad_steps_per_drag=0), "grad_steps_per_drag"), (dict(max_no_change=-1), "max_no_change"),
    (dict(track_timing="during"), "track_timing"), (dict(drag_steps=1.5), "drag_steps")])
def test_bad_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AlDDSettings(**kwargs)


def test_batch_must_be_source_and_edit():
    policy = _policy()
    with pytest.raises(ValueError, match="z"):
        policy.before_step(GOODDRAG.settings.plan(50)[0], _latent())


def test_features_must_be_at_supervision_resolution():
    unet = StubUNet(sup=(16, 16))
    policy = _policy(forward_fn=unet.forward)
    policy.start(GOODDRAG.settings.plan(50), torch.cat([_latent(), _latent()]))
    with pytest.raises(ValueError, match="sup"):
        policy.before_step(GOODDRAG.settings.plan(50)[0], torch.cat([_latent(), _latent()]))


def test_presets_match_the_spec_tables():
    gd, dd = GOODDRAG, DRAGDIFFUSION
    assert (gd.settings.lr, gd.settings.drag_steps, gd.settings.drags_per_step, gd.settings.grad_steps_per_drag,
            gd.settings.max_no_change, gd.settings.strength) == (0.02, 7, 10, 3, 5, 0.75)
    assert (gd.motion.r1, gd.motion.beta, gd.motion.lam, gd.tracker.r2, gd.motion.patch_weight) == (4, 4.0, 0.1, 12, 64)
    assert (dd.settings.drag_steps, dd.settings.drags_per_step, dd.settings.grad_steps_per_drag,
            dd.settings.strength, dd.settings.track_timing, dd.settings.bank_from_start) == (1, 80, 1, 0.7, "before", True)
    assert (dd.motion.variant, dd.motion.r1, dd.tracker.r2, dd.motion.patch_weight) == ("dragdiffusion", 1, 3, 9)
    plan = dd.settings.plan(50)
    assert plan[0].t == 681 and plan[0].drag and all(s.bank_attention for s in plan)


def test_masked_adam_is_torch_adam_until_the_gate_closes():
    z0 = _latent()
    grads = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(k), dtype=F64) for k in range(5)]
    leaf = z0.clone().requires_grad_(True)
    reference = torch.optim.Adam([leaf], lr=0.02)
    adam, z = aldd.MaskedAdam(z0, 0.02), z0.clone()
    for grad in grads[:3]:
        leaf.grad = grad.clone()
        reference.step()
        z = adam.step(z, grad, torch.tensor(True))
        assert torch.equal(z, leaf.detach())
    frozen = adam.step(z, grads[3], torch.tensor(False))
    assert torch.equal(frozen, z)
    skipped = adam.step(z, torch.full_like(z, float("nan")), torch.tensor(True))
    assert torch.equal(skipped, z), "a non-finite gradient leaves the latent and the moments alone"


def test_loss_scaling_gives_the_unscaled_steps_and_backs_off_on_overflow():
    z0, grad = _latent(), torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=F64)
    plain, scaled = aldd.MaskedAdam(z0, 0.02), aldd.MaskedAdam(z0, 0.02, loss_scaling=True)
    assert float(scaled.scale) == 2.0 ** 16
    torch.testing.assert_close(scaled.step(z0, grad * scaled.scale, torch.tensor(True)),
                               plain.step(z0, grad, torch.tensor(True)), rtol=1e-12, atol=1e-12)
    scaled.step(z0, torch.full_like(z0, float("inf")), torch.tensor(True))
    assert float(scaled.scale) == 2.0 ** 15


def test_the_no_change_limit_at_a_chunks_last_tracking_ends_dragging_before_the_next_timestep():
    """GD pipeline.py:L695-704: the next timestep is neither dragged nor without MasaCtrl (no extra forward)."""
    fixed = torch.randn(1, 6, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    unet = StubUNet()
    seen = []

    def frozen_features(z, t, need_eps=True):
        seen.append(t)
        eps, _ = unet.forward(z, t)
        return eps, [fixed + 0 * F.interpolate(z[:, :1], size=(32, 32))]

    settings = dataclasses.replace(GOODDRAG.settings, drag_steps=3, drags_per_step=3, grad_steps_per_drag=1,
                                   max_no_change=3)
    plan = settings.plan(50)
    policy = AlDDPolicy(frozen_features, plan, ALPHAS, _xy([10, 10]), _xy([50, 50]), IMAGE, settings=settings,
                        motion=GOODDRAG.motion, tracker=GOODDRAG.tracker)
    z = _latent()
    with torch.enable_grad():
        ddim.denoise(unet.eps_fn, torch.cat([z, z]), plan, ALPHAS, policy)
    assert policy.stop_reason == "no_change" and policy.trackings == 3 and policy.grad_steps == 3
    assert set(seen) == {741}, "no forward at the next timestep"
    assert [s.bank_attention for s in unet.steps[:3]] == [False, True, True]
