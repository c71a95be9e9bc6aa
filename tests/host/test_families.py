"""Every node on the other model families (issue 13): SDXL, SD 2.x eps and SD 2.x v, each a random-weight model of
ComfyUI's own config class with the real block layout at reduced width (tests/support/families.py), on a 16x16
latent (128 px image; the taps at latent/4 are 4x4).

- Inversion + Visual Cross-Attention + a stock KSampler reconstruct as closely as the plain DDIM round trip.
- Every Energy Guidance mode and the AlDD scheduler move the content toward the target: on planted features
  (tests/support/planted.py), against the same edit at energy scale 0 (or no drag), so the direction is the
  energies' own and not the copied starting noise's.
- SDXL's ADM conditioning (pooled text + size embedding) reaches every pass the pack runs, in batch order, and
  changes eps in each pass kind.
- Bad input gets the node's error: features of another family, a latent or guidance of another size.
Refusals (inpainting, instruct-pix2pix, EDM / flow sampling, SD3, Flux) and SD 2.1 unCLIP are at the end.
"""
import dataclasses
import re
import types

import pytest
import torch

from comfyui_dragedit.kernels import features as kfeatures
from comfyui_dragedit.kernels.plan import PlanStep
from comfyui_dragedit.kernels.points import DragPoints
from comfyui_dragedit.nodes.errors import DragEditInputError
from tests.support import families, planted
from tests.support.comfy_inproc import run_node, run_passes

FAMILY_NAMES = ("sdxl", "sd2", "sd2_v")
LATENT = 16
IMAGE = LATENT * 8
STEPS = 10
MODES = ("move", "resize", "appearance", "paste", "drag")
VCA_MODE = {"move": "replace", "resize": "replace", "drag": "concat", "appearance": "masked", "paste": "masked"}
DIRECTION = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 4, 1, 1) / 2       # the base image's object
DIRECTION_B = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(1, 4, 1, 1) / 2     # the replace image's object
OBJECT = (4, 9, 2, 7)       # latent rows, cols [start, end) of the base image's object
OBJECT_B = (9, 14, 9, 14)   # the replace image's object
MOVE_BY = 5                 # latent px to the right
EXPECTED = {"sdxl": "SDXL", "sd2": "SD 2.x", "sd2_v": "SD 2.x"}


def box(rows_cols, size=IMAGE, scale=8):
    r0, r1, c0, c1 = rows_cols
    mask = torch.zeros(1, size, size)
    mask[:, r0 * scale:r1 * scale, c0 * scale:c1 * scale] = 1.0
    return mask


def image_latent(seed, direction, region, scale):
    """A background with one object, in the model's unit-variance space (as a real VAE latent times the scale
    factor is): noise of std 0.5, and `direction` in latent channels, +1.5 over `region`. Returned as a LATENT
    (unscaled VAE space, what VAE Encode gives)."""
    z = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed)) * 0.5
    r0, r1, c0, c1 = region
    z[:, :, r0:r1, c0:c1] += 1.5 * direction
    return {"samples": z / scale}


def along(z, direction, region):
    """Mean of <z, direction> over a latent region (model space): how much of an object is there."""
    r0, r1, c0, c1 = region
    return float((z[:, :, r0:r1, c0:c1] * direction).sum(1).mean())


def widget_defaults(node):
    info = node.GET_NODE_INFO_V1()["input"]
    specs = {**info["required"], **info.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in specs.items() if "default" in spec[1]}


def node_run(node, **inputs):
    return run_node(node, **{**widget_defaults(node), **inputs}).result


class AdmSpy:
    """model_function_wrapper: records (phase, cond_or_uncond, y) of every UNet call, then calls the inner one."""

    def __init__(self, inner=None):
        self.inner, self.calls = inner, []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args):
        c = args["c"]
        run = c["transformer_options"].get("dragedit")
        y = c.get("y")
        self.calls.append((None if run is None else run.phase, list(args["cond_or_uncond"]),
                           None if y is None else y.detach().clone()))
        if self.inner is not None:
            return self.inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **c)


