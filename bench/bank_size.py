"""Memory-bank size per family and resolution, ours (one fp16 self-attention input per layer) against the official
layout (post-projection K and V, 27.5 MB per step at 512² on SD-1.5, dragondiffusion.md §1.1), with each family's
default layer set and the full decoder; and the reconstruction cost of SDXL's default (output 3-5) against the full
bank on a random-weight SDXL-topology UNet.

    .dev/venv/bin/python -m bench.bank_size [--measure] [--reconstruction] [--steps N]

Layer widths and the fp16 UNet size come from each family's real UNet (ComfyUI's config class at full width, built on
the meta device: no memory, no weights) and the layer sets from the pack's family table (nodes/host.py), so the
table is what the Inversion node stores. --measure also inverts 2 steps of a 512² latent with the full SD-1.5 UNet
(random weights) and checks the formula against the bank the node stores. --reconstruction inverts an image latent
on the reduced-width SDXL of the host tests (tests/support/families.py) with each layer set and reconstructs it with
Visual Cross-Attention in a stock KSampler (DDIM, --steps steps).
"""
import argparse

import torch

from tests.support import comfy_inproc
from tests.support.pack import load_pack

STEPS = 50
ROWS = (("SD15", "sd15", 512), ("SD15", "sd15", 768), ("SD20", "sd2", 768), ("SDXL", "sdxl", 1024))
CARD_GB = 12


def skeleton(config_name: str, name: str):
    """The family's full-width UNet on the meta device, as a ModelPatcher-shaped object for host.layer_channels."""
    import types

    import comfy.model_base
    import comfy.supported_models

    from tests.support import families

    unet_config = dict(families.SD15_UNET) if name == "sd15" else families.unet_config(name, 320)
    config = getattr(comfy.supported_models, config_name)(unet_config)
    config.set_inference_dtype(torch.float16, None)
    model = comfy.model_base.BaseModel(config, device=torch.device("meta"))
    return types.SimpleNamespace(model=model)


