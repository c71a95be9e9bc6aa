"""What an edit costs, counted on the CPU through the real UNet (issue 12): no host sync inside the loops, no weight
copied by any pass, no weight gradient, a CFG pass with bank attention barely above a plain ComfyUI forward, and
the model loaded once per edit, not once per node."""
import types

import pytest
import torch

from comfyui_dragedit.kernels import ddim, features, plan
from comfyui_dragedit.kernels.points import DragPoints
from tests.support.comfy_inproc import run_node, run_passes
from tests.support.dispatch import OpCounter

LATENT_HW = (8, 8)
STEPS = 10
DRAGON_TAP = features.dragon_tap((5, 8), "SD 1.x")
GOODDRAG_TAP = features.gooddrag_tap(8, "SD 1.x")


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import aldd, cross_attention, energy_guidance, guided_sampler, host, inversion

    return types.SimpleNamespace(inversion=inversion.DragEditDDIMInversion,
                                 vca=cross_attention.DragEditVisualCrossAttention,
                                 move=energy_guidance.DragEditEnergyGuidanceMove,
                                 sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler,
                                 host=host)


@pytest.fixture(scope="module")
def conds(encode_text):
    return encode_text("a photo of a ball"), encode_text("")


@pytest.fixture(scope="module")
def latent():
    torch.manual_seed(0)
    return {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}


def _counting_loops(monkeypatch, weights=()):
    """Count every op dispatched by kernels.ddim.denoise's steps (the sampling and drag loops, after the policy's
    one-time start), one counter per call."""
    counters = []
    original = ddim.denoise

    def counted(eps_fn, z, steps, alphas_cumprod, policy, callback=None):
        counter = OpCounter(weights)
        counters.append(counter)
        start = policy.start

        def start_then_count(plan_, z_):
            start(plan_, z_)
            counter.__enter__()

        policy.start = start_then_count
        try:
            return original(eps_fn, z, steps, alphas_cumprod, policy, callback)
        finally:
            counter.__exit__(None, None, None)

    monkeypatch.setattr(ddim, "denoise", counted)
    return counters


def _edit(nodes_, model, latent, conds):
    """Inversion, Visual Cross-Attention and a D+ move: the whole DragonDiffusion edit of the examples."""
    cond, uncond = conds
    bank, _ = run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=STEPS, strength=1.0,
                       layers="family default", bank_device="auto").result
    patched = run_node(nodes_.vca, model=model, memory_bank=bank, mode="replace", step_range="method's steps",
                       start_step=0, end_step=1000).result[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 8:32] = 1
    guidance = run_node(nodes_.move, mask=mask, offset_x=16, offset_y=8, w_edit=4.0, w_content=6.0, w_contrast=0.2,
                        w_inpaint=0.8, energy_scale=500.0, faithful_bugs=False, keep_latent_mean=True).result[0]
    return run_node(nodes_.sampler, model=patched, memory_bank=bank, guidance=guidance, features=DRAGON_TAP,
                    positive=cond, negative=uncond, cfg=4.0, seed=42, schedule="D+", sde_strength=0.4).result[0]


def test_the_dragon_loop_never_syncs_copies_a_weight_or_leaves_a_grad(nodes_, sd15, latent, conds, monkeypatch):
    model = sd15[0]
    params = list(model.model.diffusion_model.parameters())
    counters = _counting_loops(monkeypatch, params)
    out = _edit(nodes_, model, latent, conds)
    assert torch.isfinite(out["samples"]).all()
    (loop,) = counters
    assert loop.ops["aten::convolution"] > 0, "the UNet ran inside the counted loop"
    assert loop.syncs == {}, loop.syncs
    assert loop.weight_copies == 0
    assert not any(p.grad is not None or p.requires_grad for p in model.model.diffusion_model.parameters())


def test_the_gooddrag_loop_reads_the_device_only_at_chunk_ends(nodes_, sd15, latent, conds, monkeypatch):
    model = sd15[0]
    cond, _ = conds
    bank, _ = run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=STEPS, strength=0.8,
                       layers="none", bank_device="auto").result
    counters = _counting_loops(monkeypatch, list(model.model.diffusion_model.parameters()))
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:56, 8:56] = 1
    run_node(nodes_.aldd, model=model, memory_bank=bank, positive=cond,
             points=DragPoints(((20.0, 30.0, 44.0, 30.0),), (64, 64)), features=GOODDRAG_TAP, preset="custom",
             drag_steps=3, drags_per_step=2, grad_steps_per_drag=2, lr=0.05, max_no_change=0,
             masactrl_layers="by resolution (family default)", keep_outside=True, mask=mask)
    (loop,) = counters
    assert loop.ops["aten::convolution_backward"] > 0, "the drags ran inside the counted loop"
    assert loop.syncs == {"aten::_local_scalar_dense": 3}, "one read of the stop flag per drag chunk"
    assert loop.weight_copies == 0
    assert not any(p.grad is not None for p in model.model.diffusion_model.parameters())


