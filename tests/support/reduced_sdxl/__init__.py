"""Test-only ComfyUI custom node pack: the loader detects the random-weight, reduced-width SDXL checkpoint.

ComfyUI's detection keys SDXL on 320 channels (comfy/supported_models.py), so a reduced-width SDXL-topology
checkpoint is detected as nothing. Imported by ComfyUI from the test server's custom_nodes/ (tests/support/server.py),
this registers `SDXL`, ComfyUI's own SDXL config class with only two things changed, ahead of every other entry:
  - unet_config matches model_channels = WIDTH (the block layout, transformer depths, ADM 2816, context 2048 and
    linear-in-transformer are SDXL's and are still required);
  - clip_target builds SDXL's own two text encoders (CLIP-L and CLIP-G, their real widths 768 and 1280, so the
    cross-attention context is 2048 and the pooled output 1280) with TEXT_LAYERS layers and a TEXT_MLP-wide MLP,
    through ComfyUI's own `clip_l_model_config` / `clip_g_model_config` overrides: a 362 MiB fp16 file (with the UNet) instead of 1.6 GB
    of text encoders.
It keeps the class name SDXL because that name is what the pack's model-family table keys on, as for the real
class. Never shipped; nothing in the pack imports it. tests/support/tiny_sdxl.py writes the checkpoint.
"""
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base

WIDTH = 32          # model_channels (SDXL: 320); 32 is the least GroupNorm(32) allows
TEXT_LAYERS = 3     # CLIP-L and CLIP-G depth (12 and 32); SDXL reads the penultimate layer (|-2| < layers)
TEXT_MLP = 64       # their MLP width (3072 and 5120)
TEXT_CONFIG = {"num_hidden_layers": TEXT_LAYERS, "intermediate_size": TEXT_MLP}


class ReducedSDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """SDXL's CLIP-L + CLIP-G at TEXT_LAYERS layers each (widths unchanged)."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options={
            **model_options, "clip_l_model_config": TEXT_CONFIG, "clip_g_model_config": TEXT_CONFIG})


class SDXL(comfy.supported_models.SDXL):
    unet_config = {**comfy.supported_models.SDXL.unet_config, "model_channels": WIDTH}

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, ReducedSDXLClipModel)


def register():
    """Put the reduced SDXL first in ComfyUI's detection list (idempotent)."""
    models = comfy.supported_models.models
    if not any(m is SDXL for m in models):
        models.insert(0, SDXL)


register()
NODE_CLASS_MAPPINGS = {}