def spied(model):
    out = model.clone()
    spy = AdmSpy(out.model_options.get("model_function_wrapper"))
    out.set_model_unet_function_wrapper(spy)
    return out, spy


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import (aldd, cross_attention, energy_guidance, features, guided_sampler, host,
                                        inversion)

    return types.SimpleNamespace(
        host=host, inversion=inversion.DragEditDDIMInversion, vca=cross_attention.DragEditVisualCrossAttention,
        features=features.DragEditFeatureExtractor, sampler=guided_sampler.DragEditGuidedSampler,
        aldd=aldd.DragEditAlDDScheduler, move=energy_guidance.DragEditEnergyGuidanceMove,
        resize=energy_guidance.DragEditEnergyGuidanceResize, appearance=energy_guidance.DragEditEnergyGuidanceAppearance,
        paste=energy_guidance.DragEditEnergyGuidancePaste, drag=energy_guidance.DragEditEnergyGuidanceDrag)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def fam(request, nodes_):
    """One family: the model, its Family, a prompt and a negative (different pooled embeddings)."""
    import comfy.model_management

    name = request.param
    model = families.build(name)
    yield types.SimpleNamespace(name=name, model=model, family=nodes_.host.family(model, "test"),
                                scale=model.model.latent_format.scale_factor,
                                cond=families.conditioning(name, seed=1), uncond=families.conditioning(name, seed=2))
    comfy.model_management.unload_all_models()


def invert(nodes_, model, latent, cond, steps=STEPS, strength=1.0, layers="family default"):
    return run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=steps, strength=strength,
                    layers=layers, bank_device="offload (CPU)").result


def ksampler(model, cond, latent, steps=STEPS):
    import nodes

    with torch.inference_mode():
        return nodes.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "ddim", "ddim_uniform", cond, cond,
                                               latent, 0, 10000, "disable")[0]["samples"]


def test_the_family_and_its_layer_keys_come_from_the_live_model(nodes_, fam):
    f = fam.family
    assert f.name == EXPECTED[fam.name]
    channels = nodes_.host.layer_channels(fam.model, f.layers())
    base = families.LAYOUTS[fam.name][3]
    if fam.name == "sdxl":
        assert len(f.layers()) == 36 and f.layers(f.bank_blocks) == tuple(
            ("output", b, k) for b in (3, 4, 5) for k in range(2))
        assert {channels[("output", b, 9)] for b in (0, 1, 2)} == {4 * base}
        assert {channels[("output", b, 1)] for b in (3, 4, 5)} == {2 * base}
    else:
        assert f.layers() == tuple(("output", b, 0) for b in range(3, 12))
        assert [channels[("output", b, 0)] for b in (3, 6, 9)] == [4 * base, 2 * base, base]


@pytest.fixture(scope="module")
def reconstruction(nodes_, fam):
    latent = image_latent(0, DIRECTION, OBJECT, fam.scale)
    bank, inverted = invert(nodes_, fam.model, latent, fam.cond)
    out = {}
    for mode in ("replace", "concat"):
        patched = run_node(nodes_.vca, model=fam.model, memory_bank=bank, mode=mode, step_range="method's steps",
                           start_step=0, end_step=1000).result[0]
        out[mode] = ksampler(patched, fam.cond, inverted)
    out["plain"] = ksampler(fam.model, fam.cond, inverted)
    return latent["samples"], bank, out


@pytest.mark.parametrize("mode", ["replace", "concat"])
def test_visual_cross_attention_in_a_stock_ksampler_reconstructs_as_the_plain_round_trip(fam, reconstruction, mode):
    z0, bank, out = reconstruction
    error = lambda z: float((z - z0).norm() / z0.norm())   # noqa: E731
    assert set(bank.layers) == set(fam.family.layers(fam.family.bank_blocks))
    assert error(out[mode]) <= error(out["plain"]) * 1.05 + 0.005, (error(out[mode]), error(out["plain"]))
    assert error(out["plain"]) < 0.2
    assert not torch.equal(out[mode], out["plain"]), "the bank attention patch did not act"


