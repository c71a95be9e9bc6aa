"""Decoder feature taps: which output blocks to read, how to resize them, and a PCA preview (DRAG_FEATURES).

DragonDiffusion reads the outputs of diffusers up_blocks[1] and [2] (ComfyUI output blocks 5 and 8), nearest-
resized to H/4 with equal weights (dragondiffusion.md §2); GoodDrag / DragDiffusion read output block 8,
bilinearly resized to H/2 (gooddrag.md §0). ComfyUI's output_block_patch runs *before* output block k, so the
output of block k is seen at k + 1 (comfyhost.md); block 11's output never reaches the patch.
"""
import dataclasses

import torch
import torch.nn.functional as F
from .errors import ArgumentError

RESIZE_MODES = ("nearest", "bilinear")
MAX_TAP_BLOCK = 10   # the patch before block 11 sees block 10's output; nothing runs after block 11


class StopForward(Exception):
    """Raised by a truncating FeatureRecorder once the last tap is captured; the host catches it (§2 truncation)."""


@dataclasses.dataclass(frozen=True)
class FeatureTap:
    """Which decoder features an energy or tracker reads; no tensors (the DRAG_FEATURES payload, style.md §4.3).

    blocks: ComfyUI output block ids, each 0..10; modes: per-tap resize mode; scale: the target size as a
    fraction of the image size H x W; weights: per-tap weights for multi-scale energies.
    """
    blocks: tuple[int, ...]
    modes: tuple[str, ...]
    scale: float
    weights: tuple[float, ...]

    def __post_init__(self):
        if not self.blocks:
            raise ArgumentError("blocks", "is empty; tap at least one output block")
        if len(set(self.blocks)) != len(self.blocks):
            raise ArgumentError("blocks", f"has duplicates: {self.blocks}")
        for block in self.blocks:
            if not 0 <= block <= MAX_TAP_BLOCK:
                raise ArgumentError("blocks", f"output block {block} cannot be tapped; the output_block_patch sees "
                                 f"blocks 0..{MAX_TAP_BLOCK} only (block k's output arrives before block k+1)")
        if len(self.modes) != len(self.blocks) or len(self.weights) != len(self.blocks):
            raise ArgumentError("weights", f"modes and weights need one entry per block ({len(self.blocks)}), "
                             f"got {len(self.modes)} and {len(self.weights)}")
        for mode in self.modes:
            if mode not in RESIZE_MODES:
                raise ArgumentError("modes", f"{mode!r} is not one of {RESIZE_MODES}")
        if not 0 < self.scale <= 1:
            raise ArgumentError("scale", f"must be in (0, 1], got {self.scale}")

    @property
    def last_block(self) -> int:
        return max(self.blocks)

    def target_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(int(scale * H), int(scale * W)): 192x192 at 768² for DragonDiffusion, 256x256 at 512² for GoodDrag."""
        return int(self.scale * image_hw[0]), int(self.scale * image_hw[1])


DRAGON_TAP = FeatureTap(blocks=(5, 8), modes=("nearest", "nearest"), scale=0.25, weights=(0.5, 0.5))
GOODDRAG_TAP = FeatureTap(blocks=(8,), modes=("bilinear",), scale=0.5, weights=(1.0,))


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
