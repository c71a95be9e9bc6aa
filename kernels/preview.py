"""Drag previews on IMAGE tensors: the editable-region tint, point trajectories and numbered handle -> target arrows.

The marks are drawn once with Pillow on a transparent layer and alpha-blended onto every image of the batch in
float, so pixels without a mark keep their exact values.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from .errors import ArgumentError

HANDLE_RGB = (230, 57, 70)       # red handles, blue targets: DragGAN / DragDiffusion's colours
TARGET_RGB = (66, 135, 245)
ARROW_RGB = (255, 255, 255)
OUTLINE_RGB = (0, 0, 0)
TRACK_RGB = (255, 196, 0)
MASK_RGB = (60, 200, 120)
MASK_ALPHA = 0.35


def _as_points(points, name: str) -> torch.Tensor:
    p = torch.as_tensor(points, dtype=torch.float64).detach().cpu()
    if p.dim() != 2 or p.shape[-1] != 2:
        raise ArgumentError(name, f"expected [N, 2] (x, y) points, got shape {tuple(p.shape)}")
    return p


def _arrow(draw: ImageDraw.ImageDraw, start, end, unit: int, gap: float) -> None:
    """A line with a filled head whose tip stops `gap` px short of `end` (the target dot), outlined for contrast
    on any background; a bare line when the arrow is too short for a head."""
    (x0, y0), (x1, y1) = start, end
    length = float(np.hypot(x1 - x0, y1 - y0))
    head = 6 * unit + 2
    for colour, width in ((OUTLINE_RGB, 4 * unit), (ARROW_RGB, 2 * unit)):
        draw.line([start, end], fill=colour + (255,), width=width)
    if length <= head + 2 * gap:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    tip = (x1 - ux * gap, y1 - uy * gap)
    base = (tip[0] - ux * head, tip[1] - uy * head)
    wing = (-uy * head * 0.6, ux * head * 0.6)
    corners = [tip, (base[0] + wing[0], base[1] + wing[1]), (base[0] - wing[0], base[1] - wing[1])]
    draw.polygon(corners, fill=ARROW_RGB + (255,), outline=OUTLINE_RGB + (255,))


def _dot(draw: ImageDraw.ImageDraw, centre, radius: int, colour) -> None:
    x, y = centre
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour + (255,), outline=OUTLINE_RGB + (255,))


def marks_layer(size, handles, targets, trajectories: Optional[Sequence] = None, boxes=None) -> torch.Tensor:
    """float32 [H, W, 4] RGBA in 0..1: boxes, trajectories, arrows, dots and 1-based numbers, transparent elsewhere.

    size: (W, H). handles, targets: [N, 2] (x, y) pixels. trajectories: one [N, 2] per step, drawn as a path
    per point. boxes: [M, 4] (x0, y0, x1, y1) pixels, outlined (the point tracker's search windows). Stroke
    widths grow with the image (one unit per 256 px of the short side).
    """
    width, height = size
    handles, targets = _as_points(handles, "handles"), _as_points(targets, "targets")
    if handles.shape != targets.shape:
        raise ArgumentError("targets", f"{handles.shape[0]} handles but {targets.shape[0]} targets")
    unit = max(1, round(min(width, height) / 256))
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if boxes is not None:
        for x0, y0, x1, y1 in torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist():
            draw.rectangle([x0, y0, x1, y1], outline=TRACK_RGB + (255,), width=unit)
    if trajectories:
        steps = torch.stack([_as_points(p, "trajectories") for p in trajectories])
        if steps.shape[1] != handles.shape[0]:
            raise ArgumentError("trajectories",
                                f"{steps.shape[1]} points per step, but there are {handles.shape[0]} pairs")
        for i in range(steps.shape[1]):
            path = [tuple(p) for p in steps[:, i].tolist()]
            if len(path) > 1:
                draw.line(path, fill=TRACK_RGB + (255,), width=unit, joint="curve")
            _dot(draw, path[-1], unit + 1, TRACK_RGB)
    font = ImageFont.load_default(size=12 * unit)
    radius = 3 * unit + 1
    for k, (h, t) in enumerate(zip(handles.tolist(), targets.tolist()), 1):
        _arrow(draw, tuple(h), tuple(t), unit, gap=radius)
        _dot(draw, h, radius, HANDLE_RGB)
        _dot(draw, t, radius, TARGET_RGB)
        draw.text((h[0] + radius + unit, h[1] - radius - unit), str(k), font=font, anchor="lb",
                  fill=ARROW_RGB + (255,), stroke_width=unit, stroke_fill=OUTLINE_RGB + (255,))
    return torch.from_numpy(np.asarray(layer, dtype=np.float32) / 255.0)


def draw_drag(images: torch.Tensor, handles, targets, mask: Optional[torch.Tensor] = None,
              trajectories: Optional[Sequence] = None, boxes=None) -> torch.Tensor:
    """A new IMAGE [B, H, W, 3] (same dtype and device): `images` with the mask tinted, then the marks on top.

    images: [B, H, W, 3] in 0..1. handles, targets: [N, 2] (x, y) in these images' pixels. mask: [H, W] or
    [B|1, H, W] in 0..1 at the image size, the editable region. trajectories, boxes: see `marks_layer`.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ArgumentError("images", f"expected IMAGE [B, H, W, 3], got shape {tuple(images.shape)}")
    height, width = images.shape[1:3]
    out = images.detach().to("cpu", torch.float32)
    if mask is not None:
        m = mask.detach().to("cpu", torch.float32)
        if tuple(m.shape[-2:]) != (height, width):
            raise ArgumentError("mask",
                                f"is {m.shape[-1]}x{m.shape[-2]}, the images are {width}x{height}; resize it first")
        m = m.reshape(-1, height, width, 1).clamp(0, 1) * MASK_ALPHA
        if m.shape[0] not in (1, out.shape[0]):
            raise ArgumentError("mask",
                                f"a batch of {m.shape[0]} masks for {out.shape[0]} images; give 1 or {out.shape[0]}")
        out = out * (1 - m) + torch.tensor(MASK_RGB, dtype=torch.float32) / 255.0 * m
    layer = marks_layer((width, height), handles, targets, trajectories, boxes)
    alpha = layer[..., 3:]
    out = out * (1 - alpha) + layer[..., :3] * alpha
    return out.to(images.device, images.dtype)
