"""Identity LoRA (GoodDrag / DragDiffusion's per-image LoRA): what it changes on the demo model, what it costs at
SD-1.5 size.

    .dev/venv/bin/python -m bench.lora [--cases 4] [--modes move resize drag] [--steps 50] [--size 256]
                                       [--timing-steps 2] [--skip-time] [--skip-quality]

Quality, on the demo model (tools/train_demo.py) with the Identity LoRA node's defaults (GoodDrag's recipe: 70
steps, rank 16, lr 5e-4, batch 4), one LoRA fitted per image, used for the image's inversion and its edit:
  reconstruction   PSNR (dB) of DDIM inversion (50 steps) + DDIM reconstruction on --cases held-out scenes, the
                   path bench.drag_accuracy's baseline takes; the autoencoder alone bounds it.
  GoodDrag / DragDiffusion   bench.drag_accuracy's measures (centroid px, unchanged 0-255, MD px) of the AlDD Drag
                   Scheduler's two presets on --cases generated cases per mode.
Speed: LoRA fitting steps per second of the full SD-1.5 UNet (859.5M, random weights: cost does not depend on
them) on this machine at --size px, batch 4, from the progress bar's timestamps (the first step, which allocates,
is reported apart). Nothing here asserts; numbers are what they are.
"""
import argparse
import copy
import time

import numpy as np
import torch

from bench.drag_accuracy import MODES, Editor, editable_region, measure
from bench.support import load_model, widget_defaults
from tests.support import comfy_inproc
from tests.support.comfy_inproc import run_node
from tests.support.pack import load_pack
from tools import scenes, train_demo

PRESETS = ("gooddrag", "dragdiffusion")
METHOD_NAMES = {"gooddrag": "GoodDrag", "dragdiffusion": "DragDiffusion"}


def _lora_node():
    from comfyui_dragedit.nodes.lora import DragEditIdentityLoRA
    return DragEditIdentityLoRA


def with_lora(editor: Editor, latent: dict) -> Editor:
    """The editor with its model replaced by the model with a LoRA fitted to this latent (node defaults)."""
    node = _lora_node()
    fitted = copy.copy(editor)
    fitted.model = run_node(node, model=editor.model, latent=latent, positive=editor.cond,
                            **widget_defaults(node)).result[0]
    return fitted


def aldd_edit(editor: Editor, case, latent: dict, preset: str) -> dict:
    """The AlDD Drag Scheduler with a preset, on its inversion strength, as the gooddrag / dragdiffusion examples."""
    from comfyui_dragedit.kernels.features import gooddrag_tap
    from comfyui_dragedit.kernels.points import DragPoints
    from comfyui_dragedit.nodes.aldd import PRESETS as ALDD_PRESETS

    fam = editor.nodes["host"].family(editor.model, "bench")
    size = case.image.shape[0]
    bank = editor.invert(latent, ALDD_PRESETS[preset].settings.strength)
    points = DragPoints(case.drags, (size, size))
    widgets = {**widget_defaults(editor.nodes["aldd"]), "preset": preset}
    return run_node(editor.nodes["aldd"], model=editor.model, memory_bank=bank, positive=editor.cond, points=points,
                    features=gooddrag_tap(fam.gooddrag_tap, fam.name), mask=editable_region(case),
                    **widgets).result[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return train_demo.psnr(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0)


def reconstruction(editor: Editor, count: int) -> dict:
    """Mean PSNR over held-out scenes: inversion + reconstruction without and with the image's LoRA."""
    rows = {"without": [], "with": [], "autoencoder": []}
    for image in scenes.training_images(777, count):
        latent = editor.encode(image)
        rows["without"].append(_psnr(editor.decode(editor.dragon(None, latent, baseline=True)), image))
        rows["with"].append(_psnr(editor.decode(with_lora(editor, latent).dragon(None, latent, baseline=True)), image))
        rows["autoencoder"].append(_psnr(editor.decode(latent), image))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def drag_accuracy(editor: Editor, mode: str, cases_per_mode: int) -> dict:
    """{(preset, 'without'|'with'): mean measures} over the mode's generated cases."""
    results = {}
    for case in (scenes.drag_case(seed, mode) for seed in range(cases_per_mode)):
        latent = editor.encode(case.image)
        f_in = editor.features(case.image)
        fitted = with_lora(editor, latent)
        for preset in PRESETS:
            for label, ed in (("without", editor), ("with", fitted)):
                output = editor.decode(aldd_edit(ed, case, latent, preset))
                results.setdefault((preset, label), []).append(measure(case, output, f_in, editor.features(output)))
    return {key: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]} for key, rows in results.items()}


