"""Every example workflow as a user runs it: opened in the real frontend, turned into a prompt by the frontend's own
app.graphToPrompt(), queued with Run, in the classic display and in Nodes 2.0, on the frontend ComfyUI 0.3.75
ships and on the newest one; then the edit's content is checked, not just that an image exists.

Nodes 2.0 must build the very prompt the classic display built; ComfyUI caches node outputs, so its run of that
prompt on the same server costs seconds and still goes through POST /prompt, validation and the history.
"""
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.browser import pictures, ui
from tests.browser.conftest import NEWEST, SHIPPED, artifact, open_page
from tests.support.pack import REPO
from tests.support.server import SDXL_CKPT_NAME, USER_CKPT_NAME
from tests.support.workflow import ui_to_api

EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
INPUTS = REPO / "example_workflows" / "inputs"
# The SDXL examples edit at 1024²; here their Drag Working Resolution is set to this (the test SDXL is a
# random-weight, reduced-width one: the layout and every pass are SDXL's, the cost is the CPU's to bear).
TEST_RESOLUTION = 128


def at_test_size(workflow):
    """The workflow as a user saves it after setting Drag Working Resolution to TEST_RESOLUTION."""
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        if node["type"] == "DragEditWorkingResolution":
            node["widgets_values"][0] = TEST_RESOLUTION
    return workflow


def _output_image(server, entry):
    """The last Save Image's picture (the highest node id: an example saves its final result last)."""
    saved = [(int(k) if k.isdigit() else -1, image) for k, out in entry["outputs"].items()
             for image in out.get("images", []) if image["type"] == "output"]
    assert saved, f"no saved image; outputs: {entry['outputs']}"
    image = max(saved, key=lambda s: s[0])[1]
    with Image.open(server.base_dir / "output" / image.get("subfolder", "") / image["filename"]) as im:
        return np.asarray(im.convert("RGB")).astype(np.float64)


def _input_image(prompt, node_type="LoadImage"):
    name = next(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == node_type)
    with Image.open(INPUTS / name) as im:
        return np.asarray(im.convert("RGB")).astype(np.float64)


def psnr(a, b):
    return 10 * math.log10(255.0 ** 2 / max(np.mean((a - b) ** 2), 1e-12))


# ------------------------------------------------------------------------------------- references on the server

def _nodes_of(prompt, *types):
    return [k for k, v in prompt.items() if v["class_type"] in types]


def autoencoder_round_trip(prompt):
    """The example's own model and image through VAE encode and decode only: the best a reconstruction can do."""
    model = _nodes_of(prompt, "CheckpointLoaderSimple", "DragEditDemoModel")[0]
    image = _nodes_of(prompt, "LoadImage")[0]
    return {
        model: prompt[model], image: prompt[image],
        "rt_encode": {"class_type": "VAEEncode", "inputs": {"pixels": [image, 0], "vae": [model, 2]}},
        "rt_decode": {"class_type": "VAEDecode", "inputs": {"samples": ["rt_encode", 0], "vae": [model, 2]}},
        "rt_save": {"class_type": "SaveImage", "inputs": {"images": ["rt_decode", 0], "filename_prefix": "rt"}},
    }


# DragonDiffusion's energies off; GoodDrag's drags move nothing (its scheduler refuses lr 0: a step of 1e-9 px).
# The Identity LoRA, which shapes the model both runs share, stays as it is.
NEUTRAL = {"energy_scale": 0.0, "lr": 1e-9}
KEEP = {"DragEditIdentityLoRA"}


def without_edit(prompt):
    """The same workflow with its edits switched off: every other node (inversion, bank attention, sampler,
    denoising) runs as in the edit, and ComfyUI's cache reuses what does not change (the inversion)."""
    neutral = json.loads(json.dumps(prompt))
    switched = 0
    for node in (n for n in neutral.values() if n["class_type"] not in KEEP):
        for name, value in NEUTRAL.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
                switched += 1
    assert switched, "no edit strength to switch off: add its input to NEUTRAL"
    return neutral


