// Pure helpers for the Drag Points canvas: the points JSON, image <-> view transforms, hit tests, clamping.
// No side effects on import: the frontend imports every .js under web/ as an extension.

export const FORMAT_VERSION = 1;

// A pair is [hx, hy, tx, ty]; a handle still waiting for its target is [hx, hy] (only ever the last pair).
export function isPending(pair) {
  return pair.length === 2;
}

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// The editable-region mask painted on the canvas: run lengths of 0s and 1s, alternating and starting with 0s, over
// the image_size grid in row-major order (what the server decodes, kernels/points.py).
function readMask(data, size) {
  if (data.mask_rle === undefined) return null;
  const runs = data.mask_rle;
  if (!size) throw new Error("mask_rle needs an image_size");
  if (!Array.isArray(runs) || !runs.every((n) => Number.isInteger(n) && n >= 0)) throw new Error("mask_rle is not a list of run lengths");
  const total = runs.reduce((a, b) => a + b, 0);
  if (total !== size[0] * size[1]) throw new Error(`mask_rle covers ${total} pixels, not ${size[0]}x${size[1]}`);
  return decodeMask(runs, size);
}

export function encodeMask(mask) {
  const runs = [];
  let value = 0;
  let run = 0;
  for (let i = 0; i < mask.length; i++) {
    const bit = mask[i] ? 1 : 0;
    if (bit === value) run++;
    else {
      runs.push(run);
      value = bit;
      run = 1;
    }
  }
  runs.push(run);
  return runs;
}

export function decodeMask(runs, size) {
  const mask = new Uint8Array(size[0] * size[1]);
  let at = 0;
  runs.forEach((n, k) => {
    if (k % 2) mask.fill(1, at, at + n);
    at += n;
  });
  return mask;
}

export function maskIsEmpty(mask) {
  return !mask || !mask.some((v) => v);
}

// Nearest-neighbour resample of a W x H mask to another size (the image arrived at another size).
export function resampleMask(mask, from, to) {
  const out = new Uint8Array(to[0] * to[1]);
  for (let y = 0; y < to[1]; y++) {
    const sy = Math.min(from[1] - 1, Math.floor(((y + 0.5) * from[1]) / to[1]));
    for (let x = 0; x < to[0]; x++) {
      const sx = Math.min(from[0] - 1, Math.floor(((x + 0.5) * from[0]) / to[0]));
      out[y * to[0] + x] = mask[sy * from[0] + sx];
    }
  }
  return out;
}

// Set (value 1) or clear (0) a disc of `radius` image px about (cx, cy).
export function paintDisc(mask, size, [cx, cy], radius, value) {
  const [w, h] = size;
  const r2 = radius * radius;
  for (let y = Math.max(0, Math.floor(cy - radius)); y <= Math.min(h - 1, Math.ceil(cy + radius)); y++) {
    for (let x = Math.max(0, Math.floor(cx - radius)); x <= Math.min(w - 1, Math.ceil(cx + radius)); x++) {
      if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r2) mask[y * w + x] = value;
    }
  }
}

// A stroke from a to b as discs spaced a third of the radius apart, so fast pointer moves leave no gaps.
export function paintStroke(mask, size, a, b, radius, value) {
  const steps = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / Math.max(radius / 3, 0.5)));
  for (let k = 0; k <= steps; k++) {
    paintDisc(mask, size, [a[0] + ((b[0] - a[0]) * k) / steps, a[1] + ((b[1] - a[1]) * k) / steps], radius, value);
  }
}

function readRows(data) {
  if (Array.isArray(data)) {
    if (data.length && data.every((r) => Array.isArray(r) && r.length === 2)) {
      if (data.length % 2) throw new Error(`${data.length} points: handles and targets alternate, so the count must be even`);
      const rows = [];
      for (let i = 0; i < data.length; i += 2) rows.push([...data[i], ...data[i + 1]]);
      return { rows, size: null };
    }
    return { rows: data, size: null };
  }
  if (!data || typeof data !== "object") throw new Error("expected an object with \"pairs\" or a list");
  if ((data.version ?? FORMAT_VERSION) !== FORMAT_VERSION) throw new Error(`version ${JSON.stringify(data.version)} is not ${FORMAT_VERSION}`);
  if (!Array.isArray(data.pairs)) throw new Error("no \"pairs\" list");
  const s = data.image_size ?? [0, 0];
  const sizeOk = Array.isArray(s) && s.length === 2 && s.every((v) => Number.isInteger(v) && v >= 0) && (s[0] > 0) === (s[1] > 0);
  if (!sizeOk) throw new Error(`image_size ${JSON.stringify(s)} is not [W, H]`);
  return { rows: data.pairs, size: s[0] > 0 ? [s[0], s[1]] : null };
}

