"""DiffEditor's image prompt in-process: the loader on files in the official layout (and bad ones), the tokens from a
CLIP vision model, and the injection into a UNet with SD 1.5's real widths: every cross-attention gets its own
to_k_ip / to_v_ip term times the scale, on the plan's image-prompt steps of the denoise phase only."""
import dataclasses
import json

import pytest
import torch

from comfyui_dragedit.kernels import image_prompt as ip
from comfyui_dragedit.kernels import plan
from comfyui_dragedit.nodes import host
from comfyui_dragedit.nodes.errors import DragEditInputError
from comfyui_dragedit.nodes.image_prompt import DragEditImagePrompt, DragEditImagePromptLoader
from tests.support.comfy_inproc import run_node, run_passes
from tests.support.image_prompt_file import CodePayload, random_official_state_dict

# SD 1.5's cross-attentions in the order of the official file (diffusers: down, up, mid), as ComfyUI names them;
# the k-th one's weights are the file's "{2k+1}.to_k_ip.weight" / "{2k+1}.to_v_ip.weight".
SD15_CROSS_ATTENTIONS = ([("input", b, 0) for b in (1, 2, 4, 5, 7, 8)] + [("output", b, 0) for b in range(3, 12)]
                         + [("middle", 0, 0)])


@pytest.fixture
def ipadapter_dir(tmp_path, monkeypatch, comfy_nodes):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter",
                        ([str(tmp_path)], folder_paths.supported_pt_extensions))
    return tmp_path


@pytest.fixture(scope="module")
def official_file_sd():
    return random_official_state_dict(7)


def _load(name):
    return run_node(DragEditImagePromptLoader, ip_adapter_file=name).result[0]


def test_loader_reads_a_file_in_the_official_layout(ipadapter_dir, official_file_sd):
    torch.save(official_file_sd, ipadapter_dir / "ip_sd15_64.bin")
    model = _load("ip_sd15_64.bin")
    assert len(model.layers) == 16
    torch.testing.assert_close(model.layers[15][1], official_file_sd["ip_adapter"]["31.to_v_ip.weight"].float())
    assert "ip_sd15_64.bin" in host.ip_adapter_files()


def _loader_error(name):
    with pytest.raises(DragEditInputError) as err:
        _load(name)
    assert err.value.input_name == "ip_adapter_file" and "ip_sd15_64.bin" in err.value.fix
    return str(err.value)


def test_loader_refuses_missing_foreign_keys_and_pickled_code(ipadapter_dir, official_file_sd):
    missing = {group: dict(tensors) for group, tensors in official_file_sd.items()}
    del missing["image_proj"]["layers.3.1.3.weight"]
    torch.save(missing, ipadapter_dir / "missing.bin")
    assert "image_proj missing: layers.3.1.3.weight" in _loader_error("missing.bin")
    foreign = {group: dict(tensors) for group, tensors in official_file_sd.items()}
    foreign["ip_adapter"]["33.to_k_ip.weight"] = torch.zeros(320, 768)
    torch.save(foreign, ipadapter_dir / "foreign.bin")
    assert "ip_adapter foreign: 33.to_k_ip.weight" in _loader_error("foreign.bin")
    marker = ipadapter_dir / "ran"
    torch.save({"image_proj": CodePayload(str(marker)), "ip_adapter": {}}, ipadapter_dir / "code.bin")
    assert "is not a plain tensor file" in _loader_error("code.bin")
    assert not marker.exists()
    with pytest.raises(DragEditInputError) as err:   # the folder's files now, as ComfyUI's own loaders list them
        _load("absent.bin")
    assert err.value.input_name == "ip_adapter_file" and "not one of its choices" in str(err.value)
    assert "'missing.bin'" in err.value.fix and "'code.bin'" in err.value.fix


