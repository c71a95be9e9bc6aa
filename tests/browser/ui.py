"""What a user does in the real frontend, as functions over a playwright page: pick the display (classic or
Nodes 2.0), load a workflow, let the frontend build the prompt, press Run, and look at the nodes on screen."""
import json
import time

DISPLAYS = ("classic", "nodes2")
VUE_SETTING = "Comfy.VueNodes.Enabled"
EXAMPLE_RUNS = []   # (example, display, frontend) of every example run queued from the frontend that succeeded


def set_display(page, display):
    """Switch the node renderer as the menu toggle does (the setting is stored on the server for the next page)."""
    page.evaluate("([key, on]) => app.extensionManager.setting.set(key, on)", [VUE_SETTING, display == "nodes2"])
    page.wait_for_function(
        "on => (document.querySelectorAll('.lg-node[data-node-id]').length > 0) === on || app.graph.nodes.length === 0",
        arg=display == "nodes2", timeout=20000)


def load_workflow(page, workflow, display):
    """Load a workflow as opening a file does, in `display`; wait until every node is drawn."""
    page.evaluate("wf => app.loadGraphData(wf)", workflow)
    count = len(workflow["nodes"])
    if display == "nodes2":
        page.wait_for_function("n => document.querySelectorAll('.lg-node[data-node-id]').length === n", arg=count,
                               timeout=30000)
    else:
        page.wait_for_function("n => app.graph.nodes.length === n", arg=count, timeout=30000)
    page.evaluate("app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(600)   # images load, Vue nodes measure themselves


def clear_overlays(page):
    """Take away what floats over the graph and hides nodes in a screenshot: toasts (the Nodes 2.0 banner) and the
    minimap; the nodes underneath are what the tests look at."""
    page.evaluate("""() => {
        document.querySelectorAll('.p-toast-message').forEach(e => e.remove());
        if (app.extensionManager.setting.get('Comfy.Minimap.Visible'))
            app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
    }""")


def graph_to_prompt(page):
    return page.evaluate("app.graphToPrompt().then(p => p.output)")


def queue_from_frontend(page, server, timeout=900):
    """Press Run (app.queuePrompt, what the Run button calls): (the POST /prompt body, its HTTP status and answer,
    the finished history entry or None when the POST was refused)."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt"),
                              timeout=60000) as answered:
        page.evaluate("app.queuePrompt(0)")
    response = answered.value
    body = response.request.post_data_json
    answer = response.json()
    if response.status != 200:
        return body, response.status, answer, None
    return body, response.status, answer, server.wait_entry(answer["prompt_id"], timeout=timeout)


def node_boxes(page, display):
    """{node id: [x0, y0, x1, y1]} of every node as drawn on screen, title bar included (page pixels)."""
    if display == "nodes2":
        return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.lg-node[data-node-id]')]
            .map(e => { const r = e.getBoundingClientRect(); return [e.dataset.nodeId, [r.left, r.top, r.right, r.bottom]]; }))""")
    return page.evaluate("""() => {
        const rect = app.canvas.canvas.getBoundingClientRect();
        const ds = app.canvas.ds;
        return Object.fromEntries(app.graph.nodes.map(n => {
            const [x0, y0] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
            const [x1, y1] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
            return [String(n.id), [rect.left + x0, rect.top + y0, rect.left + x1, rect.top + y1]];
        }));
    }""")


def overlaps(boxes, tolerance=1.0):
    """Pairs of node ids whose boxes overlap by more than `tolerance` px both ways."""
    ids = sorted(boxes, key=int)
    found = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            if min(ax1, bx1) - max(ax0, bx0) > tolerance and min(ay1, by1) - max(ay0, by0) > tolerance:
                found.append((a, b))
    return found


def covered(page, boxes):
    """{node id: [what floats over it]}: a 3x3 grid of points over each node box, each looked up with
    elementFromPoint; a point is covered when what is on top there is neither the graph canvas nor part of a node
    (a Nodes 2.0 node, a widget's DOM element), a passing toast, nor the minimap (an overview the user toggles, over
    whatever lies in its corner). Catches the workflow breadcrumb and the Run toolbar over nodes."""
    return page.evaluate("""boxes => {
        const out = {};
        for (const [id, [x0, y0, x1, y1]] of Object.entries(boxes)) {
            const over = new Set();
            for (const fx of [0.03, 0.5, 0.97]) for (const fy of [0.03, 0.5, 0.97]) {
                const e = document.elementFromPoint(x0 + fx * (x1 - x0), y0 + fy * (y1 - y0));
                if (!e || e === app.canvas.canvas || e.closest('.lg-node, .dom-widget, .dragedit-points, .p-toast, .litegraph-minimap')) continue;
                over.add(e.tagName.toLowerCase() + '.' + String(e.className).split(' ')[0]);
            }
            if (over.size) out[id] = [...over];
        }
        return out;
    }""", boxes)


def graph_area(page):
    """The part of the page where the graph shows: the canvas minus nothing (menus float over it)."""
    return page.evaluate("(() => { const r = app.canvas.canvas.getBoundingClientRect(); "
                         "return [r.left, r.top, r.right, r.bottom]; })()")


def wait_for(page, predicate, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        page.evaluate("app.graph.setDirtyCanvas(true, true)")
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def dump(value):
    return json.dumps(value, sort_keys=True)
