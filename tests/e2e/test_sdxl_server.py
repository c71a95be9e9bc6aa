"""SDXL through a real server: the checkpoint a user has for SDXL base (sd_xl_base_1.0.safetensors) through the stock
CheckpointLoaderSimple and CLIPTextEncode, then a reconstruction, a DragonDiffusion move and a GoodDrag drag.

The file is a random-weight SDXL-topology checkpoint at reduced width (tests/support/tiny_sdxl.py: SDXL's block
layout, CLIP-L + CLIP-G at their real widths and 3 layers, TAESD), which ComfyUI detects through the test-only node
pack tests/support/reduced_sdxl in the server's custom_nodes (its detection keys SDXL on 320 channels). The text
encoders are real ones, so the pooled output and the size embedding come from ComfyUI's own encode path. 128² image
(latent 16²), 10 DDIM steps, few drags: minutes on the 2-core CI CPU.
"""
import numpy as np
import pytest
from PIL import Image

from tests.support.server import SDXL_CKPT_NAME

SIDE, STEPS = 128, 10
RED_BALL = 0xC82828   # the red ball's fill in dragedit_scene.png (scripts/draw_example_inputs.py)


class Prompt:
    """An API prompt: add(key, class_type, **inputs), ("key", slot) tuples are links; the required widgets not given
    take the node's defaults from the server's /object_info (what a freshly added node has)."""

    def __init__(self, object_info):
        self.info, self.nodes = object_info, {}

    def add(self, key, class_type, **inputs):
        required = self.info[class_type]["input"]["required"]
        defaults = {name: spec[1]["default"] for name, spec in required.items()
                    if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1] and name not in inputs}
        self.nodes[key] = {"class_type": class_type, "inputs": {
            **defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in inputs.items()}}}


def _head(p):
    p.add("ckpt", "CheckpointLoaderSimple", ckpt_name=SDXL_CKPT_NAME)
    p.add("load", "LoadImage", image="dragedit_scene.png")
    p.add("image", "ImageScale", image=("load", 0), upscale_method="nearest-exact", width=SIDE, height=SIDE,
          crop="disabled")
    p.add("pos", "CLIPTextEncode", clip=("ckpt", 1), text="a photo of objects on a table")
    p.add("neg", "CLIPTextEncode", clip=("ckpt", 1), text="")
    p.add("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2))
    p.add("invert", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("pos", 0),
          steps=STEPS)


def _save(p, key, samples):
    p.add(f"{key}_decode", "VAEDecode", samples=samples, vae=("ckpt", 2))
    p.add(f"{key}_save", "SaveImage", images=(f"{key}_decode", 0), filename_prefix=f"dragedit_sdxl_{key}")


def test_sdxl_base_checkpoint_runs_reconstruction_move_and_gooddrag(comfy_server):
    p = Prompt(comfy_server.object_info())
    assert SDXL_CKPT_NAME in p.info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    _head(p)
    p.add("vca", "DragEditVisualCrossAttention", model=("ckpt", 0), memory_bank=("invert", 0), mode="replace")
    p.add("reconstruct", "KSamplerAdvanced", model=("vca", 0), add_noise="disable", noise_seed=0, steps=STEPS, cfg=1.0,
          sampler_name="ddim", scheduler="ddim_uniform", positive=("pos", 0), negative=("neg", 0),
          latent_image=("invert", 1), start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")
    _save(p, "reconstruct", ("reconstruct", 0))
    p.add("ball", "ImageColorToMask", image=("image", 0), color=RED_BALL)
    p.add("mask", "GrowMask", mask=("ball", 0), expand=2)
    p.add("guidance", "DragEditEnergyGuidanceMove", mask=("mask", 0), offset_x=24, offset_y=-16)
    p.add("features", "DragEditFeatureExtractor", model=("ckpt", 0), preset="DragonDiffusion")
    p.add("move", "DragEditGuidedSampler", model=("vca", 0), memory_bank=("invert", 0), guidance=("guidance", 0),
          features=("features", 0), positive=("pos", 0), negative=("neg", 0), cfg=4.0)
    _save(p, "move", ("move", 0))
    p.add("invert_drag", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("neg", 0),
          steps=STEPS, strength=0.7, layers="none")
    p.add("points", "DragEditPoints", image=("image", 0),
          points_json='{"version":1,"image_size":[128,128],"pairs":[[48,56,64,44]]}')
    p.add("good", "DragEditFeatureExtractor", model=("ckpt", 0), preset="GoodDrag / DragDiffusion")
    p.add("drag", "DragEditAlDDScheduler", model=("ckpt", 0), memory_bank=("invert_drag", 0), positive=("neg", 0),
          points=("points", 0), features=("good", 0), preset="custom", drag_steps=2, drags_per_step=2,
          grad_steps_per_drag=1, lr=0.02, max_no_change=0)
    _save(p, "drag", ("drag", 0))
    entry = comfy_server.run(p.nodes, timeout=1500)
    files = {path.name.split("_0")[0].removeprefix("dragedit_sdxl_"): path for path in comfy_server.output_files(entry)
             if path.parent.name == "output"}   # not the previews in temp/
    assert set(files) == {"reconstruct", "move", "drag"}, files
    images = {k: np.asarray(Image.open(v).convert("RGB"), dtype=np.float32) for k, v in files.items()}
    assert all(image.shape == (SIDE, SIDE, 3) for image in images.values())
    # random weights: an edit has no place to be, but it must act (README, content checks)
    assert np.abs(images["move"] - images["reconstruct"]).mean() > 0.5
    assert np.abs(images["drag"] - images["reconstruct"]).mean() > 0.5
