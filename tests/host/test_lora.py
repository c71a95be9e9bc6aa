"""Identity LoRA in-process: the patches it adds (every attention projection, as weight patches on a clone), that
it fits the image (the demo model's denoising error on that image drops), determinism, progress and interruption,
the VAE posterior, a saved file that the stock LoRA loader reads back to the same output, and the errors."""
import re

import pytest
import safetensors
import torch

from comfyui_dragedit.kernels import schedule
from comfyui_dragedit.kernels.plan import PlanStep
from comfyui_dragedit.nodes import demo_model, host
from comfyui_dragedit.nodes.errors import DragEditInputError
from comfyui_dragedit.nodes.lora import DragEditIdentityLoRA
from tests.support.comfy_inproc import run_node, run_passes
from tools import scenes

# The attention projections of an SD-1.x UNet as its state dict names them, independently of the pack's pattern.
PROJECTION_KEY = re.compile(r"^diffusion_model\..*\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
                            r"\.weight$")
SD15_ATTENTION_LAYERS = 16 * 2   # 16 transformer blocks (6 down, 1 mid, 9 up), self- and cross-attention each


def _widgets(**overrides):
    return {**dict(steps=2, rank=4, lr=5e-4, batch_size=2, seed=0), **overrides}


def _eps(model, samples, t, positive):
    """eps of the model at integer t on the LATENT samples' VP latent, through the pack's passes (cond only)."""
    z = model.model.process_latent_in(samples.float())
    step = PlanStep(i=0, t=t, t_prev=-1)
    return run_passes(model, lambda passes: passes.eps(z.to(passes.device), step).cpu(), positive,
                      latent_hw=tuple(samples.shape[-2:]))


@pytest.fixture(scope="module")
def latent():
    return {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}


@pytest.fixture(scope="module")
def empty(encode_text):
    return encode_text("")


@pytest.fixture(scope="module")
def fitted(sd15, latent, empty):
    model = sd15[0]
    before = _eps(model, latent["samples"], 501, empty)
    out = run_node(DragEditIdentityLoRA, model=model, latent=latent, positive=empty, **_widgets()).result[0]
    return out, before


def test_lora_patches_every_attention_projection_of_a_clone(sd15, fitted):
    model = sd15[0]
    lora_model, _ = fitted
    expected = {k for k in model.model.state_dict() if PROJECTION_KEY.match(k)}
    assert len(expected) == SD15_ATTENTION_LAYERS * 4
    assert set(lora_model.patches) == expected
    weights = model.model.state_dict()
    for key, patch_list in lora_model.patches.items():
        (strength, adapter, *_), = patch_list
        up, down, alpha = adapter.weights[:3]
        assert strength == 1.0 and alpha == 4.0
        assert up.shape == (weights[key].shape[0], 4) and down.shape == (4, weights[key].shape[1])
    assert lora_model is not model and not model.patches and not model.weight_wrapper_patches


def test_input_model_is_unchanged_and_the_lora_model_differs(sd15, fitted, latent, empty):
    model = sd15[0]
    lora_model, before = fitted
    after = _eps(model, latent["samples"], 501, empty)
    assert torch.equal(before, after)
    with_lora = _eps(lora_model, latent["samples"], 501, empty)
    assert torch.isfinite(with_lora).all()
    assert (with_lora - before).abs().max() > 1e-4


def test_a_stock_ksampler_samples_with_the_lora(sd15, fitted, latent, empty, comfy_nodes):
    lora_model, _ = fitted

    def sample(model):
        with torch.inference_mode():
            return comfy_nodes.common_ksampler(model, 0, 3, 1.0, "ddim", "ddim_uniform", empty, empty, latent)[0]

    base, with_lora, again = sample(sd15[0]), sample(lora_model), sample(sd15[0])
    assert torch.equal(base["samples"], again["samples"])   # the LoRA did not leak into the input MODEL
    assert (with_lora["samples"] - base["samples"]).abs().max() > 1e-4


def _pairs(model):
    return {key: [t.clone() for t in patches[0][1].weights[:2]] for key, patches in model.patches.items()}


@pytest.fixture(scope="module")
def demo():
    return host.load_demo_model(demo_model.DEMO_MODEL_FILE)


@pytest.fixture(scope="module")
def scene_latent(demo):
    image = torch.from_numpy(scenes.training_images(777, 1)).float() / 255.0
    with torch.inference_mode():
        return {"samples": demo[2].encode(image)}


def test_same_seed_same_lora_other_seed_another(demo, scene_latent):
    runs = [_pairs(run_node(DragEditIdentityLoRA, model=demo[0], latent=scene_latent,
                            **_widgets(steps=3, seed=seed)).result[0]) for seed in (0, 0, 1)]
    assert runs[0].keys() == runs[1].keys() == runs[2].keys()
    assert all(torch.equal(a, b) for k in runs[0] for a, b in zip(runs[0][k], runs[1][k]))
    assert not all(torch.equal(a, b) for k in runs[0] for a, b in zip(runs[0][k], runs[2][k]))


