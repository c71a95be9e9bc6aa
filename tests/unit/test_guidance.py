"""Guidance injection, regional gating and the regional SDE: dragondiffusion.md §4, §6, §11.5, 11.6, 11.10, 11.11."""
import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_dragedit.kernels import energy as E
from comfyui_dragedit.kernels import guidance as G
from comfyui_dragedit.kernels import masks as M
from comfyui_dragedit.kernels.ddim import ddim_step, denoise
from comfyui_dragedit.kernels.plan import PlanStep, dragon_plan
from comfyui_dragedit.kernels.schedule import alpha_bar_at, ddim_timesteps, scaled_linear_alphas_cumprod

AC = scaled_linear_alphas_cumprod()
TS = ddim_timesteps(50)
LATENT = (8, 12)
IMAGE = (64, 96)


def stub_features(seed=0, channels=(6, 5)):
    """Translation-equivariant two-layer extractor (§11.7), t-dependent so reference caching is visible."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(channels[0], 4, 3, 3, generator=gen, dtype=torch.float64) / 3
    w2 = torch.randn(channels[1], channels[0], 3, 3, generator=gen, dtype=torch.float64) / 3

    def features_fn(z, t):
        h1 = torch.tanh(F.conv2d(F.pad(z, (1, 1, 1, 1), mode="circular"), w1) * (1 + t / 1000))
        h2 = torch.tanh(F.conv2d(F.pad(h1, (1, 1, 1, 1), mode="circular"), w2))
        return [F.interpolate(h, scale_factor=2, mode="nearest") for h in (h1, h2)]
    return features_fn


FEATS = stub_features()


def latent(seed, shape=(1, 4, *LATENT)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def eps_fn(z, step):
    """A z- and t-dependent stub eps."""
    return 0.3 * z + 0.01 * step.t * torch.ones_like(z) / 1000


def image_mask(rows=(20, 36), cols=(32, 56)):
    m = torch.zeros(IMAGE)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return m


def policy(guidance, seed=0, features_fn=FEATS, **kw):
    two = guidance.mode in ("appearance", "paste")
    return G.DragonPolicy(guidance, features_fn, lambda t: latent(1), AC,
                          source=(lambda t: latent(2)) if two else None, seed=seed, **kw)


def step_at(i, **kw):
    return PlanStep(i=i, t=TS[i], t_prev=TS[i + 1] if i + 1 < 50 else -1, guided=True, **kw)


BUILDERS = {
    "move": lambda w, **kw: E.move(image_mask(), (16, 8), LATENT, weights=w, **kw),
    "resize": lambda w, **kw: E.resize(image_mask(), 1.5, LATENT, offset=(-8, 0), weights=w, **kw),
    "appearance": lambda w, **kw: E.appearance(image_mask(), image_mask((8, 24), (8, 40)), LATENT, weights=w,
                                               **kw),
    "paste": lambda w, **kw: E.paste(image_mask(), (-16, 8), LATENT, weights=w, **kw),
    "drag": lambda w, **kw: E.drag([[30.0, 22.0], [52.0, 30.0]], [[46.0, 30.0], [60.0, 38.0]], LATENT,
                                   mask=image_mask((8, 56), (8, 88)), weights=w, **kw),
}
# The builders whose guidance step can keep the latent's mean (keep_latent_mean, on by default; not in the paper).
MEAN_KEEPING = ("move", "resize", "drag")


def official_step(mode) -> dict:
    """The builder keywords that give the paper's guidance step (no mean kept) for `mode`."""
    return dict(keep_latent_mean=False) if mode in MEAN_KEEPING else {}


# ------------------------------------------------------------------------------------- §11.5 injection

