"""GoodDrag / DragDiffusion nodes through the real UNet (random-weight SD-1.5 topology) in-process: the AlDD Drag
Scheduler end to end on an 8x8 latent, zero drag = the source reconstruction, MasaCtrl leaves the source alone,
progress and interruption, Motion Supervision and Point Tracker, and the errors users see."""
import dataclasses
import json
import math
import types

import pytest
import torch

from comfyui_dragedit.kernels import features, motion, plan, tracker
from comfyui_dragedit.kernels.points import DragPoints
from comfyui_dragedit.nodes.errors import DragEditInputError
from tests.support.comfy_inproc import run_node, run_passes

LATENT_HW = (8, 8)
IMAGE = (64, 64)                    # (W, H) of the latent's image; features 32x32
STEPS, STRENGTH = 10, 0.8           # 8 inverted steps: t = 701 ... 1
NO_REGION = "no region (no latent term)"


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import aldd, host, inversion, motion as motion_node, points, tracker as tracker_node

    return types.SimpleNamespace(aldd=aldd, scheduler=aldd.DragEditAlDDScheduler, host=host,
                                 inversion=inversion.DragEditDDIMInversion, points=points.DragEditPoints,
                                 motion=motion_node.DragEditMotionSupervision,
                                 tracker=tracker_node.DragEditPointTracker)


@pytest.fixture(scope="module")
def cond(encode_text):
    return encode_text("")


@pytest.fixture(scope="module")
def bank(nodes_, sd15, cond):
    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}
    return run_node(nodes_.inversion, model=sd15[0], latent=latent, positive=cond, steps=STEPS, strength=STRENGTH,
                    layers="none", bank_device="offload (CPU)").result[0]


@pytest.fixture(scope="module")
def reconstruction(nodes_, sd15, bank, cond):
    """The source branch alone: plain DDIM (written out here) from the inverted latent, cond only, as a LATENT."""
    model = sd15[0]
    alphas, ts = bank.alphas_cumprod, list(bank.timesteps)

    def loop(passes):
        z = bank.latent(ts[0])
        for i, t in enumerate(ts):
            prev = float(alphas[ts[i + 1]]) if i + 1 < len(ts) else float(alphas[0])
            eps = passes.eps(z, plan.PlanStep(i, t, ts[i + 1] if i + 1 < len(ts) else -1))
            x0 = (z - math.sqrt(1 - float(alphas[t])) * eps) / math.sqrt(float(alphas[t]))
            z = math.sqrt(prev) * x0 + math.sqrt(1 - prev) * eps
        return z

    return model.model.process_latent_out(run_passes(model, loop, cond))


def points(*pairs, size=IMAGE):
    return DragPoints(tuple(pairs), size)


def schedule(nodes_, model, bank, cond, pts, preset="custom", **kwargs):
    widgets = dict(drag_steps=2, drags_per_step=2, grad_steps_per_drag=1, lr=0.1, max_no_change=0,
                   masactrl_layers="by resolution (family default)", keep_outside=True)
    widgets.update(kwargs)
    return run_node(nodes_.scheduler, model=model, memory_bank=bank, positive=cond, points=pts,
                    features=features.gooddrag_tap(8, "SD 1.x"), preset=preset, **widgets).result


def test_schemas_are_documented_everywhere(nodes_):
    for node in (nodes_.scheduler, nodes_.motion, nodes_.tracker):
        info = node.GET_NODE_INFO_V1()
        assert info["category"] == "DragEdit" and len(info["description"]) > 100
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in specs.values()), info["name"]
        assert all(info["output_tooltips"])
    info = nodes_.scheduler.GET_NODE_INFO_V1()
    assert info["output"] == ["LATENT", "DRAG_POINTS", "IMAGE"]
    assert set(info["input"]["optional"]) == {"motion", "tracker", "mask", "image"}


def test_a_drag_runs_end_to_end_and_moves_the_edit(nodes_, sd15, bank, cond, reconstruction):
    """The gradient reaches the latent through the real UNet: Adam moves z only with a non-zero gradient."""
    latent, final, shown = schedule(nodes_, sd15[0], bank, cond, points((20.0, 30.0, 44.0, 30.0)))
    samples = latent["samples"]
    assert samples.shape == (1, 4, *LATENT_HW) and torch.isfinite(samples).all()
    assert not torch.allclose(samples, reconstruction, atol=1e-3)
    assert final.image_size == IMAGE and len(final) == 1 and final.pairs[0][2:] == (44.0, 30.0)
    assert shown.shape == (1, IMAGE[1], IMAGE[0], 3) and shown.max() > 0