// {pairs, size, mask} from the widget text; throws an Error whose message says what is wrong.
export function parsePoints(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`not valid JSON (${err.message})`);
  }
  const { rows, size } = readRows(data);
  rows.forEach((row, k) => {
    const last = k === rows.length - 1;
    const ok = Array.isArray(row) && (row.length === 4 || (row.length === 2 && last)) && row.every(isNumber);
    if (!ok) throw new Error(`pair ${k + 1} is ${JSON.stringify(row)}, not [hx, hy, tx, ty]`);
  });
  const mask = Array.isArray(data) ? null : readMask(data, size);
  return { pairs: rows.map((r) => [...r]), size, mask };
}

// The widget text: one pair per line, so the multi-line field reads as a list; the mask (if painted) last.
export function formatPoints(pairs, size, mask = null) {
  const rows = pairs.map((p) => `  ${JSON.stringify(p)}`).join(",\n");
  const head = `{"version": ${FORMAT_VERSION}, "image_size": ${JSON.stringify(size ?? [0, 0])},\n "pairs": [`;
  const body = pairs.length ? `\n${rows}\n ]` : "]";
  const tail = maskIsEmpty(mask) ? "" : `,\n "mask_rle": ${JSON.stringify(encodeMask(mask))}`;
  return `${head}${body}${tail}}`;
}

// Every point outside [0, W) x [0, H), as [{pair, role, x, y}].
export function pointsOutside(pairs, size) {
  const [w, h] = size;
  const found = [];
  pairs.forEach((pair, k) => {
    const ends = [["handle", pair[0], pair[1]]];
    if (!isPending(pair)) ends.push(["target", pair[2], pair[3]]);
    for (const [role, x, y] of ends) {
      if (!(x >= 0 && x < w && y >= 0 && y < h)) found.push({ pair: k, role, x, y });
    }
  });
  return found;
}

// Where a point shows: itself, or for a point outside the image the nearest spot on its border.
export function shownAt([x, y], size) {
  return [Math.min(Math.max(x, 0), size[0] - 1), Math.min(Math.max(y, 0), size[1] - 1)];
}

// The image drawn as large as fits in the view, centred: view = image * scale + offset.
export function fitImage(size, viewW, viewH, pad = 0) {
  const [w, h] = size;
  const scale = Math.max(Math.min((viewW - 2 * pad) / w, (viewH - 2 * pad) / h), 1e-6);
  return { scale, x: (viewW - w * scale) / 2, y: (viewH - h * scale) / 2 };
}

export function imageToView([x, y], fit) {
  return [x * fit.scale + fit.x, y * fit.scale + fit.y];
}

// Image pixels of a view point; pixel k covers [k, k+1), so its centre shows at k + 0.5.
export function viewToImage([x, y], fit) {
  return [(x - fit.x) / fit.scale, (y - fit.y) / fit.scale];
}

// Canvas backing-store pixels of a pointer event, exact whatever CSS scale or zoom the canvas is shown at.
export function clientToCanvas(clientX, clientY, rect, canvasW, canvasH) {
  return [((clientX - rect.left) * canvasW) / rect.width, ((clientY - rect.top) * canvasH) / rect.height];
}

// A whole pixel inside the image: the canvas stores integer pixel indices.
export function clampToImage([x, y], size) {
  const [w, h] = size;
  return [Math.min(Math.max(Math.floor(x), 0), w - 1), Math.min(Math.max(Math.floor(y), 0), h - 1)];
}

// Pairs drawn on an image of `from` size moved onto one of `to` size: the size ratio, as the server does.
export function rescalePairs(pairs, from, to) {
  const sx = to[0] / from[0];
  const sy = to[1] / from[1];
  return pairs.map((p) => clampPair(p.map((v, i) => (i % 2 ? v * sy : v * sx)), to));
}

function clampPair(pair, size) {
  const out = [];
  for (let i = 0; i < pair.length; i += 2) out.push(...clampToImage([pair[i], pair[i + 1]], size));
  return out;
}

// The point nearest to `viewPoint` within `radius` view px, as {pair, end: 0 (handle) | 1 (target)}, or null.
// Points outside the image are hit where they show, on its border. Later pairs win ties (drawn on top).
export function hitTest(pairs, viewPoint, fit, radius, size) {
  let best = null;
  let bestD = radius;
  pairs.forEach((pair, k) => {
    for (let end = 0; end < pair.length / 2; end++) {
      const at = size ? shownAt([pair[2 * end], pair[2 * end + 1]], size) : [pair[2 * end], pair[2 * end + 1]];
      const [vx, vy] = imageToView(pixelCentre(...at), fit);
      const d = Math.hypot(vx - viewPoint[0], vy - viewPoint[1]);
      if (d <= bestD) {
        bestD = d;
        best = { pair: k, end };
      }
    }
  });
  return best;
}

export function pixelCentre(x, y) {
  return [x + 0.5, y + 0.5];
}
