"""Shared core through the real UNet (random-weight SD-1.5 topology) in-process: inversion and its memory bank,
feature taps, visual cross-attention in a stock KSampler, and the errors users see."""
import dataclasses
import types

import pytest
import torch

from comfyui_dragedit.kernels import bank_attention, ddim, features, plan, schedule
from comfyui_dragedit.nodes.errors import DragEditInputError
from tests.support.comfy_inproc import run_node

LATENT_HW = (8, 8)
STEPS = 10


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


@pytest.fixture(scope="module")
def inverted(nodes_, sd15, image_latent, cond):
    out = run_node(nodes_.inversion, model=sd15[0], latent=image_latent, positive=cond, steps=STEPS, strength=1.0,
                   layers="decoder self-attention", bank_device="offload (CPU)")
    return out.result


def test_bank_holds_every_step_and_decoder_layer_in_fp16(inverted):
    bank, latent = inverted
    assert bank.timesteps == tuple(schedule.ddim_timesteps(STEPS))
    assert set(bank.layers) == {("output", k) for k in range(3, 12)}
    h, w = LATENT_HW
    for t in bank.timesteps:
        for _, k in bank.layers:
            n = bank.attention_input(t, ("output", k))
            down = 4 if k < 6 else 2 if k < 9 else 1
            assert n.shape == (1, (h // down) * (w // down), 320) and n.dtype == torch.float16
            assert n.device.type == "cpu"
    assert torch.isfinite(latent["samples"]).all()
    assert latent["samples"].shape == (1, 4, *LATENT_HW)


def test_bank_entry_of_step_i_was_recorded_at_t_i(nodes_, sd15, inverted, cond):
    """Re-run the UNet on the latent the inversion fed at t_i (the previous, less noisy one) and compare."""
    bank, _ = inverted
    runner = nodes_.host.UNetRunner(sd15[0])
    i = 4
    t, t_less_noisy = bank.timesteps[i], bank.timesteps[i + 1]
    seen = {}
    record = nodes_.host.RecordPatch(bank.layers, lambda block, n: seen.setdefault(block, n.clone()))
    options = runner.transformer_options(attn1=[record])
    with torch.inference_mode():
        runner.eps_cfg(bank.latent(t_less_noisy).to(runner.device), t, cond[0][0], None, 1.0, options)
    for layer in bank.layers:
        torch.testing.assert_close(seen[layer].half(), bank.attention_input(t, layer), atol=2e-3, rtol=2e-3)
    other = bank.attention_input(bank.timesteps[i - 1], ("output", 11))
    assert not torch.allclose(seen[("output", 11)].half(), other, atol=2e-3)


def test_inverted_latent_matches_kernel_inversion_with_host_eps(nodes_, sd15, image_latent, inverted, cond):
    bank, latent = inverted
    model = sd15[0]
    runner = nodes_.host.UNetRunner(model)
    options = runner.transformer_options()
    z0 = nodes_.host.latent_to_z(model, image_latent, "test")
    with torch.inference_mode():
        latents = ddim.invert(lambda z, step: runner.eps_cfg(z, step.t, cond[0][0], None, 1.0, options), z0,
                              runner.alphas_cumprod, STEPS)
    torch.testing.assert_close(latents[-1], bank.latent(bank.timesteps[0]))
    x_t = schedule.x_from_z(latents[-1], bank.sigma(bank.timesteps[0]))
    torch.testing.assert_close(model.model.process_latent_in(latent["samples"]), x_t, atol=1e-5, rtol=1e-5)


def test_truncated_feature_forward_equals_full_forward_bit_for_bit(nodes_, sd15, inverted, cond):
    bank, _ = inverted
    model = sd15[0]
    blocks_run = []
    counting = model.clone()
    counting.set_model_output_block_patch(_Counter(blocks_run))
    runner = nodes_.host.UNetRunner(counting)
    z = bank.latent(bank.timesteps[3]).to(runner.device)
    for tap in (features.DRAGON_TAP, features.GOODDRAG_TAP):
        with torch.inference_mode():
            blocks_run.clear()
            truncated = runner.features_fn(tap, cond[0][0])(z, 501)
            ran_truncated = list(blocks_run)
            blocks_run.clear()
            _, full = runner.forward_fn(tap, cond[0][0])(z, 501)
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
    patched = run_node(nodes_.vca, model=sd15[0], memory_bank=bank, mode=mode, start_step=0, end_step=1000).result[0]
    out = _ksampler(comfy_nodes, patched, cond, latent)
    plain = _ksampler(comfy_nodes, sd15[0], cond, latent)
    error = (out - image_latent["samples"]).norm() / image_latent["samples"].norm()
    assert error < 0.06, float(error)
    assert not torch.equal(out, plain), "the bank attention patch did not change anything"


def test_patching_leaves_the_host_model_unchanged(nodes_, sd15, inverted, cond):
    model = sd15[0]
    before = repr(model.model_options)
    runner = nodes_.host.UNetRunner(model)
    z = torch.randn(1, 4, *LATENT_HW)
    with torch.inference_mode():
        eps_before = runner.eps_cfg(z, 501, cond[0][0], None, 1.0, runner.transformer_options())
    patched = run_node(nodes_.vca, model=model, memory_bank=inverted[0], mode="replace", start_step=0,
                       end_step=1000).result[0]
    assert patched is not model and repr(model.model_options) == before
    assert "attn1_patch" in patched.model_options["transformer_options"]["patches"]
    with torch.inference_mode():
        eps_after = runner.eps_cfg(z, 501, cond[0][0], None, 1.0, runner.transformer_options())
    assert torch.equal(eps_before, eps_after)


def test_source_branch_is_untouched_by_source_attention(nodes_, sd15, cond):
    """GoodDrag's MasaCtrl: in a [source, edit] batch, the source item gives the same eps as when run alone."""
    model = sd15[0]
    runner = nodes_.host.UNetRunner(model)
    layers = {("output", k) for k in range(6, 12)}
    masa = nodes_.host.BankAttentionPatch(
        lambda n, extra: bank_attention.source_context(n) if extra.get("block") in layers else None)
    torch.manual_seed(1)
    z = torch.randn(2, 4, *LATENT_HW)
    with torch.inference_mode():
        both = runner.eps_cfg(z, 601, cond[0][0], None, 1.0, runner.transformer_options(attn1=[masa]))
        alone = runner.eps_cfg(z[:1], 601, cond[0][0], None, 1.0, runner.transformer_options())
        edit_alone = runner.eps_cfg(z[1:], 601, cond[0][0], None, 1.0, runner.transformer_options())
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[1:], edit_alone, atol=1e-5)


def test_feature_preview_shows_pca_of_each_tap(nodes_, sd15, inverted, cond):
    out = run_node(nodes_.features, model=sd15[0], preset=next(iter(_presets(nodes_))), blocks="5, 8", weights="",
                   resize="nearest", scale=0.25, memory_bank=inverted[0], positive=cond, preview_step=3)
    tap, image = out.result
    assert tap == features.DRAGON_TAP
    h, w = LATENT_HW[0] * 2, LATENT_HW[1] * 2
    assert image.shape == (1, h, 2 * w, 3) and 0 <= image.min() and image.max() <= 1 and image.std() > 0


def _presets(nodes_):
    import comfyui_dragedit.nodes.features as module

    return module.PRESETS


def test_gradient_reaches_the_latent_through_the_autograd_safe_clone(nodes_, sd15, cond):
    runner = nodes_.host.UNetRunner(sd15[0], grad=True)
    with torch.inference_mode():
        z_in = torch.randn(1, 4, *LATENT_HW)
    with nodes_.host.grad_scope():
        z = z_in.clone().requires_grad_(True)
        feats = runner.features_fn(features.DRAGON_TAP, cond[0][0].clone())(z, 501)
        sum(f.square().mean() for f in feats).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ---- errors users see --------------------------------------------------------------------------------------


def test_bank_of_another_model_is_refused(nodes_, sd15, inverted):
    foreign = dataclasses.replace(inverted[0], fingerprint="0123456789abcdef")
    with pytest.raises(DragEditInputError, match="Visual Cross-Attention: input 'memory_bank'.*same model"):
        run_node(nodes_.vca, model=sd15[0], memory_bank=foreign, mode="replace", start_step=0, end_step=1000)


def test_latent_of_another_size_than_the_bank_is_refused_at_sampling(nodes_, comfy_nodes, sd15, inverted, cond):
    patched = run_node(nodes_.vca, model=sd15[0], memory_bank=inverted[0], mode="replace", start_step=0,
                       end_step=1000).result[0]
    other = {"samples": torch.randn(1, 4, 16, 16)}
    with pytest.raises(DragEditInputError, match="input 'memory_bank' holds 4 tokens.*inverted image's size"):
        _ksampler(comfy_nodes, patched, cond, other)


def test_masked_mode_needs_the_second_bank_and_masks(nodes_, sd15, inverted):
    with pytest.raises(DragEditInputError, match="'memory_bank_replace' is not connected"):
        run_node(nodes_.vca, model=sd15[0], memory_bank=inverted[0], mode="masked", start_step=0, end_step=1000)


def test_model_without_sd1_blocks_is_refused_naming_supported_families(nodes_, sd15, image_latent, cond):
    model = sd15[0].clone()
    model.model = types.SimpleNamespace(model_config=type("SDXL", (), {})(), diffusion_model=model.model.diffusion_model)
    with pytest.raises(DragEditInputError, match="input 'model' is a SDXL model.*SD 1.x"):
        run_node(nodes_.inversion, model=model, latent=image_latent, positive=cond, steps=STEPS, strength=1.0,
                 layers="decoder self-attention", bank_device="offload (CPU)")


def test_latent_batch_and_empty_conditioning_are_refused(nodes_, sd15, cond):
    with pytest.raises(DragEditInputError, match="input 'latent' holds a batch of 2"):
        run_node(nodes_.inversion, model=sd15[0], latent={"samples": torch.zeros(2, 4, 8, 8)}, positive=cond,
                 steps=STEPS, strength=1.0, layers="none", bank_device="offload (CPU)")
    with pytest.raises(DragEditInputError, match="input 'positive' is empty"):
        run_node(nodes_.inversion, model=sd15[0], latent={"samples": torch.zeros(1, 4, 8, 8)}, positive=[],
                 steps=STEPS, strength=1.0, layers="none", bank_device="offload (CPU)")


def test_strength_plan_starts_late_as_gooddrag(nodes_, sd15, image_latent, cond):
    bank, _ = run_node(nodes_.inversion, model=sd15[0], latent=image_latent, positive=cond, steps=50,
                       strength=0.06, layers="none", bank_device="offload (CPU)").result
    assert bank.timesteps == tuple(s.t for s in plan.ddim_plan(50, 0.06)) == (41, 21, 1)
    assert not bank.attention


def test_v_prediction_models_give_eps_through_the_one_conversion(nodes_, sd15, cond):
    """The runner's eps = (x - denoised)/sigma equals the schedule's v -> eps conversion of the raw UNet output."""
    import comfy.model_management
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    v_model = ModelSamplingDiscrete().patch(sd15[0], "v_prediction", False)[0]
    try:
        runner = nodes_.host.UNetRunner(v_model)
        torch.manual_seed(2)
        z, t, context = torch.randn(1, 4, *LATENT_HW), 501, cond[0][0]
        with torch.inference_mode():
            eps = runner.eps_cfg(z, t, context, None, 1.0, runner.transformer_options())
            v = v_model.model.diffusion_model(z, torch.tensor([float(t)]), context=context)
        expected = schedule.eps_from_model_output(v, z, float(runner.alphas_cumprod[t]), "v")
        torch.testing.assert_close(eps, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(eps, v, atol=1e-3)
    finally:
        comfy.model_management.unload_all_models()