def quality(editor: Editor, cases: int, modes, steps: int):
    """Prints the table row by row as the measurements finish (a full run takes long on a CPU)."""
    defaults = widget_defaults(_lora_node())
    print(f"Identity LoRA on the demo model: {cases} held-out scenes and {cases} cases per mode at 128x128, {steps} "
          f"DDIM steps; LoRA {defaults['steps']} steps, rank {defaults['rank']}, lr {defaults['lr']:g}, batch "
          f"{defaults['batch_size']}, one per image")
    print(f"{'':8}{'':15}{'':12}{'without LoRA':>14}{'with LoRA':>11}")
    recon = reconstruction(editor, cases)
    print(f"{'recon':8}{'inversion+DDIM':15}{'PSNR dB':12}{recon['without']:>14.2f}{recon['with']:>11.2f}"
          f"   (autoencoder alone {recon['autoencoder']:.2f})", flush=True)
    for mode in modes:
        accuracy = drag_accuracy(editor, mode, cases)
        for preset in PRESETS:
            for k, (metric, label) in enumerate((("centroid", "centroid px"), ("unchanged", "unchanged"),
                                                 ("md", "MD px"))):
                without, with_ = accuracy[(preset, "without")][metric], accuracy[(preset, "with")][metric]
                print(f"{mode if k == 0 and preset == PRESETS[0] else '':8}{METHOD_NAMES[preset] if k == 0 else '':15}"
                      f"{label:12}{without:>14.1f}{with_:>11.1f}", flush=True)


def time_fit(size: int, steps: int) -> dict:
    """Seconds per LoRA fitting step on the full SD-1.5 UNet at size px, batch 4 (from the progress bar)."""
    import comfy.utils

    (model, clip, _) = load_model("full")
    node = _lora_node()
    with torch.inference_mode():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    stamps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                             stamps.append(time.perf_counter()))
    start = time.perf_counter()
    try:
        run_node(node, model=model, latent=latent, positive=cond, **{**widget_defaults(node), "steps": steps + 1})
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    per_step = (stamps[-1] - stamps[0]) / steps
    return dict(first=stamps[0] - start, per_step=per_step, steps=steps)


def print_time(t: dict, size: int):
    per_step = t["per_step"]
    print(f"\nLoRA fitting speed, full SD-1.5 UNet (859.5M, random weights), CPU ({torch.get_num_threads()} threads), "
          f"{size}x{size} image, batch 4, fp32: {per_step:.1f} s per step = {1 / per_step:.3f} steps/s (mean of "
          f"{t['steps']} steps after the first, which took {t['first']:.1f} s with loading); GoodDrag's 70 steps: "
          f"{70 * per_step / 60:.1f} min, DragDiffusion's 80: {80 * per_step / 60:.1f} min (official: ~20-25 s on an "
          f"A100 at 512x512)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4, help="held-out scenes, and cases per mode")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="drag-case modes")
    ap.add_argument("--size", type=int, default=256, help="image size in px for the timing (multiple of 64)")
    ap.add_argument("--timing-steps", type=int, default=2, help="timed LoRA steps after the first")
    ap.add_argument("--skip-time", action="store_true", help="the demo-model table only")
    ap.add_argument("--skip-quality", action="store_true", help="the timing only")
    args = ap.parse_args()
    load_pack()
    comfy_inproc.import_comfy()
    if not args.skip_quality:
        quality(Editor(args.steps), args.cases, args.modes, args.steps)
    if not args.skip_time:
        print_time(time_fit(args.size, args.timing_steps), args.size)


if __name__ == "__main__":
    main()
