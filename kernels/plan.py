"""Step plans as data: which steps are guided, repeated, stochastic, dragged, or read the memory bank.

The loop (`ddim.denoise`) only follows a plan, so every schedule rule of the papers lives here and is unit-tested
against the spec counters with no UNet (style.md §4.6.1, dragondiffusion.md §11.1, gooddrag.md §3.1 / §10.1).
Step indices i are absolute in the N-step schedule: t_i = ddim_timesteps(N)[i], also in plans that start late.
"""
import dataclasses

from .schedule import NUM_TRAIN_TIMESTEPS, ddim_timesteps, inverted_step_count
from .errors import ArgumentError

PHASES = ("denoise", "invert", "renoise")

# DragonDiffusion / DiffEditor schedule, in step indices of the official 50-step run (dragondiffusion.md §4-6).
REFERENCE_STEPS = 50
GUIDED_UNTIL = 30            # guidance at i < 30
DENSE_UNTIL = 10             # D+: every step before 10, every other step from 10
TIME_TRAVEL_FROM, TIME_TRAVEL_TO = 22, 28   # D+: time travel at the guided steps 22..28 (22, 24, 26, 28)
TIME_TRAVEL_REPEATS = 3
SDE_AFTER, SDE_BEFORE = 10, 20              # D+: regional SDE at 10 < i < 20
IMAGE_PROMPT_FROM, IMAGE_PROMPT_BEFORE = 10, 20   # IP tokens at 10 <= i < 20
SDE_STRENGTH = 0.4
BANK_STEPS = {               # memory-bank attention per mode: (first i, last i or None) (dragondiffusion.md §5)
    "move": (5, None),
    "drag": (5, None),
    "appearance": (0, 35),
    "paste": (0, 35),
}

# GoodDrag / DragDiffusion presets (gooddrag.md §2, §3.3).
GOODDRAG_STRENGTH, GOODDRAG_DRAG_STEPS = 0.75, 7
DRAGDIFFUSION_STRENGTH, DRAGDIFFUSION_DRAG_STEPS = 0.7, 1


@dataclasses.dataclass(frozen=True)
class PlanStep:
    """One step of a plan; the record `eps_fn(z, step)` receives (docs/CONTRACTS.md).

    i: step index (0 = noisiest); t: the UNet timestep of this call; t_prev: the other end of the step
    (-1 = the final alpha_bar, alphas_cumprod[0]). A "denoise" step goes t -> t_prev, an "invert" step
    t_prev -> t (eps at the destination t), a "renoise" step (time travel) t -> t_prev with eps at its source t.
    guided: the policy's guidance hook runs; repeats: time-travel repeats (dragondiffusion.md §6);
    sde_eta: regional-SDE strength, 0 = ODE; drag: an AlDD drag chunk runs before the step (gooddrag.md §3.1);
    bank_attention: memory-bank / MasaCtrl attention is on; image_prompt: IP tokens are on (DiffEditor).
    """
    i: int
    t: int
    t_prev: int
    guided: bool = False
    repeats: int = 1
    sde_eta: float = 0.0
    drag: bool = False
    bank_attention: bool = False
    image_prompt: bool = False
    phase: str = "denoise"

    def __post_init__(self):
        if self.repeats < 1:
            raise ArgumentError("repeats", f"must be >= 1, got {self.repeats}")
        if self.sde_eta < 0:
            raise ArgumentError("sde_eta", f"must be >= 0, got {self.sde_eta}")
        if self.phase not in PHASES:
            raise ArgumentError("phase", f"must be one of {PHASES}, got {self.phase!r}")