def _clip_vision(width, tmp_path):
    """A 2-layer CLIP vision model of the given width at random weights, built as CLIPVisionLoader builds one."""
    import comfy.clip_vision

    config = dict(attention_dropout=0.0, dropout=0.0, hidden_act="gelu", hidden_size=width, image_size=224,
                  initializer_factor=1.0, initializer_range=0.02, intermediate_size=width, layer_norm_eps=1e-5,
                  model_type="clip_vision_model", num_attention_heads=16, num_channels=3, num_hidden_layers=2,
                  patch_size=14, projection_dim=1024, torch_dtype="float32")
    path = tmp_path / f"clip_vision_{width}.json"
    path.write_text(json.dumps(config))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(width)
    with torch.no_grad():
        for name, p in clip_vision.model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return clip_vision


@pytest.fixture(scope="module")
def vit_h(tmp_path_factory, comfy_nodes):
    return _clip_vision(ip.CLIP_WIDTH, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def ip_model(official_file_sd):
    return ip.ImagePromptModel.from_state_dict(official_file_sd)


def _images(seed, count=1, size=96):
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _prompt(ip_model, vit_h, image, **kw):
    widgets = dict(scale=ip.IP_SCALE, faithful_bugs=False)
    widgets.update(kw)
    return run_node(DragEditImagePrompt, ip_adapter=ip_model, image=image, clip_vision=vit_h, **widgets).result[0]


def test_tokens_come_from_the_image_and_uncond_from_zero_pixels(ip_model, vit_h):
    a, b = _prompt(ip_model, vit_h, _images(0)), _prompt(ip_model, vit_h, _images(1))
    assert a.cond.shape == a.uncond.shape == (1, 64, 768)
    assert torch.isfinite(a.cond).all() and not a.two_images and a.text_tokens is None
    assert not torch.allclose(a.cond, b.cond, atol=1e-4)
    assert torch.equal(a.uncond, b.uncond)
    with torch.inference_mode():
        zero_pixels = vit_h.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1]
    torch.testing.assert_close(a.uncond, ip_model.tokens(zero_pixels))
    assert a.layers is ip_model.layers and a.scale == 0.1


def test_two_image_modes_prompt_with_the_replace_image(ip_model, vit_h):
    base, replace = _images(0), _images(1)
    fixed = run_node(DragEditImagePrompt, ip_adapter=ip_model, image=base, image_replace=replace, clip_vision=vit_h,
                     scale=0.1, faithful_bugs=False).result[0]
    faithful = run_node(DragEditImagePrompt, ip_adapter=ip_model, image=base, image_replace=replace,
                        clip_vision=vit_h, scale=0.1, faithful_bugs=True).result[0]
    alone = _prompt(ip_model, vit_h, replace)
    assert fixed.two_images and torch.equal(fixed.cond, alone.cond) and fixed.text_tokens is None
    assert torch.equal(faithful.cond, alone.cond)
    base_alone = _prompt(ip_model, vit_h, base)
    assert torch.equal(faithful.text_tokens[0], base_alone.cond)
    assert torch.equal(faithful.text_tokens[1], base_alone.uncond)


def test_bad_clip_vision_and_batches_are_refused(ip_model, vit_h, tmp_path):
    def error(**inputs):
        with pytest.raises(DragEditInputError) as err:
            run_node(DragEditImagePrompt, ip_adapter=ip_model, scale=0.1, faithful_bugs=False, **inputs)
        return err.value

    err = error(image=_images(0))
    assert err.input_name == "clip_vision" and "not connected" in str(err) and "ViT-H-14" in err.fix
    err = error(image=_images(0), clip_vision=_clip_vision(1024, tmp_path))
    assert err.input_name == "clip_vision" and "is 1024 wide, not ViT-H/14's 1280" in str(err)
    err = error(image=_images(0, count=2), clip_vision=vit_h)
    assert err.input_name == "image" and "batch of 2" in str(err)


def _run(step, phase=None):
    run = host.Run()
    run.step, run.phase = step, phase or (step.phase if step is not None else None)
    return run


