"""DragonDiffusion / DiffEditor nodes through the real UNet (random-weight SD-1.5 topology) in-process: the five
Energy Guidance nodes and the Guided Sampler on an 8x8 latent, the sampler with guidance off against the plain DDIM
loop, the gradient through the real truncated estimator, empty regions, progress, and the errors users see.
The kernels' §11 checks with stub extractors are in tests/unit (test_energy, test_guidance)."""
import dataclasses
import math
import types

import pytest
import torch

from comfyui_dragedit.kernels import energy, features, plan
from comfyui_dragedit.kernels.guidance import DragonPolicy
from comfyui_dragedit.kernels.plan import PlanStep
from comfyui_dragedit.kernels.points import DragPoints
from comfyui_dragedit.nodes.errors import DragEditInputError
from tests.support.comfy_inproc import run_node, run_passes

LATENT_HW = (8, 8)
IMAGE = 64                          # px, square: latent 8x8, feature grid 16x16
STEPS = 10                          # D+ at 10 steps: guided 0, 1, 2, 4 (4 three times), SDE at 3
MODES = ("move", "resize", "appearance", "paste", "drag")
VCA_MODE = {"move": "replace", "resize": "replace", "drag": "concat", "appearance": "masked", "paste": "masked"}
DRAGON_TAP = features.dragon_tap((5, 8), "SD 1.x")


def box(rows, cols, size=IMAGE):
    mask = torch.zeros(1, size, size)
    mask[:, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return mask


OBJECT = box((16, 40), (8, 32))
OTHER_OBJECT = box((24, 56), (32, 56))


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import cross_attention, energy_guidance, guided_sampler, host, inversion

    return types.SimpleNamespace(
        move=energy_guidance.DragEditEnergyGuidanceMove, resize=energy_guidance.DragEditEnergyGuidanceResize,
        appearance=energy_guidance.DragEditEnergyGuidanceAppearance,
        paste=energy_guidance.DragEditEnergyGuidancePaste, drag=energy_guidance.DragEditEnergyGuidanceDrag,
        sampler=guided_sampler.DragEditGuidedSampler, inversion=inversion.DragEditDDIMInversion,
        vca=cross_attention.DragEditVisualCrossAttention, host=host)


@pytest.fixture(scope="module")
def cond(encode_text):
    return encode_text("a photo of a ball")


@pytest.fixture(scope="module")
def uncond(encode_text):
    return encode_text("")


@pytest.fixture(scope="module")
def banks(nodes_, sd15, cond):
    """(base, replace): two images inverted with their decoder self-attention inputs."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        latent = {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}
        out.append(run_node(nodes_.inversion, model=sd15[0], latent=latent, positive=cond, steps=STEPS,
                            strength=1.0, layers="family default", bank_device="offload (CPU)").result[0])
    return tuple(out)


def widget_defaults(node):
    info = node.GET_NODE_INFO_V1()["input"]
    specs = {**info["required"], **info.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in specs.items() if "default" in spec[1]}


def guide(node, **inputs):
    return run_node(node, **{**widget_defaults(node), **inputs}).result


DRAG_POINTS = DragPoints(((20.0, 30.0, 36.0, 30.0), (50.0, 12.0, 50.0, 20.0)), (IMAGE, IMAGE))
GEOMETRY = {   # each mode's test edit: the inputs besides the weight widgets
    "move": dict(mask=OBJECT, offset_x=16, offset_y=8),
    "resize": dict(mask=OBJECT, scale=1.5, offset_x=8),
    "appearance": dict(mask_base=OBJECT, mask_replace=OTHER_OBJECT),
    "paste": dict(mask=OTHER_OBJECT, offset_x=-24, offset_y=-8),
    "drag": dict(points=DRAG_POINTS, mask=box((4, 60), (4, 60))),
}


def guidance_of(nodes_, mode, **inputs):
    """(guidance, Visual Cross-Attention masks) from the mode's node on the test edit; inputs override."""
    out = guide(getattr(nodes_, mode), **{**GEOMETRY[mode], **inputs})
    if mode == "appearance":
        return out[0], dict(mask_base=OBJECT, mask_replace=OTHER_OBJECT)
    if mode == "paste":
        return out[0], dict(mask_base=out[1], mask_replace=out[2])
    return out[0], {}


def sample(nodes_, model, banks, guidance, cond, uncond, **inputs):
    widgets = {**widget_defaults(nodes_.sampler), **inputs}
    replace = banks[1] if guidance.mode in ("appearance", "paste") else None
    return run_node(nodes_.sampler, model=model, memory_bank=banks[0], memory_bank_replace=replace,
                    guidance=guidance, features=DRAGON_TAP, positive=cond, negative=uncond,
                    **widgets).result[0]["samples"]


def test_schemas_are_documented_everywhere(nodes_):
    for node in (nodes_.move, nodes_.resize, nodes_.appearance, nodes_.paste, nodes_.drag, nodes_.sampler):
        info = node.GET_NODE_INFO_V1()
        assert info["name"].startswith("DragEdit") and info["category"] == "DragEdit", info["name"]
        assert len(info["description"]) > 100, info["name"]
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in specs.values()), info["name"]
        assert all(info["output_tooltips"]), info["name"]
    assert "image_prompt (DiffEditor's IP-Adapter variant)" in nodes_.sampler.GET_NODE_INFO_V1()["description"]
    assert nodes_.paste.GET_NODE_INFO_V1()["output"] == ["DRAG_GUIDANCE", "MASK", "MASK"]
    sampler = nodes_.sampler.GET_NODE_INFO_V1()
    assert sampler["output"] == ["LATENT"] and \
        set(sampler["input"]["optional"]) == {"memory_bank_replace", "image_prompt"}


