"""How far a local change of the inverted starting noise spreads on a demo-model file, and how much of it z_T's
mean carries (issue 15): why DragonDiffusion's noise copy shifted the unchanged region, and keep_latent_mean's fix.

    .dev/venv/bin/python -m bench.ode_locality [--cases 8] [--draws 4] [--steps 50] [--model another_file.safetensors]

Per case (--cases generated move cases; seed 5 is the main command's scene): the inversion node's z_T; a 4x4 latent
block of it at the move's target replaced by fresh Gaussian noise (the size of the noise DragonDiffusion copies
there), --draws times with other noise (the spread varies about 2x between draws), once as drawn and once with the
block's per-channel mean kept at z_T's own there; each denoised by plain DDIM (no guidance, no bank attention), as is
z_T itself. Printed, over the pixels more than two latent cells from the block ("far"), the draws' mean:
  reconstruction   mean absolute error (0-255) of the unperturbed run against the input: what the model loses anyway
  spread           mean absolute difference (0-255) of the perturbed run from the unperturbed one: a UNet whose
                   denoising is local leaves it near 0
  colour shift     the part of it that is one colour change of the whole far region: the mean over the channels of
                   |mean difference|; near the spread when the far pixels all shift together
  mean kept        the spread when the block's new noise keeps z_T's per-channel mean there (what the Energy
                   Guidance nodes' keep_latent_mean does for the whole of z_T)
  first pass       mean |d eps| far from the block in the first UNet pass (noise as drawn), against the same near
                   it: the spread that one pass makes, before the 50 steps accumulate it
Nothing here asserts.
"""
import argparse

import numpy as np
import torch

from bench.drag_accuracy import Editor
from bench.support import parse_args
from tests.support import comfy_inproc
from tools import scenes

BLOCK = 4    # latent cells, a side
FAR = 2      # latent cells between the block and the "far" pixels


def _denoise(editor, z_T, steps) -> tuple[np.ndarray, torch.Tensor]:
    """(the decoded image, the first pass's eps) of plain DDIM from z_T (VP, [1, 4, h, w])."""
    from comfyui_dragedit.kernels.ddim import denoise
    from comfyui_dragedit.kernels.plan import ddim_plan

    host = editor.nodes["host"]
    first = []

    def loop(passes, z0):
        def eps_fn(z, step):
            eps = passes.eps(z, step)
            if not first:
                first.append(eps)
            return eps
        return denoise(eps_fn, z_T.to(z0), ddim_plan(steps), passes.alphas_cumprod)

    with torch.inference_mode():  # the LATENT argument only sizes the conditioning
        samples = host.sample(editor.model, loop, torch.zeros_like(z_T), editor.cond)
    return editor.decode({"samples": samples}), first[0].float().cpu()


def measure(editor, case, steps, draws) -> dict:
    bank = editor.invert(editor.encode(case.image), 1.0)
    z_T = bank.latents[bank.timesteps[0]].float().cpu()
    h, w = z_T.shape[-2:]
    px = case.image.shape[0] // h   # image pixels per latent cell
    x, y = scenes.centroid(case.expected_mask)
    top = min(max(round(y / px) - BLOCK // 2, 0), h - BLOCK)
    left = min(max(round(x / px) - BLOCK // 2, 0), w - BLOCK)
    block = torch.zeros(1, 1, h, w, dtype=torch.bool)
    block[..., top:top + BLOCK, left:left + BLOCK] = True
    far = ~torch.nn.functional.max_pool2d(block.float(), 2 * FAR + 1, 1, FAR).bool()
    far_px = far[0, 0].repeat_interleave(px, 0).repeat_interleave(px, 1).numpy()
    reconstruction, eps = _denoise(editor, z_T, steps)
    block_mean = z_T[..., top:top + BLOCK, left:left + BLOCK].mean((-2, -1), keepdim=True)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(draws):
        noise = torch.randn(z_T.shape, generator=generator)
        perturbed, eps_perturbed = _denoise(editor, torch.where(block, noise, z_T), steps)
        noise_kept = noise - noise[..., top:top + BLOCK, left:left + BLOCK].mean((-2, -1), keepdim=True) + block_mean
        kept, _ = _denoise(editor, torch.where(block, noise_kept, z_T), steps)
        far_diff = (perturbed.astype(np.float32) - reconstruction)[far_px]   # [pixels, 3]
        d_eps = (eps - eps_perturbed).abs().mean(1)[0]
        rows.append(dict(spread=np.abs(far_diff).mean(), shift=np.abs(far_diff.mean(0)).mean(),
                         kept=np.abs(kept.astype(np.int16) - reconstruction)[far_px].mean(),
                         far_eps=d_eps[far[0, 0]].mean().item(), near_eps=d_eps[block[0, 0]].mean().item()))
    return dict(reconstruction=float(np.abs(reconstruction.astype(np.int16) - case.image)[far_px].mean()),
                **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8, help="generated move cases")
    ap.add_argument("--draws", type=int, default=4, help="noise draws per case")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--model", help="a demo model file (tools/train_demo.py) instead of the shipped one")
    args = parse_args(ap)
    comfy_inproc.import_comfy()
    from scripts.draw_example_inputs import DEMO_CASE_SEED

    editor = Editor(args.steps, args.model)
    cases = {f"move {s}" + (" (main)" if s == DEMO_CASE_SEED else ""): scenes.drag_case(s, "move")
             for s in range(args.cases)}
    print(f"A {BLOCK}x{BLOCK} latent block of z_T replaced by Gaussian noise ({args.draws} draws), {args.steps} DDIM "
          f"steps; pixels more than {FAR} latent cells from it (MAE 0-255; first pass: mean |d eps| far / near)")
    print(f"{'case':16}{'reconstruction':>16}{'spread':>9}{'colour shift':>14}{'mean kept':>11}{'first pass':>18}")

    def line(name, row):
        print(f"{name:16}{row['reconstruction']:>16.1f}{row['spread']:>9.1f}{row['shift']:>14.1f}{row['kept']:>11.1f}"
              f"{row['far_eps']:>11.3f} / {row['near_eps']:.3f}", flush=True)
    rows = []
    for name, case in cases.items():
        rows.append(measure(editor, case, args.steps, args.draws))
        line(name, rows[-1])
    line("mean", {k: float(np.mean([r[k] for r in rows])) for k in rows[0]})


if __name__ == "__main__":
    main()
