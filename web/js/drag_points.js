// Wires the Drag Points node (DragEditPoints) to its canvas editor, in the classic display and in Nodes 2.0.
// The points_json STRING widget is the one source of truth: the canvas reads it and writes it, and the canvas's
// own DOM widget is never serialized (not in the workflow, not in the prompt).
// Nothing here hangs on LiteGraph draw callbacks (the Vue renderer of Nodes 2.0 never calls onDrawForeground):
// one watch loop keeps every editor's text, image and pixel size in step with the graph.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { PointsCanvas } from "./points_canvas.js";

const NODE_CLASS = "DragEditPoints";
const JSON_WIDGET = "points_json";
const BACKGROUND_KEY = "dragedit_background"; // the node's ui output: the image it received, saved to temp/
const MIN_SIZE = [400, 560];
const CANVAS_MIN_HEIGHT = 260;
const SOURCE_DEPTH = 12; // nodes walked up the image input looking for one that shows its image
const SLOW_EVERY = 6; // frames between the (cheaper-than-a-draw, but not free) text and image checks

const editors = new Map(); // node -> {editor, shown: {key, src}, sources: {upstream, run}}

// Run `extra` after a node hook without replacing what others put there.
function chain(target, name, extra) {
  const original = target[name];
  target[name] = function (...args) {
    const result = original?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

function jsonWidget(node) {
  return node.widgets?.find((w) => w.name === JSON_WIDGET);
}

function viewURL({ filename, subfolder = "", type = "temp" }) {
  const query = new URLSearchParams({ filename, subfolder, type });
  return api.apiURL(`/view?${query}`);
}

// The image a node shows for what it makes (Load Image's file, a run's preview), as a URL, or null.
function shownImage(node) {
  const entry = app.nodeOutputs?.[String(node.id)]?.images?.[0];
  if (entry?.filename) return viewURL(entry);
  return node.imgs?.[0]?.src || null;
}

function imageInputOrigin(node, name) {
  const slot = node.inputs?.findIndex((input) => (name ? input.name === name : input.type === "IMAGE")) ?? -1;
  if (slot < 0 || node.inputs[slot].link == null || !node.graph) return null;
  const link = node.graph.links?.get?.(node.inputs[slot].link) ?? node.graph.links?.[node.inputs[slot].link];
  const origin = link ? node.graph.getNodeById(link.origin_id) : null;
  return origin ? { node: origin, slot: link.origin_slot } : null;
}

// The nearest picture of what reaches `image`: the node feeding it if it shows its image (Load Image), else a
// Preview/Save Image fed by that same output (after a run: how a chained second edit shows the first's result),
// else the same search one image input further up (through resizes and other image nodes), SOURCE_DEPTH deep.
function upstreamImage(node) {
  let at = imageInputOrigin(node, "image");
  for (let depth = 0; at && depth < SOURCE_DEPTH; depth++) {
    const own = shownImage(at.node);
    if (own) return own;
    for (const linkId of at.node.outputs?.[at.slot]?.links ?? []) {
      const link = node.graph.links?.get?.(linkId) ?? node.graph.links?.[linkId];
      const sibling = link && node.graph.getNodeById(link.target_id);
      if (sibling && sibling !== node && !sibling.outputs?.length) {
        const shown = shownImage(sibling);
        if (shown) return shown;
      }
    }
    at = imageInputOrigin(at.node);
  }
  return null;
}

// The image this node received in its last run (its ui output), or null.
function runImage(node) {
  const entry = app.nodeOutputs?.[String(node.id)]?.[BACKGROUND_KEY]?.[0];
  return entry?.filename ? viewURL(entry) : null;
}

// The graph's undo history records the widget's new text now, as one step: without this the next graph Ctrl+Z
// (after a click elsewhere) would jump back past every pair added in the editor.
function recordGraphState() {
  app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
}

function attach(node) {
  const widget = jsonWidget(node);
  const editor = new PointsCanvas({
    onChange(text) {
      const target = jsonWidget(node);
      if (!target || target.value === text) return;
      target.value = text;
      target.callback?.(text);
      node.setDirtyCanvas?.(true, true);
      recordGraphState();
    },
  });
  editors.set(node, { editor, sources: { upstream: null, run: null } });
  const canvasWidget = node.addDOMWidget("points_canvas", "DRAGEDIT_POINTS_CANVAS", editor.element, {
    serialize: false, // the prompt
    hideOnZoom: false,
    getMinHeight: () => CANVAS_MIN_HEIGHT,
  });
  canvasWidget.serialize = false; // the workflow's widgets_values
  if (widget) {
    chain(widget, "callback", (value) => editor.setText(value));
    editor.setText(widget.value);
  }
  node.setSize([Math.max(node.size[0], MIN_SIZE[0]), Math.max(node.size[1], MIN_SIZE[1])]);
  startWatching();
}

// Picks up every way the JSON or the image can change without telling us: workflow load, graph undo, typing,
// a new file in a Load Image upstream, a run. The newest image source wins: a run's image until the upstream
// one changes, and the other way round.
function sync(node, state) {
  const widget = jsonWidget(node);
  if (widget && typeof widget.value === "string") state.editor.setText(widget.value);
  for (const [kind, src] of [["upstream", upstreamImage(node)], ["run", runImage(node)]]) {
    if (src && src !== state.sources[kind]) {
      state.sources[kind] = src;
      state.editor.setImage(src);
    }
  }
}

let watching = 0;
let frames = 0;

function watch() {
  frames++;
  for (const [node, state] of editors) {
    if (!node.graph) {
      if (state.added) {   // removed without onRemoved (a graph cleared by a load)
        state.editor.destroy();
        editors.delete(node);
      }
      continue;
    }
    state.added = true;
    state.editor.element.dataset.drageditNode = String(node.id);
    if (!state.editor.element.isConnected) continue;
    state.editor.checkSize();
    if (frames % SLOW_EVERY === 0) sync(node, state);
  }
  watching = editors.size ? requestAnimationFrame(watch) : 0;
}

function startWatching() {
  if (!watching) watching = requestAnimationFrame(watch);
}

app.registerExtension({
  name: "DragEdit.Points",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_CLASS) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      attach(this);
    });
    chain(proto, "onRemoved", function () {
      editors.get(this)?.editor.destroy();
      editors.delete(this);
    });
  },
});
