// Wires the Drag Points node (DragEditPoints) to its canvas editor.
// The points_json STRING widget is the one source of truth: the canvas reads it and writes it, and the canvas's
// own DOM widget is never serialized (not in the workflow, not in the prompt).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { PointsCanvas } from "./points_canvas.js";

const NODE_CLASS = "DragEditPoints";
const JSON_WIDGET = "points_json";
const BACKGROUND_KEY = "dragedit_background"; // the node's ui output: the input image saved to temp/
const MIN_SIZE = [360, 460];

const editors = new WeakMap();

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

// A Load Image node wired straight into `image` already shows the very image the node will get.
function upstreamPreview(node) {
  const slot = node.inputs?.findIndex((input) => input.name === "image") ?? -1;
  const source = slot >= 0 && node.graph ? node.getInputNode(slot) : null;
  const image = source?.comfyClass === "LoadImage" ? source.imgs?.[0] : null;
  return image?.src || null;
}

function attach(node) {
  const widget = jsonWidget(node);
  const editor = new PointsCanvas({
    onChange(text) {
      const target = jsonWidget(node);
      if (!target || target.value === text) return;
      target.value = text;
      target.callback?.(text);
      node.setDirtyCanvas(true, true);
    },
  });
  editors.set(node, { editor, upstream: null });
  const canvasWidget = node.addDOMWidget("points_canvas", "DRAGEDIT_POINTS_CANVAS", editor.element, {
    serialize: false, // the prompt
    hideOnZoom: false,
    getMinHeight: () => 240,
  });
  canvasWidget.serialize = false; // the workflow's widgets_values
  if (widget) {
    chain(widget, "callback", (value) => editor.setText(value));
    editor.setText(widget.value);
  }
  node.setSize([Math.max(node.size[0], MIN_SIZE[0]), Math.max(node.size[1], MIN_SIZE[1])]);
}

// Picks up every way the JSON or the image can change without telling us: workflow load, undo, typing.
function sync(node) {
  const state = editors.get(node);
  if (!state) return;
  const widget = jsonWidget(node);
  if (widget && typeof widget.value === "string") state.editor.setText(widget.value);
  const upstream = upstreamPreview(node);
  if (upstream && upstream !== state.upstream) {
    state.upstream = upstream;
    state.editor.setImage(upstream);
  }
  state.editor.checkSize();
}

app.registerExtension({
  name: "DragEdit.Points",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_CLASS) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      attach(this);
    });
    chain(proto, "onConfigure", function () {
      sync(this);
    });
    chain(proto, "onDrawForeground", function () {
      sync(this);
    });
    chain(proto, "onExecuted", function (output) {
      const entry = output?.[BACKGROUND_KEY]?.[0];
      if (entry) editors.get(this)?.editor.setImage(viewURL(entry));
    });
    chain(proto, "onRemoved", function () {
      editors.get(this)?.editor.destroy();
      editors.delete(this);
    });
  },
});
