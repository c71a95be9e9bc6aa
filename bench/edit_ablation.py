"""Where a DragonDiffusion move or drag on the demo model loses the unchanged region and the object's colour
(issue 15): bench.drag_accuracy's edit, with one part of it changed at a time, against the default in the same run.

    .dev/venv/bin/python -m bench.edit_ablation [--mode move|drag] [--cases 4] [--steps 50]

Cases: --cases generated cases of the mode, and for move the main command's scene (scripts/draw_example_inputs.
demo_case) first, scored by bench.drag_accuracy.score (centroid px to the true place, unchanged and object MAE
0-255). The parts:
  energy      the guidance's energy_scale (0: no guided step and no time travel, as the official sampler)
  noise copy  the object's inverted z_T noise copied to its target before sampling (a move by 0 copies nothing,
              so "energy 0, offset 0" is the plain inversion + reconstruction); by default it and each guidance
              step keep the latent's per-channel mean (keep_latent_mean), the official copy and step do not
  bank        Visual Cross-Attention on the method's steps (replace for move, concat for drag)
  SDE         D+'s regional SDE (sde_strength), D: none
  w_inpaint   drag: the weight of the term that pushes the handle's area off its old content
Nothing here asserts.
"""
import argparse
import time

import numpy as np
import torch

from bench.drag_accuracy import Editor, score
from bench.support import parse_args, widget_defaults
from tests.support import comfy_inproc
from tools import scenes

# mode -> name -> what differs from the default (the nodes' defaults: D+, SDE 0.4, bank attention, the z_T copy
# and the guidance steps keeping the latent's mean, energy scale 500 for move, 2000 for drag)
VARIANTS = {"move": {
    "default": {},
    "official copy and step (the latent's mean moves)": dict(keep_latent_mean=False),
    "official copy and step, energy scale 1500": dict(keep_latent_mean=False, energy_scale=1500.0),
    "energy 0 (noise copy, bank, SDE left)": dict(energy_scale=0.0),
    "energy 0, offset 0 (reconstruction)": dict(energy_scale=0.0, offset=False),
    "no bank attention": dict(bank=False),
    "no SDE": dict(sde_strength=0.0),
    "schedule D": dict(schedule="D"),
    "energy scale 250": dict(energy_scale=250.0),
    "energy scale 1000": dict(energy_scale=1000.0),
    "energy scale 1500": dict(energy_scale=1500.0),
    "w_content 12": dict(w_content=12.0),
    "w_contrast 0": dict(w_contrast=0.0),
    "w_inpaint 0": dict(w_inpaint=0.0),
}, "drag": {
    "default": {},
    "official copy and step (the latent's mean moves)": dict(keep_latent_mean=False),
    "energy 0 (noise copy, bank, SDE left)": dict(energy_scale=0.0),
    "no bank attention": dict(bank=False),
    "no SDE": dict(sde_strength=0.0),
    "energy scale 1000": dict(energy_scale=1000.0),
    "energy scale 4000": dict(energy_scale=4000.0),
    "w_inpaint 0 (no push off the handle)": dict(w_inpaint=0.0),
    "w_inpaint 0, energy scale 4000": dict(w_inpaint=0.0, energy_scale=4000.0),
    "official copy and step, w_inpaint 0, energy 4000": dict(keep_latent_mean=False, w_inpaint=0.0,
                                                             energy_scale=4000.0),
}}


def edit(editor: Editor, case, offset=True, bank=True, **changes) -> np.ndarray:
    """The case's move or drag as bench.drag_accuracy's DragonDiffusion runs it (Editor.dragon), with `changes` to
    the guidance's and the sampler's widgets; offset False moves by 0, bank False samples on the plain model."""
    nodes = editor.nodes
    memory_bank = editor.invert(editor.encode(case.image), 1.0)
    guidance_node = nodes[case.mode]
    guidance_names = widget_defaults(guidance_node)
    geometry = editor.geometry(case)
    if not offset:
        geometry.update(offset_x=0, offset_y=0)
    geometry.update({k: v for k, v in changes.items() if k in guidance_names})
    sampler = {"sde_strength": widget_defaults(nodes["sampler"])["sde_strength"],
               **{k: v for k, v in changes.items() if k not in guidance_names}}
    model = editor.bank_attention(memory_bank, case.mode) if bank else editor.model
    return editor.decode(editor.sample(memory_bank, guidance_node, geometry, model, **sampler))


def _cell(row: dict) -> str:
    return f"{row['centroid']:5.1f} {row['unchanged']:6.1f} {row['object']:6.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=tuple(VARIANTS), default="move")
    ap.add_argument("--cases", type=int, default=4, help="generated cases of the mode (move: besides the main "
                                                         "command's)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    args = parse_args(ap)
    if args.cases < 1:
        ap.error("--cases must be at least 1 (the generated cases' mean is a column)")
    comfy_inproc.import_comfy()
    from scripts.draw_example_inputs import demo_case

    editor = Editor(args.steps)
    main_case = {"main command": demo_case()} if args.mode == "move" else {}
    cases = {**main_case, **{f"{args.mode} {s}": scenes.drag_case(s, args.mode) for s in range(args.cases)}}
    print(f"DragonDiffusion {args.mode} on the demo model, {args.steps} DDIM steps: "
          f"{'the main command' + chr(39) + 's case, and ' if main_case else ''}the mean over {args.cases} generated "
          f"{args.mode} cases (centroid px / unchanged / object, MAE 0-255)")
    print(f"{'':40}{'main command' if main_case else '':>22}{'generated (mean)':>24}")
    for name, changes in VARIANTS[args.mode].items():
        start = time.time()
        rows = {key: score(case, edit(editor, case, **changes)) for key, case in cases.items()}
        main_cell = _cell(rows.pop("main command")) if main_case else ""
        mean = {m: float(np.mean([r[m] for r in rows.values()])) for m in ("centroid", "unchanged", "object")}
        print(f"{name:40}{main_cell:>22}{_cell(mean):>24}   ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