def test_a_batch_of_one_fits_with_the_text_in_the_graph(demo, scene_latent):
    """batch 1 gives the UNet the conditioning as it is (no repeat): it must still be saved for backward."""
    with torch.inference_mode():
        text = demo[1].encode_from_tokens_scheduled(demo[1].tokenize("a red star"))
    out = run_node(DragEditIdentityLoRA, model=demo[0], latent=scene_latent, positive=text,
                   **_widgets(steps=1, batch_size=1)).result[0]
    assert len(out.patches) == SD15_ATTENTION_LAYERS * 4


def _denoising_error(model, samples, draws=24):
    """Mean epsilon MSE of the model on this latent over fixed noise and timesteps (the recipe's own loss)."""
    z0 = model.model.process_latent_in(samples.float())
    alphas_cumprod = host.model_alphas_cumprod(model)
    g = torch.Generator().manual_seed(1234)
    cases = [(50 + 40 * k, torch.randn(z0.shape, generator=g)) for k in range(draws)]
    no_text = [[torch.zeros(1, 77, 768), {}]]

    def errors(passes):
        out = []
        for t, noise in cases:
            ab = float(alphas_cumprod[t])
            z_t = (ab ** 0.5 * z0 + (1 - ab) ** 0.5 * noise).to(passes.device)
            eps = passes.eps(z_t, PlanStep(i=0, t=t, t_prev=-1)).cpu()
            out.append(float((eps - noise).pow(2).mean()))
        return out

    values = run_passes(model, errors, no_text, latent_hw=tuple(samples.shape[-2:]))
    return sum(values) / len(values)


def test_the_paper_recipe_fits_its_image_on_the_demo_model(demo):
    """GoodDrag's recipe (70 steps) lowers the demo UNet's denoising error on the image it was fitted to, and more
    than on other images: it learns that image's identity (measured: 0.93 of the error on it, 1.00-1.04 on
    three others)."""
    model, _, vae = demo
    images = torch.from_numpy(scenes.training_images(777, 4)).float() / 255.0
    with torch.inference_mode():
        latents = [{"samples": vae.encode(images[k:k + 1])} for k in range(4)]
    lora_model = run_node(DragEditIdentityLoRA, model=model, latent=latents[0], steps=70, rank=16, lr=5e-4,
                          batch_size=4, seed=0).result[0]
    ratios = [_denoising_error(lora_model, latent["samples"]) / _denoising_error(model, latent["samples"])
              for latent in latents]
    assert ratios[0] < 0.96 and ratios[0] < min(ratios[1:]) - 0.03, ratios


def test_progress_counts_up_and_interruption_stops(demo, scene_latent):
    import comfy.model_management
    import comfy.utils

    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        run_node(DragEditIdentityLoRA, model=demo[0], latent=scene_latent, **_widgets(steps=4))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [(k, 4) for k in range(1, 5)]
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_node(DragEditIdentityLoRA, model=demo[0], latent=scene_latent, **_widgets(steps=4))
    finally:
        comfy.model_management.interrupt_current_processing(False)


