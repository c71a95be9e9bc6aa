"""DDIM on the VP latent z: the step, the inversion, and the one sampling loop that every method shares.

k-diffusion style (style.md §4.5): the UNet comes in as `eps_fn(z, step) -> eps`, progress goes out through
`callback(info)`. Methods differ only by their plan (`kernels.plan`) and their `StepPolicy` (style.md §4.6).
"""
import dataclasses
import math

import torch

from .plan import PlanStep, ddim_plan
from .schedule import alpha_bar_at
from .errors import ArgumentError


def ddim_step(z, eps, alpha_bar_t: float, alpha_bar_prev: float, eps_dir=None, sigma=None, noise=None):
    """One DDIM step from alpha_bar_t to alpha_bar_prev; returns (z_prev, x0_hat), both [B, C, h, w].

    x0_hat = (z - sqrt(1 - ab_t) eps) / sqrt(ab_t);
    z_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_dir + sigma noise.
    eps_dir (default eps) is DragonDiffusion's unguided eps in the direction term while the guided eps enters
    x0_hat only (dragondiffusion.md §1.2.4, Sampler.py:L91-134). sigma: None (eta = 0), a float or a map
    [B|1, 1, h, w] (regional SDE, §6); noise is then required. The same formula with the alpha_bars swapped
    is one inversion step (gooddrag.md §1). alpha_bars are Python floats, so the coefficients are float64.
    """
    x0_hat = (z - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    eps_dir = eps if eps_dir is None else eps_dir
    if sigma is None:
        return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1.0 - alpha_bar_prev) * eps_dir, x0_hat
    if noise is None:
        raise ArgumentError("noise", "is required when sigma is given")
    if isinstance(sigma, torch.Tensor):
        dir_coef = (1.0 - alpha_bar_prev - sigma * sigma).clamp_min(0.0).sqrt()
    else:
        dir_coef = math.sqrt(max(1.0 - alpha_bar_prev - sigma * sigma, 0.0))
    return math.sqrt(alpha_bar_prev) * x0_hat + dir_coef * eps_dir + sigma * noise, x0_hat


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """DDIM sigma = eta * sqrt((1 - ab_prev)/(1 - ab_t) * (1 - ab_t/ab_prev)) (dragondiffusion.md §6).

    eta = 1 gives 0.384 at i=11, 0.357 at i=15, 0.330 at i=19 of the SD 50-step schedule.
    """
    var = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
    return eta * math.sqrt(var)


