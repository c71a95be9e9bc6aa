"""The pack in the real frontend: its nodes are found by the node search and its web extension loads."""
import time

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import artifact


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
