"""Seeded procedural scenes: 1-3 simple objects on a varied background, drawn anti-aliased from parameters.

Two users: the demo diffusion model trains on `training_images` (cheap, endless, deterministic data), and the drag
benchmark takes `drag_case`s, whose ground truth is exact because the edited scene is simply rendered again with
one object moved or resized; no hand-made target image is needed.

Coordinates are (x, y) pixels with pixel [i, j]'s centre at x = j, y = i, as the drag points use them
(kernels/points.py): a point inside the image lies in [0, W) x [0, H). Sizes in the docs are for 128 px images and
scale with the image size. numpy and pillow only, so the scripts run without torch.

    .dev/venv/bin/python -m tools.scenes --grid scenes.png --cases cases.png
"""
import argparse
import itertools
import math
import pathlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "star")
FILLS = ("solid", "gradient", "stripes", "checker")
BACKGROUNDS = ("solid", "gradient", "noise", "pattern")
MODES = ("move", "resize", "drag")

BASE_SIZE = 128                  # the sizes below are in pixels of a BASE_SIZE image
RADIUS_RANGE = (10.0, 28.0)
PERIOD_RANGE = (4.0, 12.0)       # object stripes and checker
BACKGROUND_PERIOD_RANGE = (6.0, 16.0)
OFFSET_RANGE = (12.0, 32.0)      # length of a move or drag
SHRINK_RANGE, GROW_RANGE = (0.65, 0.8), (1.25, 1.5)
RESIZE_DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))   # a resize's handles: right, left, below, above
EDGE_MARGIN = 2.0                # every object keeps this far from the image border
SEPARATION = 6.0                 # gap between objects of a separated scene
MIN_CONTRAST = 80.0              # RGB distance from an object's mean colour to every colour of its background
STAR_INNER = 0.45                # inner / outer radius of the five-pointed star
SUPERSAMPLE = 4                  # shapes are drawn at this scale and box-filtered down: anti-aliased coverage
PLACEMENT_TRIES = 50

RGB = tuple[int, int, int]
Point = tuple[float, float]
Drag = tuple[float, float, float, float]   # handle x, handle y, target x, target y


@dataclass(frozen=True)
class Fill:
    """How an object is painted, in the object's own frame, so the paint moves, turns and scales with the object.

    `colours` are equal for "solid"; "gradient" runs from the first to the second across the object along `angle`
    (degrees); "stripes" and "checker" alternate them with `period` px per full cycle (0 for the other kinds).
    """
    kind: str
    colours: tuple[RGB, RGB]
    angle: float
    period: float


@dataclass(frozen=True)
class SceneObject:
    """One shape: `center` (x, y) px; `radius` px is the circumradius, so the shape lies inside that circle
    whatever its `rotation` (degrees), which makes placement and separation exact."""
    shape: str
    center: Point
    radius: float
    rotation: float
    fill: Fill


@dataclass(frozen=True)
class Background:
    """The backdrop. Every pixel is a mix of the two `colours` (convex, so the contrast rule can be checked on the
    parameters). `angle` orients gradients and patterns; `seed` draws the noise field, or the pattern's type
    (stripes or checker) and period."""
    kind: str
    colours: tuple[RGB, RGB]
    angle: float
    seed: int


@dataclass(frozen=True)
class Scene:
    """A whole image as parameters: rendering it again after an edit gives that edit's exact ground truth."""
    size: int
    background: Background
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True, eq=False)   # eq=False: arrays have no single truth value to compare by
class DragCase:
    """One benchmark drag with its ground truth: object `index` of `scene`, moved by `offset` px and resized by
    `scale` about its centre, is `expected`. `drags` are the (handle x, handle y, target x, target y) px a user
    would draw; `mask` and `expected_mask` (float32 coverage) locate the object before and after, for scoring
    where it landed."""
    mode: str
    scene: Scene
    index: int
    image: np.ndarray
    mask: np.ndarray
    drags: tuple[Drag, ...]
    offset: Point
    scale: float
    expected: np.ndarray
    expected_mask: np.ndarray


# ------------------------------------------------------------------------------------------------------ drawing