class StepPolicy:
    """What a method adds to the plain DDIM loop; every hook defaults to a no-op (docs/CONTRACTS.md).

    Subclasses own their per-run state and are built fresh for each run (style.md §4.6.2).
    """

    def start(self, plan, z: torch.Tensor) -> None:
        """Once, before the first step: the whole plan and the starting z [B, C, h, w] (e.g. to draw noise ahead)."""

    def revise_step(self, step: PlanStep) -> PlanStep:
        """Change a step's flags at run time (AlDD: MasaCtrl on once dragging stops early); never i, t, t_prev."""
        return step

    def before_step(self, step: PlanStep, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, h, w] before the step (AlDD: the drag chunk optimizing z, gooddrag.md §3.2). Every step."""
        return z

    def guidance(self, step: PlanStep, z: torch.Tensor, eps: torch.Tensor):
        """An eps correction g [B, C, h, w] added inside x0_hat only, or None. Called on guided steps only."""
        return None

    def sde_sigma(self, step: PlanStep, z: torch.Tensor):
        """A sigma map [B|1, 1, h, w] (or float) for a stochastic step, or None. Called when step.sde_eta > 0."""
        return None

    def noise(self, step: PlanStep, z: torch.Tensor) -> torch.Tensor:
        """The noise [B, C, h, w] of a stochastic step; override to seed it."""
        return torch.randn_like(z)

    def after_step(self, step: PlanStep, z_prev: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """z_prev [B, C, h, w] after each DDIM update (also after each time-travel repeat)."""
        return z_prev


def invert(eps_fn, z0: torch.Tensor, alphas_cumprod: torch.Tensor, num_steps: int = 50, strength: float = 1.0,
           callback=None) -> list[torch.Tensor]:
    """DDIM inversion of z0 [B, C, h, w]; returns [z0, z_{t_{N-1}}, ..., z_{t_first}], noisiest last.

    Each step evaluates eps at the destination t on the previous, less noisy z, as both official codes do
    (dragondiffusion.md §1.1, gooddrag.md §1). eps_fn receives the same PlanStep as denoise step i (phase
    "invert"), so `latents[-(k + 1)]` is the latent at the k-th step of `ddim_plan(num_steps, strength)`:
    with full strength, the latent at t_i = 981 - 20 i for 50 steps. callback(dict(i, t, index, total, z)).
    """
    plan = ddim_plan(num_steps, strength, len(alphas_cumprod))
    latents = [z0]
    z = z0
    with torch.no_grad():
        for k, step in enumerate(reversed(plan)):
            step = dataclasses.replace(step, phase="invert")
            eps = eps_fn(z, step)
            z, _ = ddim_step(z, eps, alpha_bar_at(alphas_cumprod, step.t_prev), alpha_bar_at(alphas_cumprod, step.t))
            latents.append(z)
            if callback is not None:
                callback(dict(i=step.i, t=step.t, index=k, total=len(plan), z=z))
    return latents


def denoise(eps_fn, z: torch.Tensor, plan, alphas_cumprod: torch.Tensor, policy: StepPolicy | None = None,
            callback=None) -> torch.Tensor:
    """The one sampling loop (docs/CONTRACTS.md, style.md §4.6): follow `plan` from z [B, C, h, w] to z0.

    First policy.start(plan, z); then per step: revise_step; before_step; then `repeats` times: eps = eps_fn(z, step) without grad, guidance g on
    guided steps, a DDIM step with eps + g in x0_hat and eps in the direction term, optional regional SDE,
    after_step; between repeats, time travel re-noises z_prev back to t with one deterministic DDIM-inversion
    step whose eps is evaluated at t_prev (phase "renoise", dragondiffusion.md §6). The official code also
    computes the re-noise after the last repeat and discards it; it is skipped here, same result.
    callback(dict(i, t, index, total, x0_hat, z)) once per step. Nothing here reads a tensor back to the CPU.
    """
    policy = StepPolicy() if policy is None else policy
    alpha_bars = [(alpha_bar_at(alphas_cumprod, s.t), alpha_bar_at(alphas_cumprod, s.t_prev)) for s in plan]
    for s in plan:
        if s.repeats > 1 and s.t_prev < 0:
            raise ArgumentError("plan", f"step i={s.i}: time travel needs a t_prev >= 0 to re-noise from")
    policy.start(plan, z)
    for k, (planned, (a_t, a_prev)) in enumerate(zip(plan, alpha_bars)):
        step = policy.revise_step(planned)
        if (step.i, step.t, step.t_prev) != (planned.i, planned.t, planned.t_prev):
            raise ArgumentError("policy", f"revise_step changed the timing of step i={planned.i}")
        z = policy.before_step(step, z)
        for r in range(step.repeats):
            with torch.no_grad():
                eps = eps_fn(z, step)
            g = policy.guidance(step, z, eps) if step.guided else None
            sigma = policy.sde_sigma(step, z) if step.sde_eta > 0 else None
            with torch.no_grad():
                noise = None if sigma is None else policy.noise(step, z)
                eps_hat = eps if g is None else eps + g
                z_prev, x0_hat = ddim_step(z.detach(), eps_hat, a_t, a_prev, eps_dir=eps, sigma=sigma, noise=noise)
            z_prev = policy.after_step(step, z_prev, x0_hat)
            if r + 1 < step.repeats:
                with torch.no_grad():
                    back = PlanStep(i=step.i, t=step.t_prev, t_prev=step.t, phase="renoise")
                    z, _ = ddim_step(z_prev, eps_fn(z_prev, back), a_prev, a_t)
        z = z_prev
        if callback is not None:
            callback(dict(i=step.i, t=step.t, index=k, total=len(plan), x0_hat=x0_hat, z=z))
    return z