@pytest.mark.parametrize("mode", MODES)
def test_guidance_nodes_build_the_kernel_payload_with_the_spec_defaults(nodes_, mode):
    g, vca_masks = guidance_of(nodes_, mode)
    kernel_mode = "move" if mode == "resize" else mode
    d = energy.DEFAULTS[kernel_mode]
    assert g.mode == kernel_mode and g.latent_size == LATENT_HW and g.layer_weights is None
    assert (g.energy_scale, g.eta) == (d.energy_scale, d.eta) and not g.faithful_bugs
    assert g.weights == d.weights
    if mode == "paste":
        for name, key in (("mask_base", "base"), ("mask_replace", "replace")):
            m = vca_masks[name]
            assert m.shape == (1, IMAGE, IMAGE) and m.dtype == torch.float32
            assert torch.equal(m[0, ::4, ::4] > 0.5, g.masks[key])
        assert g.masks["replace"].sum() == g.masks["base"].sum()   # moved inside the image, nothing clipped
    if mode == "resize":
        assert g.scale == 1.5 and g.offset == (8.0, 0.0)


def test_faithful_bugs_and_widgets_reach_the_payload(nodes_):
    g, _ = guidance_of(nodes_, "move", w_edit=1.0, w_content=2.0, w_contrast=0.0, w_inpaint=0.5, energy_scale=100.0,
                       faithful_bugs=True)
    assert g.faithful_bugs and g.energy_scale == 100.0 and g.weights == energy.EnergyWeights(1.0, 2.0, 0.0, 0.5)
    wrapped, _ = guidance_of(nodes_, "move", offset_x=48, faithful_bugs=True)
    clipped, _ = guidance_of(nodes_, "move", offset_x=48)
    assert wrapped.masks["cur"].sum() == OBJECT[0, ::4, ::4].sum() > clipped.masks["cur"].sum()


