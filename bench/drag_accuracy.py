"""Drag accuracy with ground truth: generated scenes (tools/scenes.py) edited by the pack's nodes on the demo model.

    .dev/venv/bin/python -m bench.drag_accuracy [--cases 8] [--steps 50] [--sheet docs/images/demo_drag_cases.png]
                                                [--model another_demo_file.safetensors] [--fast 25]

Per mode (move, resize, drag) and method (DragonDiffusion, GoodDrag, and the do-nothing baseline: inversion and
reconstruction with zero energy), over --cases cases; with --fast N also each method's fast preset (D+ on a bank of
N DDIM steps, its guided steps rescaled; GoodDrag's "gooddrag fast" preset on N steps) beside the full budget, with
the UNet passes and CPU seconds per edit of each, so the table shows what the speed costs:
  centroid px   distance from the edited object's centroid in the output to its ground-truth centroid. The
                object is found by template matching: the input's object (its pixels under its mask) is shifted
                (and, for resize, scaled about its centre) to where it fits the output best (least masked squared
                error), which the reconstruction's blur does not mislead. Input: the distance before the edit.
  reached       resize: the fraction of the asked scale change that the best fit's scale shows,
                ln(scale) / ln(asked scale): 1 is the asked size, 0 the input's (cases shrink and grow).
  unchanged     mean absolute error (0-255) against the input outside the object's old and new place (4 px margin).
  object        mean absolute error (0-255) against the ground truth over the object's true place.
  MD px         DragBench's mean distance: each handle's feature in the input (the demo UNet's output block 8 at
                t=261, as DIFT) found by nearest neighbour in the output, distance to its target, averaged over
                the case's drags (one for move and drag; four edge points for resize, as a user resizes by drags).
Then issue 15's targets, each checked against the baseline measured in the same run.
Nothing here asserts: the tests do (tests/e2e/test_demo_move.py for the main command).
"""
import argparse
import math
import time

import numpy as np
import torch

from bench.support import parse_args, widget_defaults
from tests.support import comfy_inproc
from tests.support.comfy_inproc import run_node
from tests.support.dispatch import PassCounter
from tests.support.pack import load_pack
from tools import scenes, train_demo

MODES = ("move", "resize", "drag")
METHODS = ("baseline", "DragonDiffusion", "GoodDrag")
FAST = " fast"  # suffix of a method's fast-preset row
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
    load_pack()
    from comfyui_dragedit.kernels.masks import dilate

    return dilate(torch.from_numpy(np.maximum(case.mask, case.expected_mask)), margin)


def editable_region(case) -> torch.Tensor:
    """The region the edit may change: the object's old and new place, 8 px margin, as a [1, H, W] MASK."""
    return _around_object(case, 8).float()[None]