def _patch_outputs(prompt, run):
    """One layer's patch called as ComfyUI calls an attn2 replace, and the plain text attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 320, generator=g) for _ in range(3))
    w_k, w_v = prompt.layers[0]
    patch = host.ImagePromptPatch(prompt, w_k, w_v)
    extra = dict(n_heads=8, dim_head=40, cond_or_uncond=[1, 0])
    if run is not None:
        extra[host.RUN_KEY] = run
    return patch(q, k, v, extra), ip.attention(q, k, v, 8)


def test_the_patch_is_on_exactly_the_plans_image_prompt_steps(ip_model, vit_h):
    prompt = _prompt(ip_model, vit_h, _images(0))
    active = []
    for step in plan.dragon_plan("D+", "move", 50):
        out, text_only = _patch_outputs(prompt, _run(step))
        if not torch.allclose(out, text_only, atol=1e-6):
            active.append(step.i)
        for phase in ("renoise", "invert", "estimate"):
            assert torch.allclose(_patch_outputs(prompt, _run(step, phase))[0], text_only, atol=1e-6), phase
    assert active == list(range(10, 20))
    out, text_only = _patch_outputs(prompt, None)   # outside a DragEdit run (a stock sampler): off
    assert torch.allclose(out, text_only, atol=1e-6)


@pytest.fixture(scope="module")
def sd15_unet(comfy_nodes):
    """SD 1.5's UNet with its real widths (859.5M parameters) at random weights, float32 on the CPU."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from tests.support.tiny_sd15 import CHANNEL_MULT, UNET_COMMON, init_default_weights

    torch.manual_seed(0)
    config = comfy.supported_models.SD15(dict(UNET_COMMON, channel_mult=CHANNEL_MULT["full"]))
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        base = config.get_model({}, "", device="cpu")
        init_default_weights(base.diffusion_model.modules())
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device="cpu")


def _attn2(model, key):
    unet = model.model.diffusion_model
    block_name, block_id, index = key
    blocks = {"input": unet.input_blocks, "output": unet.output_blocks, "middle": [unet.middle_block]}[block_name]
    layer = next(layer for layer in blocks[block_id] if hasattr(layer, "transformer_blocks"))
    return layer.transformer_blocks[index].attn2


def _run_recording(model, step, cfg=True):
    """One pass of the pack at `step` (CFG batch: positive and negative differ); records each cross-attention's
    input n, its context and the batch order, and its output (after to_out)."""
    seen_in, seen_out = {}, {}

    def record_in(n, context_attn2, value_attn2, extra):
        seen_in[host.layer_key(extra)] = (n.clone(), context_attn2.clone(), list(extra["cond_or_uncond"]))
        return n, context_attn2, value_attn2

    def record_out(n, extra):
        seen_out[host.layer_key(extra)] = n.clone()
        return n

    recording = model.clone()
    recording.set_model_attn2_patch(record_in)
    recording.set_model_attn2_output_patch(record_out)
    g = torch.Generator().manual_seed(2)
    positive, negative = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    run_passes(recording, lambda passes: passes.eps(z.to(passes.device), step, cfg=cfg), positive, negative,
               cfg=2.0)
    return seen_in, seen_out


def _tokens(prompt_cond, prompt_uncond, order):
    return torch.cat([prompt_cond if c == 0 else prompt_uncond for c in order])


def _expected(attn2, n, context, heads, ip_tokens=None, w=None, scale=0.0):
    """to_out(attention(q, k_text, v_text) + scale attention(q, W_k tokens, W_v tokens)), in plain torch."""
    with torch.inference_mode():
        q = attn2.to_q(n)
        out = ip.attention(q, attn2.to_k(context), attn2.to_v(context), heads)
        if ip_tokens is not None:
            out = out + scale * ip.attention(q, ip_tokens @ w[0].T, ip_tokens @ w[1].T, heads)
        return attn2.to_out(out)


@pytest.fixture(scope="module")
def sd15_prompt(ip_model, vit_h):
    return dataclasses.replace(_prompt(ip_model, vit_h, _images(0)), scale=0.3)


