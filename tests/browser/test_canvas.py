"""The Drag Points canvas in the real frontend, in both displays and both frontends: clicks become image pixels
in the widget, the prompt and the workflow; the image shows before any run; zoom keeps it sharp; the painted mask,
undo/redo, points outside the image and the graph's own undo.

The test image carries coloured markers at known pixels. The test finds them in a screenshot and clicks there,
so the check is independent of the editor's own transform: a click on a marker must store that marker's pixel
(within 1 px), at the first layout and again after the node is resized and the graph zoomed.
"""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.browser import ui
from tests.browser.conftest import NEWEST, SHIPPED, artifact, open_page
from tests.support.pack import REPO
from tests.support.workflow import ui_to_api

W, H = 256, 192
MARKERS = {  # image pixel -> a colour nothing else on the page uses
    (64, 48): (255, 0, 255),
    (192, 144): (0, 255, 255),
    (208, 40): (255, 255, 0),
    (40, 160): (0, 255, 0),
}
IMAGE_NAME = "dragedit_canvas_test.png"
EMPTY = '{"version":1,"image_size":[0,0],"pairs":[]}'
LOAD, POINTS, PREVIEW, SCALE = 1, 2, 3, 4
CANVAS = "canvas[data-dragedit='points-canvas']"
DOCS_IMAGE = REPO / "docs" / "images" / "canvas.png"
COMBOS = [(display, frontend) for frontend in (SHIPPED, NEWEST) for display in ui.DISPLAYS]


def make_test_image(path):
    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    for y in range(H):  # a sky-to-ground gradient, so the screenshot reads as a picture
        t = y / (H - 1)
        draw.line([(0, y), (W, y)], fill=(int(70 + 60 * t), int(110 + 40 * t), int(170 - 90 * t)))
    draw.ellipse([34, 18, 94, 78], fill=(235, 150, 60))
    for (x, y), colour in MARKERS.items():
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    image.save(path)


def workflow(scaled=None):
    """Load Image -> (Image Scale By `scaled` ->) Drag Points -> Preview Image of the points' preview output."""
    outputs = [("points", "DRAG_POINTS"), ("offset_x", "INT"), ("offset_y", "INT"), ("scale", "FLOAT"),
               ("mask", "MASK"), ("preview", "IMAGE")]
    source = SCALE if scaled else LOAD
    nodes = [
        {"id": LOAD, "type": "LoadImage", "pos": [20, 110], "size": [290, 360], "flags": {}, "order": 0,
         "mode": 0, "inputs": [], "properties": {},
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": None}],
         "widgets_values": [IMAGE_NAME, "image"]},
        {"id": POINTS, "type": "DragEditPoints", "pos": [340, 110], "size": [400, 580], "flags": {}, "order": 2,
         "mode": 0, "properties": {},
         "inputs": [{"name": "image", "type": "IMAGE", "link": 2 if scaled else 1},
                    {"name": "mask", "type": "MASK", "link": None}],
         "outputs": [{"name": name, "type": kind, "links": [3] if name == "preview" else None}
                     for name, kind in outputs],
         "widgets_values": [EMPTY]},
        {"id": PREVIEW, "type": "PreviewImage", "pos": [780, 110], "size": [300, 300], "flags": {}, "order": 3,
         "mode": 0, "properties": {}, "inputs": [{"name": "images", "type": "IMAGE", "link": 3}], "outputs": [],
         "widgets_values": []},
    ]
    links = [[1, LOAD, 0, source if scaled else POINTS, 0, "IMAGE"], [3, POINTS, 5, PREVIEW, 0, "IMAGE"]]
    if scaled:
        nodes.append({"id": SCALE, "type": "ImageScaleBy", "pos": [20, 520], "size": [290, 90], "flags": {},
                      "order": 1, "mode": 0, "properties": {},
                      "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
                      "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
                      "widgets_values": ["nearest-exact", scaled]})
        links.append([2, SCALE, 0, POINTS, 0, "IMAGE"])
    return {"last_node_id": 4, "last_link_id": 3, "version": 0.4, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [140, 90]}}, "nodes": nodes, "links": links}


@pytest.fixture(scope="session")
def uploaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("canvas") / IMAGE_NAME
    make_test_image(path)
    return path