@pytest.fixture(scope="module")
def mode_runs(nodes_, sd15, banks, cond, uncond):
    """Each mode through Visual Cross-Attention in its official bank mode and the Guided Sampler, defaults (D+)."""
    runs = {}
    for mode in MODES:
        g, vca_masks = guidance_of(nodes_, mode)
        vca_mode = VCA_MODE[mode]
        replace = {"memory_bank_replace": banks[1]} if vca_mode == "masked" else {}
        model = run_node(nodes_.vca, model=sd15[0], memory_bank=banks[0], mode=vca_mode, step_range="method's steps",
                         start_step=0, end_step=1000, **replace, **vca_masks).result[0]
        runs[mode] = sample(nodes_, model, banks, g, cond, uncond)
    return runs


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_samples_a_finite_latent(mode_runs, mode):
    samples = mode_runs[mode]
    assert samples.shape == (1, 4, *LATENT_HW) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all() and samples.std() > 0


def plain_ddim(model, bank, cond, uncond, cfg, steps=STEPS):
    """The oracle of an unguided edit: DDIM written out here, from the bank's z_T, with the host's CFG eps."""
    alphas = bank.alphas_cumprod
    ts = list(bank.timesteps)

    def loop(passes):
        z = bank.latent(ts[0])
        for i, t in enumerate(ts):
            eps = passes.eps(z, PlanStep(i, t, ts[i + 1] if i + 1 < len(ts) else -1), cfg=True)
            prev = float(alphas[ts[i + 1]]) if i + 1 < len(ts) else float(alphas[0])
            x0 = (z - math.sqrt(1 - float(alphas[t])) * eps) / math.sqrt(float(alphas[t]))
            z = math.sqrt(prev) * x0 + math.sqrt(1 - prev) * eps
        return z

    z0 = run_passes(model, loop, cond, uncond, cfg=cfg)
    return model.model.process_latent_out(z0)


@pytest.fixture(scope="module")
def unguided(nodes_, sd15, banks, cond, uncond):
    """energy_scale 0 and no offset (z_T unchanged), SDE off, no bank attention (the plain MODEL); progress."""
    import comfy.utils

    g, _ = guidance_of(nodes_, "move", offset_x=0, offset_y=0, energy_scale=0.0)
    seen = []

    def record(value, total, preview, node_id=None):
        seen.append((value, total))

    try:
        comfy.utils.set_progress_bar_global_hook(record)
        samples = {alg: sample(nodes_, sd15[0], banks, g, cond, uncond, schedule=alg, sde_strength=0.0)
                   for alg in ("D", "D+")}
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return g, samples, seen


def test_without_guidance_the_sampler_is_the_plain_ddim_loop_from_z_T(sd15, banks, cond, uncond, unguided):
    _, samples, seen = unguided
    plain = plain_ddim(sd15[0], banks[0], cond, uncond, cfg=4.0)
    torch.testing.assert_close(samples["D"], plain, atol=1e-5, rtol=1e-5)
    assert seen[:STEPS] == [(k, STEPS) for k in range(1, STEPS + 1)], "the progress bar counts up, once per step"


def test_energy_scale_zero_turns_time_travel_and_guidance_off_in_d_plus(nodes_, unguided):
    """Official Sampler.py:L60-61, L74: with energy scale 0, D+ runs one repeat per step and no guidance call."""
    _, samples, _ = unguided
    torch.testing.assert_close(samples["D+"], samples["D"], atol=1e-6, rtol=1e-6)
    assert not any(s.guided or s.repeats > 1 for s in plan.dragon_plan("D+", "move", STEPS, guidance=False))


def test_cfg_combines_cond_and_uncond_in_the_right_direction(sd15, cond, uncond):
    """The CFG pass equals uncond + cfg (cond - uncond) computed from two cond-only passes (never swapped)."""
    torch.manual_seed(5)
    z = torch.randn(1, 4, *LATENT_HW)
    step = PlanStep(3, 601, 501)
    guided = run_passes(sd15[0], lambda p: p.eps(z, step, cfg=True), cond, uncond, cfg=3.0)
    eps_c = run_passes(sd15[0], lambda p: p.eps(z, step), cond)
    eps_u = run_passes(sd15[0], lambda p: p.eps(z, step), uncond)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)


