"""Per-image identity LoRA of GoodDrag / DragDiffusion: the recipe, its initialisation, batches, loss and the fit.

Both official codes fit a rank-16 LoRA on to_q, to_k, to_v and to_out of every attention layer (self and cross) to
the one image before dragging, so inversion and denoising keep its identity (gooddrag.md §1 "LoRA", DD
lora_utils.py:L108-358, GD lora_utils.py:L123-347): AdamW (0.9, 0.999, weight decay 1e-2, eps 1e-8), lr 5e-4,
constant; batch 4 of the same image with its latent sampled from the VAE posterior; the epsilon MSE (the model's
own target for v-models) at t ~ U[0, 1000); the user prompt or "". 70 steps for GoodDrag, 80 for DragDiffusion.

k-diffusion style (style.md §4.5): the model is `denoised_fn(x, sigma) -> x0_hat` in ComfyUI's sigma space
(x = z0 + sigma * noise), so the host decides how conditioning and patches reach the UNet.
"""
import dataclasses
import re

import torch

from .errors import ArgumentError

GOODDRAG_STEPS, DRAGDIFFUSION_STEPS = 70, 80
PREDICTIONS = ("eps", "v")
# to_q / to_k / to_v / to_out.0 of every self- (attn1) and cross-attention (attn2) layer, by module name, so the
# choice carries over to every family whose transformer blocks use these names (SD 1.x / 2.x, SDXL).
TARGET_MODULE = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")


def is_target(module_name: str) -> bool:
    """Whether the recipe puts a LoRA on this module (an attention projection)."""
    return TARGET_MODULE.search(module_name) is not None


@dataclasses.dataclass(frozen=True)
class LoRARecipe:
    """The fitting recipe; defaults are GoodDrag's (gooddrag.md §1, §3.3)."""

    steps: int = GOODDRAG_STEPS
    rank: int = 16
    lr: float = 5e-4
    batch_size: int = 4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8

    def __post_init__(self):
        for name in ("steps", "rank", "batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ArgumentError("lr", f"must be > 0, got {self.lr}")


def init_pair(out_features: int, in_features: int, rank: int, generator: torch.Generator):
    """(up [out, rank], down [rank, in]) float32, as diffusers' LoRALinearLayer that both official codes use:
    down ~ N(0, 1/rank), up = 0, so the LoRA starts as the identity and its scale is 1 (alpha = rank)."""
    down = torch.randn(rank, in_features, generator=generator) / rank
    return torch.zeros(out_features, rank), down


def sample_batch(z_mean: torch.Tensor, z_std, batch_size: int, generator: torch.Generator,
                 num_train_timesteps: int = 1000):
    """One training batch: (z0 [B, C, h, w], noise [B, C, h, w], t [B] int64), drawn on the CPU from `generator`.

    z0 is a fresh sample of the VAE posterior N(z_mean, z_std²) per item (official: `latent_dist.sample()` of the
    image repeated batch_size times), or z_mean itself when the posterior is not known (z_std None).
    """
    shape = (batch_size, *z_mean.shape[1:])
    z0 = z_mean.expand(shape)
    if z_std is not None:
        z0 = z0 + z_std * torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    return z0, noise, t


def prediction_loss(denoised: torch.Tensor, z0: torch.Tensor, sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """MSE of the model's own prediction target, from its x0 estimate in sigma space (x = z0 + sigma * eps).

    eps-models: eps_hat - eps = (z0 - x0_hat) / sigma. v-models (v = sqrt(ab) eps - sqrt(1 - ab) z0, with
    ab = 1 / (1 + sigma²)): v_hat - v = sqrt(1 + sigma²) (eps_hat - eps). sigma: [B].
    """
    if prediction not in PREDICTIONS:
        raise ArgumentError("prediction", f"must be one of {PREDICTIONS}, got {prediction!r}")
    sigma = sigma.reshape(-1, *([1] * (z0.ndim - 1))).to(torch.float32)
    error = (z0.float() - denoised.float()) / sigma
    if prediction == "v":
        error = error * torch.sqrt(1.0 + sigma * sigma)
    return error.pow(2).mean()


def fit(denoised_fn, params, z_mean: torch.Tensor, z_std, sigmas: torch.Tensor, recipe: LoRARecipe,
        prediction: str, seed: int, grad_scaler=None, callback=None) -> torch.Tensor:
    """Fit the LoRA parameters `params` (leaf tensors the model reads) by the recipe; returns the losses [steps].

    z_mean, z_std: [1, C, h, w] posterior of the image's latent in the model's space (z_std may be None);
    sigmas: [num_train_timesteps] the model's sigma of each integer t. Deterministic in `seed`: every random
    draw comes from one CPU generator. grad_scaler: a torch GradScaler for fp16 on CUDA, or None.
    callback(dict(step, total)) after each optimizer step (the host's progress and interruption).
    """
    generator = torch.Generator().manual_seed(seed)
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
                                  eps=recipe.eps)
    device = sigmas.device
    losses = []
    z_mean = z_mean.detach().float().cpu()
    z_std = None if z_std is None else z_std.detach().float().cpu()
    for step in range(recipe.steps):
        z0, noise, t = (v.to(device) for v in sample_batch(z_mean, z_std, recipe.batch_size, generator,
                                                           len(sigmas)))
        sigma = sigmas[t]
        x = z0 + sigma.reshape(-1, 1, 1, 1) * noise
        loss = prediction_loss(denoised_fn(x, sigma), z0, sigma, prediction)
        scaled = loss if grad_scaler is None else grad_scaler.scale(loss)
        grads = torch.autograd.grad(scaled, params)
        for p, g in zip(params, grads):
            p.grad = g
        if grad_scaler is None:
            optimizer.step()
        else:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if callback is not None:
            callback(dict(step=step, total=recipe.steps))
    return torch.stack(losses).cpu()

