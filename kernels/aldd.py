"""AlDD, GoodDrag's alternating drag and denoising, as a `StepPolicy`; DragDiffusion is its one-chunk case.

Before each drag step of an `aldd_plan`, the policy optimizes the edit latent (batch item 1 of z = [source, edit],
VP space, gooddrag.md §0) with a fresh Adam: B drags of J gradient steps each, tracking the handles after every
drag (gooddrag.md §3.1-3.2). The loop then takes the DDIM step of both items, with MasaCtrl-style bank attention
where the plan (or `revise_step`, once dragging stopped early) says so; that is the host's eps_fn.
DragDiffusion (gooddrag.md §2) is the `DRAGDIFFUSION` preset: the switches of gooddrag.md §3.4.

Points are handles/targets float [N, 2] (x, y) in image pixels with image_size (W, H); inside, they are long
(row, col) at supervision resolution, sup = (int(H/2), int(W/2)) by default (gooddrag.md §0).
"""
import dataclasses
from dataclasses import dataclass

import torch

from . import motion as motion_mod
from . import tracker as tracker_mod
from .ddim import StepPolicy, ddim_step
from .motion import DRAGDIFFUSION_MOTION, GOODDRAG_MOTION, MotionSupervision
from .plan import (DRAGDIFFUSION_DRAG_STEPS, DRAGDIFFUSION_STRENGTH, GOODDRAG_DRAG_STEPS, GOODDRAG_STRENGTH,
                   PlanStep, aldd_plan)
from .schedule import alpha_bar_at
from .tracker import DRAGDIFFUSION_R2, GOODDRAG_R2, TrackerSpec
from .errors import ArgumentError