# ------------------------------------------------------------------------------------------------ content checks

def _pairs(prompt, width):
    """Every arrow of the example's canvases, in the pixels of a `width`-wide result (the canvas and the result
    differ in size: the SDXL examples draw on the 256² scene and edit at Drag Working Resolution's size)."""
    pairs = []
    for key in _nodes_of(prompt, "DragEditPoints"):
        data = json.loads(prompt[key]["inputs"]["points_json"])
        k = width / data["image_size"][0]
        pairs += [[v * k for v in pair] for pair in data["pairs"]]
    return pairs


def _disc_mask(shape, discs):
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    inside = np.zeros(shape[:2], bool)
    for x, y, r in discs:
        inside |= (xs - x) ** 2 + (ys - y) ** 2 <= r ** 2
    return inside


def _around_the_arrows(radius, canvas=256):
    """The edited region of a drag or move: discs about every handle and target, `radius` px of a `canvas`-wide
    image."""
    def region(prompt, width):
        r = radius * width / canvas
        return [(x, y, r) for hx, hy, tx, ty in _pairs(prompt, width) for x, y in ((hx, hy), (tx, ty))]
    return region


def _in_the_scene(x, y, r):
    """A disc in the pixels of the 256² example scene, scaled to the result."""
    return lambda prompt, width: [(x * width / 256, y * width / 256, r * width / 256)]


# Where each edit example changes its image (from scripts/build_example_workflows.py and
# scripts/draw_example_inputs.py: the red ball at (95, 145) r 34 in dragedit_scene.png).
EDITED_REGION = {
    "move": _around_the_arrows(40),
    "resize": _in_the_scene(95, 138, 55),
    "appearance": _in_the_scene(95, 145, 38),
    "paste": _in_the_scene(60, 60, 40),
    "drag": _around_the_arrows(24),
    "gooddrag": _around_the_arrows(24),
    "dragdiffusion": _around_the_arrows(24),
    "chained": _around_the_arrows(24, canvas=128),
    "sdxl_move": _around_the_arrows(40),
    "sdxl_drag": _around_the_arrows(24),
    "sdxl_gooddrag": _around_the_arrows(24),
}


def check_reconstruction(server, prompt, output):
    """Within 1 dB of the autoencoder's own round trip of the same image (measured now, same model): inversion
    and the bank-attention sampler add next to nothing to what the autoencoder loses."""
    source = _input_image(prompt)
    round_trip = _output_image(server, server.run(autoencoder_round_trip(prompt), timeout=300))
    bound = psnr(round_trip, source) - 1.0
    assert psnr(output, source) >= bound, (psnr(output, source), bound)
    return f"PSNR {psnr(output, source):.1f} dB (autoencoder {psnr(round_trip, source):.1f} dB)"


def check_demo_move(server, prompt, output):
    """The disc leaves its place and lands on the arrow's target (fitted as the input's disc, tools/scenes.py)."""
    from scripts.draw_example_inputs import demo_case
    from tools import scenes

    case = demo_case()
    found, _ = scenes.locate_object(case, output.astype(np.uint8))
    to_target = math.dist(found, scenes.centroid(case.expected_mask))
    from_start = math.dist(found, scenes.centroid(case.mask))
    assert to_target < 8 and from_start > 20, (found, to_target, from_start)
    return f"disc {to_target:.1f} px from its target"