def test_the_bank_keeps_each_transformer_of_a_block_apart(fam, reconstruction):
    """SDXL's blocks hold 2 or 10 transformers: each has its own key and its own input (never recorded twice)."""
    _, bank, _ = reconstruction
    t = bank.timesteps[3]
    for block, count, _ in fam.family.decoder_transformers:
        keys = [("output", block, k) for k in range(count) if ("output", block, k) in bank.layers]
        for a, b in zip(keys, keys[1:]):
            assert not torch.equal(bank.attention_input(t, a), bank.attention_input(t, b)), (a, b)


# ---- edits on planted features ----------------------------------------------------------------------------------

GEOMETRY = {   # image px (128 x 128); OBJECT is image rows 32-72, cols 16-56
    "move": dict(mask=box(OBJECT), offset_x=8 * MOVE_BY, offset_y=0),
    "resize": dict(mask=box(OBJECT), scale=1.6, offset_x=0, offset_y=0),
    "appearance": dict(mask_base=box(OBJECT), mask_replace=box(OBJECT_B)),
    "paste": dict(mask=box(OBJECT_B), offset_x=-56, offset_y=-40),   # lands at latent rows 4-9, cols 2-7
    "drag": dict(points=DragPoints(((48.0, 52.0, 88.0, 52.0),), (IMAGE, IMAGE)), mask=box((1, 15, 1, 15))),
}


def toward(mode, z):
    """The edit's direction, as a number that grows as the content goes where the edit says."""
    if mode == "move":     # the object's mass moves right: along its rows, target minus source
        r0, r1, c0, c1 = OBJECT
        return along(z, DIRECTION, (r0, r1, c1, c1 + MOVE_BY)) - along(z, DIRECTION, (r0, r1, c0, c0 + MOVE_BY))
    if mode == "resize":   # the object grows into the ring around it (x1.6: 8 latent px across)
        r0, r1, c0, c1 = OBJECT
        ring = [(r0 - 1, r0, c0 - 1, c1 + 1), (r1, r1 + 1, c0 - 1, c1 + 1), (r0, r1, c0 - 1, c0), (r0, r1, c1, c1 + 1)]
        return sum(along(z, DIRECTION, region) for region in ring) / 4
    if mode == "appearance":   # the base object takes the replace object's look
        return along(z, DIRECTION_B, OBJECT) - along(z, DIRECTION, OBJECT)
    if mode == "paste":    # the replace image's object appears at its destination
        return along(z, DIRECTION_B, OBJECT)
    return along(z, DIRECTION, (5, 8, 10, 12)) - along(z, DIRECTION, (5, 8, 5, 7))   # drag: handle to target


@pytest.fixture(scope="module")
def edits(nodes_, fam):
    """On a planted, ADM-spying copy of the model: both images inverted, every mode at the paper's energy scale and
    at 0, one GoodDrag drag and its zero drag (D schedule, 10 steps; tests/support/planted.py)."""
    f = fam.family
    model, spy = spied(planted.plant(fam.model, {*f.dragon_taps, f.gooddrag_tap}))
    latent = image_latent(0, DIRECTION, OBJECT, fam.scale)
    banks = [invert(nodes_, model, latent, fam.cond)[0],
             invert(nodes_, model, image_latent(1, DIRECTION_B, OBJECT_B, fam.scale), fam.cond)[0]]
    dragon = node_run(nodes_.features, model=model, preset="DragonDiffusion")[0]
    out = {}
    for mode in MODES:
        guidance, *masks = node_run(getattr(nodes_, mode), **GEOMETRY[mode])
        if mode == "appearance":
            masks = dict(mask_base=box(OBJECT), mask_replace=box(OBJECT_B))
        elif mode == "paste":
            masks = dict(mask_base=masks[0], mask_replace=masks[1])
        else:
            masks = {}
        second = {"memory_bank_replace": banks[1]} if VCA_MODE[mode] == "masked" else {}
        patched = node_run(nodes_.vca, model=model, memory_bank=banks[0], mode=VCA_MODE[mode], **second, **masks)[0]
        for scale in (guidance.energy_scale, 0.0):
            g = dataclasses.replace(guidance, energy_scale=scale)
            out[mode, scale > 0] = node_run(nodes_.sampler, model=patched, memory_bank=banks[0], guidance=g,
                                            features=dragon, positive=fam.cond, negative=fam.uncond, schedule="D",
                                            **second)[0]["samples"] * fam.scale
    drag_bank = invert(nodes_, model, latent, fam.cond, strength=0.8, layers="none")[0]
    good = node_run(nodes_.features, model=model, preset="GoodDrag / DragDiffusion")[0]
    for name, target in (("drag", 88.0), ("none", 48.0)):
        out["aldd", name] = node_run(nodes_.aldd, model=model, memory_bank=drag_bank, positive=fam.cond,
                                     points=DragPoints(((48.0, 52.0, target, 52.0),), (IMAGE, IMAGE)), features=good,
                                     preset="custom", drag_steps=3, drags_per_step=3, grad_steps_per_drag=2, lr=0.05,
                                     max_no_change=0)
    return out, spy, latent["samples"] * fam.scale


