"""The Drag Points canvas in the real frontend: clicks become image pixels in the widget, the prompt and the workflow.

The test image carries coloured markers at known pixels. The test finds them in a screenshot and clicks there,
so the check is independent of the editor's own transform: a click on a marker must store that marker's pixel
(within 1 px), at the first layout and again after the node is resized and the graph zoomed.
"""
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.browser.conftest import artifact
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
LOAD, POINTS, PREVIEW = 1, 2, 3
CANVAS = "canvas[data-dragedit='points-canvas']"
DOCS_IMAGE = REPO / "docs" / "images" / "canvas.png"


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


def workflow():
    outputs = [("points", "DRAG_POINTS"), ("offset_x", "INT"), ("offset_y", "INT"), ("scale", "FLOAT"),
               ("mask", "MASK"), ("preview", "IMAGE")]
    return {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": LOAD, "type": "LoadImage", "pos": [20, 110], "size": [290, 360], "flags": {}, "order": 0,
             "mode": 0, "inputs": [], "properties": {},
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": None}],
             "widgets_values": [IMAGE_NAME, "image"]},
            {"id": POINTS, "type": "DragEditPoints", "pos": [340, 110], "size": [380, 440], "flags": {}, "order": 1,
             "mode": 0, "properties": {},
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}, {"name": "mask", "type": "MASK", "link": None}],
             "outputs": [{"name": name, "type": kind, "links": None} for name, kind in outputs],
             "widgets_values": [EMPTY]},
        ],
        "links": [[1, LOAD, 0, POINTS, 0, "IMAGE"]],
    }