def open_editor(browser, server, uploaded, display, scaled=None, frontend=None):
    """A tab with the workflow loaded in `display`; the canvas shows the Load Image's picture (no run yet)."""
    server.upload_image(uploaded)
    page = open_page(browser, server, frontend)
    ui.set_display(page, display)
    ui.load_workflow(page, workflow(scaled), display)
    wait_for_status(page, f"0 pairs · {W}x{H}")
    return page


@pytest.fixture
def editor(browser, comfy_server, uploaded):
    page = open_editor(browser, comfy_server, uploaded, "classic")
    yield page
    page.context.close()


def points_value(page):
    return page.evaluate(f"app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json').value")


def pairs(page):
    return json.loads(points_value(page))["pairs"]


def wait_for_status(page, text, timeout=20):
    status = page.locator(".dragedit-points-status").first
    ui.wait_for(page, lambda: status.inner_text() == text, timeout, f"canvas status {text!r} "
                f"(it is {status.inner_text()!r})")


def canvas_shot(page):
    """The screenshot pixels (int RGB) and the canvas's box on the page (dpr 1: page px = shot px)."""
    page.wait_for_timeout(250)  # the watch loop and one animation frame for the last render
    ui.clear_overlays(page)
    box = page.locator(CANVAS).first.bounding_box()
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    x0, y0 = int(box["x"]), int(box["y"])
    return shot[y0:int(box["y"] + box["height"]), x0:int(box["x"] + box["width"])], (x0, y0)


def find_colour(page, colour, what):
    region, (x0, y0) = canvas_shot(page)
    ys, xs = np.nonzero((np.abs(region - np.array(colour)) < 12).all(axis=-1))
    assert len(xs) > 4, f"{what} not visible on the canvas"
    return x0 + xs.mean() + 0.5, y0 + ys.mean() + 0.5


def marker(page, pixel):
    return find_colour(page, MARKERS[pixel], f"marker {pixel}")


def click_marker(page, pixel, button="left"):
    x, y = marker(page, pixel)
    page.mouse.click(x, y, button=button)
    page.wait_for_timeout(100)


def assert_pair(pair, handle, target):
    assert len(pair) == 4, pair
    assert all(abs(a - b) <= 1 for a, b in zip(pair, (*handle, *target))), (pair, handle, target)


def canvas_is_sharp(page):
    """The canvas's backing store has as many pixels as it covers on screen (not a stretched bitmap)."""
    return page.evaluate(f"""() => {{
        const c = document.querySelector("{CANVAS}");
        const r = c.getBoundingClientRect();
        return Math.abs(c.width - Math.round(r.width * devicePixelRatio)) <= 1
            && Math.abs(c.height - Math.round(r.height * devicePixelRatio)) <= 1;
    }}""")


def zoom(page, scale):
    """Zoom the graph as the mouse wheel does, about the middle of the points canvas (it stays in the window)."""
    page.evaluate(f"""() => {{
        const c = document.querySelector("{CANVAS}").getBoundingClientRect();
        const g = app.canvas.canvas.getBoundingClientRect();
        app.canvas.ds.changeScale({scale}, [c.left + c.width / 2 - g.left, c.top + c.height / 2 - g.top]);
        app.canvas.setDirty(true, true);
    }}""")
    page.wait_for_timeout(400)


