// The Drag Points editor: a view over the points JSON (the node's STRING widget stays the one source of truth).
// Points mode: click a handle, then its target; drag a point to move it; right-click deletes a pair; Delete
// deletes the selected pair. Brush / Eraser modes paint the editable region, kept in the same JSON. Ctrl+Z / Undo
// steps back, Ctrl+Shift+Z or Ctrl+Y / Redo forward. Coordinates are image pixels.
// No ComfyUI import and no side effects on import.

import {
  clampToImage, clientToCanvas, fitImage, formatPoints, hitTest, imageToView, isPending, maskIsEmpty,
  paintStroke, parsePoints, pixelCentre, pointsOutside, rescalePairs, resampleMask, shownAt, viewToImage,
} from "./geometry.js";

const STYLE_ID = "dragedit-points-style";
const STYLE = `
.dragedit-points { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%; min-height: 260px;
  box-sizing: border-box; }
.dragedit-points-bar { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; font: 12px sans-serif; color: #ccc; }
.dragedit-points-bar button { font: 12px sans-serif; padding: 1px 7px; cursor: pointer; color: #ddd;
  background: #333; border: 1px solid #555; border-radius: 4px; }
.dragedit-points-bar button:disabled { opacity: 0.4; cursor: default; }
.dragedit-points-bar button.active { background: #2f5f9f; border-color: #6aa0e6; color: #fff; }
.dragedit-points-bar input[type=range] { width: 64px; }
.dragedit-points-status { flex: 1; text-align: right; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.dragedit-points-stage { position: relative; flex: 1; min-height: 160px; }
.dragedit-points-stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; cursor: crosshair;
  border-radius: 4px; touch-action: none; }
.dragedit-points-message { padding: 2px 8px; border-radius: 4px; min-height: 15px; max-height: 72px; overflow-y: auto; flex: none;
  font: 12px sans-serif; color: #fff; background: rgba(20, 20, 20, 0.85); white-space: pre-wrap; }
.dragedit-points-message.error { background: rgba(150, 30, 30, 0.92); }
.dragedit-points-message:empty { background: transparent; }
.dragedit-points-keys { position: absolute; width: 1px; height: 1px; opacity: 0; pointer-events: none; }
`;

const COLORS = { handle: "#e63946", target: "#4287f5", arrow: "#ffffff", outline: "#000000", select: "#ffd60a" };
const MASK_TINT = [255, 214, 10, 110]; // the painted editable region over the image
const HIT_RADIUS = 10; // CSS px
const HISTORY_LIMIT = 200;
const MODES = { points: "Points", paint: "Brush", erase: "Eraser" };

function injectStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function button(label, title, onClick) {
  const b = el("button", null, label);
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

export class PointsCanvas {
  // onChange(text) is called with the new JSON after every edit made here.
  constructor({ onChange }) {
    injectStyle();
    this.onChange = onChange;
    this.pairs = [];
    this.mask = null; // Uint8Array W*H (1 = may change), or null when nothing is painted
    this.size = null; // [W, H] of the image the points are in, from the JSON or the image itself
    this.text = null; // the JSON last read or written
    this.parseError = null;
    this.image = null;
    this.imageSrc = null;
    this.undoStack = [];
    this.redoStack = [];
    this.mode = "points";
    this.brush = 8; // image px
    this.selected = null; // pair index
    this.hover = null; // {pair, end}
    this.drag = null; // {pair, end, before, moved} or {paint: value, last, before}
    this.fit = null;
    this.frame = 0;
    this.hint = null;
    this.backing = [0, 0];
    this.maskLayer = null;

    // Vue nodes (Nodes 2.0) give room only to widgets marked widget-expands; classic sizes the element itself.
    this.element = el("div", "dragedit-points widget-expands");
    const bar = el("div", "dragedit-points-bar");
    this.modeButtons = Object.entries(MODES).map(([mode, label]) => {
      const b = button(label, mode === "points" ? "Click handle -> target pairs" :
        `${label}: ${mode === "paint" ? "paint" : "erase"} the editable region (only it may change)`,
        () => this.setMode(mode));
      b.dataset.mode = mode;
      return b;
    });
    this.brushInput = el("input");
    Object.assign(this.brushInput, { type: "range", min: "1", max: "64", value: String(this.brush), title: "Brush size (image px)" });
    this.brushInput.addEventListener("input", () => { this.brush = Number(this.brushInput.value); });
    this.undoButton = button("Undo", "Undo the last edit (Ctrl+Z)", () => this.undo());
    this.redoButton = button("Redo", "Redo (Ctrl+Shift+Z or Ctrl+Y)", () => this.redo());
    this.clearButton = button("Clear", "Remove every pair", () => this.clear());
    this.clearMaskButton = button("Clear mask", "Remove the painted region", () => this.clearMask());
    this.status = el("span", "dragedit-points-status");
    bar.append(...this.modeButtons, this.brushInput, this.undoButton, this.redoButton, this.clearButton,
      this.clearMaskButton, this.status);
    const stage = el("div", "dragedit-points-stage");
    this.canvas = el("canvas");
    this.canvas.dataset.dragedit = "points-canvas";
    this.message = el("div", "dragedit-points-message");
    // Keys go to a read-only input: the frontend leaves inputs alone, so Ctrl+Z and Delete stay with the editor
    // instead of also undoing the workflow or deleting the node.
    this.keys = el("input", "dragedit-points-keys");
    this.keys.readOnly = true;
    this.keys.setAttribute("aria-label", "Drag points editor keys");
    stage.append(this.canvas, this.keys);
    // Messages sit between the bar and the image, never over the points they talk about.
    this.element.append(bar, this.message, stage);

    this.listeners = [
      [this.canvas, "pointerdown", (e) => this.onPointerDown(e)],
      [this.canvas, "pointermove", (e) => this.onPointerMove(e)],
      [this.canvas, "pointerup", (e) => this.onPointerUp(e)],
      [this.canvas, "pointercancel", (e) => this.onPointerUp(e)],
      [this.canvas, "pointerleave", () => this.setHover(null)],
      [this.canvas, "contextmenu", (e) => this.onContextMenu(e)],
      [this.keys, "keydown", (e) => this.onKeyDown(e)],
    ];
    for (const [target, type, fn] of this.listeners) target.addEventListener(type, fn);
    this.resizeObserver = new ResizeObserver(() => this.requestRender());
    this.resizeObserver.observe(this.canvas);
    this.requestRender();
  }

  destroy() {
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    this.listeners = [];
    this.resizeObserver.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (this.image) this.image.onload = this.image.onerror = null;
  }

  // ------------------------------------------------------------------------------------------------ state in

  // Read the widget's JSON. Text this editor wrote itself is ignored, so edits never loop.
  setText(text) {
    if (text === this.text) return;
    this.text = text;
    try {
      const { pairs, size, mask } = parsePoints(text);
      this.pairs = pairs;
      this.size = size ?? this.imageSize();
      this.mask = mask;
      this.parseError = null;
    } catch (err) {
      this.parseError = err.message;
    }
    this.maskLayer = null;
    this.selected = null;
    this.hover = null;
    this.drag = null;
    this.adoptImageSize();
    this.requestRender();
  }

  // Show an image (a URL) under the points; its natural size is the image size the points are in.
  setImage(src) {
    if (!src || src === this.imageSrc) return;
    this.imageSrc = src;
    const image = new Image();
    image.onload = () => {
      if (this.imageSrc !== src) return;
      this.image = image;
      this.adoptImageSize();
      this.requestRender();
    };
    image.onerror = () => {
      if (this.imageSrc === src) this.showHint("The image could not be loaded; run the workflow again.");
    };
    image.src = src;
  }

  imageSize() {
    return this.image ? [this.image.naturalWidth, this.image.naturalHeight] : null;
  }

  // Points and mask drawn on another image size follow the image (size ratio, as the server rescales). Not
  // undoable: the size is the image's, and undoing past it would only rescale again.
  adoptImageSize() {
    const actual = this.imageSize();
    if (!actual || this.parseError) return;
    if (this.size && this.size[0] === actual[0] && this.size[1] === actual[1]) return;
    const from = this.size;
    this.commit(() => {
      if (from && this.pairs.length) this.pairs = rescalePairs(this.pairs, from, actual);
      this.mask = from && this.mask ? resampleMask(this.mask, from, actual) : null;
      this.size = actual;
    }, { record: false });
  }

  // ------------------------------------------------------------------------------------------------ edits

  // Apply an edit, remember the state before it for undo, and hand the new JSON to the widget.
  commit(edit, { before = this.text, record = true } = {}) {
    edit();
    this.hint = null;
    this.maskLayer = null;
    const text = formatPoints(this.pairs, this.size, this.mask);
    if (text === before) {
      this.requestRender();
      return;
    }
    if (record && before !== null) {
      this.undoStack.push(before);
      if (this.undoStack.length > HISTORY_LIMIT) this.undoStack.shift();
      this.redoStack = [];
    }
    this.text = text;
    this.parseError = null;
    this.requestRender();
    this.onChange(text);
  }

  // Step through the history: the widget gets the text first; reading it back may rescale it to the image.
  restore(text) {
    this.onChange(text);
    this.text = null;
    this.setText(text);
  }

  undo() {
    const previous = this.undoStack.pop();
    if (previous === undefined) return;
    if (this.text !== null) this.redoStack.push(this.text);
    this.restore(previous);
  }

  redo() {
    const next = this.redoStack.pop();
    if (next === undefined) return;
    if (this.text !== null) this.undoStack.push(this.text);
    this.restore(next);
  }

  clear() {
    this.commit(() => {
      this.pairs = [];
      this.size = this.imageSize() ?? (this.parseError ? null : this.size);
      if (this.parseError) this.mask = null;
    });
    this.selected = null;
  }

  clearMask() {
    if (this.parseError) return;
    this.commit(() => { this.mask = null; });
  }

  deletePair(index) {
    if (index === null || index < 0 || index >= this.pairs.length) return;
    this.commit(() => this.pairs.splice(index, 1));
    this.selected = null;
    this.hover = null;
  }

  setMode(mode) {
    this.mode = mode;
    this.hover = null;
    this.canvas.style.cursor = mode === "points" ? "crosshair" : "cell";
    this.requestRender();
  }

  // -------------------------------------------------------------------------------------------------- input

  eventPoint(e) {
    const rect = this.canvas.getBoundingClientRect();
    return clientToCanvas(e.clientX, e.clientY, rect, this.canvas.width, this.canvas.height);
  }

  hitRadius() {
    const rect = this.canvas.getBoundingClientRect();
    return HIT_RADIUS * (this.canvas.width / Math.max(rect.width, 1));
  }

  editable() {
    if (this.parseError) {
      this.showHint("Fix the points text first, or press Clear.");
      return false;
    }
    if (!this.size || !this.fit) {
      this.showHint("No image yet: connect an image and run the workflow once.");
      return false;
    }
    return true;
  }

  onPointerDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.keys.focus({ preventScroll: true });
    if (!this.editable()) return;
    const at = this.eventPoint(e);
    if (this.mode !== "points") {
      this.canvas.setPointerCapture(e.pointerId);
      const point = viewToImage(at, this.fit);
      this.drag = { paint: this.mode === "paint" ? 1 : 0, last: point, before: this.text };
      this.mask ??= new Uint8Array(this.size[0] * this.size[1]);
      paintStroke(this.mask, this.size, point, point, this.brush, this.drag.paint);
      this.maskLayer = null;
      this.requestRender();
      return;
    }
    const hit = hitTest(this.pairs, at, this.fit, this.hitRadius(), this.size);
    if (hit) {
      this.canvas.setPointerCapture(e.pointerId);
      this.drag = { ...hit, before: this.text, moved: false };
      this.selected = hit.pair;
      this.requestRender();
      return;
    }
    const [x, y] = clampToImage(viewToImage(at, this.fit), this.size);
    const last = this.pairs[this.pairs.length - 1];
    this.commit(() => {
      if (last && isPending(last)) last.push(x, y);
      else this.pairs.push([x, y]);
    });
    this.selected = this.pairs.length - 1;
  }

  onPointerMove(e) {
    if (!this.fit) return;
    const at = this.eventPoint(e);
    if (this.drag && "paint" in this.drag) {
      const point = viewToImage(at, this.fit);
      paintStroke(this.mask, this.size, this.drag.last, point, this.brush, this.drag.paint);
      this.drag.last = point;
      this.maskLayer = null;
      this.requestRender();
      return;
    }
    if (!this.drag) {
      if (this.mode === "points") this.setHover(this.size ? hitTest(this.pairs, at, this.fit, this.hitRadius(), this.size) : null);
      return;
    }
    const [x, y] = clampToImage(viewToImage(at, this.fit), this.size);
    const pair = this.pairs[this.drag.pair];
    if (pair[2 * this.drag.end] === x && pair[2 * this.drag.end + 1] === y) return;
    pair[2 * this.drag.end] = x;
    pair[2 * this.drag.end + 1] = y;
    this.drag.moved = true;
    this.requestRender();
  }

  onPointerUp(e) {
    if (!this.drag) return;
    if (this.canvas.hasPointerCapture(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    const { moved, before, paint } = this.drag;
    this.drag = null;
    if (moved || paint !== undefined) {
      this.commit(() => {
        if (maskIsEmpty(this.mask)) this.mask = null;
      }, { before });
    }
    this.requestRender();
  }

  onContextMenu(e) {
    e.preventDefault();
    e.stopPropagation();
    if (!this.fit || this.parseError || this.mode !== "points") return;
    const hit = hitTest(this.pairs, this.eventPoint(e), this.fit, this.hitRadius(), this.size);
    if (hit) this.deletePair(hit.pair);
  }

  onKeyDown(e) {
    const key = e.key.toLowerCase();
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && ((key === "z" && e.shiftKey) || key === "y")) this.redo();
    else if (ctrl && key === "z") this.undo();
    else if (e.key === "Delete" || e.key === "Backspace") {
      if (!this.parseError) this.deletePair(this.selected ?? this.pairs.length - 1);
    } else if (e.key === "Escape") this.keys.blur();
    else return;
    e.preventDefault();
    e.stopPropagation();
  }

  setHover(hit) {
    const same = hit === this.hover || (hit && this.hover && hit.pair === this.hover.pair && hit.end === this.hover.end);
    if (same) return;
    this.hover = hit;
    if (this.mode === "points") this.canvas.style.cursor = hit ? "move" : "crosshair";
    this.requestRender();
  }

  showHint(text) {
    this.hint = text;
    this.requestRender();
  }

  // ------------------------------------------------------------------------------------------------- render

  requestRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  // Call often (the node's watch loop): zoom changes the canvas's on-screen size without a resize event, in both
  // displays (a CSS transform), so the backing store follows the on-screen pixels to stay sharp.
  checkSize() {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const want = [Math.round(rect.width * dpr), Math.round(rect.height * dpr)];
    if (want[0] && want[1] && (want[0] !== this.backing[0] || want[1] !== this.backing[1])) this.requestRender();
  }

  problems() {
    if (!this.size || this.parseError) return [];
    const [w, h] = this.size;
    return pointsOutside(this.pairs, this.size).map(({ pair, role, x, y }) =>
      `The ${role} of pair ${pair + 1} (${x}, ${y}) is outside the ${w}x${h} image (shown at its border): drag it inside or delete the pair.`);
  }

  messageText() {
    if (this.parseError) return { error: true, text: `points_json is not valid: ${this.parseError}.\nFix the text, or press Clear to start over.` };
    if (!this.size) return { error: false, text: "No image yet: connect an image (a Load Image shows at once; any other image after a run). Then click a handle, then its target." };
    const problems = this.problems();
    if (problems.length) return { error: true, text: problems.join("\n") };
    if (this.hint) return { error: false, text: this.hint };
    const last = this.pairs[this.pairs.length - 1];
    if (last && isPending(last)) return { error: false, text: `Click the target of point ${this.pairs.length}.` };
    return { error: false, text: "" };
  }

  render() {
    const rect = this.canvas.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(rect.width * dpr);
    const height = Math.round(rect.height * dpr);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.backing = [width, height];
    const unit = width / rect.width; // backing pixels per screen pixel
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#1e1e1e";
    ctx.fillRect(0, 0, width, height);
    this.fit = this.size ? fitImage(this.size, width, height, 6 * unit) : null;
    if (this.fit) {
      this.drawImage(ctx);
      if (!this.parseError) {
        this.drawMask(ctx);
        this.drawPairs(ctx, unit);
      }
    }
    if (!this.drag) {   // a message that grows or shrinks mid-drag would move the image under the pointer
      const { error, text } = this.messageText();
      this.message.textContent = text;
      this.message.classList.toggle("error", error);
    }
    const n = this.pairs.filter((p) => !isPending(p)).length;
    const size = this.size ? ` · ${this.size[0]}x${this.size[1]}` : "";
    const masked = maskIsEmpty(this.mask) ? "" : " · mask";
    this.status.textContent = this.parseError ? "invalid points" : `${n} pair${n === 1 ? "" : "s"}${size}${masked}`;
    this.undoButton.disabled = this.undoStack.length === 0;
    this.redoButton.disabled = this.redoStack.length === 0;
    this.clearButton.disabled = !this.parseError && this.pairs.length === 0;
    this.clearMaskButton.disabled = maskIsEmpty(this.mask);
    for (const b of this.modeButtons) b.classList.toggle("active", b.dataset.mode === this.mode);
    this.brushInput.disabled = this.mode === "points";
  }

  drawImage(ctx) {
    const [w, h] = this.size;
    const { x, y, scale } = this.fit;
    if (this.image) {
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(this.image, x, y, w * scale, h * scale);
      return;
    }
    ctx.fillStyle = "#3a3a3a";
    ctx.fillRect(x, y, w * scale, h * scale);
    ctx.fillStyle = "#9a9a9a";
    ctx.font = `${Math.max(12, Math.min(w, h) * scale * 0.06)}px sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(`${w} x ${h}: the image shows after a run`, x + (w * scale) / 2, y + (h * scale) / 2);
  }

  // The painted region as a tint over the image, one image pixel per mask cell.
  drawMask(ctx) {
    if (maskIsEmpty(this.mask)) return;
    const [w, h] = this.size;
    if (!this.maskLayer) {
      this.maskLayer = document.createElement("canvas");
      this.maskLayer.width = w;
      this.maskLayer.height = h;
      const layer = this.maskLayer.getContext("2d");
      const pixels = layer.createImageData(w, h);
      this.mask.forEach((v, i) => {
        if (v) pixels.data.set(MASK_TINT, 4 * i);
      });
      layer.putImageData(pixels, 0, 0);
    }
    const { x, y, scale } = this.fit;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.maskLayer, x, y, w * scale, h * scale);
  }

  drawPairs(ctx, unit) {
    const radius = 5 * unit;
    const view = (px, py) => imageToView(pixelCentre(...shownAt([px, py], this.size)), this.fit);
    const outside = (px, py) => !(px >= 0 && px < this.size[0] && py >= 0 && py < this.size[1]);
    this.pairs.forEach((pair, k) => {
      const handle = view(pair[0], pair[1]);
      const emphasis = k === this.selected || (this.hover && this.hover.pair === k);
      if (!isPending(pair)) {
        const target = view(pair[2], pair[3]);
        drawArrow(ctx, handle, target, unit, radius);
        drawDot(ctx, target, radius, COLORS.target, unit, outside(pair[2], pair[3]));
      }
      drawDot(ctx, handle, radius, COLORS.handle, unit, outside(pair[0], pair[1]));
      if (emphasis) {
        ctx.strokeStyle = COLORS.select;
        ctx.lineWidth = 2 * unit;
        ctx.beginPath();
        ctx.arc(handle[0], handle[1], radius + 3 * unit, 0, 2 * Math.PI);
        ctx.stroke();
      }
      ctx.font = `bold ${12 * unit}px sans-serif`;
      ctx.textAlign = "left";
      ctx.textBaseline = "bottom";
      ctx.lineWidth = 3 * unit;
      ctx.strokeStyle = COLORS.outline;
      ctx.fillStyle = COLORS.arrow;
      const label = [handle[0] + radius + unit, handle[1] - radius];
      ctx.strokeText(String(k + 1), ...label);
      ctx.fillText(String(k + 1), ...label);
    });
  }
}

// A point; one outside the image shows on its border as a ring with a warning-yellow rim.
function drawDot(ctx, [x, y], radius, color, unit, outside = false) {
  ctx.fillStyle = color;
  ctx.strokeStyle = outside ? COLORS.select : COLORS.outline;
  ctx.lineWidth = outside ? 3 * unit : unit;
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
}

// A line from `start` to `end` with its head stopping at the target dot; outlined to show on any image.
function drawArrow(ctx, start, end, unit, gap) {
  const length = Math.hypot(end[0] - start[0], end[1] - start[1]);
  for (const [color, width] of [[COLORS.outline, 4 * unit], [COLORS.arrow, 2 * unit]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(...start);
    ctx.lineTo(...end);
    ctx.stroke();
  }
  const head = 9 * unit;
  if (length <= head + 2 * gap) return;
  const [ux, uy] = [(end[0] - start[0]) / length, (end[1] - start[1]) / length];
  const tip = [end[0] - ux * gap, end[1] - uy * gap];
  const base = [tip[0] - ux * head, tip[1] - uy * head];
  const wing = [-uy * head * 0.55, ux * head * 0.55];
  ctx.fillStyle = COLORS.arrow;
  ctx.strokeStyle = COLORS.outline;
  ctx.lineWidth = unit;
  ctx.beginPath();
  ctx.moveTo(...tip);
  ctx.lineTo(base[0] + wing[0], base[1] + wing[1]);
  ctx.lineTo(base[0] - wing[0], base[1] - wing[1]);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
}
