"""DDIM step, inversion and the denoise loop: dragondiffusion.md §11.1-5, §11.10 and gooddrag.md §10.2."""
import collections
import dataclasses
import math

import pytest
import torch
from diffusers import DDIMScheduler

from comfyui_dragedit.kernels import ddim, plan
from comfyui_dragedit.kernels.schedule import alpha_bar_at, ddim_timesteps, scaled_linear_alphas_cumprod

AC = scaled_linear_alphas_cumprod()
SHAPE = (2, 4, 8, 8)


def sd_scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                         set_alpha_to_one=False, clip_sample=False)


def t_only_eps(seed=0):
    """An eps that depends on t only (dragondiffusion.md §11.3): a fixed random field per timestep."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(1000, *SHAPE, generator=gen, dtype=torch.float64)
    return lambda z, step: table[step.t]


def z_eps(z, step):
    """A z- and t-dependent stub eps."""
    return torch.tanh(z) * (1.0 + step.t / 1000.0)


def randn(seed=0, dtype=torch.float64):
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Recorder(ddim.StepPolicy):
    """Counts hook calls; optionally adds a fixed guidance or a masked SDE sigma."""

    def __init__(self, g=None, sigma_map=None, noise=None):
        self.calls = collections.defaultdict(list)
        self.g, self.sigma_map, self._noise = g, sigma_map, noise

    def before_step(self, step, z):
        self.calls["before"].append(step.i)
        return z

    def guidance(self, step, z, eps):
        self.calls["guidance"].append(step.i)
        return self.g

    def sde_sigma(self, step, z):
        self.calls["sde"].append(step.i)
        return self.sigma_map

    def noise(self, step, z):
        return self._noise

    def after_step(self, step, z_prev, x0_hat):
        self.calls["after"].append(step.i)
        return z_prev


def test_ddim_step_matches_diffusers():
    ref = sd_scheduler()
    ref.set_timesteps(50)
    z, eps = randn(1, torch.float32), randn(2, torch.float32)
    for step in plan.ddim_plan(50):
        ours, x0_hat = ddim.ddim_step(z, eps, alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev))
        out = ref.step(eps, step.t, z)
        torch.testing.assert_close(ours, out.prev_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=1e-4, atol=1e-4)


def test_ddim_step_sde_matches_diffusers_eta():
    ref = sd_scheduler()
    ref.set_timesteps(50)
    z, eps, noise = randn(1, torch.float32), randn(2, torch.float32), randn(3, torch.float32)
    for step in plan.ddim_plan(50)[1:-1:6]:
        a_t, a_prev = alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev)
        sigma = ddim.ddim_sigma(a_t, a_prev, 0.4)
        ours, _ = ddim.ddim_step(z, eps, a_t, a_prev, sigma=sigma, noise=noise)
        expected = ref.step(eps, step.t, z, eta=0.4, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
        as_map, _ = ddim.ddim_step(z, eps, a_t, a_prev, sigma=torch.full((1, 1, 8, 8), sigma), noise=noise)
        torch.testing.assert_close(as_map, ours)
    with pytest.raises(ValueError, match="noise"):
        ddim.ddim_step(z, eps, 0.5, 0.6, sigma=0.1)


def test_ddim_sigma_spec_values():
    # dragondiffusion.md §6: √var is 0.384 at i=11, 0.357 at i=15, 0.330 at i=19
    for i, value in ((11, 0.384), (15, 0.357), (19, 0.330)):
        step = plan.ddim_plan(50)[i]
        assert ddim.ddim_sigma(alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev), 1.0) == \
            pytest.approx(value, abs=1e-3)
        assert 1 - alpha_bar_at(AC, step.t_prev) - ddim.ddim_sigma(alpha_bar_at(AC, step.t),
                                                                    alpha_bar_at(AC, step.t_prev), 1.0) ** 2 >= 0


def test_round_trip_t_only_eps_is_exact():
    # dragondiffusion.md §11.3: inversion then the edit loop returns z0 for an eps depending on t only
    eps_fn, z0 = t_only_eps(), randn(5)
    latents = ddim.invert(eps_fn, z0, AC)
    assert len(latents) == 51 and latents[0] is z0
    assert (ddim.denoise(eps_fn, latents[-1], plan.ddim_plan(50), AC) - z0).abs().max() < 1e-10
    # the same with any CFG mix of two t-only eps (both halves see the same t)
    other = t_only_eps(1)
    cfg = lambda z, s: other(z, s) + 4.5 * (eps_fn(z, s) - other(z, s))  # noqa: E731
    assert (ddim.denoise(cfg, ddim.invert(cfg, z0, AC)[-1], plan.ddim_plan(50), AC) - z0).abs().max() < 1e-10


def test_round_trip_with_strength():
    eps_fn, z0 = t_only_eps(2), randn(6)
    latents = ddim.invert(eps_fn, z0, AC, strength=0.75)
    assert len(latents) == 39
    assert (ddim.denoise(eps_fn, latents[-1], plan.ddim_plan(50, 0.75), AC) - z0).abs().max() < 1e-10


def test_round_trip_is_not_exact_for_z_dependent_eps():
    # the oracle can fail: with eps depending on z the inversion is only approximate (§11.3)
    z0 = randn(7)
    out = ddim.denoise(z_eps, ddim.invert(z_eps, z0, AC)[-1], plan.ddim_plan(50), AC)
    assert (out - z0).abs().max() > 1e-6


def test_inversion_indexing():
    # dragondiffusion.md §11.2: latents[-(i+1)] is the latent at t_i; eps at the destination t
    seen = []
    eps_fn = t_only_eps(3)
    z0 = randn(8)

    def recording_eps(z, step):
        seen.append((step, z))
        return eps_fn(z, step)

    infos = []
    latents = ddim.invert(recording_eps, z0, AC, callback=infos.append)
    denoise_plan = plan.ddim_plan(50)
    assert [s.t for s, _ in seen] == list(reversed(ddim_timesteps(50)))
    for k, (step, z_in) in enumerate(seen):
        i = 49 - k
        assert step == dataclasses.replace(denoise_plan[i], phase="invert")
        assert z_in is latents[k]
        assert infos[k]["t"] == step.t and infos[k]["i"] == i and infos[k]["z"] is latents[-(i + 1)]
        a_src, a_dst = alpha_bar_at(AC, step.t_prev), alpha_bar_at(AC, step.t)
        x0_hat = (z_in - math.sqrt(1 - a_src) * eps_fn(None, step)) / math.sqrt(a_src)
        torch.testing.assert_close(latents[-(i + 1)], math.sqrt(a_dst) * x0_hat + math.sqrt(1 - a_dst) *
                                   eps_fn(None, step), rtol=0, atol=1e-12)
    assert infos[-1]["t"] == 981 and infos[0]["t"] == 1 and infos[0]["total"] == 50


def test_identity_run_equals_diffusers_loop():
    # dragondiffusion.md §11.4: all extras off ⇒ a plain DDIM loop
    z_t = randn(9, torch.float32)
    ref = sd_scheduler()
    ref.set_timesteps(50)
    z = z_t
    for t in ref.timesteps:
        z = ref.step(torch.tanh(z) * (1.0 + int(t) / 1000.0), t, z).prev_sample
    ours = ddim.denoise(z_eps, z_t, plan.ddim_plan(50), AC, policy=ddim.StepPolicy())
    torch.testing.assert_close(ours, z, rtol=1e-4, atol=1e-4)


def test_dplus_hook_counters():
    # dragondiffusion.md §11.1 through the loop: eps calls per phase, guidance, SDE, callbacks
    calls = collections.Counter()
    renoised_at = []

    def eps_fn(z, step):
        calls[step.phase] += 1
        if step.phase == "renoise":
            renoised_at.append((step.i, step.t))
        return torch.zeros_like(z)

    policy = Recorder(sigma_map=0.0, noise=torch.zeros(SHAPE, dtype=torch.float64))
    infos = []
    steps = plan.dragon_plan("D+", "move")
    ddim.denoise(eps_fn, randn(10), steps, AC, policy=policy, callback=infos.append)
    assert calls == {"denoise": 58, "renoise": 8}
    assert sorted(set(renoised_at)) == [(22, 521), (24, 481), (26, 441), (28, 401)]   # eps at t_i - 20
    assert len(policy.calls["guidance"]) == 28
    assert collections.Counter(policy.calls["guidance"])[22] == 3
    assert sorted(set(policy.calls["sde"])) == list(range(11, 20))
    assert policy.calls["before"] == list(range(50))
    assert len(policy.calls["after"]) == 58
    assert [d["i"] for d in infos] == list(range(50)) and [d["index"] for d in infos] == list(range(50))
    assert all(d["total"] == 50 for d in infos) and infos[0]["t"] == 981


def test_d_hook_counters():
    calls = collections.Counter()
    policy = Recorder()
    ddim.denoise(lambda z, s: calls.update([s.phase]) or torch.zeros_like(z), randn(11),
                 plan.dragon_plan("D", "move"), AC, policy=policy)
    assert calls == {"denoise": 50}
    assert policy.calls["guidance"] == list(range(30)) and not policy.calls["sde"]


def test_time_travel_noop_for_constant_eps_only():
    # §11.3: re-noise evaluates eps at t-20, so repeats=3 ≡ 1 only when eps is constant in t
    z_t = randn(12)
    constant = randn(13)
    once = plan.dragon_plan("D", "move", sde_strength=0.0)
    thrice = [dataclasses.replace(s, repeats=3) if s.i in (22, 24, 26, 28) else s for s in once]
    const_fn = lambda z, s: constant  # noqa: E731
    torch.testing.assert_close(ddim.denoise(const_fn, z_t, thrice, AC), ddim.denoise(const_fn, z_t, once, AC),
                               rtol=0, atol=1e-12)
    t_fn = t_only_eps(4)
    assert (ddim.denoise(t_fn, z_t, thrice, AC) - ddim.denoise(t_fn, z_t, once, AC)).abs().max() > 1e-6


@pytest.mark.parametrize("i, coefficient", [(0, 1.1196), (10, 1.0633), (20, 0.9584), (29, 0.7882)])
def test_guidance_injection(i, coefficient):
    # dragondiffusion.md §11.5: z_prev(guided) - z_prev(unguided) = -√(ᾱ_prev/ᾱ_t)·√(1-ᾱ_t)·g, ODE and SDE
    g = randn(14)
    z = randn(15)
    noise = randn(16)
    step = plan.ddim_plan(50)[i]
    for sde in (0.0, 0.4):
        base = dataclasses.replace(step, sde_eta=sde)
        sigma = ddim.ddim_sigma(alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev), 0.4) if sde else None
        guided = ddim.denoise(z_eps, z, [dataclasses.replace(base, guided=True)], AC,
                              policy=Recorder(g=g, sigma_map=sigma, noise=noise))
        plain = ddim.denoise(z_eps, z, [base], AC, policy=Recorder(sigma_map=sigma, noise=noise))
        a_t, a_prev = alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev)
        assert math.sqrt(a_prev / a_t) * math.sqrt(1 - a_t) == pytest.approx(coefficient, abs=1e-4)
        torch.testing.assert_close(guided - plain, -math.sqrt(a_prev / a_t) * math.sqrt(1 - a_t) * g,
                                   rtol=0, atol=1e-12)


def test_regional_sde_leaves_outside_untouched():
    # dragondiffusion.md §11.10: outside the mask the step is the ODE step; SDE strength 0 is deterministic
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:5, 3:7] = 1
    steps = [s for s in plan.dragon_plan("D+", "move") if s.i >= 5]
    z_t = randn(17)
    ode = ddim.denoise(z_eps, z_t, [dataclasses.replace(s, sde_eta=0.0) for s in steps], AC)

    class Regional(ddim.StepPolicy):
        def sde_sigma(self, step, z):
            return mask * ddim.ddim_sigma(alpha_bar_at(AC, step.t), alpha_bar_at(AC, step.t_prev), step.sde_eta)

    first = ddim.denoise(z_eps, z_t, steps[:10], AC, policy=Regional())
    ode_first = ddim.denoise(z_eps, z_t, [dataclasses.replace(s, sde_eta=0.0) for s in steps[:10]], AC)
    outside = mask.expand(SHAPE) == 0
    torch.testing.assert_close(first[outside], ode_first[outside], rtol=0, atol=0)
    assert (first - ode_first)[~outside].abs().max() > 1e-3
    zero = ddim.denoise(z_eps, z_t, [dataclasses.replace(s, sde_eta=0.0) for s in steps], AC, policy=Regional())
    torch.testing.assert_close(zero, ode, rtol=0, atol=0)


def test_revise_step_and_before_step():
    # AlDD: the policy sees drag steps first and may turn MasaCtrl on early; timing changes are refused
    seen = []

    class EarlyStop(ddim.StepPolicy):
        def revise_step(self, step):
            return dataclasses.replace(step, drag=False, bank_attention=True) if step.t <= 681 else step

        def before_step(self, step, z):
            return z + 1.0 if step.drag else z

    steps = plan.gooddrag_plan()
    ddim.denoise(lambda z, s: seen.append(s) or torch.zeros_like(z), randn(18), steps, AC, policy=EarlyStop())
    assert [s.t for s in seen if s.bank_attention][0] == 681
    assert [s.t for s in seen if s.drag] == [741, 721, 701]

    class Retime(ddim.StepPolicy):
        def revise_step(self, step):
            return dataclasses.replace(step, t=step.t - 1)

    with pytest.raises(ValueError, match="timing"):
        ddim.denoise(lambda z, s: z, randn(19), steps, AC, policy=Retime())


def test_time_travel_needs_a_step_to_renoise_from():
    last = dataclasses.replace(plan.ddim_plan(50)[-1], repeats=2)
    with pytest.raises(ValueError, match="time travel"):
        ddim.denoise(lambda z, s: z, randn(20), [last], AC)


def test_loop_never_reads_tensors_back():
    # style.md §4.6.5: the loop runs on the meta device, where any .item()/.cpu()/bool(tensor) would raise
    z = torch.empty(SHAPE, device="meta")

    class Meta(ddim.StepPolicy):
        def guidance(self, step, z, eps):
            return torch.zeros_like(eps)

        def sde_sigma(self, step, z):
            return torch.ones(1, 1, 8, 8, device="meta")

    out = ddim.denoise(lambda z, s: torch.zeros_like(z), z, plan.dragon_plan("D+", "move"), AC, policy=Meta())
    assert out.device.type == "meta" and out.shape == SHAPE


def test_guidance_graph_is_not_kept():
    # the step runs without grad: a guidance computed with a graph leaves no graph on z
    class Grad(ddim.StepPolicy):
        def guidance(self, step, z, eps):
            leaf = z.detach().requires_grad_(True)
            (leaf ** 2).sum().backward()
            return leaf.grad

    out = ddim.denoise(z_eps, randn(21).requires_grad_(True), plan.dragon_plan("D", "move")[:3], AC, policy=Grad())
    assert not out.requires_grad