def test_every_cross_attention_gets_its_own_weights_times_the_scale(sd15_unet, sd15_prompt, official_file_sd):
    model, prompt = sd15_unet, sd15_prompt
    assert [key for key, _ in host.cross_attention_layers(model, "test")] == SD15_CROSS_ATTENTIONS
    prompted = host.image_prompt_model(model, prompt, "test")
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")   # the input is kept
    on = next(s for s in plan.dragon_plan("D+", "move", 50) if s.image_prompt)
    seen_in, seen_out = _run_recording(prompted, on)
    assert set(seen_out) == set(SD15_CROSS_ATTENTIONS)
    for k, key in enumerate(SD15_CROSS_ATTENTIONS):
        file_weights = [official_file_sd["ip_adapter"][f"{2 * k + 1}.{name}.weight"].float()
                        for name in ("to_k_ip", "to_v_ip")]
        attn2 = _attn2(model, key)
        n, ctx, order = seen_in[key]
        assert sorted(order) == [0, 1]
        tokens = _tokens(prompt.cond, prompt.uncond, order)
        expected = _expected(attn2, n, ctx, attn2.heads, tokens, file_weights, prompt.scale)
        without = _expected(attn2, n, ctx, attn2.heads)
        torch.testing.assert_close(seen_out[key], expected, rtol=1e-4, atol=1e-4, msg=str(key))
        assert (seen_out[key] - without).abs().max() > 1e-3, key


def test_no_term_off_the_image_prompt_steps_nor_in_the_renoise(sd15_unet, sd15_prompt):
    model, prompt = sd15_unet, sd15_prompt
    prompted = host.image_prompt_model(model, prompt, "test")
    steps = plan.dragon_plan("D+", "move", 50)
    off = steps[9]
    renoise = dataclasses.replace(steps[12], phase="renoise")
    assert not off.image_prompt and steps[12].image_prompt
    for step, cfg in ((off, True), (renoise, False)):
        seen_in, seen_out = _run_recording(prompted, step, cfg)
        for key in SD15_CROSS_ATTENTIONS:
            attn2 = _attn2(model, key)
            n, ctx, _ = seen_in[key]
            torch.testing.assert_close(seen_out[key], _expected(attn2, n, ctx, attn2.heads), rtol=1e-4, atol=1e-4)


def test_faithful_two_image_mode_appends_the_base_tokens_to_the_text(sd15_unet, ip_model, vit_h):
    prompt = run_node(DragEditImagePrompt, ip_adapter=ip_model, image=_images(0), image_replace=_images(1),
                      clip_vision=vit_h, scale=0.1, faithful_bugs=True).result[0]
    prompted = host.image_prompt_model(sd15_unet, prompt, "test")
    off = plan.dragon_plan("D+", "paste", 50)[3]
    for step, cfg in ((off, True), (dataclasses.replace(off, phase="renoise"), False)):
        seen_in, _ = _run_recording(prompted, step, cfg)
        for key in SD15_CROSS_ATTENTIONS:
            _, ctx, order = seen_in[key]
            assert ctx.shape == (len(order), 77 + 64, 768)
            torch.testing.assert_close(ctx[:, 77:], _tokens(*prompt.text_tokens, order))


def test_a_model_without_sd15s_cross_attentions_is_refused(sd15, sd15_prompt):
    with pytest.raises(DragEditInputError) as err:
        host.image_prompt_model(sd15[0], sd15_prompt, "test")
    assert err.value.input_name == "image_prompt" and "SD 1.5" in err.value.fix


def test_schemas_are_documented_everywhere(comfy_nodes):
    for node in (DragEditImagePromptLoader, DragEditImagePrompt):
        info = node.GET_NODE_INFO_V1()
        assert info["category"] == "DragEdit" and len(info["description"]) > 100, info["name"]
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in specs.values()), info["name"]
        assert all(info["output_tooltips"]), info["name"]
    info = DragEditImagePrompt.GET_NODE_INFO_V1()
    assert set(info["input"]["optional"]) == {"clip_vision", "image_replace"}
    assert info["input"]["required"]["scale"][1]["default"] == 0.1
    assert info["input"]["required"]["faithful_bugs"][1]["default"] is False


NO_TEXT = [[torch.zeros(1, 77, 768), {}]]