class _PassSpy:
    """attn1_patch after the bank patch: records (phase, step index, CFG batch, bank active) once per UNet call."""

    def __init__(self, seen, layer=("output", 3, 0)):   # the first decoder layer: truncated passes reach it too
        self.seen, self.layer = seen, layer

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        if (extra_options["block"][0], extra_options["block"][1], extra_options.get("block_index", 0)) == self.layer:
            run = extra_options["dragedit"]
            self.seen.append((run.phase, None if run.step is None else run.step.i, n.shape[0],
                              context_attn1 is not n))
        return n, context_attn1, value_attn1


@pytest.mark.parametrize("mode", ["move", "appearance"])
def test_bank_attention_runs_on_exactly_the_plans_steps_and_passes(nodes_, sd15, banks, cond, uncond, mode):
    """Every CFG pass of a plan step with bank_attention reads the bank, no other pass does: not the estimator,
    not time travel's re-noise (the plan is the one authority; 10 steps: move from i=1, appearance to i=7)."""
    g, vca_masks = guidance_of(nodes_, mode)
    replace = {"memory_bank_replace": banks[1]} if mode == "appearance" else {}
    model = run_node(nodes_.vca, model=sd15[0], memory_bank=banks[0], mode=VCA_MODE[mode],
                     step_range="method's steps", start_step=0, end_step=1000, **replace, **vca_masks).result[0]
    seen = []
    model.set_model_attn1_patch(_PassSpy(seen))
    sample(nodes_, model, banks, g, cond, uncond)
    steps = plan.dragon_plan("D+", mode, STEPS)
    denoise = [(i, active) for phase, i, batch, active in seen if phase == "denoise"]
    expected = [(s.i, s.bank_attention) for s in steps for _ in range(s.repeats)]
    assert denoise == expected
    assert {s.i for s in steps if s.bank_attention} == (set(range(1, STEPS)) if mode == "move" else set(range(8)))
    assert all(batch == 2 for phase, _, batch, _ in seen if phase == "denoise"), "uncond and cond in one batch"
    others = [(phase, active) for phase, _, batch, active in seen if phase != "denoise"]
    assert {phase for phase, _ in others} == {"estimate", "renoise"} and not any(active for _, active in others)


def test_guidance_changes_the_output_when_on(nodes_, sd15, banks, cond, uncond, unguided):
    g, _ = guidance_of(nodes_, "move", offset_x=0, offset_y=0)
    guided = sample(nodes_, sd15[0], banks, g, cond, uncond, schedule="D", sde_strength=0.0)
    assert torch.isfinite(guided).all()
    assert (guided - unguided[1]["D"]).abs().max() > 1e-3


def test_gradient_reaches_z_through_the_real_truncated_estimator(nodes_, sd15, banks, cond):
    """The gated correction is finite and non-zero both inside the edit mask (E_edit) and outside it (E_con)."""
    bank = banks[0]
    g, _ = guidance_of(nodes_, "move")
    step = plan.dragon_plan("D", "move", STEPS)[2]
    torch.manual_seed(4)
    z = bank.latent(step.t) + 0.1 * torch.randn(1, 4, *LATENT_HW)

    def correction(passes):
        policy = DragonPolicy(g.to(passes.device), lambda z_, t: passes.features(z_, t, DRAGON_TAP)[1],
                              bank.latent, passes.alphas_cumprod)
        return policy.guidance(step, z, torch.zeros_like(z))

    correction = run_passes(sd15[0], correction, cond, grad=True)
    inside = g.gate[None, None].expand_as(correction)
    assert correction.shape == z.shape and torch.isfinite(correction).all()
    assert correction[inside].abs().sum() > 0 and correction[~inside].abs().sum() > 0


@pytest.mark.parametrize("case", ["move by zero", "drag onto itself"])
def test_empty_regions_give_finite_edits(nodes_, sd15, banks, cond, uncond, case):
    """No vacated area (zero offset) or handle patches on their targets: empty terms are skipped, never NaN."""
    if case == "move by zero":
        g, _ = guidance_of(nodes_, "move", offset_x=0, offset_y=0)
        assert g.index["non_overlap"].numel() == 0
    else:
        g, _ = guidance_of(nodes_, "drag", points=DragPoints(((20.0, 30.0, 20.0, 30.0),), (IMAGE, IMAGE)))
        assert g.push[0].numel() == 0
    samples = sample(nodes_, sd15[0], banks, g, cond, uncond, schedule="D")
    assert torch.isfinite(samples).all()