# The sampler copies resize's and paste's starting noise to the destination (energy.copy_noise, as officially); on
# the planted stub, whose eps is nearly 0, that copy alone completes them, so there the energies can only keep it.
COMPLETED_BY_THE_COPY = ("resize", "paste")


@pytest.mark.parametrize("mode", MODES)
def test_every_energy_guidance_mode_moves_the_content_toward_its_target(fam, edits, mode):
    """The edit is where it should be (against the input image), and the energies themselves push toward it
    (against the same run at energy scale 0: same copied noise, same bank attention)."""
    out, _, z0 = edits
    guided, unguided = out[mode, True], out[mode, False]
    assert torch.isfinite(guided).all()
    contrast = along(z0, DIRECTION, OBJECT)     # the object's own strength, 1.5 in the input
    numbers = (mode, toward(mode, guided), toward(mode, unguided), toward(mode, z0))
    assert toward(mode, guided) - toward(mode, z0) > 0.5 * contrast, numbers
    gain = toward(mode, guided) - toward(mode, unguided)
    if mode in COMPLETED_BY_THE_COPY:
        assert gain > -0.1 * contrast, numbers
    else:
        assert gain > 0.1 * contrast, numbers


def test_the_aldd_scheduler_drags_the_handle_and_its_content_toward_the_target(fam, edits):
    out, _, _ = edits
    (dragged, final, _), (still, unmoved, _) = out["aldd", "drag"], out["aldd", "none"]
    start_gap = 88.0 - 48.0
    assert 88.0 - final.pairs[0][0] < start_gap - 8, final.pairs     # tracked at least 8 px nearer
    assert unmoved.pairs == ((48.0, 52.0, 48.0, 52.0),)
    target_cells = (5, 8, 7, 11)   # latent rows and columns between the handle and the target
    assert along(dragged["samples"] * fam.scale, DIRECTION, target_cells) > \
        along(still["samples"] * fam.scale, DIRECTION, target_cells) + 0.1


def test_adm_conditioning_reaches_every_pass_in_batch_order(nodes_, fam, edits):
    """Inversion, CFG denoise, the DragonDiffusion estimator, AlDD's drag passes and denoise: every UNet call gets
    y, whose pooled part is the prompt's (cond rows) or the negative's (uncond rows), and whose size part is the
    image's, as ComfyUI's own encode_adm makes it."""
    _, spy, _ = edits
    phases = {phase for phase, _, _ in spy.calls}
    assert phases == {"invert", "denoise", "estimate"}
    if fam.name != "sdxl":
        assert all(y is None for _, _, y in spy.calls), "SD 2.x has no ADM input"
        return
    base = fam.model.model
    expected = {k: base.encode_adm(pooled_output=c[0][1]["pooled_output"], width=IMAGE, height=IMAGE, device="cpu")
                for k, c in ((0, fam.cond), (1, fam.uncond))}
    assert not torch.allclose(expected[0], expected[1])
    for phase, order, y in spy.calls:   # one chunk of rows per entry of cond_or_uncond, each the latent batch
        assert y is not None and y.shape[1] == 2816 and y.shape[0] % len(order) == 0, (phase, order)
        rows = y.shape[0] // len(order)
        torch.testing.assert_close(y, torch.cat([expected[k].expand(rows, -1) for k in order]), atol=1e-6, rtol=1e-6)
    assert any(phase == "denoise" and y.shape[0] == 2 and order == [0] for phase, order, y in spy.calls), \
        "AlDD's MasaCtrl denoising batches [source, edit], both with the prompt's y"
    assert any(order == [1, 0] for _, order, _ in spy.calls), "a CFG pass batches uncond and cond"