@pytest.fixture(scope="module")
def sd15_edit(sd15_unet):
    """A 10-step inversion of an 8x8 latent on the SD-1.5-width UNet and two edits of it (move, paste)."""
    from comfyui_dragedit.nodes import energy_guidance, inversion

    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.8}
    bank = run_node(inversion.DragEditDDIMInversion, model=sd15_unet, latent=latent, positive=NO_TEXT, steps=10,
                    strength=1.0, layers="none", bank_device="offload (CPU)").result[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 8:32] = 1.0
    move = run_node(energy_guidance.DragEditEnergyGuidanceMove, mask=mask, offset_x=8, offset_y=0, w_edit=4.0,
                    w_content=6.0, w_contrast=0.2, w_inpaint=0.8, energy_scale=500.0, faithful_bugs=False,
                    keep_latent_mean=True).result[0]
    paste = run_node(energy_guidance.DragEditEnergyGuidancePaste, mask=mask, offset_x=8, offset_y=0, scale=1.0,
                     w_edit=4.0, w_content=6.0, energy_scale=500.0, faithful_bugs=False).result[0]
    return dict(bank=bank, move=move, paste=paste)


def _sampler(model, bank, guidance, prompt, **extra):
    from comfyui_dragedit.kernels import features
    from comfyui_dragedit.nodes import guided_sampler

    return run_node(guided_sampler.DragEditGuidedSampler, model=model, memory_bank=bank, guidance=guidance,
                    features=features.dragon_tap((5, 8), "SD 1.x"), positive=NO_TEXT, negative=NO_TEXT, cfg=4.0,
                    seed=0, schedule="D+", sde_strength=0.0, image_prompt=prompt, **extra).result[0]["samples"]


def test_the_sampler_wants_the_modes_images(sd15_unet, sd15_edit, sd15_prompt, ip_model, vit_h):
    two = run_node(DragEditImagePrompt, ip_adapter=ip_model, image=_images(0), image_replace=_images(1),
                   clip_vision=vit_h, scale=0.1, faithful_bugs=False).result[0]
    bank = sd15_edit["bank"]
    with pytest.raises(DragEditInputError) as err:
        _sampler(sd15_unet, bank, sd15_edit["move"], two)
    assert err.value.input_name == "image_prompt" and "Disconnect image_replace" in err.value.fix
    with pytest.raises(DragEditInputError) as err:
        _sampler(sd15_unet, bank, sd15_edit["paste"], sd15_prompt, memory_bank_replace=bank)
    assert err.value.input_name == "image_prompt" and "image_replace" in err.value.fix


def test_the_guided_sampler_injects_on_its_image_prompt_steps_only(sd15_unet, sd15_edit, sd15_prompt, monkeypatch):
    """A D+ move through the Guided Sampler with an image prompt: the term is computed in every cross-attention of
    the denoise passes of the plan's image-prompt steps (10 <= i < 20 of 50, rescaled: 2, 3 of 10), and in no
    estimator (guidance) or time-travel re-noise pass."""
    model = sd15_unet
    bank, guidance = sd15_edit["bank"], sd15_edit["move"]
    passes_seen, terms = [], []
    current = {}

    def spy(n, context_attn2, value_attn2, extra):   # runs before each cross-attention's replace patch
        run = extra[host.RUN_KEY]
        current["pass"] = (run.phase, run.step.i if run.step is not None else None)
        if not passes_seen or passes_seen[-1] != current["pass"]:
            passes_seen.append(current["pass"])
        return n, context_attn2, value_attn2

    spied = model.clone()
    spied.set_model_attn2_patch(spy)
    term = ip.image_prompt_term
    monkeypatch.setattr(ip, "image_prompt_term", lambda *a, **k: terms.append(current["pass"]) or term(*a, **k))

    assert torch.isfinite(_sampler(spied, bank, guidance, sd15_prompt)).all()
    steps = plan.dragon_plan("D+", "move", 10)
    ip_steps = [s.i for s in steps if s.image_prompt]
    assert ip_steps == [2, 3]
    assert {p for p in passes_seen if p[0] != "denoise"} >= {("estimate", None), ("renoise", 4)}
    assert sorted(set(terms)) == [("denoise", i) for i in ip_steps]
    assert all(terms.count(("denoise", i)) == 16 for i in ip_steps)   # one CFG batch, every cross-attention
