"""The random-weight, reduced-width SDXL checkpoint the test server loads under SDXL base's file name.

UNet: ComfyUI's SDXL config class with SDXL's real unet_config at model_channels = reduced_sdxl.WIDTH
(tests/support/families.py, the same model the host tests build); text encoders: SDXL's CLIP-L and CLIP-G at
reduced depth (tests/support/reduced_sdxl); VAE: TAESD. Written as ComfyUI's own save_checkpoint writes it, so its keys are
an SDXL checkpoint's (fp16), and read back with load_checkpoint_guess_config (with the test node pack registered) to check
that it is detected as the reduced SDXL. No weights are ever downloaded.

usage: python -m tests.support.tiny_sdxl --comfy-root DIR --out FILE [--seed N]
"""
import argparse
import os
import sys

import torch


def build_and_save(out: str, seed: int = 0):
    import comfy.sd
    import comfy.taesd.taesd
    import comfy.utils

    from tests.support import families, reduced_sdxl
    from tests.support.tiny_sd15 import init_default_weights

    model = families.build("sdxl", seed=seed, width=reduced_sdxl.WIDTH)
    clip = comfy.sd.CLIP(reduced_sdxl.SDXL(families.unet_config("sdxl")).clip_target(), parameters=0,
                         model_options={"dtype": torch.float32})
    torch.manual_seed(seed + 1)
    init_default_weights(clip.cond_stage_model.modules())
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_default_weights(taesd.modules())
    with torch.no_grad():
        taesd.vae_scale.fill_(1.0)
        taesd.vae_shift.fill_(0.0)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    sd = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())   # what comfy.sd.save_checkpoint writes
    tmp = out + ".tmp.safetensors"   # the loader tells safetensors by the extension
    comfy.utils.save_torch_file({k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
                                 for k, v in sd.items()}, tmp)
    with torch.inference_mode():
        loaded, loaded_clip, _ = comfy.sd.load_checkpoint_guess_config(tmp)[:3]
        cond = loaded_clip.encode_from_tokens_scheduled(loaded_clip.tokenize("a photo"))
    detected = type(loaded.model.model_config)
    if detected is not reduced_sdxl.SDXL or cond[0][0].shape != (1, 77, 2048) or \
            cond[0][1]["pooled_output"].shape != (1, 1280):
        raise RuntimeError(f"test SDXL checkpoint read back as {detected.__name__} with context "
                           f"{tuple(cond[0][0].shape)}")
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.comfy_root))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: it probes CUDA at import
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    build_and_save(args.out, args.seed)
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 2**20:.0f} MiB, reduced SDXL")


if __name__ == "__main__":
    main()