@pytest.mark.parametrize("kind", ["invert", "denoise", "estimate", "renoise"])
def test_another_pooled_embedding_changes_eps_in_each_pass_kind(fam, kind):
    torch.manual_seed(3)
    z = torch.randn(1, 4, LATENT, LATENT)
    other = families.with_pooled(fam.cond, torch.randn(1, families.TEXT_WIDTHS[fam.name][1]))
    tap = kfeatures.dragon_tap(fam.family.dragon_taps, fam.family.name)

    def eps(passes):
        if kind == "estimate":
            return passes.features(z, 501, tap, need_eps=True)[0]
        return passes.eps(z, PlanStep(5, 501, 401, phase=kind), cfg=kind == "denoise")

    a = run_passes(fam.model, eps, fam.cond, fam.uncond, cfg=3.0, latent_hw=(LATENT, LATENT))
    b = run_passes(fam.model, eps, other, fam.uncond, cfg=3.0, latent_hw=(LATENT, LATENT))
    if fam.name == "sdxl":
        assert not torch.allclose(a, b, atol=1e-5), "the pooled embedding did not reach this pass"
    else:
        torch.testing.assert_close(a, b, atol=0, rtol=0)   # SD 2.x reads no pooled embedding


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_features_made_for_another_family_are_refused(nodes_, fam, sd15, reconstruction):
    """The same preset means other blocks on another family: SD-1.5's features on this model are refused by name."""
    _, bank, _ = reconstruction
    sd15_features = node_run(nodes_.features, model=sd15[0], preset="DragonDiffusion")[0]
    guidance = node_run(nodes_.move, **GEOMETRY["move"])[0]
    with pytest.raises(DragEditInputError, match=r"features.*were made for a SD 1\.x model, this is a "
                                                 + fam.family.name.replace(".", r"\.")):
        node_run(nodes_.sampler, model=fam.model, memory_bank=bank, guidance=guidance, features=sd15_features,
                 positive=fam.cond, negative=fam.uncond, schedule="D")
    good = node_run(nodes_.features, model=sd15[0], preset="GoodDrag / DragDiffusion")[0]
    with pytest.raises(DragEditInputError, match="were made for a SD 1.x model"):
        node_run(nodes_.aldd, model=fam.model, memory_bank=bank, positive=fam.cond, features=good,
                 points=DragPoints(((48.0, 52.0, 88.0, 52.0),), (IMAGE, IMAGE)))


