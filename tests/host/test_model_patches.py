"""Patches a user stacks on the MODEL apply in the pack's samplers as they would in a KSampler (README, "MODEL
patches"): weight patches (LoRA), block patches (FreeU), sampler-level functions (RescaleCFG, post-CFG) and the
model_function_wrapper, each on the passes where a KSampler would call it, through the real UNet."""
import types

import pytest
import torch

from comfyui_dragedit.kernels import features, plan
from comfyui_dragedit.kernels.points import DragPoints
from tests.support.comfy_inproc import run_node

LATENT_HW = (8, 8)
STEPS = 10


# The patched edits are compared with the plain ones, computed once per module (conftest: _one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import aldd, energy_guidance, guided_sampler, inversion

    return types.SimpleNamespace(inversion=inversion.DragEditDDIMInversion,
                                 move=energy_guidance.DragEditEnergyGuidanceMove,
                                 sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler)


@pytest.fixture(scope="module")
def conds(encode_text):
    return encode_text("a photo of a ball"), encode_text("")


@pytest.fixture(scope="module")
def banks(nodes_, sd15, conds):
    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}
    dragon = run_node(nodes_.inversion, model=sd15[0], latent=latent, positive=conds[0], steps=STEPS, strength=1.0,
                      layers="none", bank_device="auto").result[0]
    good = run_node(nodes_.inversion, model=sd15[0], latent=latent, positive=conds[1], steps=STEPS, strength=0.8,
                    layers="none", bank_device="auto").result[0]
    return dragon, good


def _move(nodes_, sd15, model, banks, conds):
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 8:32] = 1
    guidance = run_node(nodes_.move, mask=mask, offset_x=16, offset_y=8, w_edit=4.0, w_content=6.0, w_contrast=0.2,
                        w_inpaint=0.8, energy_scale=500.0, faithful_bugs=False, keep_latent_mean=True).result[0]
    return run_node(nodes_.sampler, model=model, memory_bank=banks[0], guidance=guidance,
                    features=features.dragon_tap((5, 8), "SD 1.x"), positive=conds[0], negative=conds[1], cfg=4.0,
                    seed=42, schedule="D+", sde_strength=0.4).result[0]["samples"]


def _drag(nodes_, model, banks, conds):
    return run_node(nodes_.aldd, model=model, memory_bank=banks[1], positive=conds[1],
                    points=DragPoints(((20.0, 30.0, 44.0, 30.0),), (64, 64)),
                    features=features.gooddrag_tap(8, "SD 1.x"), preset="custom", drag_steps=2, drags_per_step=2,
                    grad_steps_per_drag=1, lr=0.1, max_no_change=0,
                    masactrl_layers="by resolution (family default)", keep_outside=True).result[0]["samples"]


@pytest.fixture(scope="module")
def plain(nodes_, sd15, banks, conds):
    return _move(nodes_, sd15, sd15[0], banks, conds), _drag(nodes_, sd15[0], banks, conds)


class Spy:
    """Wraps a patch callable and counts its calls; `__deepcopy__` returns self (clone() deep-copies options)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _denoise_passes():
    """CFG passes of the D+ plan at STEPS: one per step plus the time-travel repeats."""
    return sum(s.repeats for s in plan.dragon_plan("D+", "move", STEPS))


def test_sampler_level_cfg_patches_run_on_every_cfg_pass(nodes_, sd15, banks, conds, plain):
    """RescaleCFG (ComfyUI's sampler_cfg_function) and a post-CFG function: once per CFG pass, never on the
    estimator's or time travel's cond-only passes, and the edit changes."""
    from comfy_extras.nodes_model_advanced import RescaleCFG

    model = RescaleCFG().patch(sd15[0], 0.7)[0]
    rescale = Spy(model.model_options["sampler_cfg_function"])
    model.set_model_sampler_cfg_function(rescale)
    post = Spy(lambda args: args["denoised"])
    model.set_model_sampler_post_cfg_function(post)
    out = _move(nodes_, sd15, model, banks, conds)
    assert rescale.calls == post.calls == _denoise_passes()
    assert not torch.allclose(out, plain[0], atol=1e-4)


def test_the_model_function_wrapper_wraps_every_unet_pass(nodes_, sd15, banks, conds):
    model = sd15[0].clone()
    wrapper = Spy(lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"]))
    model.set_model_unet_function_wrapper(wrapper)
    _drag(nodes_, model, banks, conds)
    drags = 2 * 2 + 2            # T2·B·J gradient passes and the chunks' reference passes
    assert wrapper.calls == drags + len(banks[1].timesteps)


@pytest.mark.parametrize("sampler", ["guided", "aldd"])
def test_output_block_patches_apply(nodes_, sd15, banks, conds, plain, sampler):
    """A block patch as FreeU adds one (set_model_output_block_patch, FreeU's own backbone scaling): it runs on
    every output block of the denoising passes and on the guidance/drag passes, and the edit changes. (FreeU itself keys its scales by SD-1.5's 1280/640
    channels, which the test model's 320-wide blocks never have.)"""
    def scale_backbone(h, hsp, transformer_options):
        h = h.clone()
        h[:, :h.shape[1] // 2] *= 1.3
        return h, hsp

    block_patch = Spy(scale_backbone)
    model = sd15[0].clone()
    model.set_model_output_block_patch(block_patch)
    out = _move(nodes_, sd15, model, banks, conds) if sampler == "guided" else _drag(nodes_, model, banks, conds)
    full_passes = _denoise_passes() if sampler == "guided" else len(banks[1].timesteps)
    # every output block of the full passes, and more: the estimator's and drag's passes that stop at their tap
    assert block_patch.calls > full_passes * len(model.model.diffusion_model.output_blocks)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, plain[0] if sampler == "guided" else plain[1], atol=1e-4)


@pytest.mark.parametrize("sampler", ["guided", "aldd"])
def test_lora_weight_patches_apply_and_the_base_model_is_untouched(nodes_, sd15, banks, conds, plain, sampler):
    """A weight patch as LoraLoader adds it: the edit changes; the unpatched MODEL still gives the plain edit."""
    import comfy.model_management

    model = sd15[0].clone()
    for key in [k for k in model.model.state_dict() if ".attn2.to_k.weight" in k][:3]:
        weight = model.model.state_dict()[key]
        model.add_patches({key: (torch.randn_like(weight) * 0.5,)}, 1.0)
    try:
        out = _move(nodes_, sd15, model, banks, conds) if sampler == "guided" else _drag(nodes_, model, banks, conds)
        assert not torch.allclose(out, plain[0] if sampler == "guided" else plain[1], atol=1e-4)
        again = _move(nodes_, sd15, sd15[0], banks, conds) if sampler == "guided" else \
            _drag(nodes_, sd15[0], banks, conds)
        torch.testing.assert_close(again, plain[0] if sampler == "guided" else plain[1])
    finally:
        comfy.model_management.unload_all_models()
