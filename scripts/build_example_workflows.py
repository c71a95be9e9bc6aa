"""Write example_workflows/*.json (UI format, as the frontend saves them) from compact graph descriptions.

Widget values are laid out by the live server's /object_info, so a workflow always matches the nodes'
current inputs. Run after changing a node's inputs or a workflow below:

    .dev/venv/bin/python -m scripts.build_example_workflows
"""
import json
import sys

from scripts import draw_example_inputs
from tests.support.pack import REPO
from tests.support.server import ComfyServer
from tests.support.workflow import _extra_values, _is_widget

OUT = REPO / "example_workflows"
TEST_CKPT = "dragedit_test_sd15.safetensors"
SCENE = "dragedit_scene.png"
COLUMN_WIDTH, ROW_GAP = 380, 40
CANVAS_HEIGHT = {"DragEditPoints": 300}  # the point editor's canvas below the widgets


def node(key, class_type, **inputs):
    """One node: literal inputs are widget values, ("key", slot) tuples are links."""
    return key, class_type, inputs


def _loader_and_image(image=SCENE, prompt="a photo of objects on a table"):
    return [
        node("ckpt", "CheckpointLoaderSimple", ckpt_name=TEST_CKPT),
        node("image", "LoadImage", image=image),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=prompt),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]


