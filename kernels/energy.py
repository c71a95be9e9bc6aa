"""DragonDiffusion / DiffEditor energies on decoder features, and the DRAG_GUIDANCE payload (dragondiffusion.md §3).

Features are lists of L maps [1, C_l, 2h, 2w] on the feature grid (H/4 x W/4, §2); `cur` carries the graph to
z_t, `ref` is the base image's inverted latent at the same t, `src` the replace image's (appearance, paste).
Every pull term is w / (1 + 4 S) with S a mean similarity, every push term is linear in (1 + cos)/2 (§3).
The §9 fixes are on by default: no wrap-around, resize about the object, the input-scale bug fixed, the bank never
written, and empty terms skipped at build time, so no energy divides by zero. `faithful_bugs=True` restores the
official geometry (§9.1, 9.2, 9.4, 9.6) for comparisons; empty terms are skipped in both modes (§11.11).
"""
import dataclasses
import math
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import masks as M
from .errors import ArgumentError

MODES = ("move", "appearance", "paste", "drag")   # resize is move with scale != 1 (§3.1); names as plan.BANK_STEPS

ETA_MOVE = 0.08     # official hard-coded guidance step, move/resize (§4, Sampler.py:L225-231)
ETA_OTHER = 0.04    # appearance, paste, drag (§4)
RAW_COS_FLOOR = -0.2   # move's raw-cos pull terms: 1 + 4 S stays >= 0.2 (the official one can reach 0, §3)


