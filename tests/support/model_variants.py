"""UNet-only files of models the pack must refuse, for UNETLoader (models/diffusion_models/): an SD-1.5 inpainting
UNet (9 input channels) and an SD 2.1 unCLIP-L UNet (1024-wide text context, linear transformer projections and the
1536-wide image-embedding input), both with the test checkpoint's block layout (tiny_sd15's "test" profile).

Only the keys and shapes matter (ComfyUI detects the model from them; the refusal comes before any UNet call), so
the weights are zeros: the layout is built on the meta device and nothing is initialised.

usage: python -m tests.support.model_variants --comfy-root DIR --out-dir DIR
"""
import argparse
import os
import sys

import torch

from tests.support.tiny_sd15 import CHANNEL_MULT, UNET_COMMON

VARIANTS = {   # file name -> (UNetModel overrides, the ComfyUI model config it must be detected as)
    "dragedit_test_sd15_inpainting.safetensors": (dict(in_channels=9), "SD15"),
    "dragedit_test_sd21_unclip_l.safetensors": (
        dict(context_dim=1024, use_linear_in_transformer=True, adm_in_channels=1536, num_classes="sequential",
             num_heads=-1, num_head_channels=64), "SD21UnclipL"),
}


def zero_unet_state_dict(overrides: dict) -> dict:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**{**UNET_COMMON, **overrides}, channel_mult=CHANNEL_MULT["test"], dtype=torch.float16,
                     device="meta", operations=comfy.ops.disable_weight_init)
    return {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in unet.state_dict().items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy-root", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.comfy_root))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: it probes CUDA at import
    import comfy.model_detection
    import safetensors.torch

    os.makedirs(args.out_dir, exist_ok=True)
    for name, (overrides, config) in VARIANTS.items():
        sd = zero_unet_state_dict(overrides)
        detected = type(comfy.model_detection.model_config_from_unet(sd, "")).__name__
        if detected != config:
            raise RuntimeError(f"{name} is detected as {detected}, expected {config}")
        path = os.path.join(args.out_dir, name)
        safetensors.torch.save_file(sd, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"wrote {path} ({config})")


if __name__ == "__main__":
    main()
