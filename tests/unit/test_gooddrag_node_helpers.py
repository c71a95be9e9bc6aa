"""Kernel helpers the GoodDrag nodes use: a memory bank's schedule, the tracker's search windows and their preview."""
import pytest
import torch

from comfyui_dragedit.kernels import aldd, plan, preview
from comfyui_dragedit.kernels.schedule import (MAX_DDIM_STEPS, NUM_TRAIN_TIMESTEPS, ddim_timesteps,
                                               inverted_step_count)


@pytest.mark.parametrize("num_steps", [1, 7, 10, 48, 50, 999])
@pytest.mark.parametrize("strength", [1.0, 0.75, 0.7, 0.1])
def test_schedule_of_an_inversion_reproduces_its_timesteps(num_steps, strength):
    n = max(1, round(strength * num_steps))
    timesteps = ddim_timesteps(num_steps)[-n:]
    found_steps, found_strength = plan.schedule_of(timesteps)
    assert inverted_step_count(found_steps, found_strength) == n
    assert [s.t for s in plan.ddim_plan(found_steps, found_strength)] == timesteps


def test_every_allowed_step_count_stays_inside_the_timestep_table():
    assert max(ddim_timesteps(MAX_DDIM_STEPS)) == NUM_TRAIN_TIMESTEPS - 1
    assert max(ddim_timesteps(500)) == NUM_TRAIN_TIMESTEPS - 1
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(MAX_DDIM_STEPS + 1)


def test_schedule_of_gooddrag_bank_is_50_steps_from_741():
    num_steps, strength = plan.schedule_of(ddim_timesteps(50)[-38:])
    assert num_steps == 50 and plan.ddim_plan(num_steps, strength)[0].i == 12


@pytest.mark.parametrize("timesteps", [[], [981, 961, 900], [2], [741, 741]])
def test_schedule_of_refuses_other_lists(timesteps):
    with pytest.raises(ValueError, match="not the tail of a DDIM schedule"):
        plan.schedule_of(timesteps)


def test_search_window_spans_2r2_plus_1_feature_pixels_and_stops_at_the_map():
    # 128x96 image -> 64x48 feature map, 2 image px per feature px
    boxes = aldd.search_windows_xy(3, [[64, 48], [2, 94]], (128, 96))
    x0, y0, x1, y1 = boxes[0].tolist()
    assert (x1 - x0, y1 - y0) == (14, 14) and (x0 + x1) / 2 == 64 and (y0 + y1) / 2 == 48
    x0, y0, x1, y1 = boxes[1].tolist()
    assert (x0, y1) == (-1, 95), "cut at the first column and the last row"
    assert (x1, y0) == (2 + 7, 94 - 7)


def test_boxes_are_outlined_in_the_track_colour_and_leave_their_inside_alone():
    images = torch.full((1, 64, 64, 3), 0.5)
    out = preview.draw_drag(images, [[5, 5]], [[6, 6]], boxes=[[20, 20, 50, 50]])
    assert tuple(round(v * 255) for v in out[0, 20, 35].tolist()) == preview.TRACK_RGB
    assert torch.equal(out[0, 25:45, 25:45], images[0, 25:45, 25:45])
