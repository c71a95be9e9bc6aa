"""Planted decoder features: a random-weight UNet's features carry no meaning, so an edit on them has no direction.

`plant(model, blocks)` returns a clone whose tapped decoder blocks output a fixed, smooth, translation-equivariant
function of the UNet's input latent z_t (a Gaussian blur of z_t, resized to the block's grid, mixed to its channels
by a fixed random matrix), through ComfyUI's own hooks: a model_function_wrapper hands z_t to the forward and an
output_block_patch replaces the block's output. Everything else (eps, CFG, ADM conditioning, bank attention, the
pack's own patches, truncation) is the real model's, so the energies and the tracker see features in which an
object is where its latent values are, and an edit that moves content can be checked for its direction.
"""
import math

import torch
import torch.nn.functional as F

PLANTED_KEY = "dragedit_test_planted_z"
OFFSET = 0.5


def _blur(x, sigma=1.0):
    radius = 2
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class _Wrapper:
    """model_function_wrapper: z_t = x / sqrt(1 + sigma^2) into this forward's transformer_options."""

    def __init__(self, inner=None):
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args):
        x, sigma, c = args["input"], args["timestep"], args["c"]
        z = x / (1.0 + sigma.reshape(-1, 1, 1, 1).to(x) ** 2).sqrt()
        c = {**c, "transformer_options": {**c["transformer_options"], PLANTED_KEY: z}}
        if self.inner is not None:
            return self.inner(apply_model, {**args, "c": c})
        return apply_model(x, sigma, **c)


class _Patch:
    """output_block_patch: before output block k, h (block k-1's output) becomes the planted features if tapped."""

    def __init__(self, blocks, seed, offset):
        self.blocks = frozenset(blocks)
        self.seed, self.offset = seed, offset
        self.mix = {}

    def __deepcopy__(self, memo):
        return self

    def features(self, z, block, shape):
        channels, size = shape[1], tuple(shape[-2:])
        if block not in self.mix:
            g = torch.Generator().manual_seed(self.seed * 1000 + block)
            self.mix[block] = (torch.randn(channels, z.shape[1], generator=g) / math.sqrt(z.shape[1]),
                               torch.randn(channels, generator=g) * self.offset)
        mix, offset = (m.to(z) for m in self.mix[block])
        small = F.interpolate(_blur(z), size=size, mode="bilinear", align_corners=False, antialias=True) \
            if size != tuple(z.shape[-2:]) else _blur(z)
        return torch.einsum("ck,bkhw->bchw", mix, small) + offset[None, :, None, None]

    def __call__(self, h, hsp, transformer_options):
        block = transformer_options["block"][1] - 1
        z = transformer_options.get(PLANTED_KEY)
        if block in self.blocks and z is not None:
            h = self.features(z, block, h.shape).to(h.dtype)
        return h, hsp


def plant(model, blocks, seed=0, offset=OFFSET):
    """A clone of `model` whose output blocks `blocks` give planted features (see the module docstring).

    offset: the scale of a fixed per-channel part of the features that does not depend on z, as a real decoder's
    features have one. The energies are cosine similarities, so their gradient in z falls with it; OFFSET makes
    the papers' energy scales (500 for move) take steps in z of the size they take on the SD-1.5 test model."""
    planted = model.clone()
    planted.set_model_unet_function_wrapper(_Wrapper(planted.model_options.get("model_function_wrapper")))
    planted.set_model_output_block_patch(_Patch(blocks, seed, offset))
    return planted