def test_a_latent_of_another_size_is_refused(nodes_, fam, reconstruction):
    """A bank of the 128 px image: a stock KSampler on a 192 px latent, and guidance drawn on a 192 px image, get
    the node's error, not a shape error from inside attention."""
    _, bank, _ = reconstruction
    patched = run_node(nodes_.vca, model=fam.model, memory_bank=bank, mode="replace", step_range="method's steps",
                       start_step=0, end_step=1000).result[0]
    big = {"samples": torch.zeros(1, 4, LATENT + 8, LATENT + 8)}
    down = fam.family.downscale(fam.family.layers(fam.family.bank_blocks)[0])   # the first bank layer to run
    tokens = (LATENT // down) ** 2, ((LATENT + 8) // down) ** 2
    with pytest.raises(DragEditInputError, match=f"memory_bank.*holds {tokens[0]} tokens at .* but the sampler "
                                                 f"runs {tokens[1]}"):
        ksampler(patched, fam.cond, big)
    guidance = node_run(nodes_.move, mask=box(OBJECT, size=IMAGE + 64), offset_x=40, offset_y=0)[0]
    dragon = node_run(nodes_.features, model=fam.model, preset="DragonDiffusion")[0]
    with pytest.raises(DragEditInputError, match="guidance.*was drawn on a 192x192 image but memory_bank holds a "
                                                 "128x128"):
        node_run(nodes_.sampler, model=fam.model, memory_bank=bank, guidance=guidance, features=dragon,
                 positive=fam.cond, negative=fam.uncond, schedule="D")


# ---- SD 2.1 unCLIP: supported through its processed ADM input ---------------------------------------------------

@pytest.fixture(scope="module")
def unclip(nodes_):
    """SD 2.1 unCLIP-H (v): its y is the image embedding unCLIPConditioning puts in the CONDITIONING, noise-
    augmented by the model's own augmentor (comfy.model_base.SD21UNCLIP.encode_adm)."""
    import comfy.model_management

    model = families.build("sd21_unclip")
    text = families.conditioning("sd21_unclip", seed=1)
    yield types.SimpleNamespace(model=model, text=text, cond=families.with_image(text, seed=5),
                                other=families.with_image(text, seed=6), scale=model.model.latent_format.scale_factor)
    comfy.model_management.unload_all_models()


def test_unclip_is_an_sd2_model_and_its_image_embedding_reaches_the_inversion(nodes_, unclip):
    assert nodes_.host.family(unclip.model, "test") is nodes_.host.SD2
    model, spy = spied(unclip.model)
    latent = image_latent(0, DIRECTION, OBJECT, unclip.scale)
    invert(nodes_, model, latent, unclip.cond, steps=4)
    ys = [y for _, _, y in spy.calls]
    assert len(ys) == 4 and all(y is not None and y.shape == (1, 2048) for y in ys)
    assert all(torch.equal(y, ys[0]) for y in ys) and float(ys[0].abs().max()) > 0.1
    spy.calls.clear()
    invert(nodes_, model, latent, unclip.other, steps=4)
    assert not torch.allclose(spy.calls[0][2], ys[0]), "another image embedding gives the same y"


@pytest.mark.parametrize("kind", ["invert", "denoise", "estimate", "renoise"])
def test_another_image_embedding_changes_unclips_eps_in_each_pass_kind(nodes_, unclip, kind):
    torch.manual_seed(3)
    z = torch.randn(1, 4, LATENT, LATENT)
    tap = kfeatures.dragon_tap(nodes_.host.SD2.dragon_taps, nodes_.host.SD2.name)

    def eps(passes):
        if kind == "estimate":
            return passes.features(z, 501, tap, need_eps=True)[0]
        return passes.eps(z, PlanStep(5, 501, 401, phase=kind), cfg=kind == "denoise")

    a = run_passes(unclip.model, eps, unclip.cond, unclip.text, cfg=3.0, latent_hw=(LATENT, LATENT))
    b = run_passes(unclip.model, eps, unclip.other, unclip.text, cfg=3.0, latent_hw=(LATENT, LATENT))
    assert not torch.allclose(a, b, atol=1e-5), "the image embedding did not reach this pass"


def test_unclip_visual_cross_attention_reconstructs_as_the_plain_round_trip(nodes_, unclip):
    latent = image_latent(0, DIRECTION, OBJECT, unclip.scale)
    z0 = latent["samples"]
    bank, inverted = invert(nodes_, unclip.model, latent, unclip.cond)
    patched = run_node(nodes_.vca, model=unclip.model, memory_bank=bank, mode="replace",
                       step_range="method's steps", start_step=0, end_step=1000).result[0]
    error = lambda z: float((z - z0).norm() / z0.norm())   # noqa: E731
    plain, vca = ksampler(unclip.model, unclip.cond, inverted), ksampler(patched, unclip.cond, inverted)
    assert error(vca) <= error(plain) * 1.05 + 0.005 and error(plain) < 0.2, (error(vca), error(plain))
    assert not torch.equal(vca, plain)


# ---- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("sd15_inpaint", r"model.*is a SD 1\.x model with 9 input channels \(an inpainting or instruct-pix2pix model\)"),
    ("sd15_ip2p", r"model.*is an instruct-pix2pix model \(its UNet also reads the input image\)"),
])
def test_inpainting_and_instruct_pix2pix_models_are_refused_by_every_entry_node(nodes_, name, message):
    """Read from the live modules (the first convolution's input channels), before any UNet call."""
    import comfy.model_management

    model = families.build(name)
    assert model.model.diffusion_model.input_blocks[0][0].weight.shape[1] == families.LAYOUTS[name][1]["in_channels"]
    cond = families.conditioning(name)
    latent = image_latent(0, DIRECTION, OBJECT, 0.18215)
    with pytest.raises(DragEditInputError, match=message):
        invert(nodes_, model, latent, cond, steps=2)
    with pytest.raises(DragEditInputError, match=message):
        node_run(nodes_.features, model=model, preset="DragonDiffusion")
    comfy.model_management.unload_all_models()


