"""Plan counters against dragondiffusion.md §11.1 and gooddrag.md §3.1 / §10.1, with no UNet."""
import dataclasses

import pytest

from comfyui_dragedit.kernels import plan
from comfyui_dragedit.kernels.schedule import ddim_timesteps


def indices(steps, flag):
    return [s.i for s in steps if flag(s)]


def test_ddim_plan_chain():
    steps = plan.ddim_plan(50)
    assert [s.i for s in steps] == list(range(50))
    assert [s.t for s in steps] == ddim_timesteps(50)
    assert all(a.t_prev == b.t for a, b in zip(steps, steps[1:]))
    assert steps[0].t == 981 and steps[-1].t == 1 and steps[-1].t_prev == -1
    assert not any(s.guided or s.drag or s.bank_attention or s.image_prompt or s.sde_eta or s.repeats != 1
                   for s in steps)


def test_ddim_plan_strength_keeps_absolute_indices():
    steps = plan.ddim_plan(50, 0.75)
    assert len(steps) == 38 and steps[0].i == 12 and steps[0].t == 741
    assert all(s.t == ddim_timesteps(50)[s.i] for s in steps)


def test_dplus_counters():
    steps = plan.dragon_plan("D+", "move")
    guided = indices(steps, lambda s: s.guided)
    assert guided == list(range(10)) + list(range(10, 29, 2))                  # 20 step indices
    assert sum(s.repeats for s in steps if s.guided) == 28                       # guidance evaluations
    assert indices(steps, lambda s: s.repeats > 1) == [22, 24, 26, 28]
    assert {s.repeats for s in steps if s.repeats > 1} == {3}
    assert sum(s.repeats for s in steps) == 58                                   # batch-2 CFG passes
    assert sum(s.repeats - 1 for s in steps) == 8                                # re-noise passes kept (12 - 4 wasted)
    assert indices(steps, lambda s: s.sde_eta > 0) == list(range(11, 20))
    assert {s.sde_eta for s in steps if s.sde_eta > 0} == {0.4}
    assert indices(steps, lambda s: s.image_prompt) == list(range(10, 20))


def test_d_counters():
    steps = plan.dragon_plan("D", "drag")
    assert indices(steps, lambda s: s.guided) == list(range(30))
    assert all(s.repeats == 1 and s.sde_eta == 0 for s in steps)
    assert indices(steps, lambda s: s.image_prompt) == list(range(10, 20))


@pytest.mark.parametrize("mode, expected", [("move", range(5, 50)), ("drag", range(5, 50)),
                                            ("appearance", range(0, 36)), ("paste", range(0, 36))])
def test_bank_attention_ranges(mode, expected):
    for alg in ("D", "D+"):
        assert indices(plan.dragon_plan(alg, mode), lambda s: s.bank_attention) == list(expected)


def test_sde_strength_zero_is_ode():
    assert not any(s.sde_eta for s in plan.dragon_plan("D+", "move", sde_strength=0.0))


def test_dragon_plan_rescaled_steps_stay_consistent():
    steps = plan.dragon_plan("D+", "move", num_steps=25)
    assert [s.t for s in steps] == ddim_timesteps(25)
    guided = indices(steps, lambda s: s.guided)
    assert guided[:5] == list(range(5)) and max(guided) < 15
    assert all(s.guided for s in steps if s.repeats > 1)
    assert indices(steps, lambda s: s.sde_eta > 0) == list(range(6, 10))


def test_dragon_plan_rejects_bad_settings():
    with pytest.raises(ValueError, match="alg"):
        plan.dragon_plan("E", "move")
    with pytest.raises(ValueError, match="mode"):
        plan.dragon_plan("D+", "spin")


def test_gooddrag_plan():
    # gooddrag.md §3.1 table and §10.1
    steps = plan.gooddrag_plan()
    assert len(steps) == 38 and steps[0].t == 741 and steps[-1].t == 1
    assert [s.t for s in steps if s.drag] == [741, 721, 701, 681, 661, 641, 621]
    masactrl = [s.t for s in steps if s.bank_attention]
    assert masactrl[0] == 601 and len(masactrl) == 31
    assert not any(s.drag and s.bank_attention for s in steps)
    # K = T2·B drags of J gradient steps each, with B=10, J=3
    assert sum(s.drag for s in steps) * 10 * 3 == 210


def test_dragdiffusion_plan():
    # gooddrag.md §2: one drag timestep at 681, MasaCtrl over all 35 denoising steps
    steps = plan.dragdiffusion_plan()
    assert len(steps) == 35 and steps[0].t == 681
    assert [s.t for s in steps if s.drag] == [681]
    assert all(s.bank_attention for s in steps)


def test_aldd_plan_bounds():
    assert not any(s.drag for s in plan.aldd_plan(drag_steps=0))
    assert all(s.drag for s in plan.aldd_plan(strength=0.2, drag_steps=10))
    with pytest.raises(ValueError, match="drag_steps"):
        plan.aldd_plan(strength=0.2, drag_steps=11)


def test_plan_step_is_frozen_and_validated():
    step = plan.PlanStep(i=0, t=981, t_prev=961)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.t = 1
    with pytest.raises(ValueError, match="repeats"):
        plan.PlanStep(i=0, t=981, t_prev=961, repeats=0)
    with pytest.raises(ValueError, match="phase"):
        plan.PlanStep(i=0, t=981, t_prev=961, phase="sample")
    with pytest.raises(ValueError, match="sde_eta"):
        plan.PlanStep(i=0, t=981, t_prev=961, sde_eta=-1.0)