def reconstruct():
    """Shared core: invert with a memory bank, then a stock KSampler on the bank-attention MODEL reconstructs."""
    return _loader_and_image() + [
        node("neg", "CLIPTextEncode", clip=("ckpt", 1), text=""),
        node("invert", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("pos", 0)),
        node("vca", "DragEditVisualCrossAttention", model=("ckpt", 0), memory_bank=("invert", 0)),
        node("sampler", "KSamplerAdvanced", model=("vca", 0), add_noise="disable", noise_seed=0, steps=50, cfg=1.0,
             sampler_name="ddim", scheduler="ddim_uniform", positive=("pos", 0), negative=("neg", 0),
             latent_image=("invert", 1), start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable"),
        node("decode", "VAEDecode", samples=("sampler", 0), vae=("ckpt", 2)),
        node("save", "SaveImage", images=("decode", 0), filename_prefix="dragedit_reconstruct"),
    ]


ALDD_STEPS = 20   # as the DragonDiffusion examples: 50 steps plus the drags take minutes on the 2-core CI CPU


def _drag(name, prompt, strength, pairs, motion, tracker, schedule):
    """A drag with the AlDD Drag Scheduler: invert, points on the canvas, motion supervision and tracker, decode.

    `schedule` holds the scheduler's preset and widgets. The CI examples run 20 DDIM steps and preset custom with
    fewer drags than the papers (GoodDrag's 210 gradient steps take many minutes on a CPU); the nodes' defaults
    are the papers'.
    """
    return _loader_and_image(prompt=prompt) + [
        node("invert", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("pos", 0),
             steps=ALDD_STEPS, strength=strength, layers="none"),
        node("features", "DragEditFeatureExtractor", model=("ckpt", 0),
             preset="GoodDrag / DragDiffusion"),
        node("points", "DragEditPoints", image=("image", 0), points_json=_points_json(*pairs), mask=("image", 1)),
        node("motion", "DragEditMotionSupervision", **motion),
        node("tracker", "DragEditPointTracker", image=("image", 0), points=("points", 0), **tracker),
        node("drag", "DragEditAlDDScheduler", model=("ckpt", 0), memory_bank=("invert", 0), positive=("pos", 0),
             points=("points", 0), features=("features", 0), motion=("motion", 0), tracker=("tracker", 0),
             mask=("points", 4), image=("image", 0), **schedule),
        node("decode", "VAEDecode", samples=("drag", 0), vae=("ckpt", 2)),
        node("save", "SaveImage", images=("decode", 0), filename_prefix=f"dragedit_{name}"),
        node("trajectories", "PreviewImage", images=("drag", 2)),
    ]


def gooddrag():
    """GoodDrag: the ball's top up, its right side right. Strength 0.75 of 20 steps starts at t=701; T2 3 (t=701,
    651, 601: GoodDrag's 7 of 50 span t=741..621), B 4 and J 2 instead of 10 and 3."""
    return _drag("gooddrag", "", 0.75, [(95, 112, 95, 84), (128, 146, 150, 146)],
                 motion=dict(variant="gooddrag", r1=4, beta=4.0), tracker=dict(r2=12),
                 schedule=dict(preset="custom", drag_steps=3, drags_per_step=4, grad_steps_per_drag=2, lr=0.02,
                               max_no_change=5))


def dragdiffusion():
    """DragDiffusion: the square's top up, at one timestep (strength 0.7 of 20 steps: t=651); 24 drags, not 80."""
    return _drag("dragdiffusion", "a photo of objects on a table", 0.7, [(187, 122, 187, 96)],
                 motion=dict(variant="dragdiffusion", r1=1), tracker=dict(r2=3),
                 schedule=dict(preset="custom", drag_steps=1, drags_per_step=24, grad_steps_per_drag=1, lr=0.01,
                               max_no_change=0))


SCENE_B = "dragedit_scene_b.png"            # the two-image modes' second image (scripts/draw_example_inputs.py)
RED_BALL, GREEN_BALL = 0xC82828, 0x3CAA46   # the balls' flat fill colours in the two scenes
DRAGON_STEPS = 20   # the papers' 50 steps take 2-4 min per example on the 2-core CI CPU; D / D+ scale to 20


def _points_json(*pairs, size=256):
    return json.dumps({"version": 1, "image_size": [size, size], "pairs": [list(p) for p in pairs]},
                      separators=(",", ":"))


def _ball_mask(key, image, colour):
    """A ball's mask from its flat colour, grown over its outline (a user would paint it in the mask editor)."""
    return [node(f"{key}_colour", "ImageColorToMask", image=(image, 0), color=colour),
            node(key, "GrowMask", mask=(f"{key}_colour", 0), expand=3)]


def _dragon(name, edit, vca_mode, cfg=4.0, vca_masks=None, head=None, steps=DRAGON_STEPS):
    """DragonDiffusion / DiffEditor: invert (also the second image for the masked modes), the `edit` nodes ending
    in "guidance", features, visual cross-attention (on the method's steps, as the plan says), Guided Sampler.
    `head` (default: checkpoint and scene) provides the nodes "ckpt", "image", "pos" and "latent"."""
    two_images = vca_mode == "masked"
    spec = (head or _loader_and_image()) + [
        node("neg", "CLIPTextEncode", clip=("ckpt", 1), text=""),
        node("invert", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent", 0), positive=("pos", 0),
             steps=steps),
    ]
    second = {}
    if two_images:
        spec += [
            node("image_b", "LoadImage", image=SCENE_B),
            node("latent_b", "VAEEncode", pixels=("image_b", 0), vae=("ckpt", 2)),
            node("invert_b", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent_b", 0), positive=("pos", 0),
                 steps=DRAGON_STEPS),
        ]
        second = dict(memory_bank_replace=("invert_b", 0))
    return spec + edit + [
        node("features", "DragEditFeatureExtractor", model=("ckpt", 0)),
        node("vca", "DragEditVisualCrossAttention", model=("ckpt", 0), memory_bank=("invert", 0), mode=vca_mode,
             **second, **(vca_masks or {})),
        node("sampler", "DragEditGuidedSampler", model=("vca", 0), memory_bank=("invert", 0), guidance=("guidance", 0),
             features=("features", 0), positive=("pos", 0), negative=("neg", 0), cfg=cfg, **second),
        node("decode", "VAEDecode", samples=("sampler", 0), vae=("ckpt", 2)),
        node("save", "SaveImage", images=("decode", 0), filename_prefix=f"dragedit_{name}"),
    ]


def move():
    """Move the red ball up and right: the arrow on the Drag Points canvas is the offset."""
    return _dragon("move", _ball_mask("mask", "image", RED_BALL) + [
        node("points", "DragEditPoints", image=("image", 0), points_json=_points_json((95, 145, 150, 70))),
        node("guidance", "DragEditEnergyGuidanceMove", mask=("mask", 0), offset_x=("points", 1),
             offset_y=("points", 2)),
    ], "replace")


def resize():
    """Enlarge the red ball 1.3x and lift it: the first arrow is the offset, the second (from its edge) the scale."""
    return _dragon("resize", _ball_mask("mask", "image", RED_BALL) + [
        node("points", "DragEditPoints", image=("image", 0),
             points_json=_points_json((95, 145, 95, 130), (128, 145, 138, 130))),
        node("guidance", "DragEditEnergyGuidanceResize", mask=("mask", 0), scale=("points", 3),
             offset_x=("points", 1), offset_y=("points", 2)),
    ], "replace")


def appearance():
    """The red ball takes the look of the green ball of the second image."""
    return _dragon("appearance", _ball_mask("mask", "image", RED_BALL) + _ball_mask("mask_b", "image_b", GREEN_BALL) + [
        node("guidance", "DragEditEnergyGuidanceAppearance", mask_base=("mask", 0), mask_replace=("mask_b", 0)),
    ], "masked", cfg=5.0, vca_masks=dict(mask_base=("mask", 0), mask_replace=("mask_b", 0)))


def paste():
    """Paste the second image's green ball into the sky of the first: the arrow on its canvas is the offset."""
    return _dragon("paste", _ball_mask("mask_b", "image_b", GREEN_BALL) + [
        node("points", "DragEditPoints", image=("image_b", 0), points_json=_points_json((170, 120, 60, 60))),
        node("guidance", "DragEditEnergyGuidancePaste", mask=("mask_b", 0), offset_x=("points", 1),
             offset_y=("points", 2)),
    ], "masked", vca_masks=dict(mask_base=("guidance", 1), mask_replace=("guidance", 2)))


def drag():
    """Content drag: the square's top up and the ball's right side out, inside Drag Points' editable region."""
    return _dragon("drag", [
        node("points", "DragEditPoints", image=("image", 0), mask=("image", 1),
             points_json=_points_json((187, 124, 187, 100), (127, 145, 145, 145))),
        node("guidance", "DragEditEnergyGuidanceDrag", points=("points", 0), mask=("points", 4)),
    ], "concat")


def demo_move():
    """The main job: the pack's demo model moves a disc 30 px right on a generated scene, no checkpoint needed.
    The full 50 DDIM steps: the demo UNet is small enough for a minute on a CPU."""
    case = draw_example_inputs.demo_case()
    arrow = tuple(round(v) for v in case.handle + case.target)
    size = case.image.shape[0]
    head = [
        node("ckpt", "DragEditDemoModel"),
        node("image", "LoadImage", image=draw_example_inputs.DEMO_SCENE),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=""),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]
    return _dragon("demo_move", [
        node("object", "LoadImageMask", image=draw_example_inputs.DEMO_MASK, channel="red"),
        node("mask", "GrowMask", mask=("object", 0), expand=2),
        node("points", "DragEditPoints", image=("image", 0), points_json=_points_json(arrow, size=size)),
        node("guidance", "DragEditEnergyGuidanceMove", mask=("mask", 0), offset_x=("points", 1),
             offset_y=("points", 2)),
    ], "replace", cfg=1.0, head=head, steps=50)


