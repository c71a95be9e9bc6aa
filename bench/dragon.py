"""DragonDiffusion / DiffEditor cost per edit: UNet passes per mode and schedule against the official budget
(dragondiffusion.md §8), what a move edit dispatches (bench.cpu_counts: ops per pass against a plain ComfyUI step,
syncs, weight copies, weight patches), and the time of one move edit on the full SD-1.5 UNet at random weights.

    .dev/venv/bin/python -m bench.dragon [--time-steps 10] [--time-size 256] [--no-timing]

Pass counts run the real nodes (DDIM Inversion, Energy Guidance, Visual Cross-Attention, Guided Sampler) for 50
steps on the CI test model at a 64² image: the counts depend on neither the resolution nor the weights. A pass
is one UNet call (a CFG batch of 2 is one call); the estimator's passes stop after output block 8. Backward passes
are counted by a gradient hook on the first block's output, so each autograd.grad through the UNet counts once.
"""
import argparse
import collections
import os

import torch

from bench import cpu_counts
from bench.support import encode, load_model, timed, widget_defaults
from tests.support import comfy_inproc
from tests.support.comfy_inproc import run_node
from tests.support.dispatch import PassCounter
from tests.support.pack import load_pack

load_pack()
from comfyui_dragedit.kernels import features  # noqa: E402  (the pack imports under this name once loaded)
from comfyui_dragedit.kernels.points import DragPoints  # noqa: E402

STEPS = 50
MODES = ("move", "resize", "appearance", "paste", "drag")
COLUMNS = ("inversion", "cfg", "renoise", "reference", "graph", "backward")
HEADERS = ("inversion", "CFG (b=2)", "re-noise", "est. ref", "est. graph", "backward")


def official(mode: str, schedule: str) -> dict:
    """The official code's passes per 50-step edit (dragondiffusion.md §8): one batch-1 inversion pass per step
    (a batch of 2 for the two images), CFG per step plus the time-travel repeats, every re-noise including the
    discarded last one, one reference forward per guided evaluation and image (no caching), a forward with graph
    and two backward passes (retain_graph, then a second autograd.grad) per guided evaluation."""
    guided = 28 if schedule == "D+" else 30
    images = 2 if mode in ("appearance", "paste") else 1
    return dict(inversion=STEPS, cfg=STEPS + (8 if schedule == "D+" else 0), renoise=12 if schedule == "D+" else 0,
                reference=guided * images, graph=guided, backward=2 * guided)


class PassKinds(PassCounter):
    """PassCounter that sorts the passes by the run's phase (host.Run) and counts the backward passes through the
    UNet."""

    def __init__(self, host_module):
        super().__init__()
        self.run_key = host_module.RUN_KEY
        self.kinds = collections.Counter()

    def __call__(self, h, transformer_options):
        if transformer_options.get("block") == ("input", 0):
            phase = transformer_options[self.run_key].phase
            if phase == "estimate":
                self.kinds["graph" if h.requires_grad else "reference"] += 1
            elif phase == "denoise" and 1 in transformer_options.get("cond_or_uncond", ()):
                self.kinds["cfg"] += 1
            else:
                self.kinds["cond"] += 1
            if h.requires_grad:
                h.register_hook(self._backward)
        return super().__call__(h, transformer_options)

    def _backward(self, grad):
        self.kinds["backward"] += 1


