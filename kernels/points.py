"""Drag points: handle -> target pairs in image pixels, parsed once from the canvas JSON (style.md §4.3, §4.7).

A point is (x, y) in pixels of the image it was clicked on and must lie in [0, W) x [0, H), the range the drag
kernels check (aldd, energy). Every change of grid is a plain size ratio, x' = x * W' / W, which keeps that
half-open range: one rule for latent grids, feature grids and images resized upstream of the node.

The canvas writes `{"version": 1, "image_size": [W, H], "pairs": [[hx, hy, tx, ty], ...]}`; a pair of two numbers
is a handle still waiting for its target. An optional `"mask_rle": [n0, n1, n0, ...]` is the editable region
painted on the canvas: run lengths of 0s and 1s, alternating and starting with 0s, over the W x H grid in
row-major order. API users may also send a flat list `[[hx, hy], [tx, ty], ...]`
(DragBench's `points`, handles and targets alternating) or a list of [hx, hy, tx, ty]; those carry no size,
so their coordinates are taken in the pixels of whatever image reaches the node.
"""
import json
import math
import sys
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

from .errors import ArgumentError

FORMAT_VERSION = 1
EMPTY_JSON = '{"version":1,"image_size":[0,0],"pairs":[]}'

Pair = Tuple[float, float, float, float]
Size = Tuple[int, int]


class ParsedPoints(NamedTuple):
    """The JSON read and checked on its own: `pairs` may be empty; `image_size` (W, H) is None when unknown;
    `mask` is the painted editable region, float32 [H, W] in {0, 1} on the image_size grid, or None."""
    pairs: Tuple[Pair, ...]
    image_size: Optional[Size]
    mask: Optional[torch.Tensor] = None


def _fmt(v: float) -> str:
    return f"{v:g}"


def _json_type(value) -> str:
    """What a parsed JSON value is, in JSON's words (a message never says NoneType or dict)."""
    for kind, word in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), ((int, float), "number")):
        if isinstance(value, kind):
            return word
    return "null" if value is None else type(value).__name__