WORKFLOWS = {"demo_move": demo_move, "reconstruct": reconstruct, "gooddrag": gooddrag, "dragdiffusion": dragdiffusion,
             "move": move, "resize": resize, "appearance": appearance, "paste": paste, "drag": drag}


def _depths(spec):
    depth = {}
    for key, _, inputs in spec:
        parents = [v[0] for v in inputs.values() if isinstance(v, tuple)]
        depth[key] = 1 + max((depth[p] for p in parents), default=-1)
    return depth


def build(spec, object_info):
    """UI-format workflow dict for a list of `node(...)` entries (parents before children)."""
    ids = {key: n + 1 for n, (key, _, _) in enumerate(spec)}
    depth = _depths(spec)
    rows = {}
    nodes, links = [], []
    outputs = {}
    for key, class_type, inputs in spec:
        info = object_info[class_type]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"]
        widgets, slots = [], []
        for name in order.get("required", []) + order.get("optional", []):
            spec_ = specs[name]
            value = inputs.get(name)
            linked = isinstance(value, tuple)
            if linked:
                link_id = len(links) + 1
                parent = ids[value[0]]
                out_type = object_info[spec[ids[value[0]] - 1][1]]["output"][value[1]]
                links.append([link_id, parent, value[1], ids[key], len(slots), out_type])
                outputs.setdefault((parent, value[1]), []).append(link_id)
                slots.append({"name": name, "type": spec_[0] if isinstance(spec_[0], str) else "COMBO",
                              "link": link_id})
            if _is_widget(spec_):
                if linked:   # a linked widget keeps its slot's widget name and its value, as the frontend saves it
                    slots[-1]["widget"] = {"name": name}
                    value = None
                default = spec_[1].get("default") if len(spec_) > 1 and isinstance(spec_[1], dict) else None
                if value is None:
                    value = default if default is not None else (spec_[0][0] if isinstance(spec_[0], list) else None)
                widgets.append(value)
                if _extra_values(name, spec_):
                    widgets.append("fixed" if spec_[0] == "INT" else "image")
            elif not linked and name in info["input"].get("required", {}):
                raise ValueError(f"{key}: required input {name} of {class_type} is not connected")
        unknown = set(inputs) - set(specs)
        if unknown:
            raise ValueError(f"{key}: {class_type} has no inputs {sorted(unknown)}")
        column = depth[key]
        row_y = rows.get(column, 60)
        height = 80 + 26 * (len(widgets) + len(slots)) + CANVAS_HEIGHT.get(class_type, 0)
        rows[column] = row_y + height + ROW_GAP
        nodes.append({"id": ids[key], "type": class_type, "pos": [40 + COLUMN_WIDTH * column, row_y],
                      "size": [COLUMN_WIDTH - 40, height], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": slots, "outputs": [], "properties": {"Node name for S&R": class_type},
                      "widgets_values": widgets})
    for n in nodes:
        info = object_info[n["type"]]
        n["outputs"] = [{"name": name, "type": kind, "links": outputs.get((n["id"], slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def main(names):
    with ComfyServer() as server:
        object_info = server.object_info()
    for name in names or WORKFLOWS:
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(build(WORKFLOWS[name](), object_info), indent=1) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv[1:])
