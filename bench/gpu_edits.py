"""Whole edits at the papers' budgets on a GPU: the full SD-1.5 UNet at random weights (the cost does not depend
on the values), fp16 as ComfyUI loads SD-1.5 on CUDA, one 512x512 image.

    python -m bench.gpu_edits [--size 512]

Rows: DragonDiffusion move (D+ and D, 50 steps: inversion and edit timed apart), GoodDrag and DragDiffusion with
their presets' budgets (lr 1e-6 and early stop off, so no handle reaches its target and every gradient step of
the budget runs). Each edit runs once untimed first (CUDA kernels, caches), then timed. Peak memory is
torch.cuda.max_memory_allocated over the edit, the model's weights included. Made for a CUDA machine (on the
CPU, `--profile test --size 64` checks the script); the CPU benchmarks bench.dragon and bench.gooddrag count
the passes per phase.
"""
import argparse
import time

import torch

from bench import dragon, gooddrag
from bench.support import PassCounter, load_model
from tests.support import comfy_inproc


def _conditioning(batch_text_dim=(1, 77, 768)):
    """Fixed text embeddings: the UNet's cost does not depend on them, and no tokenizer is needed."""
    generator = torch.Generator().manual_seed(0)
    return ([[torch.randn(*batch_text_dim, generator=generator), {}]],
            [[torch.zeros(*batch_text_dim), {}]])


def _timed_twice(fn):
    """(result, seconds, peak GiB or NaN off CUDA) of the second run of fn; the first warms CUDA up."""
    cuda = torch.cuda.is_available()
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return out, seconds, torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")


def dragon_rows(model, size):
    nodes = dragon._nodes()
    cond, uncond = _conditioning()
    counter = PassCounter()
    counted = counter.attach(model)
    bank, invert_s, invert_peak = _timed_twice(lambda: dragon._invert(nodes, counted, cond, size, 50, 0))
    rows = [("DragonDiffusion inversion + bank", invert_s, invert_peak, 50)]
    for schedule in ("D+", "D"):
        counter.calls = 0
        _, seconds, peak = _timed_twice(
            lambda: dragon._edit(nodes, counted, (bank, None), "move", schedule, cond, uncond, size, 50))
        rows.append((f"DragonDiffusion move edit ({schedule})", seconds, peak, counter.calls // 2))
    return rows


def gooddrag_rows(model, size):
    from comfyui_dragedit.kernels.aldd import DRAGDIFFUSION, GOODDRAG
    from comfyui_dragedit.kernels.points import DragPoints
    from comfyui_dragedit.nodes.aldd import DragEditAlDDScheduler

    cond, _ = _conditioning()
    latent = {"samples": torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    points = DragPoints(((size / 4, size / 4, size * 3 / 4, size * 3 / 4),), (size, size))
    counter = PassCounter()
    counted = counter.attach(model)
    rows = []
    for name, preset in (("GoodDrag", GOODDRAG), ("DragDiffusion", DRAGDIFFUSION)):
        counter.calls = 0

        def edit():
            bank = gooddrag.invert(counted, cond, latent, preset.settings.strength)
            return gooddrag.drag(DragEditAlDDScheduler, counted, bank, cond, points, preset, lr=1e-6,
                                 max_no_change=0)

        _, seconds, peak = _timed_twice(edit)
        rows.append((f"{name} edit (inversion + drag + denoise)", seconds, peak, counter.calls // 2))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image side in px (multiple of 64)")
    ap.add_argument("--profile", choices=("full", "test"), default="full",
                    help="'test': the CI model, to check the script on the CPU in seconds")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    comfy_inproc.import_comfy(cpu=not cuda)
    model, _, _ = load_model(args.profile)
    device = torch.cuda.get_device_name() if cuda else "CPU (no peak memory)"
    print(f"{device}, torch {torch.__version__}, UNet in "
          f"{str(model.model.get_dtype()).removeprefix('torch.')}, {args.size}x{args.size} image", flush=True)
    print(f"{'edit':50}{'seconds':>9}{'peak GiB':>10}{'UNet calls':>12}", flush=True)
    for rows in (dragon_rows, gooddrag_rows):
        for label, seconds, peak, calls in rows(model, args.size):
            print(f"{label:50}{seconds:>9.2f}{peak:>10.2f}{calls:>12}", flush=True)


if __name__ == "__main__":
    main()