@pytest.mark.parametrize("display, frontend", COMBOS, ids=[f"{d}-{f}" for d, f in COMBOS])
def test_marker_clicks_land_on_their_pixels(browser, comfy_server, uploaded, display, frontend):
    """The same pixel test in all four combinations: the image shows before any run, clicks store the marker's
    pixel, and after a zoom the canvas is re-rendered at its new on-screen size and clicks still land."""
    server = comfy_server
    page = open_editor(browser, server, uploaded, display, frontend=frontend)
    try:
        click_marker(page, (64, 48))
        click_marker(page, (192, 144))
        assert len(pairs(page)) == 1
        assert_pair(pairs(page)[0], (64, 48), (192, 144))
        assert canvas_is_sharp(page)

        zoom(page, 1.35)
        ui.wait_for(page, lambda: canvas_is_sharp(page), 5, "a sharp canvas after zooming in")
        click_marker(page, (208, 40))
        click_marker(page, (40, 160))
        assert len(pairs(page)) == 2
        assert_pair(pairs(page)[1], (208, 40), (40, 160))
        zoom(page, 0.8)
        ui.wait_for(page, lambda: canvas_is_sharp(page), 5, "a sharp canvas after zooming out")
        wait_for_status(page, f"2 pairs · {W}x{H}")
        page.screenshot(path=str(artifact(f"canvas/{frontend}_{display}.png")))

        value = points_value(page)
        prompt = ui.graph_to_prompt(page)
        assert prompt[str(POINTS)]["inputs"] == {"image": [str(LOAD), 0], "points_json": value}
        saved = page.evaluate("app.graph.serialize()")
        assert next(n for n in saved["nodes"] if n["id"] == POINTS)["widgets_values"] == [value]

        # Run: the POST carries the pixels, the server draws the handle there; the canvas keeps its image.
        body, status, answer, entry = ui.queue_from_frontend(page, server, timeout=120)
        assert status == 200, answer
        assert entry["status"]["status_str"] == "success", entry["status"]
        sent = json.loads(body["prompt"][str(POINTS)]["inputs"]["points_json"])
        assert_pair(sent["pairs"][0], (64, 48), (192, 144))
        drawn = server.output_files(entry)
        with Image.open(drawn[0]) as preview_image:
            assert preview_image.size == (W, H)
            assert preview_image.convert("RGB").getpixel(tuple(sent["pairs"][0][:2])) == (230, 57, 70)
        find_colour(page, (235, 150, 60), "the image after the run")   # the orange disc: still the image

        page.evaluate("async () => { await app.loadGraphData(app.graph.serialize()); }")
        assert points_value(page) == value
        wait_for_status(page, f"2 pairs · {W}x{H}")
        assert not [e for e in page.errors if "DragEdit" in e or "points" in e.lower()], page.errors
    finally:
        page.context.close()


def test_the_converter_matches_the_frontend_and_the_readme_picture(editor, comfy_server):
    page = editor
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    click_marker(page, (208, 40))
    click_marker(page, (40, 160))
    saved = page.evaluate("app.graph.serialize()")
    api_prompt = ui_to_api(saved, comfy_server.object_info())
    prompt = ui.graph_to_prompt(page)
    assert {k: (v["class_type"], v["inputs"]) for k, v in api_prompt.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}

    wait_for_status(page, f"2 pairs · {W}x{H}")
    page.wait_for_timeout(300)
    clip = page.evaluate(f"""() => {{
        const rect = app.canvas.canvas.getBoundingClientRect();
        const [a, b] = [{LOAD}, {POINTS}].map(id => app.graph.getNodeById(id));
        const topLeft = app.canvas.ds.convertOffsetToCanvas([a.pos[0], a.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
        const bottomRight = app.canvas.ds.convertOffsetToCanvas([b.pos[0] + b.size[0], b.pos[1] + b.size[1]]);
        return {{x: rect.left + topLeft[0] - 10, y: rect.top + topLeft[1] - 24,
                 width: bottomRight[0] - topLeft[0] + 20, height: bottomRight[1] - topLeft[1] + 34}};
    }}""")
    page.screenshot(path=str(artifact("canvas.png")), clip=clip)
    DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact("canvas.png"), DOCS_IMAGE)


def test_editing_keys_buttons_drag_undo_and_redo(editor):
    page = editor
    nodes = page.evaluate("app.graph.nodes.length")
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    assert len(pairs(page)) == 1

    page.keyboard.press("Control+z")  # the editor's undo, not the workflow's: the node stays
    assert len(pairs(page)[0]) == 2 and abs(pairs(page)[0][0] - 64) <= 1
    assert page.evaluate("app.graph.nodes.length") == nodes
    expect(page.locator(".dragedit-points-message").first).to_contain_text("Click the target of point 1")
    page.keyboard.press("Control+Shift+z")  # redo brings the target back
    assert len(pairs(page)[0]) == 4
    page.keyboard.press("Control+z")
    page.locator(".dragedit-points-bar button", has_text="Redo").first.click()
    assert_pair(pairs(page)[0], (64, 48), (192, 144))

    x, y = marker(page, (208, 40))  # drag the first handle onto another marker
    handle_at = find_colour(page, (230, 57, 70), "the first handle")
    page.mouse.move(*handle_at)
    page.mouse.down()
    page.mouse.move(x, y, steps=5)
    page.mouse.up()
    assert_pair(pairs(page)[0], (208, 40), (192, 144))

    page.mouse.click(*handle_at, button="right")  # nothing there now
    assert len(pairs(page)) == 1
    page.mouse.click(x, y, button="right")  # right-click on the moved handle deletes the pair
    assert pairs(page) == []
    page.locator(".dragedit-points-bar button", has_text="Undo").first.click()
    assert len(pairs(page)) == 1

    page.mouse.click(x - 60, y + 60)  # a new handle, focusing the editor's keys
    assert len(pairs(page)) == 2 and len(pairs(page)[1]) == 2
    page.keyboard.press("Delete")
    assert len(pairs(page)) == 1
    assert page.evaluate("app.graph.nodes.length") == nodes, "Delete must not delete the node"

    page.locator(".dragedit-points-bar button", has_text="Clear").first.click()
    assert json.loads(points_value(page)) == {"version": 1, "image_size": [W, H], "pairs": []}