def sizes():
    from comfyui_dragedit.kernels.memory_bank import bank_bytes_per_step
    from comfyui_dragedit.nodes import host

    print(f"{'family':>6} {'image':>6} {'layers':>22} {'official K+V MB/step':>21} {'ours MB/step':>13} "
          f"{'ours, ' + str(STEPS) + ' steps GB':>18} {'fp16 UNet GB':>13} {f'left of {CARD_GB} GB':>14}")
    for config_name, name, size in ROWS:
        model = skeleton(config_name, name)
        fam = host.FAMILIES[config_name]
        unet_gb = sum(p.numel() for p in model.model.diffusion_model.parameters()) * 2 / 1e9
        latent = (size // 8, size // 8)
        for label, layers in (("default", fam.layers(fam.bank_blocks)), ("all decoder", fam.layers())):
            channels = host.layer_channels(model, layers)
            shape = [(fam.downscale(layer), channels[layer]) for layer in layers]
            official = bank_bytes_per_step(latent, shape, key_and_value=True)
            ours = bank_bytes_per_step(latent, shape)
            print(f"{fam.name:>6} {size:>5}² {f'{label} ({len(layers)})':>22} {official / 1e6:>21.1f} "
                  f"{ours / 1e6:>13.1f} {STEPS * ours / 1e9:>18.2f} {unet_gb:>13.2f} "
                  f"{CARD_GB * 2**30 / 1e9 - unet_gb - STEPS * ours / 1e9:>14.2f}")
    print(f"left of {CARD_GB} GB: a {CARD_GB} GiB card's memory less the fp16 UNet and the {STEPS}-step bank, for the "
          "passes' activations (bank_device 'auto' puts the bank on the GPU only when twice its size is free, "
          "host.bank_device; else in CPU memory)")


def measure():
    from bench.support import encode, load_model, timed
    from comfyui_dragedit.kernels.memory_bank import bank_bytes_per_step
    from comfyui_dragedit.nodes import host
    from comfyui_dragedit.nodes.inversion import DragEditDDIMInversion
    from tests.support.comfy_inproc import run_node

    model, clip, _ = load_model("full")
    latent = {"samples": torch.randn(1, 4, 64, 64)}
    out, seconds = timed(run_node, DragEditDDIMInversion, model=model, latent=latent, positive=encode(clip, ""),
                         steps=50, strength=0.04, layers="family default", bank_device="offload (CPU)")
    bank = out.result[0]
    attention = sum(v.numel() * v.element_size() for v in bank.attention.values()) / len(bank.timesteps)
    fam = host.SD1
    channels = host.layer_channels(model, fam.layers())
    formula = bank_bytes_per_step((64, 64), [(fam.downscale(layer), channels[layer]) for layer in fam.layers()])
    print(f"measured at 512², full SD-1.5: {attention / 1e6:.1f} MB/step of attention inputs "
          f"(formula {formula / 1e6:.1f}), {len(bank.timesteps)} steps inverted in {seconds:.1f} s")


def reconstruction(steps: int, latent_side: int = 16):
    """Relative error ||z - z0|| / ||z0|| of the plain DDIM round trip and of Visual Cross-Attention (replace and
    concat) with the default and the full bank, and the two banks' results against each other."""
    import nodes

    from comfyui_dragedit.nodes.cross_attention import DragEditVisualCrossAttention
    from comfyui_dragedit.nodes.inversion import DragEditDDIMInversion
    from tests.support import families
    from tests.support.comfy_inproc import run_node

    model = families.build("sdxl")
    cond = families.conditioning("sdxl", seed=1)
    scale = model.model.latent_format.scale_factor
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, latent_side, latent_side, generator=g) * 0.5   # model space, as the host tests
    z[:, :, 4:9, 2:7] += 0.75 * torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1, 1)
    latent = {"samples": z / scale}

    def ksampler(m, start):
        with torch.inference_mode():
            return nodes.KSamplerAdvanced().sample(m, "disable", 0, steps, 1.0, "ddim", "ddim_uniform", cond, cond,
                                                   start, 0, 10000, "disable")[0]["samples"]

    def error(out, ref=latent["samples"]):
        return float((out - ref).norm() / ref.norm())

    results = {}
    for layers in ("family default", "all decoder self-attention"):
        bank, inverted = run_node(DragEditDDIMInversion, model=model, latent=latent, positive=cond, steps=steps,
                                  strength=1.0, layers=layers, bank_device="offload (CPU)").result
        if "plain" not in results:
            results["plain"] = ksampler(model, inverted)
        for mode in ("replace", "concat"):
            patched = run_node(DragEditVisualCrossAttention, model=model, memory_bank=bank, mode=mode,
                               step_range="method's steps", start_step=0, end_step=1000).result[0]
            results[layers, mode] = ksampler(patched, inverted)
        results[layers, "layers"] = len(bank.layers)
    print(f"reconstruction on the random-weight SDXL (model_channels {families.LAYOUTS['sdxl'][3]}, "
          f"{latent_side * 8}² image), {steps} DDIM steps, relative error to the image latent:")
    print(f"  plain DDIM round trip (stock KSampler, no bank): {error(results['plain']):.4f}")
    for mode in ("replace", "concat"):
        default, full = results["family default", mode], results["all decoder self-attention", mode]
        print(f"  VCA {mode:>7}: default bank ({results['family default', 'layers']} layers) {error(default):.4f}, "
              f"full bank ({results['all decoder self-attention', 'layers']} layers) {error(full):.4f}; "
              f"default vs full {error(default, full):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--reconstruction", action="store_true")
    ap.add_argument("--steps", type=int, default=STEPS)
    args = ap.parse_args()
    load_pack()
    comfy_inproc.import_comfy()
    sizes()
    if args.measure:
        measure()
    if args.reconstruction:
        reconstruction(args.steps)


if __name__ == "__main__":
    main()
