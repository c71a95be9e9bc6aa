"""DragonDiffusion / DiffEditor guidance: energy gradients -> eps correction, and the step policy (§4, §6).

The loop (`ddim.denoise`) adds g to eps inside x0_hat only, keeping the unguided eps in the direction term, so
z_{t-1} moves by -sqrt(ab_prev / ab_t) sqrt(1 - ab_t) g (dragondiffusion.md §4, §11.5). The regional SDE of
DiffEditor is a per-pixel sigma map over the same DDIM step (§6).
"""
from typing import Callable, Optional, Sequence

import torch

from .ddim import StepPolicy, ddim_sigma
from .energy import EnergyGuidance, energies
from .plan import PlanStep
from .schedule import alpha_bar_at
from .errors import ArgumentError


def correction(z: torch.Tensor, energy_edit: torch.Tensor, energy_con: torch.Tensor, gate: torch.Tensor,
               eta: float, energy_scale: float, keep_latent_mean: bool = False) -> torch.Tensor:
    """g = eta [m ⊙ ∇_z(s_E E_edit) + (1 - m) ⊙ ∇_z(s_E E_con)], detached, [B, C, h, w] like z.

    z: the leaf the energies were computed from; gate m: bool [h, w] on the latent grid. The edit gradient acts
    inside the edit mask, the content gradient outside: DiffEditor's regional gradient guidance, in both algs
    (Sampler.py:L225-231, dragondiffusion.md §4). s_E multiplies the energy before backward, as officially
    (it doubles as the fp16 loss scale). An energy without graph (no active term) contributes 0. Both gradients
    come from one batched backward through the estimator (is_grads_batched), instead of the official retain_graph
    and a second backward: the same values with half the backward launches (dragondiffusion.md §8).

    keep_latent_mean (not in the paper): g's per-channel sum is taken back evenly from the cells outside the gate,
    so the step leaves z's per-channel mean as it was, as `energy.copy_noise` does for z_T. SD's schedule keeps the
    image's mean colour in that mean, and the official step shifted it: on the demo model a move's ground changed
    colour (a move's unchanged region 6.3 -> 4.4; README: the demo model). The edit gradient itself is untouched.
    """
    live = [(k, e) for k, e in enumerate((energy_edit, energy_con)) if e.requires_grad]
    grads = [torch.zeros_like(z), torch.zeros_like(z)]
    if len(live) == 2:
        stacked = energy_scale * torch.stack([energy_edit, energy_con])
        both, = torch.autograd.grad(stacked, z, grad_outputs=torch.eye(2, dtype=stacked.dtype, device=z.device),
                                    is_grads_batched=True)
        grads = list(both.unbind(0))
    elif live:
        (k, e), = live
        grad, = torch.autograd.grad(energy_scale * e, z, allow_unused=True)
        grads[k] = torch.zeros_like(z) if grad is None else grad
    m = gate.to(device=z.device, dtype=z.dtype)[None, None]
    outside = 1.0 - m
    g = eta * (m * grads[0] + outside * grads[1])
    if keep_latent_mean:   # a whole-image gate has no cell outside: outside is 0 and g stays; no device read
        g = g - outside * g.sum((-2, -1), keepdim=True) / outside.sum().clamp(min=1.0)
    return g.detach()


def regional_sigma(alpha_bar_t: float, alpha_bar_prev: float, mask: torch.Tensor, eta_inside: float,
                   eta_outside: float = 0.0) -> torch.Tensor:
    """DiffEditor's regional SDE as one sigma map [1, 1, h, w]: eta_inside sqrt(var) in the mask, eta_outside
    sqrt(var) elsewhere (§6, Sampler.py:L98-134).

    Blending the two candidate steps z^un (1 - m) + z^rd m with one shared noise, as the official code does,
    equals one DDIM step with this per-pixel sigma because m is binary. For eta <= 1, 1 - ab_prev - sigma^2 >= 0.
    """
    unit = ddim_sigma(alpha_bar_t, alpha_bar_prev, 1.0)
    m = mask.to(torch.float32)[None, None]
    return unit * (eta_inside * m + eta_outside * (1.0 - m))


