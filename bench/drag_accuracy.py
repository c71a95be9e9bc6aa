"""Drag accuracy with ground truth: generated scenes (tools/scenes.py) edited by the pack's nodes on the demo model.

    .dev/venv/bin/python -m bench.drag_accuracy [--cases 4] [--steps 50]

Per mode (move, resize, drag) and method (DragonDiffusion, GoodDrag, and the do-nothing baseline: inversion and
reconstruction with zero energy), over --cases cases:
  centroid px   distance from the edited object's centroid in the output to its ground-truth centroid. The
                object is found by template matching: the input's object (its pixels under its mask) is shifted
                (and, for resize, scaled about its centre) to where it fits the output best (least masked squared
                error), which the reconstruction's blur does not mislead. Input: the distance before the edit.
  scale         the scale of that best fit; resize only, against the target scale.
  unchanged     mean absolute error (0-255) against the input outside the object's old and new place (4 px margin).
  MD px         DragBench's mean distance: the handle's feature in the input (the demo UNet's output block 8 at
                t=261, as DIFT) found by nearest neighbour in the output, distance to the target.
Numbers are what they are; nothing here asserts.
"""
import argparse
import math

import numpy as np
import torch

from bench.support import widget_defaults
from tests.support import comfy_inproc
from tests.support.comfy_inproc import run_node
from tests.support.pack import load_pack
from tools import scenes, train_demo

MODES = ("move", "resize", "drag")
METHODS = ("baseline", "DragonDiffusion", "GoodDrag")
MD_TIMESTEP = 261


def _nodes():
    load_pack()
    from comfyui_dragedit.nodes import (aldd, cross_attention, demo_model, energy_guidance, guided_sampler, host,
                                        inversion)
    return dict(host=host, demo_model_file=demo_model.DEMO_MODEL_FILE, inversion=inversion.DragEditDDIMInversion,
                vca=cross_attention.DragEditVisualCrossAttention,
                sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler,
                move=energy_guidance.DragEditEnergyGuidanceMove, resize=energy_guidance.DragEditEnergyGuidanceResize,
                drag=energy_guidance.DragEditEnergyGuidanceDrag)


def _around_object(case, margin: int) -> torch.Tensor:
    """The object's old and new place grown by margin px (a square), bool [H, W]."""
    from comfyui_dragedit.kernels.masks import dilate

    return dilate(torch.from_numpy(np.maximum(case.mask, case.expected_mask)), margin)


def _editable_region(case) -> torch.Tensor:
    """The region the edit may change: the object's old and new place, 8 px margin, as a [1, H, W] MASK."""
    return _around_object(case, 8).float()[None]