def check_chained(server, prompt, output):
    """The second edit stretches the moved disc down in the disc's own colour: the pixels its drag crosses are as
    dark as the input's disc (the official push of the handle's area off its old content turned them green here:
    about 90 away in RGB; drag settings: scripts/build_example_workflows.DEMO_DRAG)."""
    from scripts.build_example_workflows import CHAINED_DRAG
    from scripts.draw_example_inputs import demo_case

    case = demo_case()
    disc = case.image[case.mask >= 0.5].mean(axis=0)
    k = output.shape[1] / case.image.shape[1]
    x, (y0, y1) = CHAINED_DRAG[0], (CHAINED_DRAG[1] + 4, CHAINED_DRAG[3] - 2)  # the crossed column, off the ends
    crossed = output[round(y0 * k):round(y1 * k), round((x - 2) * k):round((x + 3) * k)].reshape(-1, 3).mean(axis=0)
    distance = float(np.linalg.norm(crossed - disc))
    assert distance < 40, (crossed.round(), disc.round(), distance)
    return f"{check_edit_region('chained', server, prompt, output)}; dragged part {distance:.0f} from the disc's colour"


def check_edit_region(name, server, prompt, output):
    """The edit against the same workflow with the edit off. On the demo model (trained, so an edit has a place):
    it changes the image more inside its region than outside. On the random-weight test checkpoint an edit's
    effect has no place to be in (measured: move 2.46 inside, 2.52 outside), so there it must only act at all."""
    if name not in EDITED_REGION:
        pytest.fail(f"{name}.json: declare where it edits in EDITED_REGION (tests/browser/test_examples.py)")
    reference = _output_image(server, server.run(without_edit(prompt), timeout=900))
    inside = _disc_mask(output.shape, EDITED_REGION[name](prompt, output.shape[1]))
    change = np.abs(output - reference).mean(axis=-1)
    assert inside.any() and (~inside).any()
    inside_change, outside_change = change[inside].mean(), change[~inside].mean()
    if _nodes_of(prompt, "DragEditDemoModel"):
        assert inside_change > outside_change, (inside_change, outside_change)
    else:
        assert change.mean() > 0.5, f"the edit changes nothing ({change.mean():.2f})"
    return f"change inside {inside_change:.1f}, outside {outside_change:.1f}"


def check_content(name, server, prompt, output):
    if name == "reconstruct":
        return check_reconstruction(server, prompt, output)
    if name == "demo_move":
        return check_demo_move(server, prompt, output)
    if name == "chained":
        return check_chained(server, prompt, output)
    return check_edit_region(name, server, prompt, output)


# --------------------------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def classic_page(browser, comfy_server):
    page = open_page(browser, comfy_server)
    ui.set_display(page, "classic")
    yield page
    page.context.close()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_converter_builds_what_the_frontend_builds(classic_page, comfy_server, path):
    """scripts/demo.py runs examples without a browser through tests/support/workflow.py: it must build exactly
    the prompt the frontend builds (the frontend read demo_move's Load Image (as Mask) as image, channel, upload)."""
    workflow = json.loads(path.read_text())
    ui.load_workflow(classic_page, workflow, "classic")
    frontend = ui.graph_to_prompt(classic_page)
    converted = ui_to_api(workflow, comfy_server.object_info())
    assert {k: (v["class_type"], v["inputs"]) for k, v in converted.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in frontend.items()}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_widget_value_the_frontend_sends_is_one_the_node_accepts(classic_page, comfy_server, path):
    """The values graphToPrompt reads from the saved widgets_values, checked as POST /prompt checks them (choices,
    bounds): a value saved in the wrong slot (demo_move's Load Image (as Mask) once sent channel 'image') fails here
    in seconds, before any run."""
    ui.load_workflow(classic_page, json.loads(path.read_text()), "classic")
    info = comfy_server.object_info()
    for key, node in ui.graph_to_prompt(classic_page).items():
        specs = {**info[node["class_type"]]["input"]["required"], **info[node["class_type"]]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            if isinstance(value, list) or name not in specs:
                continue
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            where = f"{path.name}: node {key} ({node['class_type']}) input {name} = {value!r}"
            if isinstance(kind, list) or kind == "COMBO":
                choices = kind if isinstance(kind, list) else options.get("options", [])
                assert value in choices, f"{where} is not one of {choices}"
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), where


