"""Nearest-feature point tracking for GoodDrag and DragDiffusion (gooddrag.md §2 step 2, §3.2 step 5).

After motion supervision moved the content, each handle is re-localized: the position, within a (2*r2+1)^2
window around the current handle, whose feature is nearest (L1 over channels) to the ORIGINAL handle's feature
in the reference features of the same timestep. All coordinates are (row, col) in supervision-resolution pixels.
"""
from dataclasses import dataclass

import torch
from .errors import ArgumentError

GOODDRAG_R2 = 12
DRAGDIFFUSION_R2 = 3


@dataclass(frozen=True)
class TrackerSpec:
    """The DRAG_TRACKER payload: how handles are re-localized between motion-supervision steps.

    r2: search radius in sup-res px; GoodDrag 12 (25x25 window), DragDiffusion 3 (gooddrag.md §3.3, §2).
    clamp: True cuts the window at the map edge and maps the argmin back with the cut window's origin, as
        DragDiffusion does (DD drag_utils.py:L24-45). False keeps GoodDrag's arithmetic, origin = handle - r2
        (GD drag_utils.py:L37-76): it differs only where the window crosses the top or left edge, where the
        official code errors; there the result is shifted by the cut and then clipped into the map.
    """
    r2: int = GOODDRAG_R2
    clamp: bool = True

    def __post_init__(self):
        if isinstance(self.r2, bool) or not isinstance(self.r2, int) or self.r2 < 1:
            raise ArgumentError("r2", f"must be an integer >= 1 (sup-res px), got {self.r2!r}")
        if not isinstance(self.clamp, bool):
            raise ArgumentError("clamp", f"must be a bool, got {self.clamp!r}")


def track(spec: TrackerSpec, features: torch.Tensor, ref_features: torch.Tensor, handles: torch.Tensor,
          origins: torch.Tensor) -> torch.Tensor:
    """New handle positions: argmin over the window of sum_c |features[:, q] - ref_features[:, origin]|.

    features: [1, C, H, W], the current map (its graph is not used). ref_features: [1, C, H, W], the reference map
    of the same timestep. handles, origins: long [N, 2] (row, col); origins are the ORIGINAL handles p0, so the
    reference vector never drifts with the handle (gooddrag.md §10 item 5). Returns long [N, 2] on the handles'
    device. Ties go to the first minimum in row-major window order, as torch.argmin and both official codes.
    """
    with torch.no_grad():
        fmap = features[0]
        _, height, width = fmap.shape
        dtype = torch.promote_types(fmap.dtype, torch.float32)
        ref = ref_features[0][:, origins[:, 0], origins[:, 1]].to(dtype)  # [C, N]
        offsets = torch.arange(-spec.r2, spec.r2 + 1, device=handles.device)
        rows = handles[:, :1] + offsets  # [N, P]
        cols = handles[:, 1:] + offsets
        window = fmap[:, rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]]
        dist = (window.to(dtype) - ref[:, :, None, None]).abs().sum(dim=0)  # [N, P, P]
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        dist = dist.masked_fill(~inside, float("inf"))
        k = dist.flatten(1).argmin(dim=1)
        size = offsets.numel()
        new = torch.stack([rows.gather(1, (k // size)[:, None])[:, 0], cols.gather(1, (k % size)[:, None])[:, 0]],
                          dim=1)
        if not spec.clamp:
            cut = (spec.r2 - handles).clamp(min=0)
            shifted = (new - cut).clamp(min=0)
            new = torch.stack([shifted[:, 0].clamp(max=height - 1), shifted[:, 1].clamp(max=width - 1)], dim=1)
        return new
