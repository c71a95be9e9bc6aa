"""Decoder feature taps: which output blocks to read, how to resize them, and a PCA preview (DRAG_FEATURES).

DragonDiffusion reads the outputs of diffusers up_blocks[1] and [2] (ComfyUI output blocks 5 and 8), nearest-
resized to H/4 with equal weights (dragondiffusion.md §2); GoodDrag / DragDiffusion read output block 8,
bilinearly resized to H/2 (gooddrag.md §0). ComfyUI's output_block_patch runs *before* output block k, so the
output of block k is seen at k + 1 (comfyhost.md); the last block's output never reaches the patch.
"""
import dataclasses
import math

import torch
import torch.nn.functional as F
from .errors import ArgumentError

RESIZE_MODES = ("nearest", "bilinear")


class StopForward(Exception):
    """Raised by a truncating FeatureRecorder once the last tap is captured; the host catches it (§2 truncation)."""


@dataclasses.dataclass(frozen=True)
class FeatureTap:
    """Which decoder features an energy or tracker reads; no tensors (the DRAG_FEATURES payload, style.md §4.3).

    blocks: output block ids of the model's decoder (the host checks them against the model's family); modes:
    per-tap resize mode; scale: the target size as a fraction of the image size H x W; weights: per-tap weights
    (None: the method's own, e.g. DragonDiffusion's 1/L for move and drag, a plain sum for appearance and paste);
    family: the model family the block ids were chosen for, so features made for another family are refused.
    """
    blocks: tuple[int, ...]
    modes: tuple[str, ...]
    scale: float
    weights: tuple[float, ...] | None = None
    family: str | None = None

    def __post_init__(self):
        if not self.blocks:
            raise ArgumentError("blocks", "is empty; tap at least one output block")
        if len(set(self.blocks)) != len(self.blocks):
            raise ArgumentError("blocks", f"has duplicates: {self.blocks}")
        if any(not isinstance(block, int) or block < 0 for block in self.blocks):
            raise ArgumentError("blocks", f"must be output block numbers >= 0, got {self.blocks}")
        if len(self.modes) != len(self.blocks):
            raise ArgumentError("modes", f"need one entry per block ({len(self.blocks)}), got {len(self.modes)}")
        for mode in self.modes:
            if mode not in RESIZE_MODES:
                raise ArgumentError("modes", f"{mode!r} is not one of {RESIZE_MODES}")
        if self.weights is not None:
            if len(self.weights) != len(self.blocks):
                raise ArgumentError("weights", f"need one weight per block ({len(self.blocks)}), got "
                                               f"{len(self.weights)}")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in self.weights):
                raise ArgumentError("weights", f"must be finite numbers >= 0, got {self.weights}")
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 1):
            raise ArgumentError("scale", f"must be in (0, 1], got {self.scale}")

    @property
    def last_block(self) -> int:
        return max(self.blocks)

    def target_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(int(scale * H), int(scale * W)): 192x192 at 768² for DragonDiffusion, 256x256 at 512² for GoodDrag."""
        return int(self.scale * image_hw[0]), int(self.scale * image_hw[1])


def dragon_tap(blocks: tuple[int, int], family: str | None = None) -> FeatureTap:
    """DragonDiffusion's features: two decoder layers (SD-1.5: output 5 and 8), nearest-resized to H/4, the method's
    own layer weights (dragondiffusion.md §2)."""
    return FeatureTap(blocks=tuple(blocks), modes=("nearest",) * len(blocks), scale=0.25, family=family)


def gooddrag_tap(block: int, family: str | None = None) -> FeatureTap:
    """GoodDrag / DragDiffusion's features: one decoder layer (SD-1.5: output 8), bilinear to H/2 (gooddrag.md §0)."""
    return FeatureTap(blocks=(block,), modes=("bilinear",), scale=0.5, family=family)


def resize_feature(feature: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, *size]; 'nearest' as F.interpolate's default, 'bilinear' with align_corners=False."""
    if mode == "nearest":
        return F.interpolate(feature, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
    raise ArgumentError("mode", f"must be one of {RESIZE_MODES}, got {mode!r}")


def resize_features(features, tap: FeatureTap, image_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Each raw tap [B, C_k, h_k, w_k] resized as `tap` says to [B, C_k, *tap.target_size(image_hw)]."""
    size = tap.target_size(image_hw)
    return [resize_feature(f, size, mode) for f, mode in zip(features, tap.modes)]


def concat_features(features, weights=None) -> torch.Tensor:
    """Same-size taps [B, C_k, H', W'] concatenated on channels, each times its weight if given.

    -> [B, sum C_k, H', W'] (multi-scale features for L1 tracking).
    """
    if weights is not None:
        features = [f * w for f, w in zip(features, weights)]
    return torch.cat(list(features), dim=1)


class FeatureRecorder:
    """Captures the tapped block outputs during one UNet forward; fed by the host's output_block_patch.

    The host calls `observe(k, h)` with the id k of the output block about to run and its input h, which is
    the output of block k - 1. With truncate, StopForward is raised once the last tap is captured, so the rest
    of the UNet never runs (the official estimator stops after up_blocks[2], dragondiffusion.md §2).
    """

    def __init__(self, tap: FeatureTap, image_hw: tuple[int, int], truncate: bool = True):
        self.tap = tap
        self.image_hw = tuple(image_hw)
        self.truncate = truncate
        self._raw: dict[int, torch.Tensor] = {}

    def observe(self, k: int, h: torch.Tensor) -> None:
        """Keep h [B, C, h, w] if block k - 1 is tapped; raise StopForward after the last tap when truncating."""
        block = k - 1
        if block in self.tap.blocks:
            self._raw[block] = h
            if self.truncate and self.complete:
                raise StopForward()

    @property
    def complete(self) -> bool:
        return len(self._raw) == len(self.tap.blocks)

    def features(self) -> list[torch.Tensor]:
        """The taps in `tap.blocks` order, resized: list of [B, C_k, *tap.target_size(image_hw)]."""
        if not self.complete:
            missing = [b for b in self.tap.blocks if b not in self._raw]
            raise ArgumentError("tap", f"output blocks {missing} were not observed in this forward")
        return resize_features([self._raw[b] for b in self.tap.blocks], self.tap, self.image_hw)


def pca_rgb(feature: torch.Tensor) -> torch.Tensor:
    """A PCA preview of a feature map [C, h, w] as an image [h, w, 3] in 0..1, deterministic.

    The top three principal components over pixels (eigenvectors of the C x C covariance, float64), each
    signed so its largest loading is positive, then min-max scaled per channel. C < 3 pads with zeros.
    """
    channels, height, width = feature.shape
    x = feature.detach().to(torch.float64).reshape(channels, -1).T
    x = x - x.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(x.T @ x)
    top = vectors[:, -3:].flip(1)
    signs = top.gather(0, top.abs().argmax(dim=0, keepdim=True)).sign()
    top = top * torch.where(signs == 0, 1.0, signs)
    proj = x @ top
    lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    return proj.reshape(height, width, 3).to(torch.float32)
