"""A workflow whose edit cannot run is refused or fails where the user looks, never a quiet "1 job completed"
with no edited image (what ComfyUI does when an output node beside the edit still validates)."""
import json

from tests.browser import ui
from tests.browser.conftest import open_page
from tests.browser.test_canvas import IMAGE_NAME, POINTS, make_test_image, workflow
from tests.support.pack import REPO


def test_a_missing_checkpoint_refuses_the_whole_workflow(browser, comfy_server):
    """move.json with a checkpoint the user does not have: POST /prompt answers 400 naming the loader, nothing
    is queued and nothing runs (the Drag Points node used to run alone and report success)."""
    page = open_page(browser, comfy_server)
    try:
        ui.set_display(page, "classic")
        ui.load_workflow(page, json.loads((REPO / "example_workflows" / "move.json").read_text()), "classic")
        before = set(comfy_server.get("/history"))
        page.evaluate("""() => {
            const loader = app.graph.nodes.find(n => n.type === 'CheckpointLoaderSimple');
            loader.widgets.find(w => w.name === 'ckpt_name').value = 'a_checkpoint_nobody_has.safetensors';
        }""")
        body, status, answer, entry = ui.queue_from_frontend(page, comfy_server)
        assert status == 400 and entry is None, (status, answer)
        assert answer["error"]["type"] == "prompt_outputs_failed_validation", answer
        loaders = [k for k, v in body["prompt"].items() if v["class_type"] == "CheckpointLoaderSimple"]
        assert set(answer["node_errors"]) == set(loaders), answer["node_errors"]
        page.wait_for_timeout(1000)
        queue = comfy_server.get("/queue")
        assert not queue["queue_running"] and not queue["queue_pending"], queue
        assert set(comfy_server.get("/history")) == before, "something ran"
    finally:
        page.context.close()


def test_an_edit_without_points_fails_visibly(browser, comfy_server, tmp_path):
    """No pairs yet: the node still shows its image (its first run may be how the canvas gets one), and everything
    after it is blocked with an error the frontend shows in its dialog, naming the node, the input and the fix."""
    make_test_image(tmp_path / IMAGE_NAME)
    comfy_server.upload_image(tmp_path / IMAGE_NAME)
    page = open_page(browser, comfy_server)
    try:
        ui.set_display(page, "classic")
        ui.load_workflow(page, workflow(), "classic")
        body, status, answer, entry = ui.queue_from_frontend(page, comfy_server, timeout=120)
        assert status == 200, answer
        assert "dragedit_background" in entry["outputs"][str(POINTS)]
        assert not [o for k, o in entry["outputs"].items() if o.get("images")], "an image came out of a blocked edit"
        dialog = page.get_by_text("has no handle -> target pair").first
        dialog.wait_for(timeout=15000)
        assert "Click a handle, then its target" in page.locator("body").inner_text()
    finally:
        page.context.close()
