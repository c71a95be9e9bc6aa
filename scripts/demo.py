"""The main job: a drag edit through a real ComfyUI, on the bundled example scene.

    bash scripts/demo.sh [--ckpt /path/to/sd15.safetensors] [--workflow move] [--out demo_output]

Starts ComfyUI (CPU) in a fresh base directory with the pack, converts example_workflows/<workflow>.json to an
API prompt, runs it and copies the saved image(s) to --out. With --ckpt, every CheckpointLoaderSimple of the
workflow loads that SD-1.5 checkpoint; without it, the built-in random-weight test model runs, which proves the
pipeline but draws noise-like images.
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
    ap.add_argument("--ckpt", type=pathlib.Path, help="an SD-1.5 checkpoint (.safetensors); default: the test model")
    ap.add_argument("--workflow", default="move" if (EXAMPLES / "move.json").exists() else "reconstruct",
                    help="example_workflows/<name>.json to run")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "demo_output")
    args = ap.parse_args()
    path = EXAMPLES / f"{args.workflow}.json"
    if not path.exists():
        sys.exit(f"no workflow {path}; choose one of {sorted(p.stem for p in EXAMPLES.glob('*.json'))}")
    if args.ckpt and not args.ckpt.is_file():
        sys.exit(f"--ckpt {args.ckpt} is not a file")
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


if __name__ == "__main__":
    main()