def test_the_graph_undo_after_a_click_elsewhere_keeps_the_pairs(editor):
    """The editor's edits are steps of the graph's own history: a graph Ctrl+Z (focus on the graph) takes back
    the last one, never every pair at once."""
    page = editor
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    click_marker(page, (208, 40))
    click_marker(page, (40, 160))
    assert len(pairs(page)) == 2
    box = page.locator("#graph-canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 60, box["y"] + box["height"] - 260)  # empty graph, far right
    page.keyboard.press("Control+z")
    page.wait_for_timeout(500)
    after = pairs(page)
    assert len(after) >= 1 and len(after[0]) == 4, after
    assert_pair(after[0], (64, 48), (192, 144))


def test_the_json_field_is_multi_line_and_reads_as_a_list(editor):
    page = editor
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    tag = page.evaluate(f"""() => app.graph.getNodeById({POINTS}).widgets
        .find(w => w.name === 'points_json').element?.tagName""")
    assert tag == "TEXTAREA"
    assert points_value(page).count("\n") >= 2


def _decoded(runs):
    return np.repeat(np.arange(len(runs)) % 2, runs).reshape(H, W)


def test_the_mask_is_painted_shown_and_reaches_the_server(editor, comfy_server):
    page = editor
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    page.locator(".dragedit-points-bar button", has_text="Brush").first.click()
    x0, y0 = marker(page, (208, 40))
    x1, y1 = marker(page, (40, 160))
    before, _ = canvas_shot(page)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=12)
    page.mouse.up()
    data = json.loads(points_value(page))
    assert len(data["pairs"]) == 1, "painting must not add points"
    painted = _decoded(data["mask_rle"])
    assert painted[40, 208] and painted[85, 145] and painted[160, 40], "the stroke from marker to marker"
    assert not painted[48, 64] and not painted[5, 5] and not painted[185, 250], "nothing far from the stroke"
    page.screenshot(path=str(artifact("canvas/mask.png")))
    after, _ = canvas_shot(page)
    changed = np.abs(after - before).sum(axis=-1) > 40
    assert changed.sum() > 300, "the painted region does not show over the image"
    assert (after[changed][:, 2] < before[changed][:, 2]).mean() > 0.8, "the region shows as a yellow tint"

    page.locator(".dragedit-points-bar button", has_text="Eraser").first.click()
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.up()
    assert not _decoded(json.loads(points_value(page))["mask_rle"])[40, 208]
    page.locator(".dragedit-points-bar button", has_text="Undo").first.click()
    assert json.loads(points_value(page))["mask_rle"] == data["mask_rle"]

    # The server reads the painted region: the node's mask output is exactly the painted pixels.
    page.evaluate(f"""() => {{
        const toImage = LiteGraph.createNode("MaskToImage");
        toImage.pos = [780, 450];
        app.graph.add(toImage);
        app.graph.getNodeById({POINTS}).connect(4, toImage, 0);
        toImage.connect(0, app.graph.getNodeById({PREVIEW}), 0);
    }}""")
    body, status, answer, entry = ui.queue_from_frontend(page, comfy_server, timeout=120)
    assert status == 200 and entry["status"]["status_str"] == "success", (answer, entry and entry["status"])
    with Image.open(comfy_server.output_files(entry)[0]) as im:
        mask = np.asarray(im.convert("L"))
    assert np.array_equal(mask > 127, painted.astype(bool))