@pytest.mark.parametrize("i,coef", [(0, 1.1196), (10, 1.0633), (20, 0.9584), (29, 0.7882)])
@pytest.mark.parametrize("sde", [False, True])
def test_guidance_moves_z_prev_by_the_exact_injection_coefficient(i, coef, sde):
    """§11.5: guided minus unguided z_{t-1} = -sqrt(ab_prev/ab_t) sqrt(1 - ab_t) g, in ODE and SDE steps."""
    a_t, a_prev = alpha_bar_at(AC, TS[i]), alpha_bar_at(AC, TS[i + 1])
    exact = math.sqrt(a_prev / a_t) * math.sqrt(1 - a_t)
    assert round(exact, 4) == coef
    z, eps, g, n = latent(1), latent(2), latent(3), latent(4)
    kw = dict(sigma=G.regional_sigma(a_t, a_prev, torch.ones(LATENT, dtype=torch.bool), 0.4).double(), noise=n) \
        if sde else {}
    guided, _ = ddim_step(z, eps + g, a_t, a_prev, eps_dir=eps, **kw)
    plain, _ = ddim_step(z, eps, a_t, a_prev, **kw)
    torch.testing.assert_close(guided - plain, -exact * g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("i", [0, 20])
def test_the_loop_applies_the_policy_correction_with_that_coefficient(i):
    """The policy's g, through `denoise`, shifts z_{t-1} by exactly -coef g (gradient enters x0_hat only)."""
    g = E.move(image_mask(), (16, 8), LATENT)
    z = latent(5)
    step = step_at(i)
    correction = policy(g).guidance(step, z, eps_fn(z, step))
    guided = denoise(eps_fn, z, [step], AC, policy=policy(g))
    plain = denoise(eps_fn, z, [step], AC)
    a_t, a_prev = alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev)
    assert correction.abs().max() > 1e-3
    torch.testing.assert_close(guided - plain, -math.sqrt(a_prev / a_t) * math.sqrt(1 - a_t) * correction,
                               rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- §11.6 gating

@pytest.mark.parametrize("mode", sorted(BUILDERS))
def test_regional_gating_of_the_edit_and_content_gradients(mode):
    """§11.6: only w_e -> g = 0 outside m↓; w_e = 0 -> g = 0 inside m↓; all weights 0 -> g = 0.

    Drag's w_inpaint term pushes the handle patch, inside E_edit (§3.4), so it goes with w_e there.
    """
    z, step = latent(5), step_at(3)

    def build(weights):
        return BUILDERS[mode](weights, **official_step(mode))
    edit_only = build(E.EnergyWeights(4.0, 0.0, 0.0, 0.0))
    gate = edit_only.gate
    g = policy(edit_only).guidance(step, z, None)
    assert g.shape == z.shape
    assert torch.equal(g[..., ~gate], torch.zeros_like(g[..., ~gate])) and g[..., gate].abs().max() > 1e-4
    content_only = E.EnergyWeights(0.0, 6.0, 0.0, 0.0) if mode == "drag" else E.EnergyWeights(0.0, 6.0, 0.2, 0.8)
    g = policy(build(content_only)).guidance(step, z, None)
    assert torch.equal(g[..., gate], torch.zeros_like(g[..., gate])) and g[..., ~gate].abs().max() > 1e-4
    g = policy(build(E.EnergyWeights(0.0, 0.0, 0.0, 0.0))).guidance(step, z, None)
    assert torch.equal(g, torch.zeros_like(z))


def test_correction_scales_with_eta_and_energy_scale():
    z, step = latent(5), step_at(3)
    base = policy(BUILDERS["move"](None, eta=0.08, energy_scale=500.0)).guidance(step, z, None)
    more = policy(BUILDERS["move"](None, eta=0.04, energy_scale=3000.0)).guidance(step, z, None)
    torch.testing.assert_close(more, 3.0 * base, rtol=1e-10, atol=1e-14)
    off = policy(BUILDERS["move"](None, energy_scale=0.0)).guidance(step, z, None)
    assert torch.equal(off, torch.zeros_like(z))


def test_correction_is_the_gated_gradient_of_the_scaled_energies():
    """g = eta [m ∇(s_E E_edit) + (1 - m) ∇(s_E E_con)], against plain autograd on the energies."""
    g = BUILDERS["paste"](None)
    z = latent(5).requires_grad_(True)
    ref, src = FEATS(latent(1), 41), FEATS(latent(2), 41)
    e_edit, e_con = E.energies(g, FEATS(z, 41), ref, src)
    got = G.correction(z, e_edit, e_con, g.gate, g.eta, g.energy_scale)
    ge = torch.autograd.grad(E.energies(g, FEATS(z, 41), ref, src)[0], z)[0]
    gc = torch.autograd.grad(E.energies(g, FEATS(z, 41), ref, src)[1], z)[0]
    m = g.gate.double()
    torch.testing.assert_close(got, g.eta * g.energy_scale * (m * ge + (1 - m) * gc), rtol=1e-10, atol=1e-14)
    assert not got.requires_grad


@pytest.mark.parametrize("mode", MEAN_KEEPING)
def test_keep_latent_mean_takes_the_steps_sum_back_from_the_cells_outside_the_gate(mode):
    """The official g shifts z's per-channel mean; kept, g sums to 0 per channel, equals the official g inside the
    gate (the edit gradient is untouched) and differs from it outside by one constant per channel."""
    z, step = latent(5), step_at(3)
    official = policy(BUILDERS[mode](None, keep_latent_mean=False)).guidance(step, z, None)
    kept_guidance = BUILDERS[mode](None)
    assert kept_guidance.keep_latent_mean
    kept = policy(kept_guidance).guidance(step, z, None)
    gate = kept_guidance.gate
    assert official.sum((-2, -1)).abs().min() > 1e-4
    torch.testing.assert_close(kept.sum((-2, -1)), torch.zeros(1, 4, dtype=z.dtype), rtol=0, atol=1e-12)
    assert torch.equal(kept[..., gate], official[..., gate])
    shift = (kept - official)[..., ~gate]
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), rtol=0, atol=1e-12)
    torch.testing.assert_close(shift[..., 0] * (~gate).sum(), -official.sum((-2, -1)), rtol=1e-10, atol=1e-12)


