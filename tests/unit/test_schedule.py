"""Schedule conversions against the spec constants and diffusers' DDIMScheduler (gooddrag.md §0, §10.1-2, §10.13)."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from comfyui_dragedit.kernels import plan, schedule
from comfyui_dragedit.kernels.ddim import ddim_step


def sd_scheduler():
    """The official codes' scheduler, built from its config (no download)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                         set_alpha_to_one=False, clip_sample=False)


@pytest.fixture(scope="module")
def ac():
    return schedule.scaled_linear_alphas_cumprod()


def test_alphas_cumprod_spec_constants(ac):
    # dragondiffusion.md §0, 4 significant digits
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    for t, value in ((981, 0.005776), (961, 0.007282), (1, 0.998296), (0, 0.99915)):
        assert float(ac[t]) == pytest.approx(value, rel=2e-4)


def test_alphas_cumprod_match_diffusers(ac):
    ref = sd_scheduler()
    torch.testing.assert_close(ac.float(), ref.alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert schedule.alpha_bar_at(ac, -1) == pytest.approx(float(ref.final_alpha_cumprod), rel=1e-6)


@pytest.mark.parametrize("num_steps", [1, 10, 25, 30, 49, 50, 100])
def test_timesteps_match_diffusers(num_steps):
    ref = sd_scheduler()
    ref.set_timesteps(num_steps)
    assert schedule.ddim_timesteps(num_steps) == ref.timesteps.tolist()


def test_timesteps_50():
    ts = schedule.ddim_timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50
    assert all(a - b == 20 for a, b in zip(ts, ts[1:]))


def test_timesteps_rejects_bad_count():
    for n in (0, 1001):
        with pytest.raises(ValueError, match="num_steps"):
            schedule.ddim_timesteps(n)


def test_sigma_alpha_bar_round_trip(ac):
    sigmas = schedule.sigma_from_alpha_bar(ac)
    torch.testing.assert_close(schedule.alpha_bar_from_sigma(sigmas), ac, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.alphas_cumprod_from_sigmas(sigmas.float()), ac, rtol=1e-6, atol=0)
    assert schedule.alpha_bar_from_sigma(schedule.sigma_from_alpha_bar(0.3)) == pytest.approx(0.3, rel=1e-14)
    # ᾱ_0 = 0.99915 is σ ≈ 0.029 (gooddrag.md §0)
    assert schedule.sigma_from_alpha_bar(0.99915) == pytest.approx(0.029, abs=5e-4)


def test_z_x_round_trip_and_scale(ac):
    # x = z·√(1+σ²) is ≈3.25× at t=681 and ≈4.07× at t=741 (gooddrag.md §0)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for t, factor in ((681, 3.25), (741, 4.07)):
        sigma = schedule.sigma_from_alpha_bar(float(ac[t]))
        x = schedule.x_from_z(z, sigma)
        assert float((x / z).mean()) == pytest.approx(factor, abs=0.01)
        torch.testing.assert_close(schedule.z_from_x(x, sigma), z, rtol=1e-14, atol=0)
        torch.testing.assert_close(schedule.z_from_x(x, torch.tensor(sigma, dtype=torch.float64)), z)


def test_inversion_strength_rule():
    # gooddrag.md §0: n = round(s·50) with banker's rounding; start at timesteps[50 - n]
    assert schedule.inverted_step_count(50, 0.75) == 38
    assert schedule.inverted_step_count(50, 0.7) == 35
    assert schedule.inverted_step_count(50, 0.25) == 12     # 12.5 rounds to even
    assert schedule.inverted_step_count(50, 1.0) == 50
    assert plan.ddim_plan(50, 0.75)[0].t == 741
    assert plan.ddim_plan(50, 0.7)[0].t == 681
    for bad in (0.0, -0.1, 1.5, 0.005):
        with pytest.raises(ValueError, match="strength"):
            schedule.inverted_step_count(50, bad)


def test_eps_from_v_prediction(ac):
    x0, eps = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64)
    for t in (981, 501, 1):
        ab = float(ac[t])
        z = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        v = math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0
        torch.testing.assert_close(schedule.eps_from_model_output(v, z, ab, "v"), eps)
        torch.testing.assert_close(schedule.eps_from_model_output(v, z, ac[t], "v"), eps)
        assert schedule.eps_from_model_output(eps, z, ab, "eps") is eps
    with pytest.raises(ValueError, match="prediction_type"):
        schedule.eps_from_model_output(eps, eps, 0.5, "sample")


def test_v_prediction_step_matches_diffusers(ac):
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False, prediction_type="v_prediction")
    ref.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 1, 4, 8, 8, generator=gen)
    for step in plan.ddim_plan(50)[::7]:
        a_t, a_prev = schedule.alpha_bar_at(ac, step.t), schedule.alpha_bar_at(ac, step.t_prev)
        eps = schedule.eps_from_model_output(v, z, a_t, "v")
        ours, _ = ddim_step(z, eps, a_t, a_prev)
        torch.testing.assert_close(ours, ref.step(v, step.t, z).prev_sample, rtol=1e-4, atol=1e-5)


def test_eps_from_denoised_is_vp_eps(ac):
    # ComfyUI: x = x0 + σ·eps in σ-space is the same sample as VP z = √ᾱ x0 + √(1-ᾱ) eps
    x0, eps = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64)
    ab = float(ac[601])
    sigma = schedule.sigma_from_alpha_bar(ab)
    z = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    x = schedule.x_from_z(z, sigma)
    torch.testing.assert_close(x, x0 + sigma * eps)
    torch.testing.assert_close(schedule.eps_from_denoised(x, x0, sigma), eps)


def test_timestep_from_sigma(ac):
    sigmas = schedule.sigma_from_alpha_bar(ac)
    for t in (0, 1, 21, 500, 741, 981, 999):
        assert schedule.timestep_from_sigma(float(sigmas[t]), ac) == t
    ts = schedule.ddim_timesteps(50)
    # between t=741 and t=761, nearer 761 in log-sigma
    between = math.exp(0.3 * math.log(float(sigmas[741])) + 0.7 * math.log(float(sigmas[761])))
    assert schedule.timestep_from_sigma(between, ac, ts) == 761
    assert schedule.timestep_from_sigma(float(sigmas[750]), ac) == 750
    with pytest.raises(ValueError, match="candidates"):
        schedule.timestep_from_sigma(1.0, ac, [])
