"""Noise-schedule conversions: alpha_bar <-> sigma, VP z <-> sigma-space x, DDIM timesteps, model output -> eps.

The one place these conversions live (style.md §4.1). Both official codes run diffusers' DDIMScheduler with the
SD-1.5 config: scaled-linear betas 0.00085 -> 0.012, "leading" spacing, steps_offset=1, set_alpha_to_one=False
(dragondiffusion.md §0, gooddrag.md §0). ComfyUI samples in sigma-space, x = z * sqrt(1 + sigma^2); the kernels
work on the VP latent z, the UNet input both methods optimize.
"""
import math

import torch
from .errors import ArgumentError

NUM_TRAIN_TIMESTEPS = 1000
PREDICTION_TYPES = ("eps", "v")


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """SD-1.x alpha_bar table, float64 [num_train_timesteps]: betas linear in sqrt space (dragondiffusion.md §0).

    The host takes the table from the model (`alphas_cumprod_from_sigmas`); this one serves tests and defaults.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alpha_bar(alpha_bar):
    """sigma = sqrt((1 - alpha_bar) / alpha_bar): the sigma-space noise level of a VP timestep."""
    if isinstance(alpha_bar, torch.Tensor):
        return ((1.0 - alpha_bar) / alpha_bar).sqrt()
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def alpha_bar_from_sigma(sigma):
    """alpha_bar = 1 / (1 + sigma^2): inverse of `sigma_from_alpha_bar`."""
    return 1.0 / (1.0 + sigma * sigma)


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The model's alpha_bar table, float64 [T], from ComfyUI's model_sampling.sigmas [T] (CONTRACTS.md)."""
    return alpha_bar_from_sigma(sigmas.to(torch.float64))


def z_from_x(x: torch.Tensor, sigma) -> torch.Tensor:
    """VP latent z = x / sqrt(1 + sigma^2) from a sigma-space latent x [B, C, h, w] (gooddrag.md §0)."""
    return x / _sqrt_one_plus_sq(sigma)


def x_from_z(z: torch.Tensor, sigma) -> torch.Tensor:
    """Sigma-space latent x = z * sqrt(1 + sigma^2) from a VP latent z [B, C, h, w]."""
    return z * _sqrt_one_plus_sq(sigma)


def _sqrt_one_plus_sq(sigma):
    if isinstance(sigma, torch.Tensor):
        return (1.0 + sigma * sigma).sqrt()
    return math.sqrt(1.0 + sigma * sigma)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   steps_offset: int = 1) -> list[int]:
    """Integer DDIM timesteps, noisiest first: diffusers "leading" spacing plus steps_offset.

    50 steps give 981, 961, ..., 21, 1 (dragondiffusion.md §0). Step i runs t_i -> t_i - ratio with
    ratio = num_train_timesteps // num_steps, which is `ddim_timesteps(...)[i + 1]`, or the final alpha_bar past 0.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ArgumentError("num_steps", f"must be in 1..{num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [k * ratio + steps_offset for k in reversed(range(num_steps))]


def inverted_step_count(num_steps: int, strength: float) -> int:
    """n = round(strength * num_steps), Python's banker's rounding as both official codes (gooddrag.md §0).

    GoodDrag 0.75 of 50 -> 38 steps (start t=741), DragDiffusion 0.7 -> 35 (t=681). The edit starts at step
    index num_steps - n of `ddim_timesteps(num_steps)`.
    """
    if not 0.0 < strength <= 1.0:
        raise ArgumentError("strength", f"must be in (0, 1], got {strength}")
    n = round(strength * num_steps)
    if n < 1:
        raise ArgumentError("strength", f"{strength} of {num_steps} steps inverts no step; raise strength or steps")
    return n


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: int) -> float:
    """alpha_bar_t as a Python float; t < 0 means the final alpha_bar = alphas_cumprod[0] (set_alpha_to_one=False).

    Call it while building a loop, not inside it: it reads the (CPU) table element.
    """
    return float(alphas_cumprod[max(t, 0)])


def timestep_from_sigma(sigma: float, alphas_cumprod: torch.Tensor, candidates=None) -> int:
    """Nearest integer timestep to a sigma, by distance in log-sigma, among `candidates` (default: all t).

    ComfyUI passes sigma, not t or i (dragondiffusion.md §5); this maps it back. sigma is a Python float.
    """
    ts = list(range(len(alphas_cumprod))) if candidates is None else sorted(candidates)
    if not ts:
        raise ArgumentError("candidates", "is empty")
    log_sigmas = sigma_from_alpha_bar(alphas_cumprod.to(torch.float64)[ts]).log()
    k = int((log_sigmas - math.log(sigma)).abs().argmin())
    return ts[k]


def eps_from_model_output(output: torch.Tensor, z: torch.Tensor, alpha_bar, prediction_type: str = "eps"):
    """eps [B, C, h, w] from the UNet output on VP z at alpha_bar.

    "eps": the output is eps. "v": v = sqrt(ab)*eps - sqrt(1-ab)*x0, hence eps = sqrt(ab)*v + sqrt(1-ab)*z.
    """
    if prediction_type == "eps":
        return output
    if prediction_type == "v":
        if isinstance(alpha_bar, torch.Tensor):
            return alpha_bar.sqrt() * output + (1.0 - alpha_bar).sqrt() * z
        return math.sqrt(alpha_bar) * output + math.sqrt(1.0 - alpha_bar) * z
    raise ArgumentError("prediction_type", f"must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """eps from a ComfyUI denoised prediction: x = x0 + sigma*eps in sigma-space, so eps = (x - x0) / sigma."""
    return (x - denoised) / sigma
