"""Motion supervision: GoodDrag's information-preserving loss and DragDiffusion's loss (gooddrag.md §2, §3.2).

Both pull a feature patch one step from each handle toward its target. They differ in what the patch is pulled to:
- GoodDrag: the ORIGINAL features at the ORIGINAL handle p0 of the same timestep, stop-grad; step min(beta, dist);
  weight (2*r1)^2 (GD pipeline.py:L484-508);
- DragDiffusion: the CURRENT features at the CURRENT handle, stop-grad; unit step; weight (2*r1+1)^2
  (DD drag_utils.py:L128-148, DD-paper Eq. 3).
Coordinates are (row, col) in supervision-resolution (sup-res) pixels; 1 sup px = 2 image px (gooddrag.md §0).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from .errors import ArgumentError

VARIANTS = ("gooddrag", "dragdiffusion")
WEIGHT_RULES = ("2r", "2r+1")
OFFICIAL_REACH = 2.0  # sup px; both codes count a handle this close to its target as done (drag_utils.py, "< 2.0")


@dataclass(frozen=True)
class MotionSupervision:
    """The DRAG_MOTION payload: which motion-supervision loss the AlDD engine optimizes.

    variant: "gooddrag" (information-preserving) or "dragdiffusion".
    r1: patch radius in sup px; the patch is (2*r1+1)^2. GoodDrag 4, DragDiffusion 1.
    beta: the GoodDrag step bound in sup px (4 = 8 image px per step); DragDiffusion steps 1 px and ignores it.
    lam: weight of the masked latent term lam * sum|(z_{t-1} - z0_{t-1}) * (1 - M)|; GD bench 0.1, UI 0.2, DD 0.1.
    weight_rule: "2r" -> (2*r1)^2 (GoodDrag's code), "2r+1" -> (2*r1+1)^2 (DragDiffusion); None: the variant's own.
    reach: how close (sup px) a handle must come to its target to count as arrived; it stops being dragged there.
        The engine's handles and targets are whole sup px, so the default 1.0 asks for the target's own cell.
        Both codes use OFFICIAL_REACH (2.0), which counts the 8 cells around it as arrived: a drag of one cell
        (2 image px), such as a small object's edge in a resize, was never made, and the others stop a cell short.
    regularize_empty_mask: what an empty (all-zero) or absent mask means. False (default): no region was given,
        so there is no latent term, as DragDiffusion since commit e86e49a. True: GoodDrag's official behaviour,
        where M = 0 everywhere regularizes the whole latent (gooddrag.md §3.2 step 3, DD issue #45).
    """
    variant: str = "gooddrag"
    r1: int = 4
    beta: float = 4.0
    lam: float = 0.1
    weight_rule: str | None = None
    reach: float = 1.0
    regularize_empty_mask: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ArgumentError("variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        if isinstance(self.r1, bool) or not isinstance(self.r1, int) or self.r1 < 1:
            raise ArgumentError("r1", f"must be an integer >= 1 (sup-res px), got {self.r1!r}")
        if not self.beta > 0:
            raise ArgumentError("beta", f"must be > 0 (sup-res px per step), got {self.beta!r}")
        if not self.reach > 0:
            raise ArgumentError("reach", f"must be > 0 (sup-res px), got {self.reach!r}")
        if not self.lam >= 0:
            raise ArgumentError("lam", f"must be >= 0, got {self.lam!r}")
        if self.weight_rule is not None and self.weight_rule not in WEIGHT_RULES:
            raise ArgumentError("weight_rule", f"must be one of {WEIGHT_RULES} or None, got {self.weight_rule!r}")

    @property
    def patch_weight(self) -> int:
        """The per-point factor on the patch mean: 64 for GoodDrag's r1=4, 9 for DragDiffusion's r1=1."""
        rule = self.weight_rule or ("2r" if self.variant == "gooddrag" else "2r+1")
        side = 2 * self.r1 if rule == "2r" else 2 * self.r1 + 1
        return side * side


GOODDRAG_MOTION = MotionSupervision("gooddrag", r1=4, beta=4.0, lam=0.1)
DRAGDIFFUSION_MOTION = MotionSupervision("dragdiffusion", r1=1, beta=1.0, lam=0.1)


def active_points(spec: MotionSupervision, handles: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """bool [N]: points still at least spec.reach from their target; the others contribute nothing."""
    return (targets - handles).float().norm(dim=1) >= spec.reach


def step_vectors(spec: MotionSupervision, handles: torch.Tensor, targets: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """d [N, 2]: the shift of the supervised patch, toward the target; zero for points already there.

    GoodDrag: (g - h) / |g - h| * min(beta, |g - h|); DragDiffusion: the unit vector (gooddrag.md §3.4).
    """
    delta = (targets - handles).to(dtype)
    dist = delta.norm(dim=1, keepdim=True)
    d = delta / dist.clamp(min=spec.reach)
    if spec.variant == "gooddrag":
        d = d * dist.clamp(max=spec.beta)
    return torch.where(dist >= spec.reach, d, torch.zeros_like(d))


def sample_patch(features: torch.Tensor, centers: torch.Tensor, r: int) -> torch.Tensor:
    """Bilinear (2r+1)^2 patches of a feature map around float centers, differentiable in the map.

    features: [1, C, H, W]; centers: [N, 2] (row, col), float or long. Returns [N, C, 2r+1, 2r+1], contiguous,
    so a per-point reduction has the same bits as on a patch sampled alone.
    Boundary protection: sample positions outside the map read the nearest edge pixel (border replication), so
    patches near the edge keep their shape instead of raising or wrapping as the official slicing can
    (DD drag_utils.py:L138-146 protects only the unshifted patch). Integer centers give exact slices.
    """
    fmap = features[0]
    _, height, width = fmap.shape
    offsets = torch.arange(-r, r + 1, device=centers.device, dtype=torch.float64)
    rows = centers[:, :1].to(torch.float64) + offsets  # [N, P]
    cols = centers[:, 1:].to(torch.float64) + offsets
    row0, col0 = rows.floor(), cols.floor()
    fy, fx = (rows - row0).to(fmap.dtype), (cols - col0).to(fmap.dtype)
    row0, col0 = row0.long(), col0.long()
    r_lo, r_hi = row0.clamp(0, height - 1)[:, :, None], (row0 + 1).clamp(0, height - 1)[:, :, None]
    c_lo, c_hi = col0.clamp(0, width - 1)[:, None, :], (col0 + 1).clamp(0, width - 1)[:, None, :]
    wy, wx = fy[:, :, None], fx[:, None, :]
    patch = (fmap[:, r_lo, c_lo] * ((1 - wy) * (1 - wx)) + fmap[:, r_hi, c_lo] * (wy * (1 - wx))
             + fmap[:, r_lo, c_hi] * ((1 - wy) * wx) + fmap[:, r_hi, c_hi] * (wy * wx))
    return patch.transpose(0, 1).contiguous()


def drag_loss(spec: MotionSupervision, features: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor,
              ref_features: torch.Tensor | None = None, origins: torch.Tensor | None = None) -> torch.Tensor:
    """L_drag = sum_i w * mean|P_i - sg(T_i)| over the points still active; a 0-d tensor.

    features: [1, C, H, W] of the latent being optimized (with graph). handles, targets: [N, 2] (row, col).
    P_i is the bilinear patch at handle + d_i. T_i is, for GoodDrag, the patch of ref_features [1, C, H, W]
    (the reference trajectory's features at this timestep) at origins [N, 2] (the original handles p0); for
    DragDiffusion, the patch of `features` at the current handle. w = spec.patch_weight.
    """
    if spec.variant == "gooddrag":
        if ref_features is None or origins is None:
            raise ArgumentError("ref_features",
                                "the gooddrag variant needs ref_features and origins (the original handles)")
        reference = sample_patch(ref_features.detach(), origins, spec.r1)
    else:
        reference = sample_patch(features.detach(), handles, spec.r1)
    d = step_vectors(spec, handles, targets, torch.float64)
    moved = sample_patch(features, handles.to(torch.float64) + d, spec.r1)
    diff = (moved - reference.to(moved.dtype)).abs()
    weight = active_points(spec, handles, targets).to(diff.dtype) * spec.patch_weight
    loss = diff.new_zeros(())
    for n in range(diff.shape[0]):  # one mean per point: the same bits as a per-point loop, whatever N is
        loss = loss + diff[n].mean() * weight[n]
    return loss


def latent_editable(mask: torch.Tensor, sup_size: tuple[int, int], latent_size: tuple[int, int]) -> torch.Tensor:
    """M at latent resolution, float [1, 1, h, w] of 0/1.

    mask: image-resolution editable region [H, W], [1, H, W] or [1, 1, H, W], > 0 = editable (GD prepare_mask
    binarizes the same way). It is resized image -> sup_size -> latent_size by nearest neighbour twice, as both
    codes do (gooddrag.md §2 step 5).
    """
    if not 2 <= mask.dim() <= 4 or mask.numel() != mask.shape[-2] * mask.shape[-1]:
        raise ArgumentError("mask", f"must be [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(mask.shape)}")
    editable = (mask.reshape((1, 1) + tuple(mask.shape[-2:])) > 0).float()
    return F.interpolate(F.interpolate(editable, size=tuple(sup_size), mode="nearest"),
                         size=tuple(latent_size), mode="nearest")


def latent_keep(mask: torch.Tensor | None, sup_size: tuple[int, int], latent_size: tuple[int, int],
                spec: MotionSupervision) -> torch.Tensor | None:
    """(1 - M) at latent resolution [1, 1, h, w] (M from `latent_editable`), or None when the latent term is off.

    The term is off when lam == 0, or when the mask is absent or empty and spec.regularize_empty_mask is False.
    Called once per run with a CPU mask: the emptiness test reads no device.
    """
    if spec.lam == 0:
        return None
    if mask is None:
        if not spec.regularize_empty_mask:
            return None
        return torch.ones((1, 1) + tuple(latent_size))
    editable = latent_editable(mask, sup_size, latent_size)
    if not spec.regularize_empty_mask and not bool(editable.any()):
        return None
    return 1.0 - editable


def latent_term(spec: MotionSupervision, z_prev: torch.Tensor, orig_next: torch.Tensor,
                keep: torch.Tensor) -> torch.Tensor:
    """lam * sum|(z_{t-1} - z0_{t-1}) * (1 - M)|: keeps the region outside the mask on the reference trajectory.

    z_prev: [1, 4, h, w], the DDIM step of the latent being optimized; orig_next: the reference trajectory's
    z_{t-1}; keep: (1 - M) from `latent_keep`. GD pipeline.py:L484-508, DD drag_utils.py:L150-152.
    """
    return spec.lam * ((z_prev - orig_next) * keep.to(z_prev)).abs().sum()
