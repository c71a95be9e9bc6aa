"""The memory bank of a DDIM inversion: per-step latents and per-layer self-attention inputs (DRAG_MEMORY_BANK).

dragondiffusion.md §1.1: the official code keeps post-projection K and V of the 9 decoder self-attention layers
for all 50 steps. We keep the pre-projection input n = norm1(h) instead (K = W_k n, V = W_v n with frozen
weights), which is equivalent and half the size, in fp16. Latents stay fp32: they seed and anchor the edit.
"""
import dataclasses
import types
from collections.abc import Hashable, Mapping, Sequence

import torch

from .schedule import alpha_bar_at, sigma_from_alpha_bar, timestep_from_sigma
from .errors import ArgumentError

Z0 = -1   # key of the clean latent z0: the t_prev of the last step, as in PlanStep


@dataclasses.dataclass(frozen=True, eq=False)
class MemoryBank:
    """Immutable result of one inversion; the payload of DRAG_MEMORY_BANK (style.md §4.3).

    timesteps: inverted t, noisiest first; latents: t -> z_t [B, 4, h, w] fp32 (key -1 = z0);
    attention: (t, layer) -> n [B, N_tokens, C] fp16 on `device`; layers: layer keys such as ("output", 3);
    latent_shape: (B, 4, h, w); alphas_cumprod: float64 [T]; fingerprint: the model's identity string.
    """
    timesteps: tuple[int, ...]
    latents: Mapping[int, torch.Tensor]
    attention: Mapping[tuple, torch.Tensor]
    layers: tuple[Hashable, ...]
    latent_shape: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    fingerprint: str
    device: str

    def __deepcopy__(self, memo):
        # Immutable: ComfyUI deep-copies model_options on clone(); sharing the bank is correct and free.
        return self

    def __copy__(self):
        return self

    @property
    def z0(self) -> torch.Tensor:
        """The clean latent the inversion started from, [B, 4, h, w]."""
        return self.latents[Z0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the bank's tensors (latents and attention inputs)."""
        return sum(v.numel() * v.element_size() for v in (*self.latents.values(), *self.attention.values()))

    def latent(self, t: int) -> torch.Tensor:
        """z_t [B, 4, h, w] as inverted at timestep t (t = -1: z0) (dragondiffusion.md §11.2)."""
        if t not in self.latents:
            raise ArgumentError("t", f"{t} is not in the memory bank (inverted timesteps {self.timesteps[0]}..."
                             f"{self.timesteps[-1]})")
        return self.latents[t]

    def attention_input(self, t: int, layer: Hashable) -> torch.Tensor:
        """The recorded self-attention input n [B, N_tokens, C] (fp16, on the bank's device) of layer at t."""
        if (t, layer) not in self.attention:
            raise ArgumentError("layer", f"no attention input for layer {layer} at t={t} in the memory bank "
                             f"(layers {self.layers})")
        return self.attention[(t, layer)]

    def nearest_t(self, sigma: float) -> int:
        """The inverted timestep nearest to a ComfyUI sigma (Python float), by log-sigma distance."""
        return timestep_from_sigma(sigma, self.alphas_cumprod, self.timesteps)

    def sigma(self, t: int) -> float:
        """The sigma-space noise level of timestep t in the bank's schedule (t = -1: the final alpha_bar)."""
        return sigma_from_alpha_bar(alpha_bar_at(self.alphas_cumprod, t))

    def check_compatible(self, fingerprint: str, latent_shape: Sequence[int]) -> None:
        """Raise ValueError naming the mismatch if the bank was made by another model or for another latent size.

        latent_shape is [B, 4, h, w] or [4, h, w]; the batch size is free (CFG halves share the bank).
        """
        if fingerprint != self.fingerprint:
            raise ArgumentError("model", f"the memory bank was made with model {self.fingerprint!r}, "
                             f"not {fingerprint!r}")
        if tuple(latent_shape[-3:]) != tuple(self.latent_shape[-3:]):
            raise ArgumentError("latent_shape",
                                f"the memory bank holds latents of shape {tuple(self.latent_shape[-3:])} "
                             f"(channels, h, w), not {tuple(latent_shape[-3:])}")


class BankRecorder:
    """Collects a bank during inversion: the host's attn1 patch calls `record`, the invert callback `record_latent`.

    Attention inputs are detached, cast to `dtype` and moved to `device` (non-blocking) as they arrive, so the
    GPU holds at most one step's worth. layers: the layer keys to keep (None = every layer that calls).
    """

    def __init__(self, layers: Sequence[Hashable] | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float16):
        self._layers = None if layers is None else tuple(layers)
        self._device = torch.device(device)
        self._dtype = dtype
        self._latents: dict[int, torch.Tensor] = {}
        self._attention: dict[tuple, torch.Tensor] = {}

    def record(self, t: int, layer: Hashable, n: torch.Tensor) -> None:
        """Keep the self-attention input n [B, N_tokens, C] of `layer` at timestep t."""
        if self._layers is not None and layer not in self._layers:
            return
        if (t, layer) in self._attention:
            raise ArgumentError("layer",
                                f"{layer} at t={t} was recorded twice; one inversion forward per step expected")
        self._attention[(t, layer)] = self._store(n, self._dtype)

    def record_latent(self, t: int, z: torch.Tensor) -> None:
        """Keep the latent z_t [B, 4, h, w] (t = -1: z0) in fp32."""
        self._latents[t] = self._store(z, torch.float32)

    def _store(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Always a copy (copy=True), so the bank never aliases a tensor the host may reuse.
        return x.detach().to(self._device, dtype, non_blocking=True, copy=True)

    def finish(self, alphas_cumprod: torch.Tensor, fingerprint: str) -> MemoryBank:
        """The frozen bank; needs z0 (t = -1) and at least one inverted latent."""
        if Z0 not in self._latents:
            raise ArgumentError("z0", "was not recorded: call record_latent(-1, z0) before finish()")
        timesteps = tuple(sorted((t for t in self._latents if t != Z0), reverse=True))
        if not timesteps:
            raise ArgumentError("latents", "no inverted latent was recorded")
        layers = self._layers if self._layers is not None else tuple(dict.fromkeys(k[1] for k in self._attention))
        return MemoryBank(
            timesteps=timesteps,
            latents=types.MappingProxyType(dict(self._latents)),
            attention=types.MappingProxyType(dict(self._attention)),
            layers=layers,
            latent_shape=tuple(self._latents[Z0].shape),
            alphas_cumprod=alphas_cumprod.detach().to("cpu", torch.float64),
            fingerprint=fingerprint,
            device=str(self._device),
        )


def bank_bytes_per_step(latent_hw: tuple[int, int], layers: Sequence[tuple[int, int]], batch: int = 1,
                        bytes_per_value: int = 2, key_and_value: bool = False) -> int:
    """Bytes of attention state per step: layers are (downscale vs the latent, channels) per recorded layer.

    key_and_value=True counts the official layout (post-projection K and V): 27.5 MB at 512² for SD-1.5's 9
    decoder layers; ours (one n per layer) is half (dragondiffusion.md §1.1).
    """
    h, w = latent_hw
    values = sum((h // down) * (w // down) * channels for down, channels in layers)
    return values * batch * bytes_per_value * (2 if key_and_value else 1)
