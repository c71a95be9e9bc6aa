"""Shared core through the real UNet (random-weight SD-1.5 topology) in-process: inversion and its memory bank,
feature taps, visual cross-attention in a stock KSampler, the passes' conversions, and the errors users see."""
import dataclasses
import math
import types

import pytest
import torch

from comfyui_dragedit.kernels import features, plan, schedule
from comfyui_dragedit.kernels.plan import PlanStep
from comfyui_dragedit.nodes.errors import DragEditInputError
from tests.support.comfy_inproc import run_node, run_passes

LATENT_HW = (8, 8)
STEPS = 10
METHOD = "method's steps"


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import cross_attention, features as features_node, host, inversion

    return types.SimpleNamespace(inversion=inversion.DragEditDDIMInversion,
                                 vca=cross_attention.DragEditVisualCrossAttention,
                                 features=features_node.DragEditFeatureExtractor, host=host)


@pytest.fixture(scope="module")
def image_latent():
    torch.manual_seed(0)
    return {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}


@pytest.fixture(scope="module")
def cond(encode_text):
    return encode_text("a photo of a cup")


def invert(nodes_, model, latent, cond, steps=STEPS, strength=1.0, layers="family default", device="offload (CPU)"):
    return run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=steps, strength=strength,
                    layers=layers, bank_device=device).result


@pytest.fixture(scope="module")
def inverted(nodes_, sd15, image_latent, cond):
    return invert(nodes_, sd15[0], image_latent, cond)


def vca(nodes_, model, bank, mode="replace", **inputs):
    inputs = {"step_range": METHOD, "start_step": 0, "end_step": 1000, **inputs}
    return run_node(nodes_.vca, model=model, memory_bank=bank, mode=mode, **inputs).result[0]


def test_bank_holds_every_step_and_decoder_layer_in_fp16(inverted):
    bank, latent = inverted
    assert bank.timesteps == tuple(schedule.ddim_timesteps(STEPS))
    assert set(bank.layers) == {("output", k, 0) for k in range(3, 12)}
    h, w = LATENT_HW
    for t in bank.timesteps:
        for layer in bank.layers:
            n = bank.attention_input(t, layer)
            down = 4 if layer[1] < 6 else 2 if layer[1] < 9 else 1
            assert n.shape == (1, (h // down) * (w // down), 320) and n.dtype == torch.float16
            assert n.device.type == "cpu"
    assert torch.isfinite(latent["samples"]).all()
    assert latent["samples"].shape == (1, 4, *LATENT_HW)


def test_bank_entry_of_step_i_was_recorded_at_t_i(nodes_, sd15, inverted, cond):
    """Re-run the UNet on the latent the inversion fed at t_i (the previous, less noisy one) and compare."""
    bank, _ = inverted
    i = 4
    t, t_less_noisy = bank.timesteps[i], bank.timesteps[i + 1]
    seen = {}
    record = nodes_.host.RecordPatch(bank.layers, lambda t_, layer, n: seen.setdefault((t_, layer), n.clone()))
    def one_pass(passes):
        passes.eps(bank.latent(t_less_noisy), PlanStep(i, t, t_less_noisy, phase="invert"))
        record.drain(t)  # the inversion node drains after each pass, as here

    run_passes(sd15[0], one_pass, cond, attn1=[record])
    for layer in bank.layers:
        torch.testing.assert_close(seen[(t, layer)].half(), bank.attention_input(t, layer), atol=2e-3, rtol=2e-3)
    other = bank.attention_input(bank.timesteps[i - 1], ("output", 11, 0))
    assert not torch.allclose(seen[(t, ("output", 11, 0))].half(), other, atol=2e-3)


def test_inverted_latent_is_the_ddim_inversion_with_the_host_eps(nodes_, sd15, image_latent, inverted, cond):
    """An independent inversion loop written out here (eps at the destination t on the less noisy z) gives the
    bank's latents; the LATENT output is the noisiest one in sigma space."""
    bank, latent = inverted
    model = sd15[0]
    alphas = nodes_.host.model_alphas_cumprod(model)
    ts = list(reversed(schedule.ddim_timesteps(STEPS)))   # 1, 101, ..., 901

    def oracle(passes):
        z = model.model.process_latent_in(image_latent["samples"]).to(passes.device)
        out = {}
        for k, t in enumerate(ts):
            prev = alphas[ts[k - 1]] if k else alphas[0]
            eps = passes.eps(z, PlanStep(STEPS - 1 - k, t, ts[k - 1] if k else -1, phase="invert"))
            x0 = (z - math.sqrt(1 - prev) * eps) / math.sqrt(prev)
            z = math.sqrt(alphas[t]) * x0 + math.sqrt(1 - alphas[t]) * eps
            out[t] = z
        return out

    expected = run_passes(model, oracle, cond)
    for t in ts:
        torch.testing.assert_close(bank.latent(t), expected[t], atol=1e-5, rtol=1e-5)
    sigma = math.sqrt((1 - alphas[ts[-1]]) / alphas[ts[-1]])
    torch.testing.assert_close(model.model.process_latent_in(latent["samples"]),
                               expected[ts[-1]] * math.sqrt(1 + sigma ** 2), atol=1e-5, rtol=1e-5)


def test_truncated_feature_forward_equals_full_forward_bit_for_bit(nodes_, sd15, inverted, cond):
    bank, _ = inverted
    blocks_run = []
    counting = sd15[0].clone()
    counting.set_model_output_block_patch(_Counter(blocks_run))
    z = bank.latent(bank.timesteps[3])
    for tap in (features.dragon_tap((5, 8), "SD 1.x"), features.gooddrag_tap(8, "SD 1.x")):
        blocks_run.clear()
        eps, truncated = run_passes(counting, lambda p: p.features(z, 501, tap), cond)
        ran_truncated = list(blocks_run)
        blocks_run.clear()
        full_eps, full = run_passes(counting, lambda p: p.features(z, 501, tap, need_eps=True), cond)
        assert eps is None and full_eps.shape == z.shape
        assert max(ran_truncated) == tap.last_block + 1 and max(blocks_run) == 11
        for a, b in zip(truncated, full):
            assert torch.equal(a, b)
            assert a.shape[-2:] == tap.target_size((LATENT_HW[0] * 8, LATENT_HW[1] * 8))
    assert [f.shape[1] for f in truncated] == [320]


class _Counter:
    def __init__(self, seen):
        self.seen = seen

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, hsp, transformer_options):
        self.seen.append(transformer_options["block"][1])
        return h, hsp


def _ksampler(comfy_nodes, model, cond, latent, steps=STEPS):
    with torch.inference_mode():
        return comfy_nodes.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "ddim", "ddim_uniform", cond,
                                                     cond, latent, 0, 10000, "disable")[0]["samples"]