@dataclasses.dataclass(frozen=True)
class EnergyWeights:
    """Term weights of §3: w_edit (pull to the target), w_content (keep the rest), w_contrast (push the vacated
    area off the object, move), w_inpaint (pull the vacated area to the reference region, move; push the handle
    area off its old content, drag). All finite and >= 0; a zero weight drops its term."""
    w_edit: float
    w_content: float
    w_contrast: float = 0.0
    w_inpaint: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ArgumentError(f.name, f"must be a finite number >= 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ModeDefaults:
    """One column of the §7 default table (Gradio defaults, src/demo/demo.py). energy_scale is s_E itself (the
    UI slider x 1000); sde_strength is the in-mask regional-SDE eta, sde_strength_outside the one outside."""
    cfg: float
    energy_scale: float
    eta: float
    weights: EnergyWeights
    sde_strength: float
    sde_strength_outside: float
    ip_scale: float
    bank_attention: str


MOVE_DEFAULTS = ModeDefaults(4.0, 500.0, ETA_MOVE, EnergyWeights(4.0, 6.0, 0.2, 0.8), 0.4, 0.0, 0.1, "replace")
APPEARANCE_DEFAULTS = ModeDefaults(5.0, 2000.0, ETA_OTHER, EnergyWeights(3.5, 5.0), 0.4, 0.0, 0.1, "masked")
DRAG_DEFAULTS = ModeDefaults(4.0, 2000.0, ETA_OTHER, EnergyWeights(4.0, 6.0, 0.0, 0.2), 0.4, 0.0, 0.1, "concat")
PASTE_DEFAULTS = ModeDefaults(4.0, 1500.0, ETA_OTHER, EnergyWeights(4.0, 6.0), 0.4, 0.0, 0.1, "masked")
DEFAULTS = {"move": MOVE_DEFAULTS, "appearance": APPEARANCE_DEFAULTS, "drag": DRAG_DEFAULTS,
            "paste": PASTE_DEFAULTS}


def _finite(name: str, v, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ArgumentError(name, f"must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


@dataclasses.dataclass(frozen=True, eq=False)
class EnergyGuidance:
    """The DRAG_GUIDANCE payload: one edit, its geometry already on the grids, built by `move`, `resize`,
    `appearance`, `paste` or `drag` below. Never mutated; `to(device)` returns a copy.

    latent_size: (h, w); masks: bool [2h, 2w] feature-grid masks by the spec's code names (move: org, cur, other,
    non_overlap, ref; appearance/paste: base, replace, other; drag: edit, other), `other` being the content
    region; pairs: ((dst [K], src [K]), ...) flat row-major feature indices, dst into the current features and
    src into the source ones (move/paste one set, drag one per point); push: drag's P_tar \\ P_cur per point;
    gate: bool [h, w], where the edit gradient applies (§4); sde_mask: bool [h, w], the regional-SDE region (§6);
    noise_pairs: latent-grid (dst, src) index pairs of the z_T copy (§3.1/3.3/3.4); keep_latent_mean: the z_T
    copy and each guidance step leave the latent's per-channel mean as it was (copy_noise, guidance.correction;
    move and drag); layer_weights: per-layer
    factors, None = the mode's official ones (§2); energy_scale: s_E; eta: the guidance step (0.08 move, 0.04).
    offset (dx, dy), scale and points [N, 4] (hx, hy, tx, ty) are in working-image pixels, for previews.
    """
    mode: str
    latent_size: Tuple[int, int]
    weights: EnergyWeights
    energy_scale: float
    eta: float
    masks: Mapping[str, torch.Tensor]
    gate: torch.Tensor
    sde_mask: torch.Tensor
    pairs: Tuple[Tuple[torch.Tensor, torch.Tensor], ...] = ()
    push: Tuple[torch.Tensor, ...] = ()
    noise_pairs: Tuple[Tuple[torch.Tensor, torch.Tensor], ...] = ()
    keep_latent_mean: bool = False
    layer_weights: Optional[Tuple[float, ...]] = None
    faithful_bugs: bool = False
    offset: Tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    points: Optional[torch.Tensor] = None
    index: Optional[Mapping[str, torch.Tensor]] = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ArgumentError("mode", f"must be one of {MODES}, got {self.mode!r}")
        _finite("energy_scale", self.energy_scale)
        _finite("eta", self.eta)
        h, w = self.latent_size
        for name, m in (("gate", self.gate), ("sde_mask", self.sde_mask)):
            if m.dtype != torch.bool or tuple(m.shape) != (h, w):
                raise ArgumentError(name, f"expected bool [{h}, {w}], got {m.dtype} {tuple(m.shape)}")
        for name, m in self.masks.items():
            if m.dtype != torch.bool or tuple(m.shape) != (2 * h, 2 * w):
                raise ArgumentError(f"masks[{name!r}]",
                                    f"expected bool [{2 * h}, {2 * w}], got {m.dtype} {tuple(m.shape)}")
        for dst, src in self.pairs:
            if dst.shape != src.shape or dst.numel() == 0:
                raise ArgumentError("pairs", "each (dst, src) must be two non-empty index tensors of one length")
        if self.layer_weights is not None:
            object.__setattr__(self, "layer_weights", tuple(_finite("layer_weights", float(v))
                                                            for v in self.layer_weights))
        # Flat indices once, at build time: boolean indexing in the loop would sync to the CPU (style.md §4.6.5).
        if self.index is None:
            object.__setattr__(self, "index", {k: torch.nonzero(m.flatten()).squeeze(1) for k, m in self.masks.items()})

    def to(self, device) -> "EnergyGuidance":
        """A copy with every tensor copied to `device` (masks, indices, gate), for use inside the loop.

        Always fresh tensors: a payload built under the executor's inference_mode holds inference tensors, which
        autograd refuses to save (index_select keeps its indices); copies made outside it are normal tensors.
        """
        def on(x):
            return x.to(device, copy=True)

        def pairs_on(pairs):
            return tuple((on(dst), on(src)) for dst, src in pairs)
        return dataclasses.replace(
            self, masks={k: on(v) for k, v in self.masks.items()}, gate=on(self.gate), sde_mask=on(self.sde_mask),
            pairs=pairs_on(self.pairs), push=tuple(on(p) for p in self.push), noise_pairs=pairs_on(self.noise_pairs),
            index={k: on(v) for k, v in self.index.items()})


# ----------------------------------------------------------------------------------------------------------- build

def _latent_size(latent_size) -> Tuple[int, int]:
    if len(latent_size) != 2 or any(not isinstance(n, int) or n < 3 for n in latent_size):
        raise ArgumentError("latent_size", f"expected (h, w) of ints >= 3, got {latent_size!r}")
    return int(latent_size[0]), int(latent_size[1])


def _offset(offset, input_scale: float) -> Tuple[float, float]:
    if len(offset) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in offset):
        raise ArgumentError("offset", f"expected finite (dx, dy) in pixels, got {offset!r}")
    return float(offset[0]) * input_scale, float(offset[1]) * input_scale


def _object(mask, latent_size, name: str) -> torch.Tensor:
    m = M.to_grid(mask, latent_size, 2, name)
    if not m.any():
        raise ArgumentError(name, "is empty (all zeros)")
    return m


def _optional(mask, latent_size, name: str) -> Optional[torch.Tensor]:
    """An optional user mask on the feature grid; all zeros counts as not given (masks.py conventions)."""
    if mask is None:
        return None
    m = M.to_grid(mask, latent_size, 2, name)
    return m if m.any() else None


def _settings(mode: str, weights, energy_scale, eta) -> dict:
    d = DEFAULTS[mode]
    return dict(weights=d.weights if weights is None else weights,
                energy_scale=d.energy_scale if energy_scale is None else energy_scale,
                eta=d.eta if eta is None else eta)


def _noise_placement(mask, latent_size, d_lat, scale, faithful_bugs, roll_canvas: bool):
    """Latent-grid (dst, src) pairs of the z_T copy; () when the object is too small for the latent grid.

    Fixed: the same placement as the features, at the latent grid. Faithful: the official resize about the
    image centre and circular roll by int(d/8 * s) (move) or int(d/8) (paste) of the *unscaled* offset (§9.1).
    """
    lat = M.to_grid(mask, latent_size, 1, "mask")
    if not lat.any():
        return ()
    if faithful_bugs:
        dx, dy = d_lat
        r = (int(dy * scale), int(dx * scale)) if roll_canvas else (int(dy), int(dx))
        p = M.place_about_image_centre(mask, latent_size, scale, roll_canvas=r if roll_canvas else (0, 0),
                                       roll_grid=(0, 0) if roll_canvas else r, by_order=False, allow_crop=True)
    else:
        try:
            p = M.place(lat, d_lat, scale)
        except ValueError:   # the object leaves the latent grid while a feature pixel stays: nothing to copy
            return ()
    return ((p.dst, p.src),)


def move(mask: torch.Tensor, offset: Sequence[float], latent_size: Tuple[int, int], *, scale: float = 1.0,
         reference_mask: Optional[torch.Tensor] = None, weights: Optional[EnergyWeights] = None,
         energy_scale: Optional[float] = None, eta: Optional[float] = None, input_scale: float = 1.0,
         layer_weights: Optional[Sequence[float]] = None, faithful_bugs: bool = False,
         keep_latent_mean: bool = True) -> EnergyGuidance:
    """Object moving and resizing (§3.1): the object in `mask` moves by `offset` and scales by `scale`.

    mask: [H, W] (image, feature or latent grid of `latent_size`); offset: (dx, dy) in pixels of the image the
    arrow was drawn on, `input_scale` = working size (8h) / that size. Fixed geometry: resized about the
    object's bounding-box centre, then moved, clipped at the border. faithful_bugs: the official one, about the
    image centre with the shift scaled by s, circular roll, z_T shifted by the unscaled offset (§9.1, 9.4, 9.6).
    reference_mask: the optional region the vacated area is inpainted from (default: everything kept).
    keep_latent_mean: the z_T copy and the guidance steps keep the latent's per-channel mean (copy_noise,
    guidance.correction); False: the official copy and step.
    Raises ValueError (naming the argument) for an empty mask, scale <= 0, or an object moved off the image.
    """
    size = _latent_size(latent_size)
    scale = M.check_scale(scale)
    input_scale = _finite("input_scale", input_scale, positive=True)
    dx, dy = _offset(offset, input_scale)
    org = _object(mask, size, "mask")
    hf, wf = 2 * size[0], 2 * size[1]
    if faithful_bugs:
        p = M.place_about_image_centre(mask, (hf, wf), scale,
                                       roll_canvas=(int(dy // 4 * scale), int(dx // 4 * scale)))
    else:
        p = M.place(org, (dx / 4, dy / 4), scale)
    cur = p.mask
    other = ~(cur | org)
    ref = _optional(reference_mask, size, "reference_mask")
    d_lat = (dx / input_scale / 8, dy / input_scale / 8) if faithful_bugs else (dx / 8, dy / 8)
    return EnergyGuidance(
        mode="move", latent_size=size, **_settings("move", weights, energy_scale, eta),
        masks=dict(org=org, cur=cur, other=other, non_overlap=org & ~cur, ref=other if ref is None else ref),
        gate=M.down(cur, size), sde_mask=M.down(cur | org, size), pairs=((p.dst, p.src),),
        noise_pairs=_noise_placement(mask, size, d_lat, scale, faithful_bugs, roll_canvas=True),
        keep_latent_mean=keep_latent_mean, layer_weights=layer_weights, faithful_bugs=faithful_bugs, offset=(dx, dy),
        scale=scale)


def resize(mask: torch.Tensor, scale: float, latent_size: Tuple[int, int], *, offset: Sequence[float] = (0.0, 0.0),
           **kwargs) -> EnergyGuidance:
    """Object resizing (§3.1): `move` with the scale first; same defaults (§7 move/resize column)."""
    return move(mask, offset, latent_size, scale=scale, **kwargs)


def appearance(mask_base: torch.Tensor, mask_replace: torch.Tensor, latent_size: Tuple[int, int], *,
               weights: Optional[EnergyWeights] = None, energy_scale: Optional[float] = None,
               eta: Optional[float] = None, layer_weights: Optional[Sequence[float]] = None) -> EnergyGuidance:
    """Appearance replacing (§3.2): the object in `mask_base` takes the look of the one in `mask_replace`.

    Both masks are on images of `latent_size` (the replace image is resized to the base size, as officially).
    Mean-pooled edit term, so no correspondence is needed; z_T is left as it is.
    """
    size = _latent_size(latent_size)
    base = _object(mask_base, size, "mask_base")
    rep = _object(mask_replace, size, "mask_replace")
    return EnergyGuidance(mode="appearance", latent_size=size, **_settings("appearance", weights, energy_scale, eta),
                          masks=dict(base=base, replace=rep, other=~base), gate=M.down(base, size),
                          sde_mask=M.down(base, size), layer_weights=layer_weights)


def paste(mask: torch.Tensor, offset: Sequence[float], latent_size: Tuple[int, int], *, scale: float = 1.0,
          weights: Optional[EnergyWeights] = None, energy_scale: Optional[float] = None,
          eta: Optional[float] = None, input_scale: float = 1.0, layer_weights: Optional[Sequence[float]] = None,
          faithful_bugs: bool = False) -> EnergyGuidance:
    """Object pasting (§3.3): the object in `mask` (drawn on the replace image) lands in the base image.

    offset, scale, input_scale as in `move`. Fixed: scaled about the object's centre and moved, clipped; the
    source pixels index the unscaled replace features. faithful_bugs: the official replace-image scaling about
    the image centre (emulated on the features), circular roll by d/4, z_T by the unscaled d/8 (§9.1, 9.4).
    masks['base'] is the destination M_b, masks['replace'] the source M_r (also the masked bank-attention pair).
    """
    size = _latent_size(latent_size)
    scale = M.check_scale(scale)
    input_scale = _finite("input_scale", input_scale, positive=True)
    dx, dy = _offset(offset, input_scale)
    src = _object(mask, size, "mask")
    hf, wf = 2 * size[0], 2 * size[1]
    if faithful_bugs:
        roll = (int(dy / 4), int(dx / 4))
        p = M.place_about_image_centre(mask, (hf, wf), scale, roll_grid=roll)
        src = torch.roll(p.mask, (-roll[0], -roll[1]), (0, 1))
    else:
        p = M.place(src, (dx / 4, dy / 4), scale)
    d_lat = (dx / input_scale / 8, dy / input_scale / 8) if faithful_bugs else (dx / 8, dy / 8)
    return EnergyGuidance(
        mode="paste", latent_size=size, **_settings("paste", weights, energy_scale, eta),
        masks=dict(base=p.mask, replace=src, other=~p.mask), gate=M.down(p.mask, size),
        sde_mask=M.down(p.mask, size), pairs=((p.dst, p.src),),
        noise_pairs=_noise_placement(mask, size, d_lat, scale, faithful_bugs, roll_canvas=False),
        layer_weights=layer_weights, faithful_bugs=faithful_bugs, offset=(dx, dy), scale=scale)


def _points(points, name: str, size: Tuple[int, int], input_scale: float) -> torch.Tensor:
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.dim() != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ArgumentError(name, f"expected [N, 2] (x, y) points with N >= 1, got shape {tuple(p.shape)}")
    p = p * input_scale
    h, w = size
    if not torch.isfinite(p).all() or (p < 0).any() or (p[:, 0] >= 8 * w).any() or (p[:, 1] >= 8 * h).any():
        raise ArgumentError(name, f"every point must lie inside the {8 * w}x{8 * h} (WxH) image, got {p.tolist()}")
    return p


def drag(handles, targets, latent_size: Tuple[int, int], *, mask: Optional[torch.Tensor] = None,
         weights: Optional[EnergyWeights] = None, energy_scale: Optional[float] = None,
         eta: Optional[float] = None, input_scale: float = 1.0, layer_weights: Optional[Sequence[float]] = None,
         faithful_bugs: bool = False, keep_latent_mean: bool = True) -> EnergyGuidance:
    """Point-based content dragging (§3.4): the 3x3 feature patch at each handle moves to its target.

    handles, targets: [N, 2] (x, y) in pixels of the image they were clicked on (x input_scale to the working
    8w x 8h image). mask: the editable region; None or all zeros makes the whole image editable (the official code
    then gates the edit gradient out entirely; faithful_bugs keeps that). faithful_bugs also clips x with the
    height (§9.2) and copies the z_T patches one after another, a later pair reading an earlier pair's write
    (§9.3, without writing into the bank). keep_latent_mean as in `move`.
    """
    size = _latent_size(latent_size)
    input_scale = _finite("input_scale", input_scale, positive=True)
    hs, ts = _points(handles, "handles", size, input_scale), _points(targets, "targets", size, input_scale)
    if hs.shape != ts.shape:
        raise ArgumentError("targets", f"{ts.shape[0]} targets for {hs.shape[0]} handles; give one target per handle")
    grid = (2 * size[0], 2 * size[1])
    edit = _optional(mask, size, "mask")
    if edit is None:
        edit = torch.full(grid, not faithful_bugs, dtype=torch.bool)
    pairs, push, noise = [], [], []
    for j, (hp, tp) in enumerate(zip(hs.tolist(), ts.tolist())):
        ch, ct = M.patch_centre(hp, grid, faithful_bugs), M.patch_centre(tp, grid, faithful_bugs)
        tar, cur = M.box(ch, grid), M.box(ct, grid)
        if tar.numel() != cur.numel():
            raise ArgumentError("handles",
                                f"pair {j} patches fall partly off the {grid[1]}-wide map (official x-clip bug, "
                             f"faithful_bugs=True); use faithful_bugs=False")
        pairs.append((cur, tar))
        push.append(tar[~torch.isin(tar, cur)])
        lat = [(min(max(c[0] // 2, 1), size[0] - 2), min(max(c[1] // 2, 1), size[1] - 2)) for c in (ch, ct)]
        noise.append((M.box(lat[1], size), M.box(lat[0], size)))
    return EnergyGuidance(
        mode="drag", latent_size=size, **_settings("drag", weights, energy_scale, eta),
        masks=dict(edit=edit, other=~edit), gate=M.down(edit, size), sde_mask=M.down(edit, size),
        pairs=tuple(pairs), push=tuple(push), noise_pairs=tuple(noise), keep_latent_mean=keep_latent_mean,
        layer_weights=layer_weights, faithful_bugs=faithful_bugs, points=torch.cat([hs, ts], dim=1))


def copy_noise(guidance: EnergyGuidance, z_T: torch.Tensor, z_T_source: Optional[torch.Tensor] = None) -> torch.Tensor:
    """z_T [B, 4, h, w] with the object's starting noise copied to where it should end up (§3.1, 3.3, 3.4).

    move/drag copy within z_T; paste copies from the replace image's `z_T_source`; appearance returns z_T.
    Returns a new tensor: the bank's z_T is never written (fix of §9.3). faithful_bugs drags copy the patches in
    order, each reading the previous writes; fixed ones all read the untouched z_T.

    keep_latent_mean (move, drag; not in the paper): what the copy adds to z_T's per-channel sum is taken back evenly
    from the cells it leaves alone. SD's schedule leaves signal in z_T (ᾱ_T = 0.0047), so an inverted z_T's mean
    carries the image's mean colour, and DDIM decodes a shifted mean as a colour shift of the whole image; the
    official copy duplicates the object's noise without taking it from the old place, which shifts the mean (a
    moved object leaves the image's mean colour as it was). On the demo model the unchanged region of a move goes
    from 14.4 to 6.3 (README: the demo model); the same flag keeps the guidance step's mean (guidance.correction).
    """
    h, w = guidance.latent_size
    if z_T.dim() != 4 or tuple(z_T.shape[-2:]) != (h, w):
        raise ArgumentError("z_T", f"expected [B, C, {h}, {w}], got {tuple(z_T.shape)}")
    if guidance.mode == "paste":
        if z_T_source is None or z_T_source.shape != z_T.shape:
            raise ArgumentError("z_T_source", f"paste needs the replace image's z_T of shape {tuple(z_T.shape)}, got "
                             f"{None if z_T_source is None else tuple(z_T_source.shape)}")
        source = z_T_source
    else:
        source = z_T
    out = z_T.clone()
    flat = out.view(*out.shape[:2], h * w)
    read = flat if guidance.faithful_bugs and guidance.mode == "drag" else source.reshape(flat.shape)
    written = torch.zeros(h * w, dtype=torch.bool, device=out.device)
    for dst, src in guidance.noise_pairs:
        dst = dst.to(out.device)
        flat[..., dst] = read[..., src.to(out.device)]
        written[dst] = True
    if guidance.keep_latent_mean and not written.all():
        kept = torch.nonzero(~written).squeeze(1)
        added = (flat - z_T.reshape(flat.shape)).sum(-1, keepdim=True)   # [B, C, 1]
        flat[..., kept] -= added / kept.numel()
    return out


# ---------------------------------------------------------------------------------------------------------- energy

def _layer_weights(guidance: EnergyGuidance, n: int) -> Tuple[float, ...]:
    """Per-layer factors: the official 1/L for move and drag, 1 (a plain sum) for appearance and paste (§2)."""
    if guidance.layer_weights is not None:
        if len(guidance.layer_weights) != n:
            raise ArgumentError("layer_weights", f"{len(guidance.layer_weights)} weights for {n} feature layers")
        return guidance.layer_weights
    return (1.0 / n,) * n if guidance.mode in ("move", "drag") else (1.0,) * n


def _flat(features, name: str, size: Tuple[int, int]):
    out = []
    for f in features:
        if f.dim() != 4 or f.shape[0] != 1 or tuple(f.shape[-2:]) != size:
            raise ArgumentError(name, f"expected maps [1, C, {size[0]}, {size[1]}], got {tuple(f.shape)}")
        f = f[0].flatten(1)   # [C, N]
        out.append(f.float() if f.dtype in (torch.float16, torch.bfloat16) else f)   # cosines in fp32 at least
    return out


def _pixel_cos(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """cos over channels of a[:, ia] and b[:, ib], pixel by pixel: [K]."""
    return F.cosine_similarity(a.index_select(1, ia), b.index_select(1, ib), dim=0)


def _pooled_cos(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """cos of the mean features of two regions: a 0-d tensor."""
    return F.cosine_similarity(a.index_select(1, ia).mean(1), b.index_select(1, ib).mean(1), dim=0)


def _pull(w: float, s: torch.Tensor, raw: bool = False) -> torch.Tensor:
    """w / (1 + 4 S): S a raw-cos mean (move, floored at RAW_COS_FLOOR) or a (1 + cos)/2 mean."""
    return w / (1.0 + 4.0 * (s.clamp_min(RAW_COS_FLOOR) if raw else s))


def _half(c: torch.Tensor) -> torch.Tensor:
    return (1.0 + c) / 2.0


def _sum(terms, like: torch.Tensor) -> torch.Tensor:
    """The sum of the active terms, or a constant 0 (no graph) when none is: its gradient is then skipped."""
    return torch.stack(terms).sum() if terms else like.new_zeros(())


def energies(guidance: EnergyGuidance, cur: Sequence[torch.Tensor], ref: Sequence[torch.Tensor],
             src: Optional[Sequence[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(E_edit, E_con), two 0-d tensors (fp32, or fp64 for fp64 features), for the guidance's mode (§3.1-3.4).

    cur, ref, src: lists of L feature maps [1, C_l, 2h, 2w]: current (with graph), base reference, replace
    reference (appearance and paste only; move and drag pull from `ref`). Terms with a zero weight or an empty
    region are skipped by their index sizes (known at build time, so no sync), never evaluated on zero pixels.
    """
    h, w = guidance.latent_size
    size = (2 * h, 2 * w)
    cur, ref = _flat(cur, "cur", size), _flat(ref, "ref", size)
    if len(cur) != len(ref) or not cur:
        raise ArgumentError("ref", f"{len(ref)} layers for {len(cur)} current layers")
    if guidance.mode in ("appearance", "paste"):
        if src is None:
            raise ArgumentError("src", f"the {guidance.mode} energy needs the replace image's reference features")
        src = _flat(src, "src", size)
        if len(src) != len(cur):
            raise ArgumentError("src", f"{len(src)} layers for {len(cur)} current layers")
    else:
        src = ref
    lw = _layer_weights(guidance, len(cur))
    wt, ix = guidance.weights, guidance.index
    edit, con = [], []
    for l, (c, r, s) in enumerate(zip(cur, ref, src)):
        if guidance.mode == "move":
            (dst, sp), = guidance.pairs
            if wt.w_edit:
                edit.append(lw[l] * _pull(wt.w_edit, _pixel_cos(c, dst, s, sp).mean(), raw=True))
            other, vacated = ix["other"], ix["non_overlap"]
            if wt.w_content and other.numel():
                con.append(lw[l] * _pull(wt.w_content, _pixel_cos(r, other, c, other).mean(), raw=True))
            if wt.w_contrast and vacated.numel():
                con.append(lw[l] * wt.w_contrast * _half(_pixel_cos(c, vacated, r, vacated)).mean())
            if wt.w_inpaint and vacated.numel() and ix["ref"].numel():
                con.append(_pull(wt.w_inpaint, _half(_pooled_cos(c, vacated, r, ix["ref"]))))   # no 1/L (§3.1)
        elif guidance.mode == "drag":
            n = len(guidance.pairs)
            for (dst, sp), push in zip(guidance.pairs, guidance.push):
                if wt.w_edit:
                    edit.append(lw[l] / n * _pull(wt.w_edit, _half(_pixel_cos(c, dst, r, sp)).mean()))
                if wt.w_inpaint and push.numel():
                    edit.append(lw[l] / n * wt.w_inpaint * _half(_pixel_cos(c, push, r, push)).mean())
            if wt.w_content and ix["other"].numel():
                con.append(lw[l] * _pull(wt.w_content, _half(_pixel_cos(r, ix["other"], c, ix["other"])).mean()))
        else:
            if wt.w_edit:
                if guidance.mode == "appearance":
                    sim = _half(_pooled_cos(c, ix["base"], s, ix["replace"]))
                else:
                    (dst, sp), = guidance.pairs
                    sim = _half(_pixel_cos(c, dst, s, sp)).mean()
                edit.append(lw[l] * _pull(wt.w_edit, sim))
            if wt.w_content and ix["other"].numel():
                con.append(lw[l] * _pull(wt.w_content, _half(_pixel_cos(c, ix["other"], r, ix["other"])).mean()))
    return _sum(edit, cur[0]), _sum(con, cur[0])