def _shown(value, limit: int = 40) -> str:
    """A JSON value as a message quotes it: short, whatever its size or depth."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError):
        text = f"a JSON {_json_type(value)} too deep or long to quote"
    return text if len(text) <= limit else text[:limit] + "..."


def _check_inside(pairs, size: Size, name: str) -> None:
    width, height = size
    for k, pair in enumerate(pairs, 1):
        for role, (x, y) in (("handle", pair[:2]), ("target", pair[2:])):
            if not (0 <= x < width and 0 <= y < height):
                raise ArgumentError(name, f"{role} ({_fmt(x)}, {_fmt(y)}) of pair {k} is outside the "
                                          f"{width}x{height} image (x must be in 0..{width - 1}, y in 0..{height - 1})")


def _number(value, name: str, where: str) -> float:
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:   # an integer beyond float's range
            pass
    if not math.isfinite(number):
        raise ArgumentError(name, f"{where} holds {_shown(value)}, not a finite number")
    return number


def _size(value, name: str) -> Optional[Size]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))
    if not ok or (0 in value and value != [0, 0]):
        raise ArgumentError(name, f"image_size is {_shown(value)}; expected [W, H] in pixels, or [0, 0] if unknown")
    return None if value == [0, 0] else (value[0], value[1])


def _mask_from_runs(runs, size: Optional[Size], name: str) -> torch.Tensor:
    if size is None:
        raise ArgumentError(name, "mask_rle needs the image_size it was painted on")
    if not isinstance(runs, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in runs):
        raise ArgumentError(name, "mask_rle must be a list of run lengths (whole numbers >= 0)")
    width, height = size
    if sum(runs) != width * height:
        raise ArgumentError(name, f"mask_rle covers {sum(runs)} pixels; the {width}x{height} image has {width * height}")
    values = torch.arange(len(runs)) % 2
    flat = torch.repeat_interleave(values, torch.tensor(runs, dtype=torch.long))
    return flat.reshape(height, width).to(torch.float32)


def _pairs_from_dict(data: dict, name: str) -> Tuple[list, Optional[Size]]:
    version = data.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ArgumentError(name, f"has version {_shown(version)}; this DragEdit reads version {FORMAT_VERSION}")
    if not isinstance(data.get("pairs"), list):
        raise ArgumentError(name, "has no \"pairs\" list")
    size = _size(data.get("image_size", [0, 0]), name)
    rows = data["pairs"]
    for k, row in enumerate(rows, 1):
        if isinstance(row, list) and len(row) == 2:
            raise ArgumentError(name, f"pair {k} has a handle but no target")
        if not isinstance(row, list) or len(row) != 4:
            raise ArgumentError(name, f"pair {k} is {_shown(row)}; expected [hx, hy, tx, ty]")
    return rows, size


def _pairs_from_list(rows: list, name: str) -> list:
    lengths = {len(row) if isinstance(row, list) else None for row in rows}
    if lengths in (set(), {4}):
        return rows
    if lengths != {2}:
        raise ArgumentError(name, "a list must hold only [x, y] points (handle, target, handle, ...) or only "
                                  "[hx, hy, tx, ty] pairs")
    if len(rows) % 2:
        raise ArgumentError(name, f"has {len(rows)} points; handles and targets alternate, so there must be as "
                                  f"many targets as handles (an even count)")
    return [rows[i] + rows[i + 1] for i in range(0, len(rows), 2)]


def parse_points_json(text: str, name: str = "points_json") -> ParsedPoints:
    """Read the canvas JSON (or an API user's list); ArgumentError naming `name` for anything malformed.

    Checks syntax, structure, numbers and, when the JSON states its image size, that every point is inside it.
    An empty pair list is legal here: the canvas starts that way.
    """
    if not isinstance(text, str):
        raise ArgumentError(name, "expected a JSON text, got " + ("nothing" if text is None else type(text).__name__))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArgumentError(name, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise ArgumentError(name, "is nested too deeply: a pair is one list of four numbers") from None
    except ValueError:   # an integer past Python's digit limit for str -> int
        raise ArgumentError(name, f"holds a number longer than {sys.get_int_max_str_digits()} digits") from None
    mask = None
    if isinstance(data, dict):
        rows, size = _pairs_from_dict(data, name)
        if "mask_rle" in data:
            mask = _mask_from_runs(data["mask_rle"], size, name)
    elif isinstance(data, list):
        rows, size = _pairs_from_list(data, name), None
    else:
        raise ArgumentError(name, f"is a JSON {_json_type(data)}; expected an object with \"pairs\" or a list")
    pairs = tuple(tuple(_number(v, name, f"pair {k}") for v in row) for k, row in enumerate(rows, 1))
    if size is not None:
        _check_inside(pairs, size, name)
    return ParsedPoints(pairs, size, mask)


def _scale_pairs(pairs, size: Size, new_size: Size) -> Tuple[Pair, ...]:
    """x' = x * W' / W per axis; a point inside [0, W) stays inside [0, W') (the product can round up to W')."""
    sx, sy = new_size[0] / size[0], new_size[1] / size[1]
    last_x, last_y = math.nextafter(new_size[0], 0), math.nextafter(new_size[1], 0)

    def scale(v, ratio, last, limit):
        return min(v * ratio, last) if v < limit else v * ratio

    return tuple((scale(hx, sx, last_x, size[0]), scale(hy, sy, last_y, size[1]), scale(tx, sx, last_x, size[0]),
                  scale(ty, sy, last_y, size[1])) for hx, hy, tx, ty in pairs)


@dataclass(frozen=True)
class DragPoints:
    """The DRAG_POINTS payload: N >= 1 handle -> target pairs, (x, y) in pixels of a W x H image.

    Stored as tuples, so the payload is truly immutable (ComfyUI hands one output object to every consumer) and
    hashable; `handles` and `targets` build fresh tensors on each access.
    """
    pairs: Tuple[Pair, ...]
    image_size: Size

    def __post_init__(self):
        size = self.image_size
        if (not isinstance(size, tuple) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ArgumentError("image_size", f"expected (W, H) positive ints, got {size!r}")
        if not self.pairs:
            raise ArgumentError("pairs", "no handle -> target pair; at least one is needed")
        pairs = tuple(tuple(_number(v, "pairs", f"pair {k}") for v in p) for k, p in enumerate(self.pairs, 1))
        if any(len(p) != 4 for p in pairs):
            raise ArgumentError("pairs", "every pair must be (hx, hy, tx, ty)")
        _check_inside(pairs, size, "pairs")
        object.__setattr__(self, "pairs", pairs)

    @classmethod
    def from_tensors(cls, handles: torch.Tensor, targets: torch.Tensor, image_size: Size) -> "DragPoints":
        """From [N, 2] (x, y) tensors, e.g. the handles where a drag ended up."""
        h, t = (torch.as_tensor(p, dtype=torch.float64).detach().cpu() for p in (handles, targets))
        if h.dim() != 2 or h.shape[1] != 2 or h.shape != t.shape:
            raise ArgumentError("handles, targets", f"expected two [N, 2] tensors, got {tuple(h.shape)} and "
                                f"{tuple(t.shape)}")
        return cls(tuple(tuple(row) for row in torch.cat([h, t], dim=1).tolist()), tuple(image_size))

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def handles(self) -> torch.Tensor:
        """float32 [N, 2] (x, y), image pixels."""
        return torch.tensor([p[:2] for p in self.pairs], dtype=torch.float32)

    @property
    def targets(self) -> torch.Tensor:
        """float32 [N, 2] (x, y), image pixels."""
        return torch.tensor([p[2:] for p in self.pairs], dtype=torch.float32)

    def resized(self, width: int, height: int) -> "DragPoints":
        """The same points on the image resized to width x height (size ratio per axis)."""
        return DragPoints(_scale_pairs(self.pairs, self.image_size, (width, height)), (width, height))

    def scaled_to(self, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(handles, targets) float64 [N, 2] (x, y) in cells of an h x w grid (latent or feature map): x * w / W.

        Unrounded, in [0, w) x [0, h). Indexing a map needs round-and-clip, as GD pipeline.py:L308-322 rounds
        (`aldd.to_supervision`); a point in the last image column can round to w.
        """
        width, height = self.image_size
        scale = torch.tensor([w / width, h / height], dtype=torch.float64)
        pairs = torch.tensor(self.pairs, dtype=torch.float64)
        return pairs[:, :2] * scale, pairs[:, 2:] * scale

    def move_offset(self) -> Tuple[int, int]:
        """(dx, dy) whole pixels for move and paste: the first pair's arrow, target minus handle, rounded."""
        hx, hy, tx, ty = self.pairs[0]
        return round(tx - hx), round(ty - hy)

    def move_scale(self) -> float:
        """Resize factor for move and paste, from a second pair; 1.0 with one pair (further pairs are ignored).

        The second handle marks a point of the object and its target where that point must end up, so the
        object's span from the first handle grows as the targets' span: |t2 - t1| / |h2 - h1|. The ratio does not
        depend on the centre the object is scaled about (masks.place uses its bounding-box centre).
        """
        if len(self.pairs) < 2:
            return 1.0
        (h1x, h1y, t1x, t1y), (h2x, h2y, t2x, t2y) = self.pairs[:2]
        span = math.hypot(h2x - h1x, h2y - h1y)
        if span == 0:
            raise ArgumentError("pairs", "the second handle lies on the first, so it sets no scale; move it onto the "
                             "object's edge, or delete the second pair")
        scale = math.hypot(t2x - t1x, t2y - t1y) / span
        if scale == 0:
            raise ArgumentError("pairs", "the second target lies on the first, which would shrink the object to "
                             "nothing; move it, or delete the second pair")
        return scale


def painted_region(parsed: ParsedPoints, image_size: Size) -> Optional[torch.Tensor]:
    """The painted mask on the actual W x H image (nearest-neighbour when it was painted at another size, as the
    points follow the size ratio), float32 [H, W]; None when nothing is painted."""
    if parsed.mask is None or not bool(parsed.mask.any()):
        return None
    width, height = image_size
    if parsed.mask.shape == (height, width):
        return parsed.mask
    return torch.nn.functional.interpolate(parsed.mask[None, None], size=(height, width), mode="nearest")[0, 0]


def points_for_image(parsed: ParsedPoints, image_size: Size, name: str = "points_json") -> DragPoints:
    """DragPoints on the actual W x H image: rescaled by the size ratio when the JSON was drawn on an image of
    another size (resized upstream), checked inside it. ArgumentError naming `name` when there is no pair."""
    if not parsed.pairs:
        raise ArgumentError(name, "has no handle -> target pair")
    pairs = parsed.pairs
    if parsed.image_size is not None and parsed.image_size != tuple(image_size):
        pairs = _scale_pairs(pairs, parsed.image_size, image_size)
    _check_inside(pairs, image_size, name)
    return DragPoints(pairs, tuple(image_size))