@pytest.mark.parametrize("preset", ["gooddrag", "dragdiffusion"])
def test_handles_on_their_targets_give_the_source_reconstruction(nodes_, sd15, bank, cond, reconstruction, preset):
    pts = points((20.0, 30.0, 20.0, 30.0), (50.0, 10.0, 50.5, 10.5))   # the second target in its handle's feature px
    latent, final, _ = schedule(nodes_, sd15[0], bank, cond, pts, preset=preset)
    torch.testing.assert_close(latent["samples"], reconstruction, atol=1e-5, rtol=1e-5)
    assert final.pairs == ((20.0, 30.0, 20.0, 30.0), (50.0, 10.0, 50.5, 10.5))


@pytest.mark.parametrize("keep_outside", [True, False], ids=["keep_outside", "official"])
def test_keep_outside_holds_the_latent_outside_the_mask_at_the_reconstruction(nodes_, sd15, bank, cond,
                                                                              reconstruction, keep_outside):
    mask = torch.zeros(1, *IMAGE)
    mask[:, :, :40] = 1.0                # x < 40 px: latent columns 0-4 editable (through the 32x32 features)
    latent, _, _ = schedule(nodes_, sd15[0], bank, cond, points((20.0, 30.0, 36.0, 30.0)), mask=mask,
                            keep_outside=keep_outside)
    change = (latent["samples"] - reconstruction).abs()
    assert change[..., :5].max() > 1e-3
    if keep_outside:
        assert change[..., 5:].max() < 1e-5
    else:   # officially the lambda term only pulls it back during the drags
        assert change[..., 5:].max() > 1e-3


def test_progress_counts_drags_and_denoise_steps_and_is_interruptible(nodes_, sd15, bank, cond):
    import comfy.model_management
    import comfy.utils

    seen = []
    short_reach = tracker.TrackerSpec(r2=1)   # the handle cannot reach its target in two drags: all run
    run = lambda: schedule(nodes_, sd15[0], bank, cond, points((20.0, 30.0, 44.0, 30.0)), drag_steps=1,
                           tracker=short_reach)

    def record(value, total, preview, node_id=None):
        seen.append((value, total))

    def interrupt(value, total, preview, node_id=None):
        record(value, total, preview)
        comfy.model_management.interrupt_current_processing(True)

    try:
        comfy.utils.set_progress_bar_global_hook(record)
        run()
        total = 2 + len(bank.timesteps)   # T2·B·J gradient steps, then the denoise steps
        assert seen == [(value, total) for value in range(1, total + 1)]
        seen.clear()
        comfy.utils.set_progress_bar_global_hook(interrupt)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run()
        assert seen == [(1, total)], "stopped at the second gradient step's callback"
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


def test_motion_supervision_node(nodes_):
    spec = run_node(nodes_.motion, variant="dragdiffusion", r1=1, beta=4.0, reach=2.0, lam=0.2,
                    empty_mask=NO_REGION).result[0]
    assert spec == motion.MotionSupervision("dragdiffusion", r1=1, beta=4.0, reach=2.0, lam=0.2,
                                            regularize_empty_mask=False)
    frozen = run_node(nodes_.motion, variant="gooddrag", r1=4, beta=4.0, reach=1.0, lam=0.1,
                      empty_mask="freeze all (GoodDrag code)").result[0]
    assert frozen.regularize_empty_mask and frozen.patch_weight == 64
    required = nodes_.motion.GET_NODE_INFO_V1()["input"]["required"]
    defaults = {name: spec[1]["default"] for name, spec in required.items()}
    assert defaults == dict(variant="gooddrag", r1=4, beta=4.0, reach=1.0, lam=0.1, empty_mask=NO_REGION)


