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

// {pairs, size} from the widget text; throws an Error whose message says what is wrong.
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
  return { pairs: rows.map((r) => [...r]), size };
}

export function formatPoints(pairs, size) {
  return JSON.stringify({ version: FORMAT_VERSION, image_size: size ?? [0, 0], pairs });
}

// The first point outside [0, W) x [0, H), as {pair, role, x, y}, or null.
export function firstOutside(pairs, size) {
  const [w, h] = size;
  for (let k = 0; k < pairs.length; k++) {
    const ends = [["handle", pairs[k][0], pairs[k][1]]];
    if (!isPending(pairs[k])) ends.push(["target", pairs[k][2], pairs[k][3]]);
    for (const [role, x, y] of ends) {
      if (!(x >= 0 && x < w && y >= 0 && y < h)) return { pair: k, role, x, y };
    }
  }
  return null;
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
// Later pairs win ties, as they are drawn on top.
export function hitTest(pairs, viewPoint, fit, radius) {
  let best = null;
  let bestD = radius;
  pairs.forEach((pair, k) => {
    for (let end = 0; end < pair.length / 2; end++) {
      const [vx, vy] = imageToView(pixelCentre(pair[2 * end], pair[2 * end + 1]), fit);
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