def _soft_square(u: np.ndarray, period: float) -> np.ndarray:
    """A square wave in [0, 1] with one-pixel ramps at its edges: stripes without aliasing, no supersampling."""
    triangle = np.abs(2.0 * (u / period - np.floor(u / period)) - 1.0)
    return np.clip(0.5 + (triangle - 0.5) * period / 2.0, 0.0, 1.0)


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Mix weights of stripes (along u) or a checker (a soft xor of two square waves)."""
    a = _soft_square(u, period)
    if kind == "stripes":
        return a
    b = _soft_square(v, period)
    return a + b - 2.0 * a * b


def _mix(colours: tuple[RGB, RGB], weight: np.ndarray) -> np.ndarray:
    first, second = (np.asarray(c, np.float32) for c in colours)
    return first + weight[..., None].astype(np.float32) * (second - first)


def _rotated(dx: np.ndarray, dy: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): the offsets in a frame turned by `degrees`, u along the turned x axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return dx * c + dy * s, dy * c - dx * s


def _value_noise(seed: int, size: int) -> np.ndarray:
    """Smooth low-frequency noise in [0, 1]: two octaves of lattice values with smoothstep interpolation."""
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(2, 5))
    field = np.zeros((size, size), np.float64)
    for octave_cells, weight in ((cells, 1.0), (2 * cells, 0.35)):
        lattice = rng.random((octave_cells + 1, octave_cells + 1))
        t = (np.arange(size) + 0.5) / size * octave_cells
        i = np.minimum(t.astype(int), octave_cells - 1)
        f = t - i
        f = f * f * (3.0 - 2.0 * f)
        rows = lattice[i] * (1.0 - f[:, None]) + lattice[i + 1] * f[:, None]
        field += weight * (rows[:, i] * (1.0 - f) + rows[:, i + 1] * f)
    return (field - field.min()) / max(field.max() - field.min(), 1e-9)


def _background_weight(background: Background, size: int) -> np.ndarray:
    """Per pixel, how far from the first towards the second background colour."""
    if background.kind == "solid":
        return np.zeros((size, size), np.float32)
    if background.kind == "noise":
        return _value_noise(background.seed, size)
    offsets = np.arange(size) - (size - 1) / 2.0
    u, v = _rotated(offsets[None, :], offsets[:, None], background.angle)
    if background.kind == "gradient":
        c, s = math.cos(math.radians(background.angle)), math.sin(math.radians(background.angle))
        reach = max((size - 1) / 2.0 * (abs(c) + abs(s)), 1e-9)
        return np.clip(0.5 + u / (2.0 * reach), 0.0, 1.0)
    rng = np.random.default_rng(background.seed)
    kind = ("stripes", "checker")[int(rng.integers(2))]
    period = rng.uniform(*BACKGROUND_PERIOD_RANGE) * size / BASE_SIZE
    return _pattern(kind, u, v, period)


def _outline(obj: SceneObject) -> list[Point]:
    """The polygon's vertices relative to the centre (empty for a disc, which is drawn as an ellipse)."""
    turns = {"square": [45.0 + 90.0 * k for k in range(4)],
             "triangle": [-90.0 + 120.0 * k for k in range(3)],
             "star": [-90.0 + 36.0 * k for k in range(10)],
             "disc": []}[obj.shape]
    radii = [obj.radius * (STAR_INNER if obj.shape == "star" and k % 2 else 1.0) for k in range(len(turns))]
    return [(r * math.cos(math.radians(a + obj.rotation)), r * math.sin(math.radians(a + obj.rotation)))
            for r, a in zip(radii, turns)]


