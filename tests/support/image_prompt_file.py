"""DiffEditor's image-prompt file (ip_sd15_64.bin) as the official code lays it out, written out here from that code
(not from the pack's kernel), with random weights: no weights are ever downloaded."""
import functools
import math

import torch

# ip_sd15_64.bin as the official code builds it (dragondiff.py init_proj / load_adapter; attention_processor.py
# Resampler, PerceiverAttention, FeedForward, IPAttnProcessor): Resampler(dim=768, depth=4, dim_head=64, heads=12,
# num_queries=64, embedding_dim=1280, output_dim=768, ff_mult=4), and the 32 attention processors of SD 1.5's
# UNet in diffusers order (down_blocks 0-2, up_blocks 1-3, mid_block; attn1 then attn2), attn2 ones with weights.
OFFICIAL_IMAGE_PROJ = {"latents": (1, 64, 768), "proj_in.weight": (768, 1280), "proj_in.bias": (768,),
                       "proj_out.weight": (768, 768), "proj_out.bias": (768,), "norm_out.weight": (768,),
                       "norm_out.bias": (768,)}
for _layer in range(4):
    for _name, _shape in (("0.norm1.weight", (768,)), ("0.norm1.bias", (768,)), ("0.norm2.weight", (768,)),
                          ("0.norm2.bias", (768,)), ("0.to_q.weight", (768, 768)), ("0.to_kv.weight", (1536, 768)),
                          ("0.to_out.weight", (768, 768)), ("1.0.weight", (768,)), ("1.0.bias", (768,)),
                          ("1.1.weight", (3072, 768)), ("1.3.weight", (768, 3072))):
        OFFICIAL_IMAGE_PROJ[f"layers.{_layer}.{_name}"] = _shape
SD15_WIDTHS = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
OFFICIAL_IP_ADAPTER = {f"{2 * k + 1}.{name}.weight": (width, 768)
                       for k, width in enumerate(SD15_WIDTHS) for name in ("to_k_ip", "to_v_ip")}


def random_official_state_dict(seed=0):
    """Random weights in the official file's exact layout (fp16, as the released file); a fresh dict per call
    (tensors shared), so a test may add or drop entries."""
    return {group: dict(tensors) for group, tensors in _random_official(seed).items()}


@functools.lru_cache(maxsize=2)
def _random_official(seed, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)

    def tensor(key, shape):
        if key.endswith("bias"):
            return (torch.randn(shape, generator=g) * 0.02).to(dtype)
        if len(shape) == 1:   # LayerNorm weights
            return (1 + 0.1 * torch.randn(shape, generator=g)).to(dtype)
        return (torch.randn(shape, generator=g) / math.sqrt(shape[-1])).to(dtype)

    return {"image_proj": {k: tensor(k, s) for k, s in OFFICIAL_IMAGE_PROJ.items()},
            "ip_adapter": {k: tensor(k, s) for k, s in OFFICIAL_IP_ADAPTER.items()}}


class CodePayload:
    """A pickle that runs code when loaded by an unrestricted unpickler (it would create a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