@pytest.mark.parametrize("patch", ["EDM", "flow"])
def test_edm_and_flow_sampling_are_refused(nodes_, fam, patch):
    """ModelSamplingContinuousEDM / ModelSamplingSD3 on the model: no discrete VP timestep table to invert on."""
    from comfy_extras import nodes_model_advanced as advanced

    if patch == "EDM":
        model = advanced.ModelSamplingContinuousEDM().patch(fam.model, "eps", 120.0, 0.002)[0]
        seen = "ModelSamplingContinuousEDM + EPS"
    else:
        model = advanced.ModelSamplingSD3().patch(fam.model, 3.0)[0]
        seen = "ModelSamplingDiscreteFlow + CONST"
    with pytest.raises(DragEditInputError, match=rf"model.*samples with {re.escape(seen)} \(no discrete VP timestep"):
        invert(nodes_, model, image_latent(0, DIRECTION, OBJECT, fam.scale), fam.cond, steps=2)


@pytest.mark.parametrize("config", ["SD3", "Flux", "SDXLRefiner"])
def test_other_model_families_are_refused_by_name(nodes_, config):
    """Which family a model is comes from its ComfyUI config class alone, before any module is read: a model that
    carries SD3's, Flux's or the refiner's config is refused with what it is and what is supported."""
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, config)({})
    model = types.SimpleNamespace(model=types.SimpleNamespace(model_config=model_config))
    why = {"SD3": "a SD3 model", "Flux": "a Flux model", "SDXLRefiner": "the SDXL refiner"}[config]
    with pytest.raises(DragEditInputError, match=rf"model.*is {why}.*Load one of the supported models: SD 1\.x, SD "
                                                 r"2\.x \(eps or v\) and SDXL"):
        nodes_.host.family(model, "DDIM Inversion")


# ---- patches a user stacks on the MODEL ---------------------------------------------------------------------------

