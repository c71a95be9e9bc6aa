"""Screenshot each example workflow as the real frontend draws it: example_workflows/<name>.jpg, the thumbnail
ComfyUI's template browser shows beside a workflow, and the picture in the README.

    .dev/venv/bin/python -m scripts.snapshot_workflows [name ...]
"""
import json
import sys
import time

from tests.browser.conftest import CHROMIUM_ARGS
from tests.support.host import CHROMIUM
from tests.support.pack import REPO
from tests.support.server import ComfyServer

EXAMPLES = REPO / "example_workflows"
# load the workflow, then scale and offset the canvas so every node fits in view
FIT_GRAPH = """async wf => {
  await app.loadGraphData(wf);
  const nodes = app.graph._nodes;
  const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1]));
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  const canvas = app.canvas.canvas, ds = app.canvas.ds;
  ds.scale = Math.min((canvas.clientWidth - 120) / (x1 - x0), (canvas.clientHeight - 160) / (y1 - y0 + 40), 1.2);
  ds.offset[0] = 90 / ds.scale - x0;
  ds.offset[1] = 130 / ds.scale - y0;
  app.canvas.setDirty(true, true);
  return {width: (x1 - x0) * ds.scale + 60, height: (y1 - y0) * ds.scale + 60};
}"""


def main(names):
    from playwright.sync_api import sync_playwright

    paths = [EXAMPLES / f"{n}.json" for n in names] if names else sorted(EXAMPLES.glob("*.json"))
    with ComfyServer() as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.goto(server.url + "/", wait_until="domcontentloaded")
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=60000)
        page.keyboard.press("Escape")
        page.evaluate("document.querySelectorAll('.p-toast, [class*=announcement], [class*=banner]')"
                      ".forEach(e => e.remove())")
        for path in paths:
            size = page.evaluate(FIT_GRAPH, json.loads(path.read_text()))
            time.sleep(1.5)
            page.screenshot(path=str(path.with_suffix(".jpg")), type="jpeg", quality=80,
                            clip={"x": 60, "y": 100, "width": min(size["width"], 1740), "height": min(size["height"], 900)})
            print(f"wrote {path.with_suffix('.jpg').relative_to(REPO)}")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