def _box(rows, cols, size):
    mask = torch.zeros(1, size, size)
    mask[:, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return mask


def _guidance(nodes, mode: str, size: int):
    """(guidance, Visual Cross-Attention mode and masks) of a typical edit of each mode on a size² image."""
    s = size // 64
    obj, other = _box((16 * s, 40 * s), (8 * s, 32 * s), size), _box((24 * s, 56 * s), (32 * s, 56 * s), size)
    geometry = {
        "move": dict(mask=obj, offset_x=16 * s, offset_y=8 * s),
        "resize": dict(mask=obj, scale=1.3, offset_x=4 * s),
        "appearance": dict(mask_base=obj, mask_replace=other),
        "paste": dict(mask=other, offset_x=-24 * s, offset_y=-8 * s),
        "drag": dict(points=DragPoints(((20.0 * s, 30.0 * s, 36.0 * s, 30.0 * s),), (size, size)),
                     mask=_box((4 * s, 60 * s), (4 * s, 60 * s), size)),
    }[mode]
    node = nodes[mode]
    out = run_node(node, **{**widget_defaults(node), **geometry}).result
    if mode == "appearance":
        return out[0], "masked", dict(mask_base=obj, mask_replace=other)
    if mode == "paste":
        return out[0], "masked", dict(mask_base=out[1], mask_replace=out[2])
    return out[0], ("concat" if mode == "drag" else "replace"), {}


def _edit(nodes, model, banks, mode, schedule, cond, uncond, size, steps):
    """One edit as the example workflows wire it (bank attention on the paper's steps); returns the LATENT."""
    guidance, vca_mode, vca_masks = _guidance(nodes, mode, size)
    second = dict(memory_bank_replace=banks[1]) if vca_mode == "masked" else {}
    patched = run_node(nodes["vca"], model=model, memory_bank=banks[0], mode=vca_mode, step_range="method's steps",
                       start_step=0, end_step=1000, **second, **vca_masks).result[0]
    return run_node(nodes["sampler"], model=patched, memory_bank=banks[0], guidance=guidance,
                    features=features.dragon_tap((5, 8), "SD 1.x"), positive=cond, negative=uncond,
                    **{**widget_defaults(nodes["sampler"]), "schedule": schedule}, **second).result[0]


def _invert(nodes, model, cond, size, steps, seed):
    torch.manual_seed(seed)
    latent = {"samples": torch.randn(1, 4, size // 8, size // 8)}
    return run_node(nodes["inversion"], model=model, latent=latent, positive=cond, steps=steps, strength=1.0,
                    layers="family default", bank_device="offload (CPU)").result[0]


def _nodes():
    from comfyui_dragedit.nodes import cross_attention, energy_guidance, guided_sampler, host, inversion

    nodes = {mode: getattr(energy_guidance, f"DragEditEnergyGuidance{mode.capitalize()}") for mode in MODES}
    nodes.update(sampler=guided_sampler.DragEditGuidedSampler, inversion=inversion.DragEditDDIMInversion,
                 vca=cross_attention.DragEditVisualCrossAttention, host=host)
    return nodes


def count_passes(nodes):
    """Print one row per mode and schedule as it is measured: ours / official passes per 50-step edit."""
    model, clip, _ = load_model("test")
    cond, uncond = encode(clip, "a photo of a ball"), encode(clip, "")
    counter = PassKinds(nodes["host"])
    counted = counter.attach(model)
    banks = []
    for seed in (0, 1):
        counter.kinds.clear()
        banks.append(_invert(nodes, counted, cond, 64, STEPS, seed))
    per_image = counter.kinds["cond"]
    print(f"UNet passes per edit, {STEPS} steps (ours / official, dragondiffusion.md §8)")
    print(f"{'mode':<11}{'alg':<4}" + "".join(f"{h:>14}" for h in HEADERS) + f"{'forward total':>16}{'ratio':>7}"
          f"{'backward ratio':>16}", flush=True)
    for schedule in ("D+", "D"):
        for mode in MODES:
            counter.kinds.clear()
            _edit(nodes, counted, banks, mode, schedule, cond, uncond, 64, STEPS)
            images = 2 if mode in ("appearance", "paste") else 1
            ours = dict(counter.kinds, inversion=per_image * images, renoise=counter.kinds["cond"])
            _print_row(mode, schedule, ours, official("move" if mode == "resize" else mode, schedule))
    print("Official two-image inversion is one batch-2 call per step (50 calls, 100 batch items); ours is two "
          "batch-1 inversions (100 calls). Re-noise: the official code computes and discards the last of each "
          "time-travel group (12); we skip it (8). Reference features are cached per timestep across time travel. "
          "Backward: the official code runs two per guided evaluation (retain_graph, then a second autograd.grad); "
          "ours takes both energies' gradients in one batched backward (counted once here).")


def _print_row(mode, schedule, ours, theirs):
    cells = "".join(f"{f'{ours.get(c, 0)} / {theirs[c]}':>14}" for c in COLUMNS)
    forward = sum(ours.get(c, 0) for c in COLUMNS[:-1])
    forward_official = sum(theirs[c] for c in COLUMNS[:-1])
    print(f"{mode:<11}{schedule:<4}{cells}{f'{forward} / {forward_official}':>16}{forward / forward_official:>7.2f}"
          f"{ours.get('backward', 0) / theirs['backward']:>16.2f}", flush=True)


def time_move(nodes, steps: int, size: int):
    model, clip, _ = load_model("full")
    cond, uncond = encode(clip, "a photo of a ball"), encode(clip, "")
    counter = PassKinds(nodes["host"])
    counted = counter.attach(model)
    bank, invert_s = timed(_invert, nodes, counted, cond, size, steps, 0)
    counter.kinds.clear()
    _, edit_s = timed(_edit, nodes, counted, (bank, None), "move", "D+", cond, uncond, size, steps)
    passes = ", ".join(f"{counter.kinds['cond' if c == 'renoise' else c]} {h}"
                       for c, h in zip(COLUMNS[1:], HEADERS[1:]))
    print(f"\nOne move edit (D+), full SD-1.5 UNet (859.5M) at random weights, {size}² image ({size // 8}² latent), "
          f"{steps} steps, CPU ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}), "
          f"UNet in {str(model.model.get_dtype()).removeprefix('torch.')}:")
    per_pass = invert_s / steps
    print(f"  inversion {invert_s:.1f} s ({steps} passes, {per_pass:.2f} s/pass); edit {edit_s:.1f} s ({passes}), "
          f"= {edit_s / per_pass:.0f} inversion passes; total {invert_s + edit_s:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-steps", type=int, default=10, help="steps of the timed move edit (papers: 50)")
    ap.add_argument("--time-size", type=int, default=256, help="image side of the timed edit, px (papers: 512-768)")
    ap.add_argument("--no-timing", action="store_true", help="only count passes")
    args = ap.parse_args()
    comfy_inproc.import_comfy()
    nodes = _nodes()
    count_passes(nodes)
    print()
    cpu_counts.report("dragon", STEPS)
    if not args.no_timing:
        time_move(nodes, args.time_steps, args.time_size)


if __name__ == "__main__":
    main()