def _coverage(obj: SceneObject, size: int) -> tuple[int, int, np.ndarray]:
    """(top, left, coverage [h, w] in [0, 1]) over the object's bounding box only: drawing the box at 4x rather
    than the whole image keeps a 128 px scene at a fraction of a millisecond."""
    cx, cy = obj.center
    left, top = max(0, math.floor(cx - obj.radius) - 1), max(0, math.floor(cy - obj.radius) - 1)
    right, bottom = min(size, math.ceil(cx + obj.radius) + 2), min(size, math.ceil(cy + obj.radius) + 2)
    if right <= left or bottom <= top:
        return 0, 0, np.zeros((0, 0), np.float32)
    canvas = Image.new("L", ((right - left) * SUPERSAMPLE, (bottom - top) * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    # PIL's pixel k spans [k, k + 1), so image x maps to SUPERSAMPLE * (x + 0.5) with pixel centres at integers.
    u, v = SUPERSAMPLE * (cx - left + 0.5), SUPERSAMPLE * (cy - top + 0.5)
    if obj.shape == "disc":
        reach = SUPERSAMPLE * obj.radius - 0.5   # PIL's ellipse box includes its far edge: half a pixel in
        draw.ellipse((u - reach, v - reach, u + reach, v + reach), fill=255)
    else:
        draw.polygon([(u + SUPERSAMPLE * x, v + SUPERSAMPLE * y) for x, y in _outline(obj)], fill=255)
    small = canvas.resize((right - left, bottom - top), Image.BOX)
    return top, left, np.asarray(small, np.float32) / 255.0


def _fill_colours(obj: SceneObject, top: int, left: int, height: int, width: int) -> np.ndarray:
    """float32 [h, w, 3]: the object's paint at the centres of the box's pixels."""
    fill = obj.fill
    dx = np.arange(left, left + width, dtype=np.float64)[None, :] - obj.center[0]
    dy = np.arange(top, top + height, dtype=np.float64)[:, None] - obj.center[1]
    u, v = _rotated(dx, dy, fill.angle + obj.rotation)
    if fill.kind == "solid":
        weight = np.zeros((height, width))
    elif fill.kind == "gradient":
        weight = np.clip(0.5 + u / (2.0 * obj.radius), 0.0, 1.0)
    else:
        weight = _pattern(fill.kind, u, v, fill.period)
    return _mix(fill.colours, np.broadcast_to(weight, (height, width)))


def render(scene: Scene) -> tuple[np.ndarray, list[np.ndarray]]:
    """(uint8 [H, W, 3] image, per object its visible coverage float32 [H, W] in [0, 1]).

    Objects are painted in order, later ones on top; a mask is what is left of its object after the later ones
    cover it, so the masks are what a segmentation of the image would show.
    """
    size = scene.size
    image = _mix(scene.background.colours, _background_weight(scene.background, size))
    coverages = []
    for obj in scene.objects:
        top, left, cover = _coverage(obj, size)
        full = np.zeros((size, size), np.float32)
        if cover.size:
            height, width = cover.shape
            region = image[top:top + height, left:left + width]
            region += cover[..., None] * (_fill_colours(obj, top, left, height, width) - region)
            full[top:top + height, left:left + width] = cover
        coverages.append(full)
    uncovered = np.ones((size, size), np.float32)
    masks = []
    for cover in reversed(coverages):
        masks.append(cover * uncovered)
        uncovered = uncovered * (1.0 - cover)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks[::-1]


# ------------------------------------------------------------------------------------------------------ sampling

def _random_colour(rng: np.random.Generator) -> RGB:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _nearby_colour(rng: np.random.Generator, colour: RGB, low: float, high: float) -> RGB:
    """A colour `low`..`high` away from `colour` in a random direction (less where the RGB cube clips it)."""
    direction = rng.normal(size=3)
    step = direction / np.linalg.norm(direction) * rng.uniform(low, high)
    return tuple(int(c) for c in np.clip(np.rint(np.asarray(colour) + step), 0, 255))


def contrast(fill: Fill, background: Background) -> float:
    """RGB distance from the fill's mean colour to the nearest colour the background takes (a mix of its two).

    Checked against MIN_CONTRAST when scenes are drawn, so every object stands out wherever it is placed.
    """
    mean = (np.asarray(fill.colours[0], np.float64) + fill.colours[1]) / 2.0
    first, second = (np.asarray(c, np.float64) for c in background.colours)
    span = second - first
    t = float(np.clip(np.dot(mean - first, span) / max(np.dot(span, span), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(mean - (first + t * span)))


def _random_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    first = _random_colour(rng)
    if kind == "solid":
        return Background(kind, (first, first), 0.0, 0)
    spread = (12.0, 24.0) if kind == "pattern" else (40.0, 130.0)   # a pattern stays faint: objects are the subject
    second = _nearby_colour(rng, first, *spread)
    angle = float(rng.uniform(0.0, 360.0)) if kind != "noise" else 0.0
    seed = int(rng.integers(2 ** 31)) if kind in ("noise", "pattern") else 0
    return Background(kind, (first, second), angle, seed)


def _random_fill(rng: np.random.Generator, background: Background, unit: float) -> Fill:
    kind = FILLS[int(rng.integers(len(FILLS)))]
    while True:
        first = _random_colour(rng)
        second = first if kind == "solid" else _nearby_colour(rng, first, 50.0, 110.0)
        fill = Fill(kind, (first, second), 0.0, 0.0)
        if contrast(fill, background) >= MIN_CONTRAST:
            break
    angle = 0.0 if kind == "solid" else float(rng.uniform(0.0, 180.0))
    period = float(rng.uniform(*PERIOD_RANGE) * unit) if kind in ("stripes", "checker") else 0.0
    return replace(fill, angle=angle, period=period)


def _fits(obj: SceneObject, size: int, others: tuple[SceneObject, ...]) -> bool:
    """Whether the object lies wholly inside the image with EDGE_MARGIN and SEPARATION clear of `others`."""
    unit = size / BASE_SIZE
    reach = obj.radius + EDGE_MARGIN * unit
    cx, cy = obj.center
    inside = reach <= cx <= size - 1 - reach and reach <= cy <= size - 1 - reach
    return inside and all(math.dist(obj.center, o.center) >= obj.radius + o.radius + SEPARATION * unit
                          for o in others)


def random_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 3,
                 separated: bool = False) -> Scene:
    """A scene of 1..max_objects objects, each wholly inside the image and contrasting with the background.

    Training scenes may overlap (later objects on top), as real images do. `separated` scenes keep SEPARATION
    between objects, so a benchmark edit has one unoccluded object with known extent; an object that finds no room
    in PLACEMENT_TRIES draws is left out, so such a scene may hold fewer objects than drawn.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects: is {max_objects}; a scene needs at least one object")
    unit = size / BASE_SIZE
    background = _random_background(rng)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        rotation = 0.0 if shape == "disc" else float(rng.uniform(0.0, 360.0))
        fill = _random_fill(rng, background, unit)
        for _ in range(PLACEMENT_TRIES):
            radius = float(rng.uniform(*RADIUS_RANGE) * unit)
            low, high = radius + EDGE_MARGIN * unit, size - 1 - radius - EDGE_MARGIN * unit
            center = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
            obj = SceneObject(shape, center, radius, rotation, fill)
            if _fits(obj, size, tuple(objects) if separated else ()):
                objects.append(obj)
                break
    return Scene(size, background, tuple(objects))


def moved(scene: Scene, index: int, offset: Point = (0, 0), scale: float = 1.0) -> Scene:
    """The same scene with object `index` translated by `offset` (dx, dy) px and resized by `scale` about its own
    centre; its paint (stripe and checker period) scales with it, as a resized photo's texture would."""
    if not scale > 0:
        raise ValueError(f"scale: is {scale}; it must be positive")
    obj = scene.objects[index]
    edited = replace(obj, center=(obj.center[0] + offset[0], obj.center[1] + offset[1]), radius=obj.radius * scale,
                     fill=replace(obj.fill, period=obj.fill.period * scale))
    objects = list(scene.objects)
    objects[index] = edited
    return replace(scene, objects=tuple(objects))


def centroid(mask: np.ndarray) -> Point:
    """(x, y) of a coverage mask, weighted by coverage: the handle a user would put on the object's middle."""
    total = float(mask.sum())
    if not total > 0:
        raise ValueError("mask: is empty, so it has no centroid")
    return (float((mask.sum(axis=0) * np.arange(mask.shape[1])).sum()) / total,
            float((mask.sum(axis=1) * np.arange(mask.shape[0])).sum()) / total)


def training_images(seed: int, count: int, size: int = 128) -> np.ndarray:
    """uint8 [count, size, size, 3] of random (overlapping) scenes; the same seed gives the same images, and the
    first k images do not depend on `count`, so a longer run extends a shorter one."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        images[k] = render(random_scene(rng, size))[0]
    return images


# ------------------------------------------------------------------------------------------------------ drag cases

def _boundary_distance(obj: SceneObject, direction: Point) -> float:
    """How far from its centre, along the unit `direction`, the object's edge is: resize handles sit there."""
    if obj.shape == "disc":
        return obj.radius
    vertices = _outline(obj)
    hits = []
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        # the ray t * direction meets the edge (x0, y0) + s * (x1 - x0, y1 - y0) where both cross products agree
        ex, ey = x1 - x0, y1 - y0
        across = direction[0] * ey - direction[1] * ex
        if abs(across) < 1e-12:
            continue
        t, s = (x0 * ey - y0 * ex) / across, (x0 * direction[1] - y0 * direction[0]) / across
        if t > 0 and 0 <= s < 1:
            hits.append(t)
    return min(hits)


def _random_edit(rng: np.random.Generator, mode: str, unit: float) -> tuple[Point, float]:
    """(offset, scale): a whole-pixel move (so a move node's rounded arrow reproduces it exactly) or a resize."""
    if mode == "resize":
        return (0.0, 0.0), float(rng.uniform(*(SHRINK_RANGE if rng.random() < 0.5 else GROW_RANGE)))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    length = rng.uniform(*OFFSET_RANGE) * unit
    return (float(round(length * math.cos(angle))), float(round(length * math.sin(angle)))), 1.0


def drag_case(seed: int, mode: str, size: int = 128) -> DragCase:
    """A benchmark drag on a separated scene of 1-2 objects; the first object is edited.

    "move" and "drag" shift it OFFSET_RANGE px (one drag: handle at its centroid, target at handle + offset;
    "drag" is the content-drag task); "resize" scales it by SHRINK_RANGE or GROW_RANGE about its centre (four
    drags, RESIZE_DIRECTIONS: handles on its visible edge right, left, below and above its centre, targets where
    those edge points go; one edge point alone would ask a drag that also moves the object). The edited object stays inside the image and clear of the other;
    draws that break this are retried with a derived rng, so the case is deterministic in `seed` (>= 0).
    """
    if mode not in MODES:
        raise ValueError(f"mode: is {mode!r}; expected one of {', '.join(MODES)}")
    unit = size / BASE_SIZE
    for attempt in itertools.count():
        rng = np.random.default_rng((seed, MODES.index(mode), attempt))
        scene = random_scene(rng, size, max_objects=2, separated=True)
        offset, scale = _random_edit(rng, mode, unit)
        edited = moved(scene, 0, offset, scale)
        length = math.hypot(*offset) / unit
        if _fits(edited.objects[0], size, edited.objects[1:]) and (
                mode == "resize" or OFFSET_RANGE[0] <= length <= OFFSET_RANGE[1]):
            break
    image, masks = render(scene)
    expected, expected_masks = render(edited)
    obj = scene.objects[0]
    if mode == "resize":
        (cx, cy), drags = obj.center, []
        for dx, dy in RESIZE_DIRECTIONS:
            edge = _boundary_distance(obj, (dx, dy))
            drags.append((cx + dx * edge, cy + dy * edge, cx + dx * edge * scale, cy + dy * edge * scale))
    else:
        hx, hy = centroid(masks[0])
        drags = [(hx, hy, hx + offset[0], hy + offset[1])]
    return DragCase(mode, scene, 0, image, masks[0], tuple(drags), offset, scale, expected, expected_masks[0])


# ------------------------------------------------------------------------------------------------------ CLI

GAP = 2
PER_ROW = 4


def _grid(tiles: list[np.ndarray], per_row: int) -> Image.Image:
    """Tiles of one size in rows of `per_row`, GAP px of white between them."""
    height, width = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / per_row)
    sheet = Image.new("RGB", (per_row * (width + GAP) - GAP, rows * (height + GAP) - GAP), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(Image.fromarray(tile), ((k % per_row) * (width + GAP), (k // per_row) * (height + GAP)))
    return sheet


def _with_points(image: np.ndarray, drags: tuple[Drag, ...]) -> np.ndarray:
    """The image with each handle as a red dot and each target as a blue dot, as the point editor shows them."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    reach = max(1.5, 2.0 * image.shape[0] / BASE_SIZE)
    for hx, hy, tx, ty in drags:
        for (x, y), colour in (((hx, hy), (255, 0, 0)), ((tx, ty), (0, 0, 255))):
            draw.ellipse((x - reach, y - reach, x + reach, y + reach), fill=colour)
    return np.asarray(picture)


def case_sheet(seed: int, size: int = 128, per_mode: int = 2) -> Image.Image:
    """One row per drag case (input | expected, both with the drag's points), `per_mode` cases of each mode."""
    tiles = []
    for mode in MODES:
        for k in range(per_mode):
            case = drag_case(seed + k, mode, size)
            tiles += [_with_points(picture, case.drags) for picture in (case.image, case.expected)]
    return _grid(tiles, 2)


def _placement_gain(output: np.ndarray, plate: np.ndarray, template: np.ndarray, alpha: np.ndarray, top: int,
                    left: int) -> float:
    """How much the squared error against `output` changes when the object (template, coverage alpha) is placed at
    (top, left) on the object-free plate: negative where it explains the output; inf where it leaves the image."""
    h, w = alpha.shape
    if top < 0 or left < 0 or top + h > output.shape[0] or left + w > output.shape[1]:
        return math.inf
    seen, empty = output[top:top + h, left:left + w], plate[top:top + h, left:left + w]
    placed = empty + alpha[..., None] * (template - empty)
    return float(((seen - placed) ** 2 - (seen - empty) ** 2).sum())


def locate_object(case: "DragCase", output: np.ndarray, shift_range: int = 40,
                  scales=(1.0,)) -> tuple[Point, float]:
    """(centroid, scale) of the case's input object where placing it on the scene without it best explains
    `output`, searching shifts of up to shift_range px and the given scales about the object's centre. Comparing
    against the object-free plate (not the template alone) keeps a blurred object from fitting a smaller one."""
    rows, cols = np.nonzero(case.mask > 0.5)
    top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    others = tuple(o for k, o in enumerate(case.scene.objects) if k != case.index)
    plate = render(Scene(case.scene.size, case.scene.background, others))[0].astype(np.float32)
    out = output.astype(np.float32)
    cx, cy = centroid(case.mask)
    best = (math.inf, (cx, cy), 1.0)
    for scale in scales:
        h, w = max(2, round((bottom - top) * scale)), max(2, round((right - left) * scale))
        template = np.asarray(Image.fromarray(case.image[top:bottom, left:right]).resize((w, h)), np.float32)
        alpha = np.asarray(Image.fromarray(case.mask[top:bottom, left:right]).resize((w, h)), np.float32)
        base_top, base_left = cy - (cy - top) * scale, cx - (cx - left) * scale  # centroid on the input's
        for dy in range(-shift_range, shift_range + 1):
            for dx in range(-shift_range, shift_range + 1):
                gain = _placement_gain(out, plate, template, alpha, round(base_top + dy), round(base_left + dx))
                if gain < best[0]:
                    best = (gain, (cx + dx, cy + dy), float(scale))
    return best[1], best[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.scenes",
                                     description="Write PNG grids of procedural scenes, to look at the data.")
    parser.add_argument("--grid", type=pathlib.Path, help="write a grid of training scenes here")
    parser.add_argument("--cases", type=pathlib.Path, help="write a grid of drag cases here (input | expected)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=16, help="training scenes in the grid")
    parser.add_argument("--size", type=int, default=128, help="image side in px")
    args = parser.parse_args(argv)
    if args.grid is None and args.cases is None:
        parser.error("give --grid PATH, --cases PATH, or both")
    if args.grid is not None:
        _grid(list(training_images(args.seed, args.count, args.size)), PER_ROW).save(args.grid)
        print(f"wrote {args.grid}")
    if args.cases is not None:
        case_sheet(args.seed, args.size).save(args.cases)
        print(f"wrote {args.cases}")


if __name__ == "__main__":
    main()