@pytest.fixture(scope="module")
def kl_vae(comfy_nodes):
    """SD's KL autoencoder (the one with a posterior) at random weights, as VAELoader builds it."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from tests.support.tiny_sd15 import init_default_weights

    torch.manual_seed(0)
    kl = AutoencoderKL(ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                 "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                 "attn_resolutions": [], "dropout": 0.0}, embed_dim=4)
    init_default_weights(kl.modules())
    with torch.no_grad():
        kl.quant_conv.weight.mul_(0.3)   # a posterior of moderate width, as a trained VAE's
    with torch.inference_mode():
        return comfy.sd.VAE(sd=kl.state_dict())


def test_image_and_kl_vae_give_the_vae_posterior(kl_vae, demo):
    """The mean is exactly VAE Encode's output; the std is the spread of the VAE's own posterior samples."""
    image = torch.from_numpy(scenes.training_images(5, 1, size=64)).float() / 255.0
    with torch.inference_mode():
        mean, std = host.vae_posterior(kl_vae, image, "test")
        assert torch.equal(mean, kl_vae.encode(image))
        regularizer = kl_vae.first_stage_model.regularization
        regularizer.sample = True
        try:
            draws = torch.cat([kl_vae.encode(image) for _ in range(32)])
        finally:
            regularizer.sample = False
    assert std.shape == mean.shape and (std > 0).all()
    torch.testing.assert_close(draws.std(0).mean(), std[0].mean(), rtol=0.15, atol=0)
    assert host.vae_posterior(demo[2], image, "test")[1] is None   # TAESD: deterministic encoder


def test_node_samples_the_posterior_from_image_and_vae(sd15, kl_vae, empty):
    image = torch.from_numpy(scenes.training_images(5, 1, size=64)).float() / 255.0
    from_image = run_node(DragEditIdentityLoRA, model=sd15[0], image=image, vae=kl_vae, positive=empty,
                          **_widgets(steps=1)).result[0]
    with torch.inference_mode():
        latent = {"samples": kl_vae.encode(image)}
    from_latent = run_node(DragEditIdentityLoRA, model=sd15[0], latent=latent, positive=empty,
                           **_widgets(steps=1)).result[0]
    a, b = _pairs(from_image), _pairs(from_latent)
    assert a.keys() == b.keys()
    assert not all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k])), "posterior samples had no effect"


def test_saved_lora_reloads_through_the_stock_loader_to_the_same_output(sd15, comfy_nodes, latent, empty, tmp_path,
                                                                       monkeypatch):
    import folder_paths

    model = sd15[0]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path)], folder_paths.supported_pt_extensions))
    trained = run_node(DragEditIdentityLoRA, model=model, latent=latent, positive=empty,
                       save_name="dragedit/identity", **_widgets()).result[0]
    files = folder_paths.get_filename_list("loras")
    assert files == ["dragedit/identity_00001_.safetensors"]
    with safetensors.safe_open(str(tmp_path / files[0]), "pt") as f:
        keys = set(f.keys())
    kohya = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{kohya}.lora_up.weight", f"{kohya}.lora_down.weight", f"{kohya}.alpha"} <= keys
    assert len(keys) == 3 * SD15_ATTENTION_LAYERS * 4
    with pytest.raises(DragEditInputError) as err:
        run_node(DragEditIdentityLoRA, model=model, latent=latent, positive=empty, save_name="../escape",
                 **_widgets(steps=1))
    assert err.value.input_name == "save_name" and folder_paths.get_filename_list("loras") == files
    reloaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, files[0], 1.0)[0]
    assert set(reloaded.patches) == set(trained.patches)
    t = schedule.ddim_timesteps(10)[3]
    assert torch.equal(_eps(reloaded, latent["samples"], t, empty), _eps(trained, latent["samples"], t, empty))


def test_v_prediction_models_fit_their_own_target(sd15, latent, empty):
    """A v-model (ModelSamplingDiscrete set to v_prediction, as SD 2.x 768-v) is detected and fitted; other
    prediction types are refused by name."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    v_model = ModelSamplingDiscrete().patch(sd15[0], "v_prediction", False)[0]
    assert host.prediction_type(sd15[0], "test") == "eps" and host.prediction_type(v_model, "test") == "v"
    out = run_node(DragEditIdentityLoRA, model=v_model, latent=latent, positive=empty, **_widgets(steps=1)).result[0]
    assert len(out.patches) == SD15_ATTENTION_LAYERS * 4
    x0_model = ModelSamplingDiscrete().patch(sd15[0], "x0", False)[0]
    with pytest.raises(DragEditInputError) as err:
        run_node(DragEditIdentityLoRA, model=x0_model, latent=latent, positive=empty, **_widgets(steps=1))
    assert err.value.input_name == "model" and "X0" in str(err.value)


def _error(**inputs):
    with pytest.raises(DragEditInputError) as err:
        run_node(DragEditIdentityLoRA, **inputs)
    return err.value


def test_bad_inputs_name_the_node_the_input_and_the_fix(sd15, latent, empty):
    model = sd15[0]
    batch = {"samples": latent["samples"].repeat(2, 1, 1, 1)}
    err = _error(model=model, latent=batch, **_widgets())
    assert err.input_name == "latent" and "batch of 2" in str(err) and "GoodDrag" in err.node
    for name in ("steps", "rank", "batch_size"):
        err = _error(model=model, latent=latent, **_widgets(**{name: 0}))
        assert err.input_name == name and "is 0, below its minimum 1" in str(err) and err.fix.startswith("Use")
    assert _error(model=model, **_widgets()).input_name == "latent"
    image = torch.zeros(1, 64, 64, 3)
    assert _error(model=model, image=image, **_widgets()).input_name == "vae"
    assert _error(model=model, image=image, latent=latent, **_widgets()).input_name == "latent"


def test_schema_is_documented_everywhere(comfy_nodes):
    info = DragEditIdentityLoRA.GET_NODE_INFO_V1()
    assert info["category"] == "DragEdit" and len(info["description"]) > 100
    specs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert all(spec[1].get("tooltip") for spec in specs.values())
    assert all(info["output_tooltips"]) and info["output"] == ["MODEL"]
    assert set(info["input"]["optional"]) == {"latent", "image", "vae", "positive", "save_name"}
    assert {name: specs[name][1]["default"] for name in ("steps", "rank", "lr", "batch_size", "seed")} == \
        dict(steps=70, rank=16, lr=5e-4, batch_size=4, seed=0)
