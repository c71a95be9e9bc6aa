"""GoodDrag and DragDiffusion edits: UNet passes against the official budget (gooddrag.md §8), the time of one
GoodDrag edit on the full SD-1.5 UNet at random weights, and the edit's peak memory, and what a GoodDrag edit dispatches (bench.cpu_counts: ops per pass, syncs, weight copies,
weight patches).

    .dev/venv/bin/python -m bench.gooddrag [--size 256] [--grad-steps 3] [--skip-time]

Passes: each method's whole schedule through the DDIM Inversion and AlDD Drag Scheduler nodes on the CI model at a
64x64 image (counts do not depend on model or image size), with lr 1e-6 and early stop off, so no handle moves
and every gradient step of the budget runs. Time and memory: the full SD-1.5 UNet on the CPU at --size px with a
reduced schedule (3 inverted steps, T2 1, B 1, J --grad-steps); the per-pass times are then multiplied out to the
papers' budgets. Peak memory is the process's peak resident set during the drag node, over what it held before
(VmHWM reset through /proc/self/clear_refs), so it counts the edit's activations, not the model's weights.
"""
import argparse
import re
import time

import torch

from bench.support import encode, load_model, timed
from tests.support.dispatch import PassCounter
from tests.support.pack import load_pack

OFFICIAL = {  # gooddrag.md §8, in UNet calls: inversion, reference (no grad), forward+backward, batch-2 denoise
    "GoodDrag": dict(inversion=38, reference=8, grad=210, denoise=38),
    "DragDiffusion": dict(inversion=35, reference=1, grad=80, denoise=35),
}
FWD_BWD = 3  # forward-equivalents of one forward+backward (§8)


def forward_equivalents(inversion, reference, grad, denoise):
    return inversion + reference + FWD_BWD * grad + 2 * denoise


def drag(scheduler, model, bank, cond, points, preset, **overrides):
    """Run the scheduler node with a preset's numbers, loss and tracker as 'custom', overriding some numbers."""
    from comfyui_dragedit.kernels import features
    from tests.support.comfy_inproc import run_node

    s = preset.settings
    widgets = dict(drag_steps=s.drag_steps, drags_per_step=s.drags_per_step, grad_steps_per_drag=s.grad_steps_per_drag,
                   lr=s.lr, max_no_change=s.max_no_change)
    widgets.update(overrides)
    return run_node(scheduler, model=model, memory_bank=bank, positive=cond, points=points,
                    features=features.gooddrag_tap(8, "SD 1.x"), preset="custom", motion=preset.motion,
                    tracker=preset.tracker, masactrl_layers="by resolution (family default)", keep_outside=True,
                    **widgets)


def invert(model, cond, latent, strength, steps=50):
    from comfyui_dragedit.nodes.inversion import DragEditDDIMInversion
    from tests.support.comfy_inproc import run_node

    return run_node(DragEditDDIMInversion, model=model, latent=latent, positive=cond, steps=steps, strength=strength,
                    layers="none", bank_device="auto").result[0]


def count_passes():
    """{method: dict(inversion, reference, grad, denoise)} UNet calls of one edit on the CI model."""
    model, clip, _ = load_model("test")
    from comfyui_dragedit.kernels.aldd import DRAGDIFFUSION, GOODDRAG
    from comfyui_dragedit.kernels.points import DragPoints
    from comfyui_dragedit.nodes.aldd import DragEditAlDDScheduler

    cond = encode(clip, "")
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    points = DragPoints(((8.0, 8.0, 56.0, 56.0),), (64, 64))
    counts = {}
    for name, preset in (("GoodDrag", GOODDRAG), ("DragDiffusion", DRAGDIFFUSION)):
        inversion, dragging = PassCounter(), PassCounter()
        bank = invert(inversion.attach(model), cond, latent, preset.settings.strength)
        drag(DragEditAlDDScheduler, dragging.attach(model), bank, cond, points, preset, lr=1e-6, max_no_change=0)
        denoise = dragging.items - dragging.calls  # the only batch-2 calls
        counts[name] = dict(inversion=inversion.calls, reference=dragging.calls - dragging.with_grad - denoise,
                            grad=dragging.with_grad, denoise=denoise)
    return counts