@pytest.mark.parametrize("mode", ["replace", "concat"])
def test_stock_ksampler_on_the_patched_model_reconstructs_the_image(nodes_, comfy_nodes, sd15, image_latent,
                                                                     inverted, cond, mode):
    bank, latent = inverted
    patched = vca(nodes_, sd15[0], bank, mode)
    out = _ksampler(comfy_nodes, patched, cond, latent)
    plain = _ksampler(comfy_nodes, sd15[0], cond, latent)
    error = (out - image_latent["samples"]).norm() / image_latent["samples"].norm()
    assert error < 0.06, float(error)
    assert not torch.equal(out, plain), "the bank attention patch did not change anything"


def test_patching_leaves_the_host_model_unchanged(nodes_, sd15, inverted, cond):
    model = sd15[0]
    before = repr(model.model_options)
    torch.manual_seed(3)
    z = torch.randn(1, 4, *LATENT_HW)
    step = PlanStep(2, 801, 701)
    eps_before = run_passes(model, lambda p: p.eps(z, step), cond)
    patched = vca(nodes_, model, inverted[0])
    assert patched is not model and repr(model.model_options) == before
    assert "attn1_patch" in patched.model_options["transformer_options"]["patches"]
    assert torch.equal(eps_before, run_passes(model, lambda p: p.eps(z, step), cond))


def test_masactrl_leaves_the_source_branch_alone(nodes_, sd15, cond):
    """GoodDrag's MasaCtrl: in a [source, edit] batch, the source item gives the same eps as when run alone, and
    only on the plan's MasaCtrl steps does the edit item change."""
    model = sd15[0]
    masa = nodes_.host.MasaCtrlPatch(nodes_.host.SD1.masactrl_layers(nodes_.host.MASACTRL_BY_RESOLUTION))
    torch.manual_seed(1)
    z = torch.randn(2, 4, *LATENT_HW)
    on, off = (PlanStep(i=6, t=401, t_prev=301, bank_attention=flag) for flag in (True, False))
    both, plain = run_passes(model, lambda p: (p.eps(z, on), p.eps(z, off)), cond, attn1=[masa])
    alone, edit_alone = (run_passes(model, lambda p: p.eps(z[k:k + 1], off), cond) for k in (0, 1))
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[1:], edit_alone, atol=1e-5)
    torch.testing.assert_close(plain, torch.cat([alone, edit_alone]), atol=1e-5, rtol=1e-5)


def test_feature_preview_shows_pca_of_each_tap(nodes_, sd15, inverted, cond):
    out = run_node(nodes_.features, model=sd15[0], preset="DragonDiffusion", blocks="5, 8", weights="",
                   resize="nearest", scale=0.25, memory_bank=inverted[0], positive=cond, preview_step=3)
    tap, image = out.result
    assert tap == features.dragon_tap((5, 8), "SD 1.x") and tap.weights is None
    h, w = LATENT_HW[0] * 2, LATENT_HW[1] * 2
    assert image.shape == (1, h, 2 * w, 3) and 0 <= image.min() and image.max() <= 1 and image.std() > 0