# What launches work on a device, at either dispatch level ComfyUI's ops are seen at: inference mode (a stock
# KSampler step) sees the composite ops (linear, conv2d, group_norm), autograd-enabled modes their decompositions
# (addmm or mm, convolution, native_group_norm); views and no-op dropouts launch nothing.
KERNEL_OPS = {"aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::conv2d", "aten::convolution",
              "aten::group_norm", "aten::native_group_norm", "aten::layer_norm", "aten::native_layer_norm",
              "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::gelu", "aten::silu", "aten::add", "aten::mul", "aten::div", "aten::sub", "aten::cat",
              "aten::upsample_nearest2d"}


def _kernels(counter):
    return sum(n for name, n in counter.ops.items() if name in KERNEL_OPS)


def test_a_cfg_pass_with_bank_attention_costs_at_most_a_tenth_more_than_a_plain_comfyui_step(
        nodes_, sd15, latent, conds):
    """Ours: one Guided Sampler denoise pass on the Visual Cross-Attention model. Plain: ComfyUI's CFG prediction
    of the unpatched model, in the same run (all ops) and as a stock KSampler step runs it (kernel ops)."""
    import comfy.samplers

    model = sd15[0]
    cond, uncond = conds
    bank, inverted = run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=STEPS,
                              strength=1.0, layers="family default", bank_device="auto").result
    patched = run_node(nodes_.vca, model=model, memory_bank=bank, mode="replace", step_range="method's steps",
                       start_step=0, end_step=1000).result[0]
    step = plan.dragon_plan("D+", "move", STEPS)[3]
    assert step.bank_attention
    z = bank.latent(step.t)

    def counted(fn):
        counter = OpCounter()
        with counter:
            fn()
        return counter

    ours = run_passes(patched, lambda p: counted(lambda: p.eps(z, step, cfg=True)), cond, uncond, cfg=4.0)
    plain = run_passes(model, lambda p: counted(lambda: p.guider(z, p.sigmas[step.t:step.t + 1], model_options=p.options,
                                                                 seed=0)), cond, uncond, cfg=4.0)
    assert ours.ops["aten::bmm"] > plain.ops["aten::bmm"], "the bank attention ran"
    assert ours.total <= 1.1 * plain.total, (ours.total, plain.total)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, uncond)
    guider.set_cfg(4.0)
    stock = []
    sampler = comfy.samplers.KSAMPLER(lambda m, x, sigmas, extra_args, callback, disable: stock.append(
        counted(lambda: m(x, sigmas[0] * x.new_ones([1]), **extra_args))) or x)
    with torch.inference_mode():
        guider.sample(torch.zeros(1, 4, *LATENT_HW), inverted["samples"], sampler,
                      torch.tensor([bank.sigma(step.t), 0.0]), seed=0)
    assert _kernels(plain) > 200 and _kernels(ours) <= 1.1 * _kernels(stock[0]), \
        (_kernels(ours), _kernels(stock[0]))


def test_an_edit_patches_the_weights_once_not_once_per_node(nodes_, sd15, latent, conds, monkeypatch):
    """A LoRA-like weight patch on the MODEL: three nodes (inversion, visual cross-attention, sampler) patch the
    weights once and never unpatch them (a clone with other patches_uuid would reload every node)."""
    import comfy.model_management
    import comfy.model_patcher

    model = sd15[0].clone()
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    weight = model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight
    model.add_patches({key: (torch.zeros_like(weight) + 1e-3,)}, 1.0)
    calls = {"patch": 0, "unpatch": 0}
    patch, unpatch = comfy.model_patcher.ModelPatcher.patch_weight_to_device, \
        comfy.model_patcher.ModelPatcher.unpatch_model

    def counting_patch(self, k, *args, **kwargs):
        calls["patch"] += k in self.patches
        return patch(self, k, *args, **kwargs)

    def counting_unpatch(self, device_to=None, unpatch_weights=True):
        calls["unpatch"] += unpatch_weights   # an eject without unpatching weights costs nothing
        return unpatch(self, device_to, unpatch_weights)

    comfy.model_management.unload_all_models()
    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "patch_weight_to_device", counting_patch)
    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "unpatch_model", counting_unpatch)
    try:
        _edit(nodes_, model, latent, conds)
        assert calls == {"patch": 1, "unpatch": 0}
    finally:
        monkeypatch.undo()
        comfy.model_management.unload_all_models()
