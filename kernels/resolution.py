"""The working resolution of the official DragonDiffusion demo: every input is resized to an area of about
resolution², each side a multiple of 64, before editing (dragondiffusion.md §0, utils.py resize_numpy_image)."""
import math

import torch
import torch.nn.functional as F

from .errors import ArgumentError

MULTIPLE = 64


def working_size(height: int, width: int, resolution: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """(H, W): the image scaled by sqrt(resolution² / (height·width)), each side rounded to a multiple of
    `multiple` (at least one multiple). 512x512 at 768 -> 768x768; 480x640 at 768 -> 640x896."""
    if height < 1 or width < 1:
        raise ArgumentError("image", f"is {width}x{height}; an image needs pixels")
    if resolution < multiple:
        raise ArgumentError("resolution", f"must be at least {multiple}, got {resolution}")
    k = math.sqrt(resolution * resolution / (height * width))
    return (max(multiple, round(height * k / multiple) * multiple),
            max(multiple, round(width * k / multiple) * multiple))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 resized to size (H, W): bicubic with antialiasing (the official code uses
    Lanczos), clamped to 0..1."""
    out = F.interpolate(image.movedim(-1, 1), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1).movedim(1, -1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MASK [B, H, W] resized to size (H, W), nearest (masks stay binary, as the official code resizes them)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0]