def ddim_plan(num_steps: int = 50, strength: float = 1.0,
              num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[PlanStep]:
    """Plain DDIM plan: the last round(strength * num_steps) steps of `ddim_timesteps(num_steps)`, all flags off.

    strength 0.75 of 50 starts at i=12, t=741 (GoodDrag); 0.7 at i=15, t=681 (DragDiffusion) (gooddrag.md §0).
    """
    ts = ddim_timesteps(num_steps, num_train_timesteps)
    first = num_steps - inverted_step_count(num_steps, strength)
    return [PlanStep(i=i, t=ts[i], t_prev=ts[i + 1] if i + 1 < num_steps else -1)
            for i in range(first, num_steps)]


def schedule_of(timesteps, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[int, float]:
    """(num_steps, strength) whose `ddim_plan` runs exactly `timesteps` (noisiest first), e.g. a memory bank's.

    Inversion keeps the last n timesteps of `ddim_timesteps(num_steps)`, which fix the stride and so num_steps up
    to steps that share it (48..50 all give 981, ..., 1 in steps of 20); the plan's t are the same for each.
    """
    timesteps = [int(t) for t in timesteps]
    n = len(timesteps)
    stride = timesteps[0] - timesteps[1] if n > 1 else num_train_timesteps
    num_steps = num_train_timesteps // stride if stride > 0 else 0
    if not n or not 1 <= num_steps <= num_train_timesteps or \
            ddim_timesteps(num_steps, num_train_timesteps)[-n:] != timesteps:
        raise ArgumentError("timesteps", f"{timesteps} are not the tail of a DDIM schedule")
    return num_steps, n / num_steps


def _scaled(k: int, num_steps: int) -> int:
    """A 50-step index rescaled to num_steps (the AudioMorphix rescale, dragondiffusion.md §9); exact at 50."""
    return round(k * num_steps / REFERENCE_STEPS)


def dragon_plan(alg: str = "D+", mode: str = "move", num_steps: int = 50, sde_strength: float = SDE_STRENGTH,
                time_travel_repeats: int = TIME_TRAVEL_REPEATS, guidance: bool = True,
                num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[PlanStep]:
    """DragonDiffusion ('D') or DiffEditor ('D+') plan over the full schedule (dragondiffusion.md §1.2, §4-6).

    D: guided at i < 30. D+: guided at i < 10 and even i in 10..28; time travel x3 at 22, 24, 26, 28;
    regional SDE with eta = sde_strength at i = 11..19. Bank attention per mode: move/drag i >= 5,
    appearance/paste i <= 35. IP tokens at 10 <= i < 20 in both. For num_steps != 50 the indices are rescaled
    by num_steps / 50 and "every other step" counts from the rescaled 10 (the official code assumes 50 steps).
    guidance False (energy scale 0): no guided step and no time travel, as the official sampler
    (Sampler.py:L60-61, L74); the regional SDE of D+ still runs.
    """
    if alg not in ("D", "D+"):
        raise ArgumentError("alg", f"must be 'D' or 'D+', got {alg!r}")
    if mode not in BANK_STEPS:
        raise ArgumentError("mode", f"must be one of {tuple(BANK_STEPS)}, got {mode!r}")
    guided_until, dense_until = _scaled(GUIDED_UNTIL, num_steps), _scaled(DENSE_UNTIL, num_steps)
    travel_from, travel_to = _scaled(TIME_TRAVEL_FROM, num_steps), _scaled(TIME_TRAVEL_TO, num_steps)
    sde_after, sde_before = _scaled(SDE_AFTER, num_steps), _scaled(SDE_BEFORE, num_steps)
    ip_from, ip_before = _scaled(IMAGE_PROMPT_FROM, num_steps), _scaled(IMAGE_PROMPT_BEFORE, num_steps)
    bank_first, bank_last = BANK_STEPS[mode]
    bank_first = _scaled(bank_first, num_steps)
    bank_last = num_steps if bank_last is None else _scaled(bank_last, num_steps)
    plus = alg == "D+"
    steps = []
    for s in ddim_plan(num_steps, 1.0, num_train_timesteps):
        i = s.i
        if plus:
            guided = i < dense_until or (i < guided_until and (i - dense_until) % 2 == 0)
        else:
            guided = i < guided_until
        guided = guided and guidance
        travel = plus and guided and travel_from <= i <= travel_to
        steps.append(dataclasses.replace(
            s, guided=guided, repeats=time_travel_repeats if travel else 1,
            sde_eta=sde_strength if plus and sde_after < i < sde_before else 0.0,
            bank_attention=bank_first <= i <= bank_last,
            image_prompt=ip_from <= i < ip_before))
    return steps


def aldd_plan(num_steps: int = 50, strength: float = GOODDRAG_STRENGTH, drag_steps: int = GOODDRAG_DRAG_STEPS,
              bank_from_start: bool = False, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[PlanStep]:
    """AlDD plan (gooddrag.md §3.1): drag chunks before the first `drag_steps` (T2) steps of a strength plan.

    MasaCtrl (bank_attention, 'source' mode) is on from the first step after dragging (GoodDrag: t=601, 31 of
    38 steps), or on every step with bank_from_start (DragDiffusion: T2=1 at t=681, all 35 steps, gooddrag.md §2).
    The AlDD policy turns it on earlier when dragging stops early, through `StepPolicy.revise_step`.
    """
    plan = ddim_plan(num_steps, strength, num_train_timesteps)
    if not 0 <= drag_steps <= len(plan):
        raise ArgumentError("drag_steps", f"must be in 0..{len(plan)} for this strength, got {drag_steps}")
    return [dataclasses.replace(s, drag=k < drag_steps, bank_attention=bank_from_start or k >= drag_steps)
            for k, s in enumerate(plan)]


def gooddrag_plan(num_steps: int = 50) -> list[PlanStep]:
    """GoodDrag preset: strength 0.75, T2 = 7, MasaCtrl after dragging (gooddrag.md §3.3)."""
    return aldd_plan(num_steps, GOODDRAG_STRENGTH, GOODDRAG_DRAG_STEPS)


def dragdiffusion_plan(num_steps: int = 50) -> list[PlanStep]:
    """DragDiffusion preset: strength 0.7, one drag timestep, MasaCtrl on every step (gooddrag.md §2)."""
    return aldd_plan(num_steps, DRAGDIFFUSION_STRENGTH, DRAGDIFFUSION_DRAG_STEPS, bank_from_start=True)