def test_interrupting_stops_the_sampler_at_the_first_step(nodes_, sd15, banks, cond, uncond):
    import comfy.model_management
    import comfy.utils

    seen = []

    def interrupt(value, total, preview, node_id=None):
        seen.append((value, total))
        comfy.model_management.interrupt_current_processing(True)

    g, _ = guidance_of(nodes_, "move")
    try:
        comfy.utils.set_progress_bar_global_hook(interrupt)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(nodes_, sd15[0], banks, g, cond, uncond, schedule="D")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    assert seen == [(1, STEPS)], "stopped at the second step's callback"


# ---- errors users see --------------------------------------------------------------------------------------


def test_masks_of_the_wrong_size_are_refused(nodes_, sd15, banks, cond, uncond):
    with pytest.raises(DragEditInputError, match=r"Energy Guidance \(move\): input 'reference_mask' size 32x32"):
        guidance_of(nodes_, "move", reference_mask=box((0, 8), (0, 8), size=32))
    with pytest.raises(DragEditInputError, match=r"Energy Guidance \(drag\): input 'mask' size 128x128"):
        guidance_of(nodes_, "drag", mask=box((0, 8), (0, 8), size=128))
    big = guide(nodes_.move, mask=box((16, 40), (8, 32), size=128), offset_x=16, offset_y=0)[0]
    with pytest.raises(DragEditInputError, match="Guided Sampler: input 'guidance' was drawn on a 128x128 image but "
                                                 "memory_bank holds a 64x64 image"):
        sample(nodes_, sd15[0], banks, big, cond, uncond)


def test_an_empty_object_mask_is_refused(nodes_):
    with pytest.raises(DragEditInputError, match=r"\(move\): input 'mask' is empty \(all zeros\)\. Connect a "):
        guide(nodes_.move, mask=torch.zeros(1, IMAGE, IMAGE), offset_x=8, offset_y=0)


@pytest.mark.parametrize("mode", ["move", "paste"])
def test_an_offset_that_moves_the_object_wholly_out_is_refused(nodes_, mode):
    with pytest.raises(DragEditInputError, match=rf"\({mode}\): input 'offset_x, offset_y' \(64, 0\) px moves the "
                                                 r"object wholly out of the 64x64 image\. Use a smaller offset"):
        guidance_of(nodes_, mode, offset_x=64, offset_y=0)


@pytest.mark.parametrize("mode", ["resize", "paste"])
@pytest.mark.parametrize("scale", [0.0, -1.0, 11.0, float("nan")])
def test_a_scale_out_of_its_range_is_refused(nodes_, mode, scale):
    """Also for a linked value, which ComfyUI's queue-time range check never sees."""
    with pytest.raises(DragEditInputError, match=rf"Energy Guidance \({mode}\): input 'scale' is (nan|-?[0-9.]+, "
                                                 r"(below|above) its (minimum 0.05|maximum 10))\. Use a finite "
                                                 r"number from 0.05 to 10"):
        guidance_of(nodes_, mode, scale=scale)


def test_a_scale_that_shrinks_the_object_to_nothing_blames_the_scale(nodes_):
    with pytest.raises(DragEditInputError, match=r"\(resize\): input 'scale' 0.05 shrinks the object to nothing"):
        guidance_of(nodes_, "resize", mask=box((16, 24), (8, 16)), scale=0.05, offset_x=0)