def test_points_outside_the_image_show_on_its_border_with_every_problem(editor):
    page = editor
    message = page.locator(".dragedit-points-message").first
    page.evaluate(f"""() => {{
        const widget = app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json');
        widget.value = '{{"version":1,"image_size":[{W},{H}],"pairs":[[10,10,300,20],[-5,100,30,400]]}}';
    }}""")
    expect(message).to_contain_text(f"The target of pair 1 (300, 20) is outside the {W}x{H} image")
    text = message.inner_text()
    assert "handle of pair 2 (-5, 100)" in text and "target of pair 2 (30, 400)" in text
    # the first pair's target shows on the image's right border, where it can be dragged back inside
    region, (x0, y0) = canvas_shot(page)
    ys, xs = np.nonzero((np.abs(region - np.array([66, 135, 245])) < 12).all(axis=-1))
    right = xs > xs.mean()
    border_at = (x0 + xs[right].mean() + 0.5, y0 + ys[right].mean() + 0.5)
    x, y = marker(page, (192, 144))
    page.mouse.move(*border_at)
    page.mouse.down()
    page.mouse.move(x, y, steps=5)
    page.mouse.up()
    assert_pair(pairs(page)[0], (10, 10), (192, 144))
    text = message.inner_text()
    assert "pair 1" not in text and "handle of pair 2" in text and "target of pair 2" in text


def test_malformed_json_shows_a_message_and_is_refused_at_queue_time(editor, comfy_server):
    page = editor
    page.evaluate(f"""() => {{
        const widget = app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json');
        widget.value = '{{"pairs": [[1, 2, 3';
        widget.callback?.(widget.value);
    }}""")
    message = page.locator(".dragedit-points-message").first
    expect(message).to_contain_text("points_json is not valid: not valid JSON")
    assert "error" in message.get_attribute("class")
    assert page.locator(CANVAS).first.is_visible()

    body, status, answer, entry = ui.queue_from_frontend(page, comfy_server)
    assert status == 400 and entry is None
    errors = answer["node_errors"][str(POINTS)]["errors"]
    assert any("DragEdit Drag Points Editor: input 'points_json' is not valid JSON" in e["details"] for e in errors), errors
    page.keyboard.press("Escape")

    page.locator(".dragedit-points-bar button", has_text="Clear").first.click()
    assert json.loads(points_value(page)) == {"version": 1, "image_size": [W, H], "pairs": []}
    assert message.inner_text() == ""


def test_the_canvas_widget_is_not_serialized(editor):
    widgets = editor.evaluate(f"""() => app.graph.getNodeById({POINTS}).widgets.map(
        w => [w.name, w.serialize !== false, w.options?.serialize !== false])""")
    assert widgets == [["points_json", True, True], ["points_canvas", False, False]]


@pytest.mark.parametrize("display, factor", [("classic", 2), ("nodes2", 4)])
def test_the_image_shows_from_a_load_image_further_up(browser, comfy_server, uploaded, display, factor):
    """Load Image -> Image Scale By 1/factor -> Drag Points: before a run the canvas shows the Load Image's picture
    (points in its pixels); after a run the image the node received, and the points follow it. (Each display its
    own factor: a cached run would not send the node's image again.)"""
    page = open_editor(browser, comfy_server, uploaded, display, scaled=1 / factor)
    try:
        click_marker(page, (64, 48))
        click_marker(page, (192, 144))
        body, status, answer, entry = ui.queue_from_frontend(page, comfy_server, timeout=120)
        assert status == 200 and entry["status"]["status_str"] == "success", (answer, entry and entry["status"])
        wait_for_status(page, f"1 pair · {W // factor}x{H // factor}")
        assert_pair(pairs(page)[0], (64 // factor, 48 // factor), (192 // factor, 144 // factor))
    finally:
        page.context.close()


def test_help_page_is_served_where_the_frontend_looks(page, comfy_server):
    module = comfy_server.get("/object_info/DragEditPoints")["DragEditPoints"]["python_module"]
    assert module == "custom_nodes.ComfyUI-DragEdit"
    text = page.evaluate("fetch('/extensions/ComfyUI-DragEdit/docs/DragEditPoints.md').then(r => r.ok ? r.text() : '')")
    assert "## Controls" in text


def test_a_lone_node_says_it_has_no_image(editor):
    page = editor
    page.evaluate(f"""() => {{
        app.graph.remove(app.graph.getNodeById({POINTS}));
        const lone = LiteGraph.createNode("DragEditPoints");
        lone.pos = [340, 110];
        app.graph.add(lone);
    }}""")
    expect(page.locator(CANVAS)).to_have_count(1)
    expect(page.locator(".dragedit-points-message").first).to_contain_text("No image yet")
    expect(page.locator(".dragedit-points-status").first).to_have_text("0 pairs")