def test_keep_latent_mean_leaves_a_whole_image_gate_as_it_is():
    """With nothing outside the gate there is nowhere to take the sum back from: g is the official one."""
    z = latent(5).requires_grad_(True)
    e = (z ** 2).sum()
    gate = torch.ones(LATENT, dtype=torch.bool)
    kept = G.correction(z, e, e.detach(), gate, 0.1, 2.0, keep_latent_mean=True)
    torch.testing.assert_close(kept, 0.1 * 2.0 * 2 * z.detach(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ §11.11 no NaN

@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("build", [
    lambda f: E.move(image_mask(), (0, 0), LATENT, faithful_bugs=f),
    lambda f: E.move(torch.ones(IMAGE), (0, 0), LATENT, faithful_bugs=f),
    lambda f: E.paste(image_mask(), (0, 0), LATENT, faithful_bugs=f),
    lambda f: E.drag([[40.0, 30.0]], [[40.0, 30.0]], LATENT, faithful_bugs=f),
])
def test_guidance_is_finite_with_zero_offset_or_empty_regions(build, faithful):
    g = policy(build(faithful)).guidance(step_at(0), latent(5), None)
    assert torch.isfinite(g).all()


def test_policy_errors_name_the_argument():
    with pytest.raises(ValueError, match="source"):
        G.DragonPolicy(BUILDERS["appearance"](None), FEATS, lambda t: latent(1), AC)
    with pytest.raises(ValueError, match="sde_strength_outside"):
        G.DragonPolicy(BUILDERS["move"](None), FEATS, lambda t: latent(1), AC, sde_strength_outside=-1.0)
    with pytest.raises(ValueError, match="z"):
        policy(BUILDERS["move"](None)).guidance(step_at(0), latent(5, (2, 4, *LATENT)), None)


def test_reference_features_are_computed_once_per_t_across_time_travel():
    """§8: the D+ plan runs 28 guidance evaluations at 20 timesteps; references are extracted 20 times."""
    calls = {"ref": 0, "cur": 0}

    def counting(z, t):
        calls["cur" if z.requires_grad else "ref"] += 1
        return FEATS(z, t)
    denoise(eps_fn, latent(5), dragon_plan("D+", "move"), AC, policy=policy(BUILDERS["move"](None),
                                                                           features_fn=counting))
    assert calls == {"ref": 20, "cur": 28}


# ---------------------------------------------------------------------------------------- §11.10 SDE

def test_regional_sigma_keeps_the_direction_term_real_and_matches_the_spec_values():
    m = torch.zeros(LATENT, dtype=torch.bool)
    m[2:5, 3:7] = True
    for i in range(49):
        a_t, a_prev = alpha_bar_at(AC, TS[i]), alpha_bar_at(AC, TS[i + 1])
        for eta in (0.2, 0.4, 1.0):
            s = G.regional_sigma(a_t, a_prev, m, eta, eta_outside=eta / 2)
            assert (1 - a_prev - s.double() ** 2).min() >= 0
            assert torch.equal(s[0, 0, ~m], torch.full_like(s[0, 0, ~m], s[0, 0, ~m][0].item()))
    for i, unit in ((11, 0.384), (15, 0.357), (19, 0.330)):
        s = G.regional_sigma(alpha_bar_at(AC, TS[i]), alpha_bar_at(AC, TS[i + 1]), m, 1.0)
        assert round(float(s.max()), 3) == unit and float(s.min()) == 0.0


def test_sde_step_equals_the_ode_step_outside_the_mask():
    g = BUILDERS["move"](None)
    pol = policy(g)
    step = step_at(13, sde_eta=0.4)
    z, eps = latent(5), latent(6)
    a_t, a_prev = alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev)
    pol.start([step], z)
    sigma = pol.sde_sigma(step, z)
    assert sigma.shape == (1, 1, *LATENT)
    sde, _ = ddim_step(z, eps, a_t, a_prev, sigma=sigma, noise=pol.noise(step, z))
    ode, _ = ddim_step(z, eps, a_t, a_prev)
    out, inside = ~g.sde_mask, g.sde_mask
    torch.testing.assert_close(sde[..., out], ode[..., out], rtol=0, atol=1e-12)
    assert (sde[..., inside] - ode[..., inside]).abs().min() > 0
    assert torch.equal(g.sde_mask, M.down(g.masks["cur"] | g.masks["org"], LATENT))


def test_sde_noise_is_deterministic_per_seed_and_drawn_before_the_loop():
    z, step = latent(5), step_at(13, sde_eta=0.4)
    a, b, c = (policy(BUILDERS["drag"](None), seed=s) for s in (7, 7, 8))
    for pol in (a, b, c):
        pol.start([step] * 3, z)
    first = [a.noise(step, z) for _ in range(3)]
    assert all(torch.equal(x, b.noise(step, z)) for x in first)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], c.noise(step, z))
    assert first[0].dtype == z.dtype
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(first[1], [torch.randn(z.shape, generator=generator, dtype=torch.float32) for _ in range(2)][1]
                       .to(z.dtype)), "the seeded CPU generator's numbers, in order"


