"""Mask geometry for the DragonDiffusion / DiffEditor energies (dragondiffusion.md §3, §9, §11.8).

Grids: the latent grid is [h, w]; the feature grid is [2h, 2w] (= H/4 x W/4 of the 8h x 8w working image,
dragondiffusion.md §0). Masks returned here are bool [h, w] tensors on the CPU: they are built once, before the
loop, so the index arithmetic may sync freely.

Empty-mask conventions: a mask the edit needs (the object) raises ValueError when it is empty; an optional mask
(a reference region, the drag editable region) that is all zeros counts as not given. Derived masks that come out
empty (no vacated area with a zero offset, nothing left to keep) are legal: the energy skips their terms.
"""
import math
from typing import NamedTuple, Optional, Sequence, Tuple

import kornia.morphology
import torch
import torch.nn.functional as F
from .errors import ArgumentError


def as_2d(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """One mask as a float64 [H, W] tensor from [H, W], [1, H, W] or [1, 1, H, W] (ComfyUI MASK is [B, H, W])."""
    if not isinstance(mask, torch.Tensor):
        raise ArgumentError(name, f"expected a tensor, got {type(mask).__name__}")
    if mask.dim() not in (2, 3, 4) or any(n != 1 for n in mask.shape[:-2]):
        raise ArgumentError(name, f"expected one mask [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(mask.shape)}")
    m = mask.detach().reshape(mask.shape[-2:]).to("cpu", torch.float64)
    if not torch.isfinite(m).all():
        raise ArgumentError(name, "contains NaN or inf")
    return m


def resize(mask: torch.Tensor, size: Tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Nearest resize of a [H, W] mask to `size`, then `> threshold` -> bool [size].

    The spec's ↓ (dragondiffusion.md §0) is this with threshold 0 on a bool mask; user masks use 0.5 as the
    official `mask_org` does (§3.1).
    """
    m = as_2d(mask)
    if tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=tuple(size), mode="nearest")[0, 0]
    return m > threshold


def to_grid(mask: torch.Tensor, latent_size: Tuple[int, int], factor: int, name: str = "mask",
            threshold: float = 0.5) -> torch.Tensor:
    """A user mask on the grid `factor` x latent (2: feature grid, 1: latent grid) -> bool [factor*h, factor*w].

    Accepted sizes: the working image (H // 8 == h and W // 8 == w, as ComfyUI's VAE crops), the feature grid or
    the latent grid. Anything else is a mask for another image: ValueError naming `name`.
    """
    m = as_2d(mask, name)
    h, w = latent_size
    H, W = m.shape
    if not ((H // 8, W // 8) == (h, w) or (H, W) in ((2 * h, 2 * w), (h, w))):
        raise ArgumentError(name, f"size {H}x{W} (HxW) does not fit the latent {h}x{w}; expected the image size "
                         f"{8 * h}x{8 * w}, the feature grid {2 * h}x{2 * w} or the latent grid {h}x{w}")
    return resize(m, (factor * h, factor * w), threshold)


def down(mask: torch.Tensor, latent_size: Tuple[int, int]) -> torch.Tensor:
    """The spec's ↓: a feature-grid bool mask [2h, 2w] -> latent grid bool [h, w] (nearest, then > 0)."""
    return resize(mask, latent_size, threshold=0.0)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a bool [h, w] mask by a (2r+1)^2 square; radius 0 returns a copy.

    The official pipeline dilates nothing (dragondiffusion.md §7); this is for the node layer's optional margin.
    """
    if radius < 0:
        raise ArgumentError("radius", f"must be >= 0, got {radius}")
    m = as_2d(mask).to(torch.float32)
    if radius == 0:
        return m > 0.5
    kernel = torch.ones(2 * radius + 1, 2 * radius + 1)
    return kornia.morphology.dilation(m[None, None], kernel)[0, 0] > 0.5


def bbox(mask: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """Inclusive bounding box (y0, x0, y1, x1) of a bool [h, w] mask, or None when it is empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def centroid(mask: torch.Tensor) -> Optional[Tuple[float, float]]:
    """Mean pixel position (cy, cx) of a bool [h, w] mask, or None when it is empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return float(ys.double().mean()), float(xs.double().mean())


def shift(mask: torch.Tensor, dy: int, dx: int, wrap: bool = False) -> torch.Tensor:
    """Shift a [h, w] mask by whole pixels; pixels pushed past the border are dropped (clipped).

    `wrap=True` is the official circular `torch.roll` (dragondiffusion.md §9.4), kept for `faithful_bugs`.
    """
    if wrap:
        return torch.roll(mask, shifts=(dy, dx), dims=(0, 1))
    h, w = mask.shape
    out = torch.zeros_like(mask)
    if abs(dy) < h and abs(dx) < w:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class Placement(NamedTuple):
    """Where an object lands: `mask` bool [h, w] on the destination grid, and pixel pairs as flat row-major
    indices, `dst` [K] into the destination grid and `src` [K] into the source grid (same size)."""
    mask: torch.Tensor
    dst: torch.Tensor
    src: torch.Tensor


def check_scale(scale: float) -> float:
    """A resize factor as a float; ValueError naming `scale` unless finite and > 0."""
    if not math.isfinite(scale) or scale <= 0:
        raise ArgumentError("scale", f"must be a finite number > 0, got {scale}")
    return float(scale)


def place(mask: torch.Tensor, offset: Sequence[float], scale: float = 1.0) -> Placement:
    """Resize an object about its own centre, then move it by `offset`; pixels that leave the grid are dropped.

    mask: bool [h, w], the object on the source grid. offset: (dx, dy) in pixels of this grid. A destination
    pixel q takes the source pixel round(c + (q - d - c)/s) (nearest resampling), with c the centre of the object's
    bounding box; so a source pixel p lands at c + s(p - c) + d within s/2 px. With s = 1 and a whole-pixel offset
    this is an exact shift and `dst - src` is constant. Fixes of dragondiffusion.md §9.4 (no wrap-around) and §9.6
    (about the object, not the image centre); `place_about_image_centre` is the official geometry.
    Raises ValueError for an empty mask, scale <= 0 or an offset that moves the whole object off the grid.
    """
    scale = check_scale(scale)
    dx, dy = (float(v) for v in offset)
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise ArgumentError("offset", f"must be finite, got {tuple(offset)}")
    box = bbox(mask)
    if box is None:
        raise ArgumentError("mask", "is empty (all zeros)")
    h, w = mask.shape
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    sy = torch.floor(cy + (torch.arange(h, dtype=torch.float64) - dy - cy) / scale + 0.5).long()[:, None]
    sx = torch.floor(cx + (torch.arange(w, dtype=torch.float64) - dx - cx) / scale + 0.5).long()[None, :]
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    src = sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)
    landed = inside & mask.flatten()[src]
    dst = torch.nonzero(landed.flatten()).squeeze(1)
    if dst.numel() == 0:
        if scale < 1 and ((dx, dy) == (0.0, 0.0) or not place_lands(mask, scale)):
            raise ArgumentError("scale", f"{scale:g} shrinks the object to nothing on the {h}x{w} grid")
        raise ArgumentError("offset",
                            f"{(dx, dy)} px with scale {scale} moves the object wholly out of the {h}x{w} grid")
    return Placement(landed, dst, src.flatten()[dst])


def place_lands(mask: torch.Tensor, scale: float) -> bool:
    """Whether the object, resized by `scale` in place, keeps at least one pixel."""
    try:
        place(mask, (0.0, 0.0), scale)
    except ArgumentError:
        return False
    return True


def place_about_image_centre(mask: torch.Tensor, size: Tuple[int, int], scale: float,
                             roll_canvas: Tuple[int, int] = (0, 0), roll_grid: Tuple[int, int] = (0, 0),
                             by_order: bool = True, allow_crop: bool = False) -> Placement:
    """The official move/paste geometry, bugs included (dragondiffusion.md §3.1, §3.3, §9.4, §9.6).

    mask: a user mask [H, W] (any size), resized nearest onto a canvas [int(h*s), int(w*s)] (> 0.5), rolled
    circularly by `roll_canvas` (dy, dx), centre-cropped or zero-padded to `size` (h, w), then rolled by
    `roll_grid`. The source of a canvas pixel is the grid pixel nearest-resizing reads (the official `F_tar`).
    by_order=True pairs destination and source pixels in row-major order, as the official energy does (a true
    correspondence only without wrap-around); False pairs them by position, as the official z_T copy does.
    A crop that drops object pixels raises the official "Resize out of bounds" unless `allow_crop`.
    """
    scale = check_scale(scale)
    h, w = size
    ch, cw = int(h * scale), int(w * scale)
    if ch < 1 or cw < 1:
        raise ArgumentError("scale", f"{scale} shrinks the {h}x{w} grid to nothing")
    canvas = resize(mask, (ch, cw))
    index = F.interpolate(torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w), size=(ch, cw),
                          mode="nearest")[0, 0]
    order = index[canvas].long()
    canvas, index = torch.roll(canvas, roll_canvas, (0, 1)), torch.roll(index, roll_canvas, (0, 1))
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid_index = torch.full((h, w), -1.0, dtype=torch.float64)
    ty, tx, sy, sx = max((h - ch) // 2, 0), max((w - cw) // 2, 0), max((ch - h) // 2, 0), max((cw - w) // 2, 0)
    ny, nx = min(h, ch), min(w, cw)
    grid[ty:ty + ny, tx:tx + nx] = canvas[sy:sy + ny, sx:sx + nx]
    grid_index[ty:ty + ny, tx:tx + nx] = index[sy:sy + ny, sx:sx + nx]
    if not allow_crop and int(grid.sum()) != int(canvas.sum()):
        raise ArgumentError("scale", f"{scale} with this offset pushes object pixels out of the image "
                         f"(official 'Resize out of bounds')")
    grid, grid_index = torch.roll(grid, roll_grid, (0, 1)), torch.roll(grid_index, roll_grid, (0, 1))
    dst = torch.nonzero(grid.flatten()).squeeze(1)
    if dst.numel() == 0:
        raise ArgumentError("offset", "moves the object wholly out of the image")
    src = order if by_order else grid_index.flatten()[dst].long()
    return Placement(grid, dst, src)


def patch_centre(point_xy: Sequence[float], size: Tuple[int, int], faithful_bugs: bool = False) -> Tuple[int, int]:
    """Centre (row, col) on the feature grid `size` (hf, wf) of the 3x3 patch about an image point (§3.4).

    point_xy: (x, y) in working-image pixels (4 per feature pixel); the centre (floor(y/4), floor(x/4)) is clipped
    to [1, n-2] on its own axis. faithful_bugs=True clips x with the height, as the official code does
    (utils.py:L139-142, dragondiffusion.md §9.2).
    """
    hf, wf = size
    cy = min(max(math.floor(float(point_xy[1]) / 4), 1), hf - 2)
    cx = min(max(math.floor(float(point_xy[0]) / 4), 1), (hf if faithful_bugs else wf) - 2)
    return cy, cx


def box(centre: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Flat row-major indices [<= 9] of the 3x3 box about `centre` (row, col) on a grid `size`, clipped to the map."""
    h, w = size
    ys = torch.arange(centre[0] - 1, centre[0] + 2)[:, None].expand(3, 3)
    xs = torch.arange(centre[1] - 1, centre[1] + 2)[None, :].expand(3, 3)
    on_map = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    return (ys * w + xs)[on_map]
