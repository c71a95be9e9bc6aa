"""The pack in the real frontend: its nodes are found by the node search and its web extension loads."""
import time
import urllib.request

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import NEWEST, artifact, open_page
from tests.support.pack import REPO


def test_web_extension_is_served_and_registered(page, comfy_server):
    listed = page.evaluate("fetch('/extensions').then(r => r.json())")
    ours = [path for path in listed if "/ComfyUI-DragEdit/" in path]
    assert ours, listed
    page.wait_for_function("app.extensions.some(e => e.name && e.name.startsWith('DragEdit'))", timeout=30000)
    assert not [e for e in page.errors if "DragEdit" in e], page.errors


def test_node_search_finds_the_pack_nodes(page):
    """Double-click on an empty canvas opens the node search; typing 'DragEdit' lists the pack's nodes."""
    page.wait_for_function("!!LiteGraph.registered_node_types['DragEditDDIMInversion']", timeout=60000)
    page.evaluate("app.graph.clear()")
    box = page.locator("#graph-canvas").bounding_box()
    search = page.locator("input[placeholder='Search Nodes...']")
    deadline = time.time() + 45
    while not search.is_visible():  # the first double-click can land before the canvas takes input (seen in CI)
        assert time.time() < deadline, "the node search never opened on a double-click"
        page.keyboard.press("Escape")
        page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        try:
            search.wait_for(timeout=5000)
        except PlaywrightTimeout:
            pass
    search.fill("DragEdit")
    deadline = time.time() + 15
    found = []
    while time.time() < deadline and not any("DDIM Inversion" in text for text in found):
        found = page.get_by_role("option").all_inner_texts()
        time.sleep(0.3)
    page.screenshot(path=str(artifact("node_search.png")))
    assert any("DDIM Inversion + Memory Bank" in text for text in found), found
    assert any("Visual Cross-Attention" in text for text in found), found


def test_the_newest_frontend_served_by_front_end_root_is_the_one_tested(browser, newest_server, comfy_server):
    """ComfyUI 0.3.75 started with --front-end-root at the newest frontend serves the page the other tests reach
    through their cookie (tests/support/second_frontend): the same files, and the pack's editor works there."""
    page = open_page(browser, newest_server)
    try:
        assert page.evaluate("window.__COMFYUI_FRONTEND_VERSION__") == NEWEST
        for path in ("/", page.evaluate("[...document.scripts].map(s => s.src).find(s => s.includes('/assets/'))")):
            path = path.replace(newest_server.url, "")
            real = urllib.request.urlopen(newest_server.url + path).read()
            request = urllib.request.Request(comfy_server.url + path, headers={"Cookie": f"dragedit_frontend={NEWEST}"})
            assert urllib.request.urlopen(request).read() == real, path
        page.evaluate("""() => { const n = LiteGraph.createNode('DragEditPoints'); n.pos = [200, 100]; app.graph.add(n); }""")
        page.locator("canvas[data-dragedit='points-canvas']").first.wait_for(timeout=15000)
        assert not [e for e in page.errors if "DragEdit" in e], page.errors
    finally:
        page.context.close()


def test_templates_list_every_example_main_job_first_with_a_thumbnail(page, comfy_server):
    """What the Templates browser reads for a custom node's examples (ComfyUI 0.3.75 app/custom_node_manager.py,
    frontend workflowTemplatesStore): the names from /api/workflow_templates, in the order the frontend's api
    returns them (web/js/templates.js puts the main job first), and <name>.json / <name>.jpg beside them."""
    listed = page.evaluate("(async () => (await window.comfyAPI.api.api.getWorkflowTemplates())['ComfyUI-DragEdit'])()")
    examples = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(listed) == examples and listed[0] == "demo_move", listed
    for name in listed:
        for suffix, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/ComfyUI-DragEdit/{name}{suffix}") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(kind), (name, suffix)
