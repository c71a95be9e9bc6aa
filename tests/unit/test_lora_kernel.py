"""The identity-LoRA recipe in plain torch (kernels/lora.py): target layers by name, initialisation, batches, the
prediction losses against their definitions, and a fit that learns and is deterministic in its seed."""
import math

import pytest
import torch

from comfyui_dragedit.kernels import lora
from comfyui_dragedit.kernels.errors import ArgumentError


@pytest.mark.parametrize("name, target", [
    ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", True),
    ("diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k", True),
    ("diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v", True),
    ("diffusion_model.output_blocks.5.1.transformer_blocks.1.attn1.to_out.0", True),
    ("diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj", False),
    ("diffusion_model.input_blocks.1.1.proj_in", False),
    ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1", False),
    ("diffusion_model.input_blocks.1.1.transformer_blocks.0.norm1", False),
    ("first_stage_model.encoder.mid.attn_1.q", False),
])
def test_targets_are_the_attention_projections(name, target):
    assert lora.is_target(name) is target


@pytest.mark.parametrize("field", ["steps", "rank", "batch_size"])
def test_recipe_refuses_zero_counts_by_name(field):
    with pytest.raises(ArgumentError) as err:
        lora.LoRARecipe(**{field: 0})
    assert (err.value.argument, err.value.detail) == (field, "must be >= 1, got 0")


def test_recipe_defaults_are_gooddrags():
    recipe = lora.LoRARecipe()
    assert (recipe.steps, recipe.rank, recipe.lr, recipe.batch_size) == (70, 16, 5e-4, 4)
    assert (recipe.betas, recipe.weight_decay, recipe.eps) == ((0.9, 0.999), 1e-2, 1e-8)
    with pytest.raises(ValueError, match="lr: must be > 0"):
        lora.LoRARecipe(lr=0.0)


def test_init_is_diffusers_lora_layer_and_seeded():
    up, down = lora.init_pair(640, 320, 16, torch.Generator().manual_seed(0))
    assert up.shape == (640, 16) and down.shape == (16, 320)
    assert torch.count_nonzero(up) == 0
    assert abs(down.std().item() - 1 / 16) < 0.005
    again = lora.init_pair(640, 320, 16, torch.Generator().manual_seed(0))[1]
    other = lora.init_pair(640, 320, 16, torch.Generator().manual_seed(1))[1]
    assert torch.equal(down, again) and not torch.equal(down, other)


def test_batch_repeats_the_mean_without_a_posterior_and_samples_it_with_one():
    z_mean = torch.randn(1, 4, 6, 6)
    z0, noise, t = lora.sample_batch(z_mean, None, 4, torch.Generator().manual_seed(0))
    assert z0.shape == noise.shape == (4, 4, 6, 6) and t.shape == (4,)
    assert all(torch.equal(z, z_mean[0]) for z in z0)
    z_std = torch.full((1, 4, 6, 6), 0.5)
    draws = torch.cat([lora.sample_batch(z_mean, z_std, 64, torch.Generator().manual_seed(s))[0] for s in range(8)])
    assert (draws.mean(0) - z_mean[0]).abs().max() < 0.25
    assert abs(draws.std(0).mean().item() - 0.5) < 0.05
    ts = torch.cat([lora.sample_batch(z_mean, None, 1000, torch.Generator().manual_seed(s))[2] for s in range(4)])
    assert ts.min() == 0 and ts.max() == 999 and ts.dtype == torch.int64


def _eps_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    z0, eps, eps_hat = (torch.randn(3, 4, 5, 5, generator=g) for _ in range(3))
    sigma = torch.tensor([0.03, 1.6, 14.6])
    x = z0 + sigma[:, None, None, None] * eps
    x0_hat = x - sigma[:, None, None, None] * eps_hat   # an eps-model's denoised output
    return z0, eps, eps_hat, sigma, x, x0_hat


def test_eps_loss_is_the_epsilon_mse():
    z0, eps, eps_hat, sigma, _, x0_hat = _eps_setup()
    expected = torch.nn.functional.mse_loss(eps_hat, eps)
    torch.testing.assert_close(lora.prediction_loss(x0_hat, z0, sigma, "eps"), expected, rtol=1e-5, atol=1e-6)


def test_v_loss_is_the_velocity_mse():
    z0, eps, eps_hat, sigma, _, x0_hat = _eps_setup(1)
    alpha_bar = 1.0 / (1.0 + sigma ** 2)
    a, b = (v[:, None, None, None] for v in (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()))
    v, v_hat = a * eps - b * z0, a * eps_hat - b * x0_hat
    expected = torch.nn.functional.mse_loss(v_hat, v)
    torch.testing.assert_close(lora.prediction_loss(x0_hat, z0, sigma, "v"), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="prediction: must be one of"):
        lora.prediction_loss(x0_hat, z0, sigma, "x0")


def _toy_fit(seed, steps=150, lr=0.05):
    """An 'eps-model' whose only parameter p is its x0 estimate: the loss is minimal at p = z_mean."""
    z_mean = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    p = torch.zeros(1, 1, 4, 4, requires_grad=True)
    sigmas = torch.linspace(0.03, 3.0, 1000)
    losses = lora.fit(lambda x, sigma: p.expand_as(x), [p], z_mean, None, sigmas,
                      lora.LoRARecipe(steps=steps, lr=lr, batch_size=4), "eps", seed)
    return p.detach(), z_mean, losses


def test_fit_learns_the_image():
    p, z_mean, losses = _toy_fit(0)
    assert losses.shape == (150,)
    assert (p - z_mean).abs().max() < 0.1 * z_mean.abs().max()
    assert losses[-20:].mean() < 0.01 * losses[:5].mean()


def test_fit_is_deterministic_in_its_seed_and_reports_progress():
    a, _, la = _toy_fit(3, steps=10)
    b, _, lb = _toy_fit(3, steps=10)
    c, _, lc = _toy_fit(4, steps=10)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)
    seen = []
    p = torch.zeros(1, 1, 2, 2, requires_grad=True)
    lora.fit(lambda x, sigma: p.expand_as(x), [p], torch.zeros(1, 1, 2, 2), None, torch.ones(1000),
             lora.LoRARecipe(steps=3), "eps", 0, callback=seen.append)
    assert seen == [dict(step=k, total=3) for k in range(3)]
    assert math.isfinite(float(la.sum()))