def test_full_runs_are_reproducible_and_seed_free_without_sde():
    g = BUILDERS["move"](None)
    plan = dragon_plan("D+", "move")
    run = lambda seed, p=plan: denoise(eps_fn, latent(5), p, AC, policy=policy(g, seed=seed))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    ode_plan = dragon_plan("D+", "move", sde_strength=0.0)
    assert torch.equal(run(1, ode_plan), run(2, ode_plan))
    unmasked = E.drag([[40.0, 30.0]], [[48.0, 30.0]], LATENT, faithful_bugs=True)   # official: no mask, no SDE
    assert not unmasked.sde_mask.any()
    runs = [denoise(eps_fn, latent(5), plan, AC, policy=policy(unmasked, seed=s)) for s in (1, 2)]
    assert torch.equal(runs[0], runs[1]) and torch.isfinite(runs[0]).all()


def test_sde_outside_strength_applies_with_the_plans_steps():
    g = BUILDERS["appearance"](None)
    pol = policy(g, sde_strength_outside=0.2)
    pol.start([step_at(15, sde_eta=0.4)], latent(5))
    sigma = pol.sde_sigma(step_at(15, sde_eta=0.4), latent(5))[0, 0]
    assert float(sigma[g.sde_mask].min()) == pytest.approx(2 * float(sigma[~g.sde_mask].max()))


# ------------------------------------------------------------------------------ references at the step's own t

@pytest.mark.parametrize("mode", ["move", "paste"])
def test_reference_features_are_read_at_the_steps_t_from_the_banks_latent_at_t(mode):
    """The estimator's reference is F(z_t^ref, t), the bank's latent and the step's t (dragondiffusion.md §2):
    a t-dependent extractor and a bank whose latent differs per t catch a reference taken at t_prev."""
    calls = []

    def spy(z, t):
        calls.append((t, float(z.flatten()[0]), z.requires_grad))
        return FEATS(z, t)

    bank = {t: latent(100 + k) for k, t in enumerate(TS)}
    g = BUILDERS[mode](None)
    two = mode == "paste"
    pol = G.DragonPolicy(g, spy, bank.__getitem__, AC, source=(lambda t: bank[t] * 0.5) if two else None)
    step = step_at(7)
    pol.guidance(step, latent(3).requires_grad_(False), latent(4))
    references = [(t, first) for t, first, grad in calls if not grad]
    assert references[0] == (step.t, float(bank[step.t].flatten()[0]))
    if two:
        assert references[1] == (step.t, float(bank[step.t].flatten()[0] * 0.5))
    assert [t for t, _, grad in calls if grad] == [step.t], "the current features at the step's t, with graph"
    calls.clear()
    pol.guidance(step, latent(5), latent(4))   # a time-travel repeat reuses the references of the same t
    assert all(grad for _, _, grad in calls)


@pytest.mark.parametrize("mode", ["move", "paste", "drag"])
def test_one_batched_backward_gives_both_gated_gradients_exactly(mode):
    """correction() takes both energies' gradients in one backward; the oracle takes them one at a time."""
    g = BUILDERS[mode](None)
    ref, src = FEATS(latent(1), 501), FEATS(latent(2), 501)
    z = latent(3).requires_grad_(True)
    e_edit, e_con = E.energies(g, FEATS(z, 501), ref, src if mode == "paste" else None)
    assert e_edit.requires_grad and e_con.requires_grad
    got = G.correction(z, e_edit, e_con, g.gate, g.eta, g.energy_scale)
    z2 = latent(3).requires_grad_(True)
    e_edit2, e_con2 = E.energies(g, FEATS(z2, 501), ref, src if mode == "paste" else None)
    g_edit, = torch.autograd.grad(g.energy_scale * e_edit2, z2, retain_graph=True)
    g_con, = torch.autograd.grad(g.energy_scale * e_con2, z2)
    m = g.gate.to(z.dtype)[None, None]
    torch.testing.assert_close(got, g.eta * (m * g_edit + (1 - m) * g_con), rtol=1e-12, atol=1e-12)