class DragonPolicy(StepPolicy):
    """The DragonDiffusion ('D') / DiffEditor ('D+') step policy: gated energy guidance and the regional SDE.

    guidance: the EnergyGuidance payload; features_fn(z [1, 4, h, w], t) -> list of [1, C_l, 2h, 2w] (the
    estimator, no bank attention, CONTRACTS.md); reference(t) -> the base image's inverted latent z_t
    [1, 4, h, w] (e.g. `MemoryBank.latent`) on z's device, source(t) the replace image's (appearance, paste);
    alphas_cumprod: float64 [T] on the CPU; seed: the regional-SDE noise; sde_strength_outside: the SDE eta
    outside the mask (official default 0), used on the steps where the plan sets `sde_eta` inside it.
    Built fresh per run: it caches the reference features of the current t (time-travel repeats reuse them, §8),
    and draws all the regional-SDE noise before the first step, from a seeded CPU generator (the same numbers on
    every device), moved to the device once.
    """

    def __init__(self, guidance: EnergyGuidance, features_fn: Callable[[torch.Tensor, int], Sequence[torch.Tensor]],
                 reference: Callable[[int], torch.Tensor], alphas_cumprod: torch.Tensor, *,
                 source: Optional[Callable[[int], torch.Tensor]] = None, seed: int = 0,
                 sde_strength_outside: float = 0.0):
        if guidance.mode in ("appearance", "paste") and source is None:
            raise ArgumentError("source", f"the {guidance.mode} guidance needs the replace image's latents")
        if not sde_strength_outside >= 0:
            raise ArgumentError("sde_strength_outside", f"must be >= 0, got {sde_strength_outside}")
        self.energy = guidance
        self.features_fn = features_fn
        self.reference = reference
        self.source = source if guidance.mode in ("appearance", "paste") else None
        self.alphas_cumprod = alphas_cumprod
        self.sde_strength_outside = float(sde_strength_outside)
        self.seed = int(seed)
        self._noise = []
        self._on_device = None
        self._cached = (None, None, None)

    def start(self, plan, z: torch.Tensor) -> None:
        """Draw the noise of every stochastic evaluation of the plan, in order, and move it to z's device once."""
        self._alpha = {t: alpha_bar_at(self.alphas_cumprod, t) for s in plan for t in (s.t, s.t_prev)}
        self._on_device = self.energy if self.energy.gate.device == z.device else self.energy.to(z.device)
        draws = sum(s.repeats for s in plan if s.sde_eta > 0)
        generator = torch.Generator().manual_seed(self.seed)
        noise = [torch.randn(z.shape, generator=generator, dtype=torch.float32) for _ in range(draws)]
        self._noise = list(torch.stack(noise).to(z.device, z.dtype).unbind()) if noise else []

    def _guidance_on(self, device) -> EnergyGuidance:
        if self._on_device is None or self._on_device.gate.device != torch.device(device):
            self._on_device = self.energy.to(device)
        return self._on_device

    def _references(self, t: int):
        """(ref, src) feature lists at t, without grad; src is None except for the two-image modes."""
        if self._cached[0] != t:
            with torch.no_grad():
                ref = self.features_fn(self.reference(t), t)
                src = None if self.source is None else self.features_fn(self.source(t), t)
            self._cached = (t, ref, src)
        return self._cached[1], self._cached[2]

    def guidance(self, step: PlanStep, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """g [1, 4, h, w]: the gated, scaled energy gradient at z_t (§4); the loop adds it inside x0_hat."""
        if z.shape[0] != 1:
            raise ArgumentError("z", f"energy guidance runs on one latent [1, C, h, w], got {tuple(z.shape)}")
        g = self._guidance_on(z.device)
        ref, src = self._references(step.t)
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            e_edit, e_con = energies(g, self.features_fn(zg, step.t), ref, src)
            return correction(zg, e_edit, e_con, g.gate, g.eta, g.energy_scale, g.keep_latent_mean)

    def sde_sigma(self, step: PlanStep, z: torch.Tensor) -> torch.Tensor:
        """Sigma map [1, 1, h, w]: step.sde_eta inside the edit region, sde_strength_outside outside (§6)."""
        g = self._guidance_on(z.device)
        a_t, a_prev = self._alpha[step.t], self._alpha[step.t_prev]
        return regional_sigma(a_t, a_prev, g.sde_mask, step.sde_eta, self.sde_strength_outside).to(z.dtype)

    def noise(self, step: PlanStep, z: torch.Tensor) -> torch.Tensor:
        """The next of the noise tensors drawn in `start` (standard normal, like z)."""
        return self._noise.pop(0)