def test_no_output_node_runs_without_an_edit(comfy_server):
    """ComfyUI runs every output node whose inputs validate, so an output node beside the edit would make a broken
    edit look like a partial success: every output node of every example depends on a sampler."""
    info = comfy_server.object_info()
    assert not info["DragEditPoints"]["output_node"]
    samplers = {"DragEditGuidedSampler", "DragEditAlDDScheduler", "KSampler", "KSamplerAdvanced"}
    for path in EXAMPLES:
        prompt = ui_to_api(json.loads(path.read_text()), info)
        for key, node in prompt.items():
            if not info[node["class_type"]]["output_node"]:
                continue
            seen, todo = set(), [key]
            while todo:
                at = todo.pop()
                seen.add(at)
                todo += [v[0] for v in prompt[at]["inputs"].values() if isinstance(v, list) and v[0] not in seen]
            assert {prompt[k]["class_type"] for k in seen} & samplers, f"{path.name}: {node['class_type']} {key}"


def _look(page, name, display, frontend):
    """The example as loaded: a screenshot kept as an artifact, no node over another, nothing of the UI over a
    node, every node in the window."""
    page.screenshot(path=str(artifact(f"examples/{frontend}/{name}_{display}.png")))
    boxes = ui.node_boxes(page, display)
    assert not ui.overlaps(boxes), f"{name} in {display}: nodes overlap: {ui.overlaps(boxes)}"
    assert not ui.covered(page, boxes), f"{name} in {display}: the UI hides nodes: {ui.covered(page, boxes)}"
    x0, y0, x1, y1 = ui.graph_area(page)
    outside = [k for k, (a, b, c, d) in boxes.items() if a < x0 or b < y0 or c > x1 or d > y1]
    assert not outside, f"{name} in {display}: nodes {outside} are out of view: {boxes}"


