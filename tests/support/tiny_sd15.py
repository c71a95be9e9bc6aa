"""Random-weight checkpoints with the SD-1.x block topology, built from ComfyUI's own classes.

No weights are ever downloaded: key names and shapes come from the ComfyUI tree in use, so the
file always matches it, and `CheckpointLoaderSimple` detects it as SD15.

Profiles:
  test  channel_mult [1,1,1,1]: SD-1.5's 12 input / 12 output block indices and transformer
        placement (so ("output", 5), ("output", 8) and every decoder self-attention exist) at
        320 channels everywhere, 111M UNet parameters; TAESD VAE. The CI model.
  full  the real SD-1.5 UNet (859.5M) with the KL VAE: for benchmarks at real scale.
The text encoder is always the full CLIP-L: ComfyUI builds it from a fixed config and would leave
missing keys uninitialised.

usage: python -m tests.support.tiny_sd15 --comfy-root DIR --out FILE [--profile test|full] [--seed N]
"""
import argparse
import json
import os
import sys

import torch

UNET_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, legacy=False,
                   use_spatial_transformer=True, use_checkpoint=False, adm_in_channels=None,
                   context_dim=768, use_linear_in_transformer=False, num_heads=8, num_head_channels=-1,
                   use_temporal_resblock=False, use_temporal_attention=False, num_res_blocks=[2, 2, 2, 2],
                   transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)
CHANNEL_MULT = {"test": [1, 1, 1, 1], "full": [1, 2, 4, 4]}
# The test model's eps must be a gentle function of z, as a trained model's is: DDIM inversion amplifies the
# change of eps between neighbouring latents by 1/sqrt(alpha_bar) (about 9 at t=901), so a default-initialised
# UNet (eps std 0.3, rough in z) cannot be inverted at all. Real LDMs zero-initialise this last convolution;
# we keep it small instead, so eps, attention patches and gradients through eps still matter.
TEST_OUT_SCALE = 0.02


def init_default_weights(modules):
    """comfy ops skip weight init (torch.empty); give every layer torch's default init."""
    for mod in modules:
        for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(mod, cls):
                cls.reset_parameters(mod)
                break
        if isinstance(mod, torch.nn.Embedding):
            torch.nn.init.normal_(mod.weight, std=0.02)


def build_state_dict(profile="test", seed=0, dtype=torch.float16):
    """A full SD-1.x checkpoint state dict (UNet, CLIP-L, VAE) at random weights. Needs comfy importable."""
    import comfy.clip_model
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(**UNET_COMMON, channel_mult=CHANNEL_MULT[profile], dtype=torch.float32, device="cpu",
                     operations=ops)
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        clip = comfy.clip_model.CLIPTextModel(json.load(f), torch.float32, "cpu", ops)
    if profile == "full":
        from comfy.ldm.models.autoencoder import AutoencoderKL
        vae = AutoencoderKL(ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                      "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                      "attn_resolutions": [], "dropout": 0.0}, embed_dim=4)
    else:
        vae = comfy.taesd.taesd.TAESD(latent_channels=4)
        vae.vae_scale.data.fill_(1.0)
        vae.vae_shift.data.fill_(0.0)
    init_default_weights(list(unet.modules()) + list(clip.modules()) + list(vae.modules()))
    if profile == "test":
        with torch.no_grad():
            unet.out[-1].weight.mul_(TEST_OUT_SCALE)
            unet.out[-1].bias.mul_(TEST_OUT_SCALE)

    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"cond_stage_model.transformer." + k: v for k, v in clip.state_dict().items()
               if not k.startswith("text_projection")})
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    sd = {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}
    detected = comfy.model_detection.model_config_from_unet_config(
        comfy.model_detection.detect_unet_config(sd, "model.diffusion_model."), sd)
    if type(detected).__name__ != "SD15":
        raise RuntimeError(f"test checkpoint detected as {type(detected).__name__}, expected SD15")
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", choices=sorted(CHANNEL_MULT), default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.comfy_root))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: it probes CUDA at import
    import safetensors.torch
    sd = build_state_dict(args.profile, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    safetensors.torch.save_file(sd, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 2**20:.0f} MiB, profile {args.profile}")


if __name__ == "__main__":
    main()
