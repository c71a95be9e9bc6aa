"""Memory-bank size per step at SD-1.5 shapes, ours (one fp16 self-attention input per layer) against the
official layout (post-projection K and V, 27.5 MB per step at 512², dragondiffusion.md §1.1).

    .dev/venv/bin/python -m bench.bank_size [--measure]

--measure also inverts 2 steps of a 512² latent with the full SD-1.5 UNet (random weights) and reports the
bank's actual bytes per step, so the formula is checked against what the node stores.
"""
import argparse

import torch

from tests.support.pack import load_pack

# SD-1.5 decoder self-attention layers: (downscale vs the latent, channels), 3 blocks each (output 3..11)
SD15_DECODER = [(4, 1280)] * 3 + [(2, 640)] * 3 + [(1, 320)] * 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true")
    args = ap.parse_args()
    load_pack()
    from comfyui_dragedit.kernels.memory_bank import bank_bytes_per_step

    print(f"{'image':>6} {'official K+V MB/step':>21} {'ours MB/step':>13} {'ratio':>6} {'ours, 50 steps MB':>18}")
    for size in (512, 768):
        latent = (size // 8, size // 8)
        official = bank_bytes_per_step(latent, SD15_DECODER, key_and_value=True)
        ours = bank_bytes_per_step(latent, SD15_DECODER)
        print(f"{size:>5}² {official / 1e6:>21.1f} {ours / 1e6:>13.1f} {ours / official:>6.2f} {50 * ours / 1e6:>18.0f}")
    if args.measure:
        from bench.support import encode, load_model, timed
        from tests.support.comfy_inproc import run_node

        model, clip, _ = load_model("full")
        from comfyui_dragedit.nodes.inversion import DragEditDDIMInversion

        latent = {"samples": torch.randn(1, 4, 64, 64)}
        out, seconds = timed(run_node, DragEditDDIMInversion, model=model, latent=latent, positive=encode(clip, ""),
                             steps=50, strength=0.04, layers="family default", bank_device="offload (CPU)")
        bank = out.result[0]
        attention = sum(v.numel() * v.element_size() for v in bank.attention.values()) / len(bank.timesteps)
        formula = bank_bytes_per_step((64, 64), SD15_DECODER)
        print(f"measured at 512², full SD-1.5: {attention / 1e6:.1f} MB/step of attention inputs "
              f"(formula {formula / 1e6:.1f}), {len(bank.timesteps)} steps inverted in {seconds:.1f} s")


if __name__ == "__main__":
    main()