def test_gradient_reaches_the_latent_and_no_weight(nodes_, sd15, cond):
    with torch.inference_mode():
        z_in = torch.randn(1, 4, *LATENT_HW)
    tap = features.dragon_tap((5, 8), "SD 1.x")

    def grad_of_features(passes):
        with torch.enable_grad():
            z = z_in.clone().requires_grad_(True)
            feats = passes.features(z, 501, tap)[1]
            return torch.autograd.grad(sum(f.square().mean() for f in feats), z)[0]

    grad = run_passes(sd15[0], grad_of_features, cond, grad=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    params = list(sd15[0].model.diffusion_model.parameters())
    assert not any(p.requires_grad or p.grad is not None or p.is_inference() for p in params)


# ---- errors users see --------------------------------------------------------------------------------------


def test_bank_of_another_model_is_refused(nodes_, sd15, inverted):
    foreign = dataclasses.replace(inverted[0], fingerprint="0123456789abcdef")
    with pytest.raises(DragEditInputError, match="Visual Cross-Attention: input 'memory_bank'.*same model"):
        vca(nodes_, sd15[0], foreign)


def test_latent_of_another_size_than_the_bank_is_refused_at_sampling(nodes_, comfy_nodes, sd15, inverted, cond):
    patched = vca(nodes_, sd15[0], inverted[0])
    other = {"samples": torch.randn(1, 4, 16, 16)}
    with pytest.raises(DragEditInputError, match="input 'memory_bank' holds 4 tokens.*inverted image's size"):
        _ksampler(comfy_nodes, patched, cond, other)


def test_masked_mode_needs_the_second_bank_and_masks(nodes_, sd15, inverted):
    with pytest.raises(DragEditInputError, match="'memory_bank_replace' is not connected"):
        vca(nodes_, sd15[0], inverted[0], "masked")


def test_a_family_model_without_its_decoder_layout_is_refused(nodes_, sd15, image_latent, cond):
    model = sd15[0].clone()
    model.model = types.SimpleNamespace(model_config=type("SDXL", (), {})(), diffusion_model=model.model.diffusion_model)
    with pytest.raises(DragEditInputError, match="input 'model' is a SDXL model without the SDXL decoder layout.*"
                                                 "SD 1.x, SD 2.x"):
        invert(nodes_, model, image_latent, cond)


def test_unsupported_families_are_refused_by_name(nodes_, sd15, image_latent, cond):
    model = sd15[0].clone()
    model.model = types.SimpleNamespace(model_config=type("Flux", (), {})(), diffusion_model=None)
    with pytest.raises(DragEditInputError, match="input 'model' is a Flux model. Load one of the supported models"):
        invert(nodes_, model, image_latent, cond)


def test_latent_batch_and_empty_conditioning_are_refused(nodes_, sd15, cond):
    with pytest.raises(DragEditInputError, match="input 'latent' holds a batch of 2"):
        invert(nodes_, sd15[0], {"samples": torch.zeros(2, 4, 8, 8)}, cond, layers="none")
    with pytest.raises(DragEditInputError, match="input 'positive' holds no conditioning"):
        invert(nodes_, sd15[0], {"samples": torch.zeros(1, 4, 8, 8)}, [], layers="none")


def test_strength_plan_starts_late_as_gooddrag(nodes_, sd15, image_latent, cond):
    bank, _ = invert(nodes_, sd15[0], image_latent, cond, steps=50, strength=0.06, layers="none")
    assert bank.timesteps == tuple(s.t for s in plan.ddim_plan(50, 0.06)) == (41, 21, 1)
    assert not bank.attention


def test_v_prediction_models_give_eps_through_the_one_conversion(nodes_, sd15, cond):
    """The passes' eps = (x - denoised)/sigma equals the v -> eps conversion of the raw UNet output."""
    import comfy.model_management
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    v_model = ModelSamplingDiscrete().patch(sd15[0], "v_prediction", False)[0]
    try:
        torch.manual_seed(2)
        z, t, context = torch.randn(1, 4, *LATENT_HW), 501, cond[0][0]
        eps = run_passes(v_model, lambda p: p.eps(z, PlanStep(5, t, 401)), cond)
        with torch.inference_mode():
            v = v_model.model.diffusion_model(z, torch.tensor([float(t)]), context=context)
        alpha_bar = float(nodes_.host.model_alphas_cumprod(v_model)[t])
        expected = math.sqrt(alpha_bar) * v + math.sqrt(1 - alpha_bar) * z
        torch.testing.assert_close(eps, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(eps, v, atol=1e-3)
    finally:
        comfy.model_management.unload_all_models()