TRACK_TIMINGS = ("after", "before")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArgumentError(name, f"must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class AlDDSettings:
    """The AlDD schedule and optimizer; defaults are GoodDrag's bench values (gooddrag.md §3.3).

    strength: inverted fraction of the steps (0.75 -> t=741). drag_steps: T2, timesteps with a drag chunk.
    drags_per_step: B. grad_steps_per_drag: J. lr: Adam lr on VP z. max_no_change: stop dragging after this many
    consecutive trackings that moved no handle, counted across timesteps as GoodDrag does; 0 = never.
    track_timing: "after" = GoodDrag's code, tracking right after the J-th step on the features computed before
    it (one step stale); "before" = on fresh features at the next forward, before that loss (DragDiffusion);
    a chunk then ends with one gradient-free forward that places its last tracking.
    track_at_step_start: re-track (uncounted) on the first forward of each chunk (GoodDrag; pipeline.py:L551-558).
    bank_from_start: MasaCtrl on the drag steps' DDIM steps too (DragDiffusion) instead of after dragging.
    """
    strength: float = GOODDRAG_STRENGTH
    drag_steps: int = GOODDRAG_DRAG_STEPS
    drags_per_step: int = 10
    grad_steps_per_drag: int = 3
    lr: float = 0.02
    max_no_change: int = 5
    track_timing: str = "after"
    track_at_step_start: bool = True
    bank_from_start: bool = False

    def __post_init__(self):
        for name in ("drag_steps", "max_no_change"):
            _check_int(name, getattr(self, name), 0)
        for name in ("drags_per_step", "grad_steps_per_drag"):
            _check_int(name, getattr(self, name), 1)
        if not self.lr > 0:
            raise ArgumentError("lr", f"must be > 0, got {self.lr!r}")
        if self.track_timing not in TRACK_TIMINGS:
            raise ArgumentError("track_timing", f"must be one of {TRACK_TIMINGS}, got {self.track_timing!r}")

    def plan(self, num_steps: int = 50) -> list[PlanStep]:
        """The step plan for these settings; raises ValueError naming drag_steps if T2 exceeds the steps left."""
        return aldd_plan(num_steps, self.strength, self.drag_steps, self.bank_from_start)


@dataclass(frozen=True)
class AlDDPreset:
    """Settings, loss and tracker that together make one method."""
    settings: AlDDSettings
    motion: MotionSupervision
    tracker: TrackerSpec


GOODDRAG = AlDDPreset(AlDDSettings(), GOODDRAG_MOTION, TrackerSpec(GOODDRAG_R2))
# Fewer, larger drags for a quick first look: 4 drag timesteps x 5 drags x 2 steps = 40 gradient steps (GoodDrag's
# 210), lr 0.03; meant with 25 DDIM steps (bench.drag_accuracy prints its accuracy beside the full budget's).
GOODDRAG_FAST = AlDDPreset(AlDDSettings(drag_steps=4, drags_per_step=5, grad_steps_per_drag=2, lr=0.03),
                           GOODDRAG_MOTION, TrackerSpec(GOODDRAG_R2))
DRAGDIFFUSION = AlDDPreset(
    AlDDSettings(strength=DRAGDIFFUSION_STRENGTH, drag_steps=DRAGDIFFUSION_DRAG_STEPS, drags_per_step=80,
                 grad_steps_per_drag=1, lr=0.01, max_no_change=0, track_timing="before",
                 track_at_step_start=False, bank_from_start=True),
    DRAGDIFFUSION_MOTION, TrackerSpec(DRAGDIFFUSION_R2))


def supervision_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """(sup_h, sup_w) = (int(0.5 H), int(0.5 W)) for image_size (W, H): 256x256 for 512^2 (gooddrag.md §0)."""
    width, height = image_size
    return int(0.5 * height), int(0.5 * width)


def split_points(points) -> tuple[torch.Tensor, torch.Tensor]:
    """handles, targets float [N, 2] from the datasets' flat alternating list [[x, y]_handle, [x, y]_target, ...]."""
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ArgumentError("points", f"must be a non-empty list of [x, y] pairs, got shape {tuple(points.shape)}")
    if points.shape[0] % 2:
        raise ArgumentError("points", f"must alternate handle, target: got an odd number ({points.shape[0]})")
    return points[0::2], points[1::2]


def to_supervision(points_xy: torch.Tensor, image_size: tuple[int, int],
                   sup_size: tuple[int, int]) -> torch.Tensor:
    """long [N, 2] (row, col) = round(y / H * sup_h), round(x / W * sup_w) (GD pipeline.py:L308-322).

    torch.round rounds half to even as the official code. A point in the last image column or row can round to
    sup_w or sup_h, one past the map, where the official code would index out of range; it is clipped.
    """
    width, height = image_size
    sup_h, sup_w = sup_size
    xy = points_xy.to(torch.float64)
    rc = torch.stack([xy[:, 1] / height * sup_h, xy[:, 0] / width * sup_w], dim=1).round().long()
    return torch.minimum(rc.clamp(min=0), torch.tensor([sup_h - 1, sup_w - 1]).to(rc))


def to_image(rc: torch.Tensor, image_size: tuple[int, int], sup_size: tuple[int, int]) -> torch.Tensor:
    """float [..., 2] (x, y) image pixels from (row, col) sup-res points; inverse of `to_supervision` to 1 px."""
    width, height = image_size
    sup_h, sup_w = sup_size
    rc = rc.to(torch.float64)
    return torch.stack([rc[..., 1] * (width / sup_w), rc[..., 0] * (height / sup_h)], dim=-1)


def search_windows_xy(r2: int, handles_xy, image_size: tuple[int, int],
                      sup_size: tuple[int, int] | None = None) -> torch.Tensor:
    """float [N, 4] (x0, y0, x1, y1) image px: the area a tracking searches around each handle, for previews.

    The (2*r2+1)^2 sup-px window around the handle's sup cell, cut at the map edge: the tracker never looks
    outside the map, with or without `TrackerSpec.clamp` (which only changes how the argmin is mapped back).
    """
    sup_size = supervision_size(image_size) if sup_size is None else tuple(sup_size)
    rc = to_supervision(torch.as_tensor(handles_xy, dtype=torch.float64), image_size, sup_size)
    low = (rc - r2).clamp(min=0)
    high = torch.minimum(rc + r2, torch.tensor([sup_size[0] - 1, sup_size[1] - 1]))
    return torch.cat([to_image(low - 0.5, image_size, sup_size), to_image(high + 0.5, image_size, sup_size)], dim=1)


def _check_points(name: str, points, image_size) -> torch.Tensor:
    points = torch.as_tensor(points, dtype=torch.float64).cpu()
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ArgumentError(name, f"must be float [N, 2] (x, y) with N >= 1, got shape {tuple(points.shape)}")
    width, height = image_size
    inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    if not bool(inside.all()):
        bad = points[~inside][0].tolist()
        raise ArgumentError(name, f"must lie inside the {width}x{height} image; got (x, y) = {bad}")
    return points


def _feature_map(features) -> torch.Tensor:
    """The one supervision map [1, C, H, W]: the taps concatenated on channels, as GD forward_unet_features."""
    if isinstance(features, torch.Tensor):
        return features
    return features[0] if len(features) == 1 else torch.cat(list(features), dim=1)


class MaskedAdam:
    """Adam on one tensor (torch.optim.Adam's defaults and arithmetic) whose every update is gated on the device.

    step(z, grad, active) returns z after one Adam step where `active` (a 0-d bool tensor) and the unscaled grad
    is finite, else z unchanged with the moments untouched, so the loop never reads a flag back to the CPU. With
    loss scaling (fp16 on CUDA) the caller multiplies the loss by `scale`; the scale follows GradScaler's rule
    (2^16 at the start, halved on a non-finite gradient, doubled after 2000 good steps). The step count that
    drives the bias correction is the count of steps taken, as a Python int, like torch's Adam: a step skipped for
    a non-finite fp16 gradient still counts (GradScaler would not call the optimizer then), a deviation of the bias
    correction only, on CUDA in fp16 only.
    """

    def __init__(self, z: torch.Tensor, lr: float, loss_scaling: bool = False, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m, self.v = torch.zeros_like(z), torch.zeros_like(z)
        self.k = 0
        self.loss_scaling = loss_scaling
        self.scale = torch.full((), 2.0 ** 16 if loss_scaling else 1.0, device=z.device)
        self.good = torch.zeros((), dtype=torch.long, device=z.device)

    def step(self, z: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        grad = grad / self.scale if self.loss_scaling else grad
        finite = torch.isfinite(grad).all()
        ok = active & finite
        grad = torch.where(finite, grad, torch.zeros_like(grad))
        beta1, beta2 = self.betas
        self.k += 1
        m = self.m.lerp(grad, 1 - beta1)
        v = self.v.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** float(self.k))
        denom = (v.sqrt() / (1 - beta2 ** float(self.k)) ** 0.5).add_(self.eps)
        moved = z.addcdiv(m, denom, value=-step_size)
        self.m, self.v = torch.where(ok, m, self.m), torch.where(ok, v, self.v)
        if self.loss_scaling:
            self.good = torch.where(finite, self.good + 1, torch.zeros_like(self.good))
            grow = self.good >= 2000
            self.scale = torch.where(finite, torch.where(grow, self.scale * 2, self.scale), self.scale * 0.5)
            self.good = torch.where(grow, torch.zeros_like(self.good), self.good)
        return torch.where(ok, moved, z)


class AlDDPolicy(StepPolicy):
    """The AlDD drag engine for `ddim.denoise`; one instance per run (style.md §4.6.2).

    forward_fn(z [1, 4, h, w], t, need_eps) -> (eps [1, 4, h, w] or None, list of [1, C_k, sup_h, sup_w]): one
        UNet forward WITHOUT bank attention, with grad when grad is enabled (docs/CONTRACTS.md); without need_eps
        it may stop after the last tapped block and return eps None. The policy calls it on the edit latent
        during dragging (eps only for the masked latent term) and on the source latent for the reference
        trajectory: before each drag chunk at t it computes features[t] = F(z0_t) and orig_next[t] = DDIM(z0_t)
        from the source branch, so the T2 reference steps cost one forward each and only the current one is held
        (gooddrag.md §3.1).
    plan: the run's plan (`settings.plan(num_steps)`); drag steps must be consecutive.
    alphas_cumprod: float64 [1000]. handles, targets: float [N, 2] (x, y) image px. image_size: (W, H).
    mask: editable region at image resolution (see `motion.latent_editable`), or None.
    keep_outside (not in the papers): after every DDIM step the edit latent outside a non-empty mask is set to the
        source's, as ComfyUI's latent noise mask does, so the image outside the mask stays the reconstruction's.
        Officially only the lambda term holds that region, during the drags, and the denoising after them spreads
        the edit's colour over it (the demo model's drags: 6.6 -> 4.0 outside, README: the demo model). False:
        the official loop.
    sup_size: (sup_h, sup_w) of the feature maps; default `supervision_size(image_size)`.
    loss_scaling: scale the loss for backward through an fp16 UNet on CUDA, as both official codes (MaskedAdam).
    callback(info) after every gradient step: dict(i, t, grad_step, total, drag, handles, loss, active), where
        handles is long [N, 2] sup (row, col), loss a 0-d tensor and active a 0-d bool tensor (False once the
        chunk stopped: the step changed nothing); the host shows progress and checks interruption.

    Nothing inside a chunk reads the device: the stop tests (every handle within reach, or the no-change limit)
    are device flags that freeze the latent and the handles from where the official loop would have stopped
    (gooddrag.md §3.2), and the chunk's remaining passes change nothing; the flags are read once per chunk, after
    it. The no-change limit reached at a chunk's last tracking ends dragging before the next timestep, which then
    runs with MasaCtrl (GD pipeline.py:L695-704); "all reached" is tested at the next chunk's opening re-track,
    as officially.

    denoise must be called with z = [z_source, z_edit] ([2, 4, h, w], both the inverted latent at the first
    step); drags change item 1 only. After the run: `handles` (sup), `final_handles_xy()`, `trajectory_xy()`,
    `stop_reason` ("reached", "no_change" or None) and the counters grad_steps (taken), trackings and
    start_trackings (ints, read back after the run).
    """

    def __init__(self, forward_fn, plan, alphas_cumprod: torch.Tensor, handles, targets,
                 image_size: tuple[int, int], *, settings: AlDDSettings = GOODDRAG.settings,
                 motion: MotionSupervision = GOODDRAG.motion, tracker: TrackerSpec = GOODDRAG.tracker,
                 mask: torch.Tensor | None = None, keep_outside: bool = False,
                 sup_size: tuple[int, int] | None = None, loss_scaling: bool = False, callback=None):
        width, height = image_size
        if width < 2 or height < 2:
            raise ArgumentError("image_size", f"must be (W, H) with both >= 2, got {image_size!r}")
        handles_xy = _check_points("handles", handles, image_size)
        targets_xy = _check_points("targets", targets, image_size)
        if handles_xy.shape[0] != targets_xy.shape[0]:
            raise ArgumentError("targets", f"must match handles one to one: {handles_xy.shape[0]} handles, "
                                           f"{targets_xy.shape[0]} targets")
        if mask is not None and (not 2 <= mask.dim() <= 4 or mask.numel() != mask.shape[-2] * mask.shape[-1]):
            raise ArgumentError("mask", f"must be [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(mask.shape)}")
        drag_steps = [s for s in plan if s.drag]
        for prev, cur in zip(drag_steps, drag_steps[1:]):
            if cur.t != prev.t_prev:
                raise ArgumentError("plan", f"drag steps must be consecutive; t={prev.t} is followed by t={cur.t}")
        self.forward_fn = forward_fn
        self.alphas_cumprod = alphas_cumprod
        self.settings, self.motion, self.tracker = settings, motion, tracker
        self.image_size = (width, height)
        self.sup_size = tuple(sup_size) if sup_size is not None else supervision_size(image_size)
        self.mask = None if mask is None else mask.detach().cpu()
        self.keep_outside = keep_outside
        self.loss_scaling = loss_scaling
        self.callback = callback
        self.origins = to_supervision(handles_xy, image_size, self.sup_size)
        self.handles = self.origins.clone()
        self.targets = to_supervision(targets_xy, image_size, self.sup_size)
        self.trajectory = [self.handles]
        self._tracked = []
        self.total = len(drag_steps) * settings.drags_per_step * settings.grad_steps_per_drag
        self.passes = 0            # gradient steps run (the progress bar); some may be frozen after a stop
        self.stop_reason = None
        self._counters = None
        self._z_ref = None
        self._keep = None
        self._outside = None
        self._adam_scale = None

    @property
    def done(self) -> bool:
        """True once every handle reached its target or the no-change limit hit; no further chunk runs."""
        return self.stop_reason is not None

    @property
    def grad_steps(self) -> int:
        return int(self._counters["grad_steps"]) if self._counters else 0

    @property
    def trackings(self) -> int:
        return int(self._counters["trackings"]) if self._counters else 0

    @property
    def start_trackings(self) -> int:
        return int(self._counters["start_trackings"]) if self._counters else 0

    @property
    def no_change(self) -> int:
        return int(self._counters["no_change"]) if self._counters else 0

    def final_handles_xy(self) -> torch.Tensor:
        """float [N, 2] (x, y) image px of the last tracked handles (the DRAG_POINTS the node returns)."""
        return to_image(self.handles.cpu(), self.image_size, self.sup_size)

    def trajectory_xy(self) -> torch.Tensor:
        """float [S, N, 2] (x, y) image px: the start, then the handles after every tracking, for previews."""
        kept = [self.trajectory[0]] + [h for h, active in zip(self.trajectory[1:], self._tracked) if bool(active)]
        return to_image(torch.stack(kept).cpu(), self.image_size, self.sup_size)

    def start(self, plan, z: torch.Tensor) -> None:
        """Move the points, counters and the latent mask to z's device, before the loop (the mask's emptiness test
        reads the CPU mask, never the device)."""
        device = z.device
        self._alpha = {t: alpha_bar_at(self.alphas_cumprod, t) for s in plan for t in (s.t, s.t_prev)}
        self.origins, self.handles, self.targets = (p.to(device) for p in (self.origins, self.handles, self.targets))
        self.trajectory = [self.handles]
        self._tracked = []
        zero = torch.zeros((), dtype=torch.long, device=device)
        self._counters = dict(grad_steps=zero, trackings=zero, start_trackings=zero, no_change=zero)
        self._stopped = torch.zeros((), dtype=torch.bool, device=device)
        self._reached = torch.zeros((), dtype=torch.bool, device=device)
        keep = motion_mod.latent_keep(self.mask, self.sup_size, tuple(z.shape[-2:]), self.motion)
        self._keep = None if keep is None else keep.to(device=device, dtype=z.dtype)
        self._outside = None
        if self.keep_outside and self.mask is not None:
            editable = motion_mod.latent_editable(self.mask, self.sup_size, tuple(z.shape[-2:]))
            if bool(editable.any()):   # the CPU mask: an empty one leaves the whole image editable
                self._outside = (editable == 0).to(device)

    def revise_step(self, step: PlanStep) -> PlanStep:
        """Once dragging stopped early, later drag steps are plain steps with MasaCtrl (GD pipeline.py:L695-704)."""
        if step.drag and self.done:
            return dataclasses.replace(step, drag=False, bank_attention=True)
        return step

    def before_step(self, step: PlanStep, z: torch.Tensor) -> torch.Tensor:
        """z [2, 4, h, w] with item 1 dragged at step.t, item 0 untouched; z itself when the step has no drag."""
        if not step.drag:
            return z
        if z.dim() != 4 or z.shape[0] != 2:
            raise ArgumentError("z", f"must be [2, C, h, w] = [source, edit] on drag steps, got {tuple(z.shape)}")
        if self._z_ref is None:
            self._z_ref = z[:1].detach()
        a_t, a_prev = self._alpha[step.t], self._alpha[step.t_prev]
        with torch.no_grad():
            eps_ref, features = self.forward_fn(self._z_ref, step.t, True)
            ref = _feature_map(features)
            if tuple(ref.shape[-2:]) != self.sup_size or ref.dim() != 4:
                raise ArgumentError("forward_fn", f"features must be [1, C, {self.sup_size[0]}, "
                                                  f"{self.sup_size[1]}] (sup_size), got {tuple(ref.shape)}")
            orig_next, _ = ddim_step(self._z_ref, eps_ref, a_t, a_prev)
        z_edit = self._drag(step, z[1:], ref, orig_next, a_t, a_prev)
        self._z_ref = orig_next
        if bool(self._stopped):   # the one read per chunk
            self.stop_reason = "reached" if bool(self._reached) else "no_change"
        return torch.cat([z[:1], z_edit])

    def after_step(self, step: PlanStep, z_prev: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """With keep_outside: the edit item outside the mask takes the source item's latent at t_prev."""
        if self._outside is None:
            return z_prev
        return torch.cat([z_prev[:1], torch.where(self._outside, z_prev[:1], z_prev[1:])])

    def _drag(self, step, z_edit, ref, orig_next, a_t, a_prev) -> torch.Tensor:
        """One drag chunk at step.t (gooddrag.md §3.2): B drags of J Adam steps on a fresh Adam, tracking after
        each drag ("after": on the features of the drag's last forward, before its step; "before": on the next
        forward's fresh features, and one gradient-free forward at the end places the last one); returns the
        optimized z_edit [1, 4, h, w], detached."""
        settings = self.settings
        steps = settings.drags_per_step * settings.grad_steps_per_drag
        before = settings.track_timing == "before"
        adam = MaskedAdam(z_edit, settings.lr, self.loss_scaling)
        if self._adam_scale is not None:   # the loss scale carries across timesteps, as one GradScaler would
            adam.scale = self._adam_scale
        z = z_edit.detach()
        for k in range(steps + 1 if before else steps):
            last = k == steps
            with torch.set_grad_enabled(not last):
                leaf = z.detach().requires_grad_(not last)
                eps, features = self.forward_fn(leaf, step.t, not last and self._keep is not None)
                fmap = _feature_map(features)
            if k == 0 and settings.track_at_step_start:
                self._track(fmap, ref, counted=False)
            if k == 0:
                self._check(no_change_only=False)
            if before and k > 0 and k % settings.grad_steps_per_drag == 0:
                self._track(fmap, ref, counted=True)
                self._check(no_change_only=last)
            if last:
                break
            z, loss = self._step(z, leaf, fmap, eps, ref, orig_next, a_t, a_prev, adam)
            self.passes += 1
            drag = (k + 1) // settings.grad_steps_per_drag
            if not before and (k + 1) % settings.grad_steps_per_drag == 0:
                self._track(fmap, ref, counted=True)
                self._check(no_change_only=k + 1 == steps)
            if self.callback is not None:
                self.callback(dict(i=step.i, t=step.t, grad_step=self.passes, total=self.total, drag=drag,
                                   handles=self.handles, loss=loss, active=~self._stopped))
        self._adam_scale = adam.scale
        return z.detach()

    def _step(self, z, leaf, fmap, eps, ref, orig_next, a_t, a_prev, adam):
        """One motion-supervision step: the loss, its gradient with respect to the latent only, a gated Adam step;
        returns (z, loss detached)."""
        with torch.enable_grad():
            loss = motion_mod.drag_loss(self.motion, fmap, self.handles, self.targets, ref_features=ref,
                                        origins=self.origins)
            if self._keep is not None:
                z_prev, _ = ddim_step(leaf, eps, a_t, a_prev)
                loss = loss + motion_mod.latent_term(self.motion, z_prev, orig_next, self._keep)
            scaled = loss * adam.scale if adam.loss_scaling else loss
            grad, = torch.autograd.grad(scaled, leaf)
        active = ~self._stopped
        self._counters["grad_steps"] = self._counters["grad_steps"] + active.long()
        return adam.step(z, grad, active), loss.detach()

    def _track(self, fmap: torch.Tensor, ref: torch.Tensor, counted: bool):
        """Re-localize the handles; frozen once stopped. Counted trackings update the no-change counter."""
        active = ~self._stopped
        new = tracker_mod.track(self.tracker, fmap.detach(), ref, self.handles, self.origins)
        new = torch.where(active, new, self.handles)
        counters = self._counters
        if counted:
            unmoved = (new == self.handles).all()
            counters["no_change"] = torch.where(active, torch.where(unmoved, counters["no_change"] + 1, 0),
                                                counters["no_change"])
            counters["trackings"] = counters["trackings"] + active.long()
        else:
            counters["start_trackings"] = counters["start_trackings"] + active.long()
        self.handles = new
        self.trajectory.append(new)
        self._tracked.append(active)

    def _check(self, no_change_only: bool):
        """GoodDrag's two stops (pipeline.py:L563-571) as device flags: all handles within reach (not tested at a
        chunk's last tracking: officially the next chunk's first iteration does it), or the no-change limit."""
        stop = torch.zeros((), dtype=torch.bool, device=self._stopped.device)
        if not no_change_only:
            reached = ~motion_mod.active_points(self.motion, self.handles, self.targets).any()
            self._reached = self._reached | (reached & ~self._stopped)
            stop = stop | reached
        if self.settings.max_no_change:
            stop = stop | (self._counters["no_change"] >= self.settings.max_no_change)
        self._stopped = self._stopped | stop