def _pictures_of_the_run(page, name, entry):
    """The finished run as the frontend shows it (classic): the README picture and the Templates thumbnail."""
    from scripts.build_example_workflows import TITLES

    # every node drawn in full (a zoomed-out classic view draws them as plain boxes), nothing floating over them
    page.evaluate("app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0)")
    ui.clear_overlays(page)
    page.evaluate("app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(1500)   # the result images load into their nodes
    shot = page.screenshot()
    page.evaluate("app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 8)")
    artifact(f"examples/{name}.png").write_bytes(shot)
    boxes = ui.node_boxes(page, "classic")
    types = page.evaluate("Object.fromEntries(app.graph.nodes.map(n => [String(n.id), n.type]))")
    source = min((k for k, t in types.items() if t == "LoadImage"), key=int)
    result = max((k for k in entry["outputs"] if types.get(k) == "SaveImage"), key=int)
    title, description = TITLES[name]
    artifact(f"thumbnails/{name}.jpg").write_bytes(
        pictures.thumbnail(shot, boxes[source], boxes[result], title, description))


def _second_canvas_shows_the_first_result(page, server, entry):
    """The chained example's second editor draws its handles on the first edit's output (after the run)."""
    types = page.evaluate("Object.fromEntries(app.graph.nodes.map(n => [String(n.id), n.type]))")
    editors = sorted((k for k, t in types.items() if t == "DragEditPoints"), key=int)
    saves = sorted((k for k, t in types.items() if t == "SaveImage"), key=int)
    first = entry["outputs"][saves[0]]["images"][0]
    with Image.open(server.base_dir / "output" / first["filename"]) as im:
        first_result = np.asarray(im.convert("RGB")).astype(np.float64)
    source = _input_image({"1": {"class_type": "LoadImage", "inputs": {"image": next(
        n["widgets_values"][0] for n in page.evaluate("app.graph.serialize()")["nodes"] if n["type"] == "LoadImage")}}})
    canvas = page.locator(f".dragedit-points[data-dragedit-node='{editors[1]}'] canvas")
    page.wait_for_timeout(800)
    box = canvas.bounding_box()
    shot = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
    h, w = first_result.shape[:2]
    scale = min((box["width"] - 12) / w, (box["height"] - 12) / h)
    x0, y0 = (box["width"] - w * scale) / 2, (box["height"] - h * scale) / 2
    shown = np.asarray(shot.crop((round(x0), round(y0), round(x0 + w * scale), round(y0 + h * scale)))
                       .resize((w, h), Image.BILINEAR)).astype(np.float64)
    prompt = ui.graph_to_prompt(page)
    far = ~_disc_mask(shown.shape, _around_the_arrows(12, canvas=w)(prompt, w))
    runs = json.loads(prompt[editors[1]]["inputs"]["points_json"]).get("mask_rle", [w * h])
    painted = np.repeat(np.arange(len(runs)) % 2, runs).reshape(h, w).astype(bool)   # tinted on the canvas
    far &= ~painted
    to_result = np.abs(shown - first_result).mean(axis=-1)[far].mean()
    to_input = np.abs(shown - source).mean(axis=-1)[far].mean()
    assert to_result < to_input and to_result < 12, (to_result, to_input)
    shot_pixels = np.asarray(shot).astype(int)
    assert (np.abs(shot_pixels - np.array([230, 57, 70])) < 12).all(axis=-1).sum() > 4, "no handle drawn"


def _run_in(browser, server, name, workflow, frontend):
    """Open, look at and Run the example in one frontend, both displays; (its prompt, the edited image)."""
    page = open_page(browser, server, frontend)
    try:
        prompts = {}
        for display in ui.DISPLAYS:
            ui.set_display(page, display)
            ui.load_workflow(page, workflow, display)
            _look(page, name, display, frontend)
            prompts[display] = ui.graph_to_prompt(page)
        assert ui.dump(prompts["nodes2"]) == ui.dump(prompts["classic"]), "Nodes 2.0 builds another prompt"
        for node in prompts["classic"].values():
            if node["class_type"] == "CheckpointLoaderSimple":
                assert node["inputs"]["ckpt_name"] == (SDXL_CKPT_NAME if name.startswith("sdxl_") else USER_CKPT_NAME)

        # Run in each display, as a user presses Run: the second run is the same prompt, served from the cache.
        outputs = {}
        for display in reversed(ui.DISPLAYS):
            ui.set_display(page, display)
            ui.load_workflow(page, workflow, display)
            body, status, answer, entry = ui.queue_from_frontend(page, server)
            assert status == 200 and not answer.get("node_errors"), (display, status, answer)
            assert ui.dump(body["prompt"]) == ui.dump(prompts["classic"])
            assert entry["status"]["status_str"] == "success", (display, entry["status"])
            outputs[display] = _output_image(server, entry)
            ui.EXAMPLE_RUNS.append((name, display, frontend))
        assert np.array_equal(outputs["classic"], outputs["nodes2"])
        if frontend == SHIPPED:
            _pictures_of_the_run(page, name, entry)
        if name == "chained":
            _second_canvas_shows_the_first_result(page, server, entry)
        assert not [e for e in page.errors if "DragEdit" in e], page.errors
        return prompts["classic"], outputs["classic"]
    finally:
        page.context.close()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_from_the_frontend(browser, comfy_server, path):
    """Both frontends build the same prompt and get the same pixels (the second from the cache); then the content
    check, whose reference runs come last so they do not push the example out of ComfyUI's cache."""
    name = path.stem
    workflow = at_test_size(json.loads(path.read_text()))
    prompt, image = _run_in(browser, comfy_server, name, workflow, SHIPPED)
    newest_prompt, newest_image = _run_in(browser, comfy_server, name, workflow, NEWEST)
    assert ui.dump(newest_prompt) == ui.dump(prompt), f"frontend {NEWEST} builds another prompt"
    assert np.array_equal(newest_image, image)
    print(f"{name}: {check_content(name, comfy_server, prompt, image)}")


def test_every_example_has_a_content_check():
    names = {p.stem for p in EXAMPLES} - {"reconstruct", "demo_move"}
    assert names <= set(EDITED_REGION), sorted(names - set(EDITED_REGION))
