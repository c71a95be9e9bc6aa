"""The main job: a drag edit through a real ComfyUI, on the bundled example scene.

    bash scripts/demo.sh [--ckpt /path/to/sd15.safetensors] [--workflow NAME] [--out demo_output]

Starts ComfyUI (CPU) in a fresh base directory with the pack, converts example_workflows/<workflow>.json to an
API prompt, runs it and copies the saved image(s) to --out. Without --ckpt it runs demo_move: the pack's own demo
model (trained by tools/train_demo.py) moves a disc on a generated scene, about a minute on a CPU, and prints how
close the result is to the scene's exact ground truth; --picture also writes input | result | ground truth side
by side (the README's docs/images/demo_move.png). With --ckpt it runs `move` (or --workflow, e.g. sdxl_move with
an SDXL checkpoint) with every CheckpointLoaderSimple loading that checkpoint.
"""
import argparse
import pathlib
import shutil
import sys
import time

from tests.support import workflow
from tests.support.pack import REPO
from tests.support.server import ComfyServer, make_base_dir

EXAMPLES = REPO / "example_workflows"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=pathlib.Path, help="an SD-1.5 checkpoint (.safetensors), or SDXL with an sdxl_ --workflow; default: the demo model")
    ap.add_argument("--workflow", help="example_workflows/<name>.json to run (default: demo_move, with --ckpt move)")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "demo_output")
    ap.add_argument("--picture", type=pathlib.Path,
                    help="demo_move only: also write input | result | ground truth here (PNG, 3x enlarged)")
    args = ap.parse_args()
    args.workflow = args.workflow or ("move" if args.ckpt else "demo_move")
    path = EXAMPLES / f"{args.workflow}.json"
    if not path.exists():
        sys.exit(f"no workflow {path}; choose one of {sorted(p.stem for p in EXAMPLES.glob('*.json'))}")
    if args.ckpt and not args.ckpt.is_file():
        sys.exit(f"--ckpt {args.ckpt} is not a file")
    if args.picture and args.workflow != "demo_move":
        sys.exit("--picture: only demo_move has a ground truth to show beside its result")
    if args.ckpt and "CheckpointLoaderSimple" not in path.read_text():
        sys.exit(f"--ckpt: {args.workflow} loads no checkpoint (it runs the demo model); choose another --workflow")
    base = make_base_dir(extra_checkpoints=[args.ckpt.resolve()] if args.ckpt else ())
    start = time.time()
    with ComfyServer(base_dir=base) as server:
        print(f"ComfyUI running at {server.url} (base dir {base})")
        prompt = workflow.ui_to_api(workflow.load(path), server.object_info())
        if args.ckpt:
            for node in prompt.values():
                if node["class_type"] == "CheckpointLoaderSimple":
                    node["inputs"]["ckpt_name"] = args.ckpt.name
        entry = server.run(prompt, timeout=3600)
        args.out.mkdir(parents=True, exist_ok=True)
        saved = [f for f in server.output_files(entry) if "output" in f.parts]
        for f in saved:
            shutil.copy(f, args.out / f.name)
            print(f"wrote {args.out / f.name}")
    print(f"{args.workflow}: done in {time.time() - start:.0f} s")
    if args.workflow == "demo_move":
        print_demo_score(saved[0], args.picture)


def print_demo_score(path, picture=None):
    """The demo edit against its scene's exact ground truth (tools/scenes.py), with the accuracy bench's score;
    picture: also write input | result | ground truth there."""
    import numpy as np
    from PIL import Image

    from bench.drag_accuracy import score
    from scripts.draw_example_inputs import demo_case

    case = demo_case()
    with Image.open(path) as im:
        output = np.asarray(im.convert("RGB"))
    result = score(case, output)
    if picture:
        gap = np.full((output.shape[0], 4, 3), 255, np.uint8)
        strip = Image.fromarray(np.concatenate([case.image, gap, output, gap, case.expected], 1))
        strip.resize((strip.width * 3, strip.height * 3), Image.NEAREST).save(picture)
        print(f"wrote {picture}: input, result, ground truth")
    print(f"against the ground truth: the disc lies {result['centroid']:.1f} px from its target; mean absolute error "
          f"(0-255) {result['unchanged']:.1f} outside the disc's old and new place, {result['object']:.1f} inside "
          f"the moved disc")


if __name__ == "__main__":
    main()