@pytest.fixture(scope="module")
def uploaded(comfy_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("canvas") / IMAGE_NAME
    make_test_image(path)
    comfy_server.upload_image(path)
    return path


@pytest.fixture
def editor(page, uploaded):
    """The page with the workflow loaded and the Load Image preview shown in the canvas."""
    page.keyboard.press("Escape")
    page.evaluate("wf => app.loadGraphData(wf)", workflow())
    page.evaluate("() => { app.canvas.ds.scale = 1; app.canvas.ds.offset = [140, 90]; app.graph.setDirtyCanvas(true, true); }")
    wait_for_status(page, f"0 pairs · {W}x{H}")
    return page


def points_value(page):
    return page.evaluate(f"app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json').value")


def pairs(page):
    return json.loads(points_value(page))["pairs"]


def wait_for_status(page, text, timeout=15):
    status = page.locator(".dragedit-points-status").first
    deadline = time.time() + timeout
    while time.time() < deadline:
        if status.inner_text() == text:
            return
        page.evaluate("app.graph.setDirtyCanvas(true, true)")
        page.wait_for_timeout(100)
    raise AssertionError(f"canvas status is {status.inner_text()!r}, expected {text!r}")


def marker(page, pixel):
    """Page coordinates of a marker's centre, found in a screenshot of the canvas (dpr 1: page px = shot px)."""
    page.wait_for_timeout(200)  # one animation frame for the last render
    box = page.locator(CANVAS).first.bounding_box()
    shot = np.asarray(Image.open(_png(page.screenshot())).convert("RGB")).astype(int)
    x0, y0 = int(box["x"]), int(box["y"])
    region = shot[y0:int(box["y"] + box["height"]), x0:int(box["x"] + box["width"])]
    hit = (np.abs(region - np.array(MARKERS[pixel])) < 12).all(axis=-1)
    ys, xs = np.nonzero(hit)
    assert len(xs) > 4, f"marker {pixel} not visible on the canvas"
    return x0 + xs.mean() + 0.5, y0 + ys.mean() + 0.5


def _png(data):
    import io

    return io.BytesIO(data)


def click_marker(page, pixel, button="left"):
    x, y = marker(page, pixel)
    page.mouse.click(x, y, button=button)
    page.wait_for_timeout(100)


def assert_pair(pair, handle, target):
    assert len(pair) == 4, pair
    assert all(abs(a - b) <= 1 for a, b in zip(pair, (*handle, *target))), (pair, handle, target)


def queue(page, comfy_server):
    """Queue from the frontend; return (the POST /prompt body, the finished history entry)."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/prompt")) as posted:
        page.evaluate("app.queuePrompt(0)")
    request = posted.value
    response = request.response()
    assert response.status == 200, response.text()
    return request.post_data_json, comfy_server.wait(response.json()["prompt_id"], timeout=120)


def test_clicks_reach_the_prompt_and_survive_a_reload(editor, comfy_server):
    page = editor
    shown = []
    page.on("request", lambda r: shown.append(r.url) if "/view?" in r.url and "type=temp" in r.url else None)

    # 1. A first run with no pairs: the node shows its image from the run, consumers would be blocked.
    body, entry = queue(page, comfy_server)
    assert json.loads(body["prompt"][str(POINTS)]["inputs"]["points_json"])["image_size"] == [W, H]
    background = entry["outputs"][str(POINTS)]["dragedit_background"]
    deadline = time.time() + 10
    while not any(background[0]["filename"] in url for url in shown) and time.time() < deadline:
        page.wait_for_timeout(100)
    assert any(background[0]["filename"] in url for url in shown), "the run's image was not loaded by the canvas"

    # 2. Click a handle and its target.
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    assert len(pairs(page)) == 1
    assert_pair(pairs(page)[0], (64, 48), (192, 144))

    # 3. Resize the node and zoom the graph: a second pair is still exact.
    page.evaluate(f"""() => {{
        app.graph.getNodeById({POINTS}).setSize([560, 640]);
        app.canvas.ds.scale = 0.8;
        app.graph.setDirtyCanvas(true, true);
    }}""")
    page.wait_for_timeout(500)
    click_marker(page, (208, 40))
    click_marker(page, (40, 160))
    assert len(pairs(page)) == 2
    assert_pair(pairs(page)[1], (208, 40), (40, 160))
    wait_for_status(page, f"2 pairs · {W}x{H}")
    page.evaluate("() => { app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true); }")

    # 4. The API prompt (graphToPrompt) and the workflow carry exactly the widget's JSON, never the canvas widget.
    value = points_value(page)
    prompt = page.evaluate("app.graphToPrompt().then(p => p.output)")
    assert prompt[str(POINTS)]["inputs"] == {"image": [str(LOAD), 0], "points_json": value}
    saved = page.evaluate("app.graph.serialize()")
    assert next(n for n in saved["nodes"] if n["id"] == POINTS)["widgets_values"] == [value]

    # 5. The pack's converter (used by the e2e layer) agrees with the frontend on this workflow.
    api_prompt = ui_to_api(saved, comfy_server.object_info())
    assert {k: (v["class_type"], v["inputs"]) for k, v in api_prompt.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}

    # 6. Run with a Preview Image on the preview output: the real POST carries the pixels, the server draws them.
    page.evaluate(f"""() => {{
        const preview = LiteGraph.createNode("PreviewImage");
        preview.id = {PREVIEW};
        preview.pos = [760, 110];
        app.graph.add(preview);
        app.graph.getNodeById({POINTS}).connect(5, preview, 0);
    }}""")
    body, entry = queue(page, comfy_server)
    sent = json.loads(body["prompt"][str(POINTS)]["inputs"]["points_json"])
    assert sent["image_size"] == [W, H]
    assert_pair(sent["pairs"][0], (64, 48), (192, 144))
    assert_pair(sent["pairs"][1], (208, 40), (40, 160))
    drawn = comfy_server.output_files(entry)
    assert len(drawn) == 1, drawn
    with Image.open(drawn[0]) as preview_image:
        hx, hy = sent["pairs"][0][:2]
        assert preview_image.size == (W, H)
        assert preview_image.convert("RGB").getpixel((hx, hy)) == (230, 57, 70)

    # 7. The README picture: the two nodes, the image and the numbered arrows.
    page.evaluate(f"app.graph.remove(app.graph.getNodeById({PREVIEW}))")
    page.evaluate(f"() => {{ app.graph.getNodeById({POINTS}).setSize([380, 440]); app.graph.setDirtyCanvas(true, true); }}")
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

    # 8. Reload the workflow: the points are still there, in the widget and on the canvas.
    page.evaluate("async () => { await app.loadGraphData(app.graph.serialize()); }")
    assert points_value(page) == value
    wait_for_status(page, f"2 pairs · {W}x{H}")
    assert not [e for e in page.errors if "DragEdit" in e or "points" in e.lower()], page.errors


def test_editing_keys_buttons_and_drag(editor):
    page = editor
    nodes = page.evaluate("app.graph.nodes.length")
    click_marker(page, (64, 48))
    click_marker(page, (192, 144))
    assert len(pairs(page)) == 1

    page.keyboard.press("Control+z")  # the editor's undo, not the workflow's: the node stays
    assert pairs(page) == [[64, 48]] or (len(pairs(page)[0]) == 2 and abs(pairs(page)[0][0] - 64) <= 1)
    assert page.evaluate("app.graph.nodes.length") == nodes
    expect(page.locator(".dragedit-points-message").first).to_contain_text("Click the target of point 1")
    click_marker(page, (192, 144))
    assert len(pairs(page)[0]) == 4

    x, y = marker(page, (208, 40))  # drag the first handle onto another marker
    handle_at = _view_of_first_handle(page)
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


def _view_of_first_handle(page):
    """Page coordinates of the first handle, from the handle colour drawn on the canvas."""
    page.wait_for_timeout(200)
    box = page.locator(CANVAS).first.bounding_box()
    shot = np.asarray(Image.open(_png(page.screenshot())).convert("RGB")).astype(int)
    x0, y0 = int(box["x"]), int(box["y"])
    region = shot[y0:int(box["y"] + box["height"]), x0:int(box["x"] + box["width"])]
    ys, xs = np.nonzero((np.abs(region - np.array([230, 57, 70])) < 12).all(axis=-1))
    assert len(xs) > 4, "no handle drawn"
    return x0 + xs.mean() + 0.5, y0 + ys.mean() + 0.5


def test_malformed_json_shows_a_message_and_is_refused_at_queue_time(editor, comfy_server):
    page = editor
    page.evaluate(f"""() => {{
        const widget = app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json');
        widget.value = '{{"pairs": [[1, 2, 3';
        widget.callback?.(widget.value);
        app.graph.setDirtyCanvas(true, true);
    }}""")
    message = page.locator(".dragedit-points-message").first
    message.wait_for(state="visible", timeout=5000)
    assert "points_json is not valid: not valid JSON" in message.inner_text()
    assert "error" in message.get_attribute("class")
    assert page.locator(CANVAS).first.is_visible()

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as answered:
        page.evaluate("app.queuePrompt(0)")
    response = answered.value
    assert response.status == 400
    errors = response.json()["node_errors"][str(POINTS)]["errors"]
    assert any("DragEdit Drag Points Editor: input 'points_json' is not valid JSON" in e["details"] for e in errors), errors
    page.keyboard.press("Escape")

    page.locator(".dragedit-points-bar button", has_text="Clear").first.click()
    assert json.loads(points_value(page)) == {"version": 1, "image_size": [W, H], "pairs": []}
    assert message.inner_text() == ""
    assert not page.errors or all("DragEdit" not in e for e in page.errors), page.errors


def test_the_canvas_widget_is_not_serialized(editor):
    widgets = editor.evaluate(f"""() => app.graph.getNodeById({POINTS}).widgets.map(
        w => [w.name, w.serialize !== false, w.options?.serialize !== false])""")
    assert widgets == [["points_json", True, True], ["points_canvas", False, False]]


def test_help_page_is_served_where_the_frontend_looks(page, comfy_server):
    module = comfy_server.get("/object_info/DragEditPoints")["DragEditPoints"]["python_module"]
    assert module == "custom_nodes.ComfyUI-DragEdit"
    text = page.evaluate("fetch('/extensions/ComfyUI-DragEdit/docs/DragEditPoints.md').then(r => r.ok ? r.text() : '')")
    assert "## Controls" in text


def test_outside_points_and_a_missing_image_show_messages(editor):
    page = editor
    message = page.locator(".dragedit-points-message").first
    page.evaluate(f"""() => {{
        const widget = app.graph.getNodeById({POINTS}).widgets.find(w => w.name === 'points_json');
        widget.value = '{{"version":1,"image_size":[{W},{H}],"pairs":[[10,10,300,20]]}}';
        app.graph.setDirtyCanvas(true, true);
    }}""")
    expect(message).to_contain_text(f"The target of pair 1 (300, 20) is outside the {W}x{H} image")

    page.evaluate(f"""() => {{
        app.graph.remove(app.graph.getNodeById({POINTS}));
        const lone = LiteGraph.createNode("DragEditPoints");
        lone.pos = [340, 110];
        app.graph.add(lone);
        app.graph.setDirtyCanvas(true, true);
    }}""")
    expect(page.locator(CANVAS)).to_have_count(1)
    expect(message).to_contain_text("No image yet")
    expect(page.locator(".dragedit-points-status").first).to_have_text("0 pairs")
    assert not [e for e in page.errors if "DragEdit" in e or "points" in e.lower()], page.errors