def test_point_tracker_node_and_its_search_window_preview(nodes_):
    spec, blank = run_node(nodes_.tracker, r2=12, clamp=True).result
    assert spec == tracker.TrackerSpec(12, True) and blank.shape == (1, 64, 64, 3)
    image = torch.full((1, 48, 64, 3), 0.5)
    pts = points((10.0, 20.0, 40.0, 20.0), size=(64, 48))
    _, shown = run_node(nodes_.tracker, r2=3, clamp=False, image=image, points=pts).result
    assert shown.shape == image.shape and not torch.equal(shown, image)
    _, wide = run_node(nodes_.tracker, r2=6, clamp=False, image=image, points=pts).result
    assert not torch.equal(wide, shown), "the window grows with r2"
    with pytest.raises(DragEditInputError, match=r"^DragEdit GoodDrag Point Tracker: input 'image' is 64x48 but the points"):
        run_node(nodes_.tracker, r2=3, clamp=True, image=image, points=points((1.0, 2.0, 3.0, 4.0)))


# ---- errors users see ---------------------------------------------------------------------------------------------

def _error(fn):
    with pytest.raises(DragEditInputError) as err:
        fn()
    return err.value


def test_a_bank_from_another_model_is_refused(nodes_, sd15, bank, cond):
    other = dataclasses.replace(bank, fingerprint="0123456789abcdef")
    err = _error(lambda: schedule(nodes_, sd15[0], other, cond, points((1.0, 2.0, 30.0, 4.0))))
    assert str(err).startswith("DragEdit GoodDrag AlDD Drag Scheduler: input 'memory_bank' the memory bank was made with")


def test_points_of_an_image_of_another_size_are_refused(nodes_, sd15, bank, cond):
    err = _error(lambda: schedule(nodes_, sd15[0], bank, cond, points((1.0, 2.0, 30.0, 4.0), size=(64, 32))))
    assert str(err).startswith("DragEdit GoodDrag AlDD Drag Scheduler: input 'points' were drawn on a 64x32 image but the "
                               "memory bank holds the latent of a 64x64 image")


def test_a_preview_image_of_another_size_is_refused(nodes_, sd15, bank, cond):
    err = _error(lambda: schedule(nodes_, sd15[0], bank, cond, points((1.0, 2.0, 30.0, 4.0)),
                                  image=torch.zeros(1, 32, 32, 3)))
    assert (err.node, err.input_name) == ("GoodDrag AlDD Drag Scheduler", "image")


def test_more_drag_timesteps_than_inverted_steps_are_refused(nodes_, sd15, bank, cond):
    err = _error(lambda: schedule(nodes_, sd15[0], bank, cond, points((1.0, 2.0, 30.0, 4.0)), drag_steps=9))
    assert str(err).startswith("DragEdit GoodDrag AlDD Drag Scheduler: input 'drag_steps (T2)' is 9 but the memory bank holds "
                               "only 8 inverted steps")
    short = dataclasses.replace(bank, timesteps=bank.timesteps[-5:])
    err = _error(lambda: schedule(nodes_, sd15[0], short, cond, points((1.0, 2.0, 30.0, 4.0)), preset="gooddrag"))
    assert (err.input_name, err.seen) == ("memory_bank", "holds 5 inverted steps, fewer than the gooddrag preset's "
                                                         "7 drag timesteps")


@pytest.mark.parametrize("lr, seen", [(0.0, "is 0, below its minimum 1e-09"),
                                      (-0.01, "is -0.01, below its minimum 1e-09"),
                                      (float("nan"), "is nan")])
def test_a_learning_rate_that_is_not_positive_is_refused(nodes_, sd15, bank, cond, lr, seen):
    err = _error(lambda: schedule(nodes_, sd15[0], bank, cond, points((1.0, 2.0, 30.0, 4.0)), lr=lr))
    assert str(err).startswith(f"DragEdit GoodDrag AlDD Drag Scheduler: input 'lr' {seen}")


@pytest.mark.parametrize("points_json, seen", [
    ("[[1, 2], [30, 4], [5, 6]]", "has 3 points; handles and targets alternate"),
    (json.dumps({"version": 1, "image_size": [64, 64], "pairs": [[1, 2, 30, 4], [5, 6]]}),
     "pair 2 has a handle but no target"),
    ("[[1, 2], [64, 4]]", "target (64, 4) of pair 1 is outside the 64x64 image"),
])
def test_bad_points_are_refused_by_the_node_that_reads_them(nodes_, points_json, seen):
    """Odd counts, a handle without its target and points outside the image never reach the scheduler."""
    err = _error(lambda: run_node(nodes_.points, image=torch.zeros(1, 64, 64, 3), points_json=points_json))
    assert str(err).startswith(f"DragEdit Drag Points Editor: input 'points_json' {seen}")