def test_two_images_of_different_sizes_are_refused(nodes_, sd15, banks, cond, uncond):
    with pytest.raises(DragEditInputError, match=r"\(appearance\): input 'mask_replace' is 128x128 but mask_base "
                                                 r"is 64x64: the two images differ in size"):
        guidance_of(nodes_, "appearance", mask_replace=box((0, 64), (0, 64), size=128))
    g, _ = guidance_of(nodes_, "paste")
    larger = dataclasses.replace(banks[1], latent_shape=(1, 4, 16, 16))
    with pytest.raises(DragEditInputError, match="input 'memory_bank_replace' holds a 128x128 image but the base "
                                                 "image is a 64x64 image: the two images differ in size"):
        sample(nodes_, sd15[0], (banks[0], larger), g, cond, uncond)


@pytest.mark.parametrize("mode", ["appearance", "paste"])
def test_two_image_modes_without_the_second_bank_are_refused(nodes_, sd15, banks, cond, uncond, mode):
    g, _ = guidance_of(nodes_, mode)
    with pytest.raises(DragEditInputError, match=f"input 'memory_bank_replace' is not connected. The {mode} edit "
                                                 "needs the second image's bank"):
        sample(nodes_, sd15[0], (banks[0], None), g, cond, uncond)


def test_mismatched_bank_features_and_schedule_are_refused(nodes_, sd15, banks, cond, uncond):
    g, _ = guidance_of(nodes_, "move")
    foreign = dataclasses.replace(banks[0], fingerprint="0123456789abcdef")
    with pytest.raises(DragEditInputError, match="input 'memory_bank' was made with another model"):
        sample(nodes_, sd15[0], (foreign, None), g, cond, uncond)
    partial = dataclasses.replace(banks[0], timesteps=banks[0].timesteps[2:])
    with pytest.raises(DragEditInputError, match="input 'memory_bank' starts at t=701.*strength 1.0"):
        sample(nodes_, sd15[0], (partial, None), g, cond, uncond)
    with pytest.raises(DragEditInputError, match="input 'features' reads features at 0.5 x the image size"):
        run_node(nodes_.sampler, model=sd15[0], memory_bank=banks[0], guidance=g, features=features.gooddrag_tap(8, "SD 1.x"),
                 positive=cond, negative=uncond, **widget_defaults(nodes_.sampler))


@pytest.mark.parametrize("name, value", [("cfg", float("nan")), ("sde_strength", float("nan")),
                                         ("cfg", float("inf")), ("sde_strength", 1.5)])
def test_a_non_finite_or_out_of_range_sampler_number_is_refused(nodes_, sd15, banks, cond, uncond, name, value):
    """NaN passes ComfyUI's own range check (NaN < min is False); before, a NaN cfg gave an all-black image."""
    g, _ = guidance_of(nodes_, "move")
    with pytest.raises(DragEditInputError, match=rf"Guided Sampler: input '{name}' is (nan|inf|1.5, above)"):
        sample(nodes_, sd15[0], banks, g, cond, uncond, **{name: value})


@pytest.mark.usefixtures("one_torch_thread")
def test_custom_feature_weights_reach_the_energies(nodes_, sd15, banks, cond, uncond):
    """The Feature Extractor's custom weights replace the method's layer weights (before: no effect at all)."""
    from comfyui_dragedit.nodes import features as features_node

    g, _ = guidance_of(nodes_, "move", offset_x=16, offset_y=8)
    custom = lambda weights: run_node(features_node.DragEditFeatureExtractor, model=sd15[0], preset="custom",  # noqa
                                      blocks="5, 8", weights=weights, resize="nearest", scale=0.25).result[0]
    official, tilted = custom("0.5, 0.5"), custom("0.1, 0.9")
    assert official.weights == (0.5, 0.5) and tilted.weights == (0.1, 0.9)
    runs = [run_node(nodes_.sampler, model=sd15[0], memory_bank=banks[0], guidance=g, features=tap, positive=cond,
                     negative=uncond, **{**widget_defaults(nodes_.sampler), "schedule": "D"}).result[0]["samples"]
            for tap in (DRAGON_TAP, official, tilted)]
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=0)   # move's own weights are 1/L = 0.5, 0.5
    assert not torch.allclose(runs[2], runs[0], atol=1e-4)