def test_comfyuis_freeu_scales_the_sdxl_decoder_in_both_samplers_as_in_a_ksampler(nodes_):
    """FreeU, ComfyUI's own node, scales the output blocks whose width is 4x or 2x model_channels. SDXL's layout
    has both (the SD-1.5 test model is one width throughout, where FreeU never acts), so here the real FreeU must
    run in the pack's samplers as in a KSampler: on the denoising and estimator passes of the Guided Sampler and on
    the drag and denoising passes of the AlDD scheduler, and change both edits."""
    from comfy_extras.nodes_freelunch import FreeU

    model = families.build("sdxl")
    scale = model.model.latent_format.scale_factor
    cond, uncond = families.conditioning("sdxl", seed=1), families.conditioning("sdxl", seed=2)
    freeu = FreeU().patch(model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)[0]
    patches = freeu.model_options["transformer_options"]["patches"]
    [freeu_patch] = patches["output_block_patch"]
    widths = {4 * families.unet_config("sdxl")["model_channels"], 2 * families.unet_config("sdxl")["model_channels"]}
    scaled = []   # the pass of every FreeU call on a block it scales

    def counted(h, hsp, transformer_options):
        if h.shape[1] in widths:
            run = transformer_options.get("dragedit")
            scaled.append(None if run is None else run.phase)
        return freeu_patch(h, hsp, transformer_options)

    patches["output_block_patch"] = [counted]
    latent = image_latent(0, DIRECTION, OBJECT, scale)
    bank = invert(nodes_, model, latent, cond)[0]
    guidance = node_run(nodes_.move, **GEOMETRY["move"])[0]
    dragon = node_run(nodes_.features, model=model, preset="DragonDiffusion")[0]
    moved = {name: node_run(nodes_.sampler, model=m, memory_bank=bank, guidance=guidance, features=dragon,
                            positive=cond, negative=uncond, schedule="D")[0]["samples"]
             for name, m in (("plain", model), ("freeu", freeu))}
    guided_passes = set(scaled)
    scaled.clear()
    drag_bank = invert(nodes_, model, latent, cond, strength=0.8, layers="none")[0]
    good = node_run(nodes_.features, model=model, preset="GoodDrag / DragDiffusion")[0]
    dragged = {name: node_run(nodes_.aldd, model=m, memory_bank=drag_bank, positive=cond,
                              points=DragPoints(((48.0, 52.0, 88.0, 52.0),), (IMAGE, IMAGE)), features=good,
                              preset="custom", drag_steps=2, drags_per_step=2, grad_steps_per_drag=1, lr=0.05,
                              max_no_change=0)[0]["samples"]
               for name, m in (("plain", model), ("freeu", freeu))}
    assert guided_passes == {"denoise", "estimate"}, guided_passes
    assert set(scaled) == {"denoise", "estimate"}, set(scaled)   # AlDD's drag passes read features: "estimate"
    for out in (moved, dragged):
        assert torch.isfinite(out["freeu"]).all()
        assert (out["freeu"] - out["plain"]).abs().mean() > 1e-3 * out["plain"].abs().mean()


def test_masactrl_reads_the_source_in_the_layers_its_setting_names_on_sdxl(nodes_, monkeypatch):
    """GoodDrag's MasaCtrl denoising on SDXL: 'by resolution' attends to the source in the 6 self-attentions of
    output blocks 3-5, 'whole decoder' in all 36 of output blocks 0-5, counted where the patch replaced the keys on
    the live model's denoising passes; the two settings give different edits."""
    host = nodes_.host
    reached = []
    inner = host.MasaCtrlPatch.__call__

    def counting(self, n, context_attn1, value_attn1, extra_options):
        out = inner(self, n, context_attn1, value_attn1, extra_options)
        if out[1] is not n:
            reached.append(host.layer_key(extra_options))
        return out

    monkeypatch.setattr(host.MasaCtrlPatch, "__call__", counting)
    model = families.build("sdxl")
    cond = families.conditioning("sdxl", seed=1)
    latent = image_latent(0, DIRECTION, OBJECT, model.model.latent_format.scale_factor)
    bank = invert(nodes_, model, latent, cond, strength=0.8, layers="none")[0]
    good = node_run(nodes_.features, model=model, preset="GoodDrag / DragDiffusion")[0]
    layers, edits = {}, {}
    for setting in (host.MASACTRL_BY_RESOLUTION, host.MASACTRL_WHOLE_DECODER):
        reached.clear()
        edits[setting] = node_run(nodes_.aldd, model=model, memory_bank=bank, positive=cond,
                                  points=DragPoints(((48.0, 52.0, 88.0, 52.0),), (IMAGE, IMAGE)), features=good,
                                  preset="custom", drag_steps=1, drags_per_step=2, grad_steps_per_drag=1, lr=0.05,
                                  max_no_change=0, masactrl_layers=setting, keep_outside=True)[0]["samples"]
        layers[setting] = set(reached)
    by_resolution, whole = layers[host.MASACTRL_BY_RESOLUTION], layers[host.MASACTRL_WHOLE_DECODER]
    assert {block for _, block, _ in by_resolution} == {3, 4, 5} and len(by_resolution) == 6, sorted(by_resolution)
    assert {block for _, block, _ in whole} == {0, 1, 2, 3, 4, 5} and len(whole) == 36, sorted(whole)
    assert not torch.allclose(edits[host.MASACTRL_BY_RESOLUTION], edits[host.MASACTRL_WHOLE_DECODER], atol=1e-5)