def print_counts(counts):
    print("UNet calls per edit (CI model; counts do not depend on the model), ours vs official (gooddrag.md §8)")
    print(f"{'':22}" + "".join(f"{name + ' ours':>20}{'official':>10}{'ratio':>7}" for name in counts))
    for phase in ("inversion", "reference", "grad", "denoise"):
        label = {"reference": "reference fwd (no grad)", "grad": "forward+backward", "denoise": "denoise (batch 2)",
                 "inversion": "inversion fwd"}[phase]
        row = "".join(f"{c[phase]:>20}{OFFICIAL[n][phase]:>10}{c[phase] / OFFICIAL[n][phase]:>7.2f}"
                      for n, c in counts.items())
        print(f"{label:22}{row}")
    row = "".join(f"{forward_equivalents(**c):>20}{forward_equivalents(**OFFICIAL[n]):>10}"
                  f"{forward_equivalents(**c) / forward_equivalents(**OFFICIAL[n]):>7.2f}" for n, c in counts.items())
    print(f"{'forward-equivalents':22}{row}")


def _rss_kib(field):
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def time_edit(size, grad_steps):
    """Per-pass seconds on the full SD-1.5 UNet at size px (CPU), from the progress bar's timestamps."""
    (model, clip, _), load_s = timed(load_model, "full")
    import comfy.utils

    from comfyui_dragedit.kernels.aldd import GOODDRAG
    from comfyui_dragedit.kernels.points import DragPoints
    from comfyui_dragedit.nodes.aldd import DragEditAlDDScheduler

    cond = encode(clip, "")
    latent = {"samples": torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    bank, inversion_s = timed(invert, model, cond, latent, 3 / 50)
    stamps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                             stamps.append(time.perf_counter()))
    points = DragPoints(((size / 8, size / 8, size * 7 / 8, size * 7 / 8),), (size, size))
    rss_before = _rss_kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    start = time.perf_counter()
    drag(DragEditAlDDScheduler, model, bank, cond, points, GOODDRAG, drag_steps=1, drags_per_step=1,
         grad_steps_per_drag=grad_steps, max_no_change=0)
    peak_gib = (_rss_kib("VmHWM") - rss_before) / 2 ** 20
    comfy.utils.set_progress_bar_global_hook(None)
    grad = [b - a for a, b in zip(stamps[:grad_steps], stamps[1:grad_steps])]
    denoise = [b - a for a, b in zip(stamps[grad_steps - 1:], stamps[grad_steps:])]
    return dict(load=load_s, inversion=inversion_s / 3, first=stamps[0] - start, grad=sum(grad) / len(grad),
                denoise=sum(denoise) / len(denoise), total=stamps[-1] - start, peak_gib=peak_gib)


def print_time(t, size, grad_steps):
    per = dict(inversion=t["inversion"], reference=t["inversion"], grad=t["grad"], denoise=t["denoise"])
    print(f"\nFull SD-1.5 UNet (859.5M, random weights), CPU ({torch.get_num_threads()} threads), {size}x{size} image, "
          f"fp32; model built in {t['load']:.0f} s")
    print(f"measured: inversion fwd {t['inversion']:.2f} s, forward+backward {t['grad']:.2f} s (mean of "
          f"{grad_steps - 1}), denoise step (batch 2) {t['denoise']:.2f} s, first drag step incl. the reference "
          f"fwd {t['first']:.2f} s; the reduced edit (T2 1, B 1, J {grad_steps}, 3 steps) {t['total']:.1f} s")
    print(f"{'extrapolated edit':22}{'seconds':>10}{'of which fwd+bwd':>18}")
    for name, budget in OFFICIAL.items():
        seconds = sum(per[k] * budget[k] for k in per)
        print(f"{name:22}{seconds:>10.0f}{per['grad'] * budget['grad'] / seconds:>17.0%}")
    print(f"peak memory of the drag node over its start: {t['peak_gib']:.2f} GiB (resident set; official: <13 GB of "
          f"GPU memory at 512², GD README)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image size in px for the timing (multiple of 64)")
    ap.add_argument("--grad-steps", type=int, default=3, help="J of the timed edit (>= 2)")
    ap.add_argument("--skip-time", action="store_true", help="pass counts only")
    args = ap.parse_args()
    load_pack()
    from bench import cpu_counts

    print_counts(count_passes())
    print()
    cpu_counts.report("gooddrag", 50)
    if not args.skip_time:
        print_time(time_edit(args.size, args.grad_steps), args.size, args.grad_steps)


if __name__ == "__main__":
    main()