class Editor:
    """Runs one case through the nodes, the way the example workflows wire them."""

    def __init__(self, steps):
        self.nodes = _nodes()
        self.steps = steps
        self.model, clip, self.vae = self.nodes["host"].load_demo_model(self.nodes["demo_model_file"])
        with torch.inference_mode():
            self.cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))

    def encode(self, image: np.ndarray) -> dict:
        with torch.inference_mode():
            return {"samples": self.vae.encode(torch.from_numpy(image).float()[None] / 255.0)}

    def decode(self, latent: dict) -> np.ndarray:
        with torch.inference_mode():
            pixels = self.vae.decode(latent["samples"])
        return (pixels.reshape(pixels.shape[-3:]).clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    def invert(self, latent, strength, layers="family default"):
        return run_node(self.nodes["inversion"], model=self.model, latent=latent, positive=self.cond,
                        steps=self.steps, strength=strength, layers=layers, bank_device="offload (CPU)").result[0]

    def dragon(self, case, latent, baseline=False) -> dict:
        """DragonDiffusion's edit of the case; baseline: zero energy, no bank attention, no SDE (a plain DDIM
        reconstruction from the inverted latent)."""
        from comfyui_dragedit.kernels.points import DragPoints

        bank = self.invert(latent, 1.0)
        if baseline:  # zero energy: the mask only has to be valid
            h, w = latent["samples"].shape[-2] * 8, latent["samples"].shape[-1] * 8
            box = torch.zeros(1, h, w)
            box[:, h // 4:h // 2, w // 4:w // 2] = 1.0
            node, geometry = self.nodes["move"], dict(mask=box, energy_scale=0.0)
            return self._sample(bank, node, geometry, self.model)
        mask = torch.from_numpy(case.mask)[None]
        if case.mode == "move":
            node, geometry = self.nodes["move"], dict(mask=mask, offset_x=round(case.offset[0]),
                                                      offset_y=round(case.offset[1]))
        elif case.mode == "resize":
            node, geometry = self.nodes["resize"], dict(mask=mask, scale=round(case.scale, 2))
        else:
            size = case.image.shape[0]
            node, geometry = self.nodes["drag"], dict(points=DragPoints((case.handle + case.target,), (size, size)),
                                                      mask=_editable_region(case))
        model = run_node(self.nodes["vca"], model=self.model, memory_bank=bank,
                         mode="concat" if case.mode == "drag" else "replace", step_range="method's steps",
                         start_step=0, end_step=1000).result[0]
        sde_strength = widget_defaults(self.nodes["sampler"])["sde_strength"]
        return self._sample(bank, node, geometry, model, sde_strength=sde_strength)

    def _sample(self, bank, guidance_node, geometry, model, sde_strength=0.0) -> dict:
        from comfyui_dragedit.kernels.features import dragon_tap

        fam = self.nodes["host"].family(self.model, "bench")
        guidance = run_node(guidance_node, **{**widget_defaults(guidance_node), **geometry}).result[0]
        settings = {**widget_defaults(self.nodes["sampler"]), "sde_strength": sde_strength}
        return run_node(self.nodes["sampler"], model=model, memory_bank=bank, guidance=guidance,
                        features=dragon_tap(fam.dragon_taps, fam.name),
                        positive=self.cond, negative=self.cond, **settings).result[0]

    def gooddrag(self, case, latent) -> dict:
        from comfyui_dragedit.kernels.aldd import GOODDRAG
        from comfyui_dragedit.kernels.features import gooddrag_tap
        from comfyui_dragedit.kernels.points import DragPoints

        size = case.image.shape[0]
        bank = self.invert(latent, GOODDRAG.settings.strength)
        points = DragPoints((case.handle + case.target,), (size, size))
        return run_node(self.nodes["aldd"], model=self.model, memory_bank=bank, positive=self.cond, points=points,
                        features=gooddrag_tap(8, "SD 1.x"), mask=_editable_region(case),
                        **widget_defaults(self.nodes["aldd"])).result[0]

    def edit(self, case, method) -> np.ndarray:
        latent = self.encode(case.image)
        if method == "GoodDrag":
            return self.decode(self.gooddrag(case, latent))
        return self.decode(self.dragon(case, latent, baseline=method == "baseline"))

    def features(self, image: np.ndarray) -> torch.Tensor:
        """DIFT-style features of an image: output block 8 at t=261 with fixed noise, [C, H/2, W/2]."""
        from comfyui_dragedit.kernels.features import concat_features, gooddrag_tap
        from comfyui_dragedit.kernels.schedule import alpha_bar_at

        host = self.nodes["host"]
        latent = self.encode(image)
        alpha_bar = alpha_bar_at(host.model_alphas_cumprod(self.model), MD_TIMESTEP)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        feats = []

        def loop(passes, z0):
            z_t = math.sqrt(alpha_bar) * z0 + math.sqrt(1 - alpha_bar) * noise.to(z0)
            feats.extend(passes.features(z_t, MD_TIMESTEP, gooddrag_tap(8, "SD 1.x"))[1])
            return z0

        with torch.inference_mode():
            host.sample(self.model, loop, latent, self.cond)
        return concat_features(feats)[0].float().cpu()


def matched_point(f_in: torch.Tensor, f_out: torch.Tensor, handle, image_size: int) -> tuple[float, float]:
    """Where the handle's input feature is nearest in the output (image px): DragBench's MD point."""
    from comfyui_dragedit.kernels.motion import sample_patch

    stride = image_size / f_in.shape[-1]
    x, y = ((v + 0.5) / stride - 0.5 for v in handle)  # image px -> feature-map px (pixel centres)
    ref = sample_patch(f_in[None], torch.tensor([[y, x]]), 0)[0, :, 0, 0]
    row, col = divmod(int((f_out - ref[:, None, None]).pow(2).sum(0).argmin()), f_out.shape[-1])
    return ((col + 0.5) * stride - 0.5, (row + 0.5) * stride - 0.5)


def measure(case, output: np.ndarray, f_in: torch.Tensor, f_out: torch.Tensor) -> dict:
    target = scenes.centroid(case.expected_mask)
    if case.mode == "resize":
        centroid, scale = scenes.locate_object(case, output, shift_range=6, scales=np.arange(0.5, 1.61, 0.05))
    else:
        centroid, scale = scenes.locate_object(case, output)
    outside = ~_around_object(case, 4).numpy()
    unchanged = np.abs(output.astype(np.int16) - case.image.astype(np.int16))[outside].mean()
    point = matched_point(f_in, f_out, case.handle, case.image.shape[1])
    return dict(centroid=math.dist(centroid, target), scale=scale, unchanged=float(unchanged),
                md=math.dist(point, case.target))


def reconstruction_psnr(editor, count: int) -> tuple[float, float]:
    """Mean PSNR (dB) over `count` held-out scenes of inversion + reconstruction (the baseline's path), and of the
    autoencoder alone, which bounds it."""
    def psnr(a, b):
        return train_demo.psnr(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0)

    images = scenes.training_images(777, count)
    inverted = [psnr(editor.decode(editor.dragon(None, editor.encode(x), baseline=True)), x) for x in images]
    autoencoded = [psnr(editor.decode(editor.encode(x)), x) for x in images]
    return float(np.mean(inverted)), float(np.mean(autoencoded))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4, help="cases per mode")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule")
    ap.add_argument("--sheet", help="also write a PNG: per case input (handle red, target blue), ground truth, "
                                    "then each method's output")
    args = ap.parse_args()
    comfy_inproc.import_comfy()
    editor = Editor(args.steps)
    inverted, autoencoded = reconstruction_psnr(editor, args.cases)
    print(f"Held-out scenes ({args.cases}): DDIM inversion + reconstruction {inverted:.2f} dB PSNR, the autoencoder "
          f"alone {autoencoded:.2f} dB")
    print(f"Drag accuracy on the demo model, {args.cases} cases per mode at 128x128, {args.steps} DDIM steps")
    print(f"{'mode':8}{'method':17}{'centroid px':>12}{'scale':>14}{'unchanged':>11}{'MD px':>8}")
    sheet = {}
    for mode in MODES:
        cases = [scenes.drag_case(seed, mode) for seed in range(args.cases)]
        before = [math.dist(scenes.centroid(c.mask), scenes.centroid(c.expected_mask)) for c in cases]
        md_before = [math.dist(c.handle, c.target) for c in cases]
        target_scale = np.mean([c.scale for c in cases])
        print(f"{mode:8}{'input':17}{np.mean(before):>12.1f}{f'target {target_scale:.2f}':>14}{0.0:>11.1f}"
              f"{np.mean(md_before):>8.1f}", flush=True)
        f_inputs = [editor.features(c.image) for c in cases]
        for method in METHODS:
            rows = []
            for k, (case, f_in) in enumerate(zip(cases, f_inputs)):
                output = editor.edit(case, method)
                rows.append(measure(case, output, f_in, editor.features(output)))
                sheet.setdefault((mode, k), [_marked(case), case.expected]).append(output)
            mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
            print(f"{'':8}{method:17}{mean['centroid']:>12.1f}{mean['scale']:>14.2f}{mean['unchanged']:>11.1f}"
                  f"{mean['md']:>8.1f}", flush=True)

    if args.sheet:
        from PIL import Image
        rows = [np.concatenate([np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255) for tile in tiles], 1)
                for tiles in sheet.values()]
        Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)
        print(f"wrote {args.sheet}: columns input, ground truth, {', '.join(METHODS)}")


def _marked(case) -> np.ndarray:
    """The input with the handle (red) and target (blue) drawn as 3x3 dots."""
    image = case.image.copy()
    for (x, y), colour in ((case.handle, (255, 0, 0)), (case.target, (0, 90, 255))):
        row, col = round(y), round(x)
        image[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = colour
    return image


if __name__ == "__main__":
    main()
