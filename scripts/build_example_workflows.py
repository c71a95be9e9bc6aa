"""Write example_workflows/*.json from compact graph descriptions, built and saved by the real frontend.

The frontend (1.32.9, in chromium, on a live server) creates each node, sets its widgets by name and links its
inputs by name, so widget order and defaults are the frontend's own. Run after changing a node's inputs or a
workflow below:

    .dev/venv/bin/python -m scripts.build_example_workflows
"""
import json
import sys

from scripts import draw_example_inputs
from tests.browser.conftest import CHROMIUM_ARGS, VIEWPORT
from tests.support.host import CHROMIUM
from tests.support.pack import REPO
from tests.support.server import SDXL_CKPT_NAME, USER_CKPT_NAME, ComfyServer

OUT = REPO / "example_workflows"
SCENE = "dragedit_scene.png"
COLUMN_WIDTH, ROW_GAP = 340, 40
# Room for the images the classic display draws below the widgets (computeSize does not count them; Nodes 2.0
# sizes its nodes to their content, and the build measures that).
EXTRA_HEIGHT = {"LoadImage": 250, "LoadImageMask": 250, "SaveImage": 280, "PreviewImage": 280}
VIEW = (VIEWPORT["width"], VIEWPORT["height"], 70, 140)   # the window the saved view fits; left: the side bar, top:
# the tabs and the workflow breadcrumb and Run toolbar below them (tests/browser/ui.py covered() checks none hides a node)


def node(key, class_type, **inputs):
    """One node: literal inputs are widget values, ("key", slot) tuples are links."""
    return key, class_type, inputs


def _loader_and_image(image=SCENE, prompt="a photo of objects on a table"):
    return [
        node("ckpt", "CheckpointLoaderSimple", ckpt_name=USER_CKPT_NAME),
        node("image", "LoadImage", image=image),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=prompt),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]


def _demo_head():
    """The demo model and its scene: "ckpt", "image", "pos", "latent" as _loader_and_image gives them."""
    return [
        node("ckpt", "DragEditDemoModel"),
        node("image", "LoadImage", image=draw_example_inputs.DEMO_SCENE),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=""),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]