class Editor:
    """Runs one case through the nodes, the way the example workflows wire them."""

    def __init__(self, steps, model_file=None):
        self.nodes = _nodes()
        self.steps = steps
        self.model, clip, self.vae = self.nodes["host"].load_demo_model(model_file or self.nodes["demo_model_file"])
        with torch.inference_mode():
            self.cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))

    def encode(self, image: np.ndarray) -> dict:
        with torch.inference_mode():
            return {"samples": self.vae.encode(torch.from_numpy(image).float()[None] / 255.0)}

    def decode(self, latent: dict) -> np.ndarray:
        with torch.inference_mode():
            pixels = self.vae.decode(latent["samples"])
        return (pixels.reshape(pixels.shape[-3:]).clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    def invert(self, latent, strength, layers="family default", steps=None):
        return run_node(self.nodes["inversion"], model=self.model, latent=latent, positive=self.cond,
                        steps=steps or self.steps, strength=strength, layers=layers,
                        bank_device="offload (CPU)").result[0]

    def dragon(self, case, latent, baseline=False, steps=None) -> dict:
        """DragonDiffusion's edit of the case on a bank of `steps` DDIM steps (None: the full schedule); baseline:
        zero energy, no bank attention, no SDE (a plain DDIM reconstruction from the inverted latent)."""
        bank = self.invert(latent, 1.0, steps=steps)
        if baseline:  # zero energy: the mask only has to be valid
            h, w = latent["samples"].shape[-2] * 8, latent["samples"].shape[-1] * 8
            box = torch.zeros(1, h, w)
            box[:, h // 4:h // 2, w // 4:w // 2] = 1.0
            node, geometry = self.nodes["move"], dict(mask=box, energy_scale=0.0)
            return self.sample(bank, node, geometry, self.model)
        model = self.bank_attention(bank, case.mode)
        sde_strength = widget_defaults(self.nodes["sampler"])["sde_strength"]
        return self.sample(bank, self.nodes[case.mode], self.geometry(case), model, sde_strength=sde_strength)

    @staticmethod
    def geometry(case) -> dict:
        """The case's inputs to its mode's guidance node, as a user draws them."""
        from comfyui_dragedit.kernels.points import DragPoints

        mask = torch.from_numpy(case.mask)[None]
        if case.mode == "move":
            return dict(mask=mask, offset_x=round(case.offset[0]), offset_y=round(case.offset[1]))
        if case.mode == "resize":
            return dict(mask=mask, scale=round(case.scale, 2))
        size = case.image.shape[0]
        return dict(points=DragPoints(case.drags, (size, size)), mask=editable_region(case))

    def bank_attention(self, bank, mode):
        """The MODEL with Visual Cross-Attention on the method's steps, in the mode's own bank mode."""
        return run_node(self.nodes["vca"], model=self.model, memory_bank=bank,
                        mode="concat" if mode == "drag" else "replace", step_range="method's steps",
                        start_step=0, end_step=1000).result[0]

    def sample(self, bank, guidance_node, geometry, model, sde_strength=0.0, **sampler_widgets) -> dict:
        """The Guided Sampler on `model` with the guidance node's defaults updated by `geometry` and the sampler's
        by `sde_strength` and `sampler_widgets`."""
        from comfyui_dragedit.kernels.features import dragon_tap

        fam = self.nodes["host"].family(self.model, "bench")
        guidance = run_node(guidance_node, **{**widget_defaults(guidance_node), **geometry}).result[0]
        settings = {**widget_defaults(self.nodes["sampler"]), "sde_strength": sde_strength, **sampler_widgets}
        return run_node(self.nodes["sampler"], model=model, memory_bank=bank, guidance=guidance,
                        features=dragon_tap(fam.dragon_taps, fam.name),
                        positive=self.cond, negative=self.cond, **settings).result[0]

    def gooddrag(self, case, latent, steps=None) -> dict:
        """GoodDrag's edit of the case: the node's default preset, or with `steps` "gooddrag fast" on that many."""
        from comfyui_dragedit.kernels.aldd import GOODDRAG
        from comfyui_dragedit.kernels.features import gooddrag_tap
        from comfyui_dragedit.kernels.points import DragPoints

        size = case.image.shape[0]
        bank = self.invert(latent, GOODDRAG.settings.strength, steps=steps)
        points = DragPoints(case.drags, (size, size))
        widgets = widget_defaults(self.nodes["aldd"])
        if steps:
            widgets["preset"] = "gooddrag fast"
        return run_node(self.nodes["aldd"], model=self.model, memory_bank=bank, positive=self.cond, points=points,
                        features=gooddrag_tap(8, "SD 1.x"), mask=editable_region(case), **widgets).result[0]

    def edit(self, case, method, fast_steps=None) -> np.ndarray:
        """The case edited by `method` (a METHODS name, or one with the FAST suffix: its fast preset)."""
        latent = self.encode(case.image)
        steps = fast_steps if method.endswith(FAST) else None
        method = method.removesuffix(FAST)
        if method == "GoodDrag":
            return self.decode(self.gooddrag(case, latent, steps))
        return self.decode(self.dragon(case, latent, baseline=method == "baseline", steps=steps))

    def features(self, image: np.ndarray) -> torch.Tensor:
        """DIFT-style features of an image: output block 8 at t=261 with fixed noise, [C, H/2, W/2]."""
        from comfyui_dragedit.kernels.features import concat_features, gooddrag_tap
        from comfyui_dragedit.kernels.schedule import alpha_bar_at

        host = self.nodes["host"]
        latent = self.encode(image)["samples"]
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


def score(case, output: np.ndarray) -> dict:
    """How well `output` (uint8 [H, W, 3]) does the case's edit, against its ground truth: centroid (px from where the
    input's object fits best to its true place), scale (that fit's scale; resize only), unchanged (MAE 0-255 against
    the input outside the object's old and new place, 4 px margin) and object (MAE 0-255 against the ground truth
    over the object's true place, coverage >= 0.5: its colour and shape where it should be)."""
    target = scenes.centroid(case.expected_mask)
    if case.mode == "resize":
        centroid, scale = scenes.locate_object(case, output, shift_range=6, scales=np.arange(0.5, 1.61, 0.05))
    else:
        centroid, scale = scenes.locate_object(case, output)
    error = np.abs(output.astype(np.int16) - case.image.astype(np.int16))
    outside = ~_around_object(case, 4).numpy()
    inside = case.expected_mask >= 0.5
    object_error = np.abs(output.astype(np.int16) - case.expected.astype(np.int16))[inside].mean()
    return dict(centroid=math.dist(centroid, target), scale=scale, unchanged=float(error[outside].mean()),
                object=float(object_error))


def measure(case, output: np.ndarray, f_in: torch.Tensor, f_out: torch.Tensor) -> dict:
    """score() plus MD px, DragBench's mean distance (over the case's drags) with the demo UNet's features."""
    size = case.image.shape[1]
    distances = [math.dist(matched_point(f_in, f_out, (hx, hy), size), (tx, ty)) for hx, hy, tx, ty in case.drags]
    return dict(score(case, output), md=float(np.mean(distances)))


def reconstruction_psnr(editor, count: int, size: int) -> tuple[float, float]:
    """PSNR (dB, over all pixels of `count` held-out scenes, as tools/train_demo.py reports it) of inversion +
    reconstruction (the baseline's path), and of the autoencoder alone, which bounds it."""
    images = scenes.training_images(777, count, size)
    inverted = np.stack([editor.decode(editor.dragon(None, editor.encode(x), baseline=True)) for x in images])
    autoencoded = np.stack([editor.decode(editor.encode(x)) for x in images])
    truth = torch.from_numpy(images) / 255.0
    return (train_demo.psnr(torch.from_numpy(inverted) / 255.0, truth),
            train_demo.psnr(torch.from_numpy(autoencoded) / 255.0, truth))


def scale_reached(case, fitted_scale: float) -> float:
    """The fraction of the asked resize the output shows, in log scale: 1 is the asked scale, 0 the input's."""
    return math.log(fitted_scale) / math.log(case.scale)


def _checks(inverted, autoencoded, table) -> list[tuple[str, bool]]:
    """Issue 15's targets, each against its baseline measured in this run."""
    lines = [(f"inversion + reconstruction {inverted:.2f} dB within 1 dB of the autoencoder's {autoencoded:.2f} dB",
              inverted >= autoencoded - 1.0)]
    for mode in MODES:
        base = table[mode, "baseline"]
        for method in METHODS[1:]:
            row = table[mode, method]
            if mode == "resize":
                lines.append((f"resize {method}: reaches {row['reached']:.2f} of the asked scale change (>= 0.5)",
                              row["reached"] >= 0.5))
            else:
                lines.append((f"{mode} {method}: centroid {row['centroid']:.1f} px <= half the baseline's "
                              f"{base['centroid']:.1f} px", row["centroid"] <= base["centroid"] / 2))
            lines.append((f"{mode} {method}: unchanged {row['unchanged']:.1f} within 2 of the baseline's "
                          f"{base['unchanged']:.1f}", row["unchanged"] <= base["unchanged"] + 2.0))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8, help="cases per mode")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule")
    ap.add_argument("--scenes", type=int, default=16, help="held-out scenes for the reconstruction PSNR (0: skip)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--size", type=int, default=128, help="scene side in px (the scenes scale their objects with it)")
    ap.add_argument("--model", help="a demo model file (tools/train_demo.py) to measure instead of the shipped one")
    ap.add_argument("--fast", type=int, default=0, metavar="STEPS",
                    help="also each method's fast preset on STEPS DDIM steps (25: the presets' budget); 0: skip")
    ap.add_argument("--sheet", help="also write a PNG: per case input (handle red, target blue), ground truth, "
                                    "then each method's output")
    args = parse_args(ap)
    comfy_inproc.import_comfy()
    editor = Editor(args.steps, args.model)
    passes = PassCounter()
    editor.model = passes.attach(editor.model)
    modes = [m for m in MODES if m in args.modes.split(",")]
    methods = METHODS + tuple(m + FAST for m in METHODS[1:] if args.fast)
    if args.scenes:
        inverted, autoencoded = reconstruction_psnr(editor, args.scenes, args.size)
        print(f"Held-out scenes ({args.scenes}): DDIM inversion + reconstruction {inverted:.2f} dB PSNR, the "
              f"autoencoder alone {autoencoded:.2f} dB")
    fast = f" (fast presets: {args.fast})" if args.fast else ""
    print(f"Drag accuracy on the demo model, {args.cases} cases per mode at {args.size}x{args.size}, "
          f"{args.steps} DDIM steps{fast}")
    print(f"{'mode':8}{'method':22}{'centroid px':>12}{'reached':>9}{'unchanged':>11}{'object':>8}{'MD px':>8}"
          f"{'passes':>8}{'CPU s':>7}")
    sheet, table = {}, {}
    for mode in modes:
        cases = [scenes.drag_case(seed, mode, args.size) for seed in range(args.cases)]
        before = [math.dist(scenes.centroid(c.mask), scenes.centroid(c.expected_mask)) for c in cases]
        md_before = [np.mean([math.hypot(tx - hx, ty - hy) for hx, hy, tx, ty in c.drags]) for c in cases]
        object_before = [np.abs(c.image.astype(np.int16) - c.expected.astype(np.int16))[c.expected_mask >= 0.5].mean()
                         for c in cases]
        reached = "0.00" if mode == "resize" else ""
        print(f"{mode:8}{'input':22}{np.mean(before):>12.1f}{reached:>9}{0.0:>11.1f}{np.mean(object_before):>8.1f}"
              f"{np.mean(md_before):>8.1f}", flush=True)
        f_inputs = [editor.features(c.image) for c in cases]
        for method in methods:
            rows = []
            for k, (case, f_in) in enumerate(zip(cases, f_inputs)):
                calls, started = passes.calls, time.process_time()
                output = editor.edit(case, method, args.fast)
                cost = dict(passes=passes.calls - calls, seconds=time.process_time() - started)
                row = measure(case, output, f_in, editor.features(output))
                rows.append(dict(row, **cost, reached=scale_reached(case, row["scale"]) if mode == "resize" else 0.0))
                sheet.setdefault((mode, k), [_marked(case), case.expected]).append(output)
            mean = table[mode, method] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            reached = f"{mean['reached']:.2f}" if mode == "resize" else ""
            print(f"{'':8}{method:22}{mean['centroid']:>12.1f}{reached:>9}{mean['unchanged']:>11.1f}"
                  f"{mean['object']:>8.1f}{mean['md']:>8.1f}{mean['passes']:>8.0f}{mean['seconds']:>7.1f}",
                  flush=True)

    if args.scenes and len(modes) == len(MODES):  # the targets need the reconstruction and every mode
        print("Targets (issue 15), each against its baseline in this run:")
        for line, met in _checks(inverted, autoencoded, table):
            print(f"  {'met    ' if met else 'MISSED '} {line}")
    if args.sheet:
        from PIL import Image
        rows = [np.concatenate([np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255) for tile in tiles], 1)
                for tiles in sheet.values()]
        Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)
        print(f"wrote {args.sheet}: columns input, ground truth, {', '.join(methods)}")


def _marked(case) -> np.ndarray:
    """The input with the handles (red) and targets (blue) drawn as 3x3 dots."""
    image = case.image.copy()
    for hx, hy, tx, ty in case.drags:
        for (x, y), colour in (((hx, hy), (255, 0, 0)), ((tx, ty), (0, 90, 255))):
            row, col = round(y), round(x)
            image[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = colour
    return image


if __name__ == "__main__":
    main()