def reconstruct():
    """Shared core: invert with a memory bank, then a stock KSampler on the bank-attention MODEL reconstructs. On
    the demo model, so the reconstruction is a real one (a random-weight autoencoder reconstructs nothing)."""
    return _demo_head() + [
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


LORA_STEPS, LORA_BATCH = 10, 1   # the papers fit 70 (GoodDrag) / 80 (DragDiffusion) steps of 4: the node's defaults


def _drag(name, prompt, strength, pairs, motion, tracker, schedule, head=None):
    """A drag with the AlDD Drag Scheduler: the Identity LoRA fitted on the image, invert, points on the canvas,
    motion supervision and tracker, decode. `head` (default: checkpoint and scene) as in _dragon.

    `schedule` holds the scheduler's preset and widgets. The CI examples run 20 DDIM steps, 10 LoRA steps of one image and
    preset custom with fewer drags than the papers (GoodDrag's 210 gradient steps take many minutes on a CPU); the
    nodes' defaults are the papers'.
    """
    return (head or _loader_and_image(prompt=prompt)) + [
        node("lora", "DragEditIdentityLoRA", model=("ckpt", 0), image=("image", 0), vae=("ckpt", 2),
             positive=("pos", 0), steps=LORA_STEPS, batch_size=LORA_BATCH),
        node("invert", "DragEditDDIMInversion", model=("lora", 0), latent=("latent", 0), positive=("pos", 0),
             steps=ALDD_STEPS, strength=strength, layers="none"),
        node("features", "DragEditFeatureExtractor", model=("lora", 0),
             preset="GoodDrag / DragDiffusion"),
        node("points", "DragEditPoints", image=("image", 0), points_json=_points_json(*pairs), mask=("image", 1)),
        node("motion", "DragEditMotionSupervision", **motion),
        node("tracker", "DragEditPointTracker", image=("image", 0), points=("points", 0), **tracker),
        node("drag", "DragEditAlDDScheduler", model=("lora", 0), memory_bank=("invert", 0), positive=("pos", 0),
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


def _points_json(*pairs, size=256, region=None):
    """The canvas's JSON; `region` (cx, cy, r) adds a painted editable disc (mask_rle, as the canvas's Brush)."""
    data = {"version": 1, "image_size": [size, size], "pairs": [list(p) for p in pairs]}
    if region:
        cx, cy, r = region
        bits = [int((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r * r) for y in range(size) for x in range(size)]
        runs, value, run = [], 0, 0
        for bit in bits:
            if bit == value:
                run += 1
            else:
                runs, value, run = runs + [run], bit, 1
        data["mask_rle"] = runs + [run]
    return json.dumps(data, separators=(",", ":"))


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


# The chained drag's settings: the official push of the handle's area off its old content (w_inpaint 0.2) turns the
# demo model's dragged disc green, the colour opposite its ground; without it the dark disc stretches cleanly
# (bench.edit_ablation --mode drag, 8 generated drags: centroid / unchanged / object 3.6 / 6.2 / 31.5 against
# 4.7 / 7.5 / 35.5 at the official 0.2).
DEMO_DRAG = dict(w_inpaint=0.0)
CHAINED_DRAG = (72, 74, 72, 88)   # the chained example's second edit: the disc's lower edge 14 px down (128 px image)


def demo_move(name="demo_move"):
    """The main job: the pack's demo model moves a disc 30 px right on a generated scene, no checkpoint needed.
    The full 50 DDIM steps: the demo UNet is small enough for a minute on a CPU."""
    case = draw_example_inputs.demo_case()
    (drag,) = case.drags
    arrow = tuple(round(v) for v in drag)
    size = case.image.shape[0]
    return _dragon(name, [
        node("object", "LoadImageMask", image=draw_example_inputs.DEMO_MASK, channel="red"),
        node("mask", "GrowMask", mask=("object", 0), expand=2),
        node("points", "DragEditPoints", image=("image", 0), points_json=_points_json(arrow, size=size)),
        node("guidance", "DragEditEnergyGuidanceMove", mask=("mask", 0), offset_x=("points", 1),
             offset_y=("points", 2)),
    ], "replace", cfg=1.0, head=_demo_head(), steps=50)


def chained():
    """Two edits in one graph (issue 14): the demo model moves the disc, then drags its lower edge down on the
    result. The second edit inverts the first's decoded image; its canvas shows that image after a run (through
    the Save Image of the first result) and its editable region is painted on the canvas (mask_rle)."""
    first = demo_move("dragedit_chained_move")
    second = [
        node("latent2", "VAEEncode", pixels=("decode", 0), vae=("ckpt", 2)),
        node("invert2", "DragEditDDIMInversion", model=("ckpt", 0), latent=("latent2", 0), positive=("pos", 0),
             steps=50),
        node("points2", "DragEditPoints", image=("decode", 0),
             points_json=_points_json(CHAINED_DRAG, size=128, region=(72, 66, 30))),
        node("guidance2", "DragEditEnergyGuidanceDrag", points=("points2", 0), mask=("points2", 4), **DEMO_DRAG),
        node("vca2", "DragEditVisualCrossAttention", model=("ckpt", 0), memory_bank=("invert2", 0), mode="concat"),
        node("sampler2", "DragEditGuidedSampler", model=("vca2", 0), memory_bank=("invert2", 0),
             guidance=("guidance2", 0), features=("features", 0), positive=("pos", 0), negative=("neg", 0), cfg=1.0),
        node("decode2", "VAEDecode", samples=("sampler2", 0), vae=("ckpt", 2)),
        node("save2", "SaveImage", images=("decode2", 0), filename_prefix="dragedit_chained"),
    ]
    return first + second


SDXL_SIDE = 1024   # SDXL's own resolution: Drag Working Resolution takes the 256² scene there


def _sdxl_head(mask_colour=None, prompt="a photo of objects on a table"):
    """SDXL base and the scene at SDXL_SIDE²: "ckpt", "image" (Drag Working Resolution: image 0, mask 1), "pos",
    "latent" as _loader_and_image gives them. `mask_colour`: a ball's mask made on the scene and resized with it
    (nearest, so it stays binary); otherwise the mask output is empty."""
    masked = _ball_mask("scene_mask", "scene", mask_colour) if mask_colour is not None else []
    return [
        node("ckpt", "CheckpointLoaderSimple", ckpt_name=SDXL_CKPT_NAME),
        node("scene", "LoadImage", image=SCENE),
        *masked,
        node("image", "DragEditWorkingResolution", image=("scene", 0), resolution=SDXL_SIDE,
             **({"mask": ("scene_mask", 0)} if masked else {})),
        node("pos", "CLIPTextEncode", clip=("ckpt", 1), text=prompt),
        node("latent", "VAEEncode", pixels=("image", 0), vae=("ckpt", 2)),
    ]


def sdxl_move():
    """move on SDXL base at 1024²: the red ball up and right, the features and bank layers of the SDXL family. The
    canvas shows the scene before Drag Working Resolution, so the arrows are drawn on it (Drag Points rescales)."""
    return _dragon("sdxl_move", [
        node("points", "DragEditPoints", image=("image", 0),
             points_json=_points_json((95, 145, 150, 70))),
        node("guidance", "DragEditEnergyGuidanceMove", mask=("image", 1), offset_x=("points", 1),
             offset_y=("points", 2)),
    ], "replace", head=_sdxl_head(RED_BALL))


def sdxl_drag():
    """drag on SDXL base at 1024²: the square's top up and the ball's right side out."""
    return _dragon("sdxl_drag", [
        node("points", "DragEditPoints", image=("image", 0), mask=("image", 1),
             points_json=_points_json((187, 124, 187, 100), (127, 145, 145, 145))),
        node("guidance", "DragEditEnergyGuidanceDrag", points=("points", 0), mask=("points", 4)),
    ], "concat", head=_sdxl_head())


def sdxl_gooddrag():
    """gooddrag on SDXL base at 1024², Identity LoRA included. The radii stay GoodDrag's, in feature px: SDXL's
    GoodDrag tap (output 5) is at H/2, as SD-1.5's output 8."""
    return _drag("sdxl_gooddrag", "", 0.75, [(95, 112, 95, 84), (128, 146, 150, 146)],
                 motion=dict(variant="gooddrag", r1=4, beta=4.0), tracker=dict(r2=12),
                 schedule=dict(preset="custom", drag_steps=3, drags_per_step=4, grad_steps_per_drag=2, lr=0.02,
                               max_no_change=5),
                 head=_sdxl_head(prompt=""))


# Title and one-line description of each example, drawn into its Templates thumbnail (the frontend shows only the
# file name) and used in README.md.
TITLES = {
    "demo_move": ("Move an object (demo model)", "DragonDiffusion / DiffEditor moves the disc to the arrow; no download"),
    "chained": ("Move, then drag the result", "Two edits in one graph: the second inverts the first's output"),
    "move": ("Move an object", "DragonDiffusion / DiffEditor: the arrow on the canvas is the offset"),
    "resize": ("Move and resize", "A second arrow from the object's edge sets the scale"),
    "appearance": ("Swap an appearance", "The ball takes the look of the ball in a second image"),
    "paste": ("Paste from another image", "An object of a second image, pasted at the arrow"),
    "drag": ("Content drag (DragonDiffusion)", "Handles to targets inside the editable region"),
    "gooddrag": ("GoodDrag", "Alternating drag and denoising with point tracking"),
    "dragdiffusion": ("DragDiffusion", "GoodDrag's special case: every drag at one timestep"),
    "reconstruct": ("Reconstruct (inversion check)", "Demo model: DDIM inversion, bank attention, a stock KSampler"),
    "sdxl_move": ("Move an object (SDXL)", "DragonDiffusion / DiffEditor on SDXL base, 1024 px"),
    "sdxl_drag": ("Content drag (SDXL)", "DragonDiffusion's drag on SDXL base, 1024 px"),
    "sdxl_gooddrag": ("GoodDrag (SDXL)", "Identity LoRA, then alternating drag and denoising, 1024 px"),
}

WORKFLOWS = {"demo_move": demo_move, "chained": chained, "reconstruct": reconstruct, "gooddrag": gooddrag, "dragdiffusion": dragdiffusion,
             "move": move, "resize": resize, "appearance": appearance, "paste": paste, "drag": drag,
             "sdxl_move": sdxl_move, "sdxl_drag": sdxl_drag, "sdxl_gooddrag": sdxl_gooddrag}


def _columns(spec):
    """Each node's layout column: one right of its deepest input, then moved right up to just before its first
    consumer, so a node sits next to what reads it and the columns stay short."""
    column = {}
    for key, _, inputs in spec:
        parents = [v[0] for v in inputs.values() if isinstance(v, tuple)]
        column[key] = 1 + max((column[p] for p in parents), default=-1)
    for key, _, _ in reversed(spec):
        consumers = [k for k, _, inputs in spec for v in inputs.values() if isinstance(v, tuple) and v[0] == key]
        if consumers:
            column[key] = min(column[c] for c in consumers) - 1
    return column


def plan(spec):
    """The graph for the browser: nodes in order (their ids 1..N), widget values by name, links by input name,
    and the layout column of each node (its depth in the graph)."""
    ids = {key: n + 1 for n, (key, _, _) in enumerate(spec)}
    column = _columns(spec)
    nodes = []
    for key, class_type, inputs in spec:
        links = {name: [ids[v[0]], v[1]] for name, v in inputs.items() if isinstance(v, tuple)}
        widgets = {name: v for name, v in inputs.items() if not isinstance(v, tuple)}
        nodes.append({"id": ids[key], "type": class_type, "widgets": widgets, "links": links, "column": column[key],
                      "height": EXTRA_HEIGHT.get(class_type, 0)})
    return {"nodes": nodes, "column_width": COLUMN_WIDTH, "gap": ROW_GAP, "view": VIEW}


# The real frontend builds the graph (LiteGraph.createNode, widgets by name, links by input name), sizes each node
# as it draws it, lays the columns out with those sizes and serializes it as a user's save would: the widget
# order in widgets_values and every default are the frontend's own, never guessed here.
BUILD_IN_FRONTEND = """async plan => {
  const graph = app.graph;
  await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', plan.nodes2);
  graph.clear();
  const made = new Map();
  for (const spec of plan.nodes) {
    const node = LiteGraph.createNode(spec.type);
    if (!node) throw new Error(`unknown node type ${spec.type}`);
    graph.add(node);
    if (node.id !== spec.id) throw new Error(`${spec.type} got id ${node.id}, expected ${spec.id}`);
    for (const widget of node.widgets ?? []) {   // an example reproduces its picture: seeds stay as saved
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    for (const [name, value] of Object.entries(spec.widgets)) {
      const widget = node.widgets?.find(w => w.name === name);
      if (!widget) throw new Error(`${spec.type} has no widget ${name}`);
      widget.value = value;
      widget.callback?.(value);
    }
    made.set(spec.id, node);
  }
  for (const spec of plan.nodes) {
    const node = made.get(spec.id);
    for (const [name, [from, slot]] of Object.entries(spec.links)) {
      const input = node.findInputSlot(name);
      if (input < 0) throw new Error(`${spec.type} has no input ${name}`);
      if (!made.get(from).connect(slot, node, input)) throw new Error(`cannot link ${from}:${slot} to ${spec.type}.${name}`);
    }
  }
  if (plan.nodes2) {   // measure: how large Nodes 2.0 draws each node, in graph units of the classic display
    app.canvas.ds.scale = 1;   // every node at the origin, at full size (nothing culled, no minimum font size)
    app.canvas.ds.offset = [100, 100];
    app.canvas.setDirty(true, true);
    const scale = app.canvas.ds.scale * 1.2;   // Nodes 2.0 spreads a classic layout by 1.2 when it loads one
    const measure = () => JSON.stringify(Object.fromEntries([...document.querySelectorAll('.lg-node[data-node-id]')]
      .map(e => {
        const r = e.getBoundingClientRect();
        return [e.dataset.nodeId, [r.width / scale, r.height / scale - LiteGraph.NODE_TITLE_HEIGHT]];
      })));
    // Until two readings 500 ms apart agree: on a loaded machine the nodes are still growing after a fixed wait.
    await new Promise(r => setTimeout(r, 1500));
    let last = null, now = measure();
    for (let tries = 0; (now !== last || now === "{}") && tries < 40; tries++) {
      await new Promise(r => setTimeout(r, 500));
      [last, now] = [now, measure()];
    }
    return JSON.parse(now);
  }
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  let columns = [];
  for (const spec of plan.nodes) {
    const node = made.get(spec.id);
    const [w, h] = node.computeSize();
    const [vw, vh] = plan.nodes2_size[spec.id];
    node.setSize([Math.max(node.size[0], w, vw, plan.column_width), Math.max(node.size[1], h, vh) + spec.height]);
    (columns[spec.column] ??= []).push(node);
  }
  columns = columns.filter(Boolean);
  const [viewW, viewH, left, top] = plan.view;
  const extent = cols => {
    const w = cols.reduce((sum, c) => sum + Math.max(...c.map(n => n.size[0])) + plan.gap, -plan.gap);
    const h = Math.max(...cols.map(c => c.reduce((sum, n) => sum + n.size[1] + title + plan.gap, -plan.gap)));
    return [w, h];
  };
  const fit = cols => { const [w, h] = extent(cols); return Math.min((viewW - left) / w, (viewH - top) / h); };
  // Stack a column under its left neighbour while that lets the whole graph show larger in the window.
  for (;;) {
    let best = null;
    for (let c = 0; c + 1 < columns.length; c++) {
      const merged = [...columns.slice(0, c), [...columns[c], ...columns[c + 1]], ...columns.slice(c + 2)];
      if (fit(merged) > (best ? fit(best) : fit(columns)) * 1.02) best = merged;
    }
    if (!best) break;
    columns = best;
  }
  let x = 0;
  for (const column of columns) {
    let y = title;
    for (const node of column) {
      node.pos = [x, y];
      y += node.size[1] + title + plan.gap;
    }
    x += Math.max(...column.map(n => n.size[0])) + plan.gap;
  }
  // The saved view shows the whole graph in a plan.view-sized window (Nodes 2.0 spreads it by 1.2 on load).
  const [width, height] = extent(columns);
  const scale = Math.min(1, (viewW - left - 20) / (1.2 * width), (viewH - top - 20) / (1.2 * height));
  const saved = JSON.parse(JSON.stringify(graph.serialize()));   // as a file: no undefined fields
  saved.extra.ds = {scale: Math.round(scale * 1000) / 1000, offset: [left / scale, top / scale]};
  return saved;
}"""


def main(names):
    from playwright.sync_api import sync_playwright

    with ComfyServer() as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
        for name in names or WORKFLOWS:
            # A fresh page each time: Nodes 2.0 keeps node sizes by node id across graph.clear().
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_function("window.app && window.app.graph && window.app.canvas && "
                                   "!!LiteGraph.registered_node_types.DragEditPoints", timeout=90000)
            graph = plan(WORKFLOWS[name]())
            graph["nodes2_size"] = page.evaluate(BUILD_IN_FRONTEND, {**graph, "nodes2": True})
            saved = page.evaluate(BUILD_IN_FRONTEND, {**graph, "nodes2": False})
            path = OUT / f"{name}.json"
            path.write_text(json.dumps(saved, indent=1) + "\n")
            print(f"wrote {path.relative_to(REPO)}")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
