"""A MODEL compiled the way ComfyUI's TorchCompileModel node compiles it keeps working in the pack's editors, every
pass in a compiled graph (issue 12).

The node calls comfy_api.torch_helpers.set_torch_compile_wrapper, which puts a torch.compile'd diffusion_model in
place for every apply_model. Its backends (inductor, cudagraphs) generate code for a GPU or a C compiler; here the
same wrapper runs with tests.support.dispatch.CompileCounter, which counts the graphs dynamo captures and runs them
as captured. The edits must equal the uncompiled ones, every UNet pass must run in a compiled graph (none eagerly
past a graph break, an exception dynamo cannot compile, or the recompile limit), and a pass type must not
recompile per step: the bank attention reads step slots, the inversion's recorder a dict that each pass starts
empty, and a compiled model's estimate passes run whole instead of stopping with an exception.
"""
import types

import pytest
import torch

from comfyui_dragedit.kernels import features
from comfyui_dragedit.kernels.points import DragPoints
from tests.support.comfy_inproc import run_node
from tests.support.dispatch import CompileCounter, PassCounter

LATENT_HW = (8, 8)
STEPS = 6
# bench.compile_graphs measures a max difference of 0 on this CPU; 1e-5 leaves room for another CPU's kernels
# summing fp32 in another order inside the compiled graphs (latents here have std ~1).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def nodes_(comfy_nodes):
    from comfyui_dragedit.nodes import aldd, cross_attention, energy_guidance, guided_sampler, inversion

    return types.SimpleNamespace(inversion=inversion.DragEditDDIMInversion,
                                 vca=cross_attention.DragEditVisualCrossAttention,
                                 move=energy_guidance.DragEditEnergyGuidanceMove,
                                 sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler)


def _edits(nodes_, model, encode_text, steps=STEPS):
    """Inversion with a bank of every family layer, a D+ move with bank attention and energy, and a GoodDrag drag
    with MasaCtrl: (dragon bank latents, move latent, drag latent)."""
    cond, uncond = encode_text("a photo of a ball"), encode_text("")
    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, *LATENT_HW) * 0.8}
    bank = run_node(nodes_.inversion, model=model, latent=latent, positive=cond, steps=steps, strength=1.0,
                    layers="family default", bank_device="auto").result[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 8:32] = 1
    guidance = run_node(nodes_.move, mask=mask, offset_x=16, offset_y=8, w_edit=4.0, w_content=6.0, w_contrast=0.2,
                        w_inpaint=0.8, energy_scale=500.0, faithful_bugs=False, keep_latent_mean=True).result[0]
    attending = run_node(nodes_.vca, model=model, memory_bank=bank, mode="replace", step_range="method's steps",
                         start_step=0, end_step=1000).result[0]
    moved = run_node(nodes_.sampler, model=attending, memory_bank=bank, guidance=guidance,
                     features=features.dragon_tap((5, 8), "SD 1.x"), positive=cond, negative=uncond, cfg=4.0,
                     seed=42, schedule="D+", sde_strength=0.4).result[0]["samples"]
    drag_bank = run_node(nodes_.inversion, model=model, latent=latent, positive=uncond, steps=steps, strength=0.8,
                         layers="none", bank_device="auto").result[0]
    dragged = run_node(nodes_.aldd, model=model, memory_bank=drag_bank, positive=uncond,
                       points=DragPoints(((20.0, 30.0, 44.0, 30.0),), (64, 64)),
                       features=features.gooddrag_tap(8, "SD 1.x"), preset="custom", drag_steps=2, drags_per_step=2,
                       grad_steps_per_drag=1, lr=0.1, max_no_change=0,
                       masactrl_layers="by resolution (family default)", keep_outside=True).result[0]["samples"]
    return torch.stack([bank.latents[t] for t in bank.timesteps]), moved, dragged


@pytest.mark.usefixtures("one_torch_thread")
def test_a_model_compiled_as_torchcompilemodel_does_edits_as_the_plain_model_without_graph_breaks(
        nodes_, sd15, encode_text):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    passes = PassCounter()  # counted uncompiled: a counter inside a compiled graph would be guarded on
    plain = _edits(nodes_, passes.attach(sd15[0]), encode_text)
    compiled = sd15[0].clone()
    with CompileCounter() as backend:
        set_torch_compile_wrapper(compiled, backend=backend)
        result = _edits(nodes_, compiled, encode_text)
        graphs, calls = backend.graphs, backend.calls
        # One graph per pass type, none per step: the same edits on another schedule (other timesteps, other step
        # numbers, fewer passes) find every graph they need compiled.
        _edits(nodes_, compiled, encode_text, steps=STEPS - 2)
    assert not backend.graph_breaks, f"passes broke their graphs: {backend.graph_breaks}"
    assert not backend.uncompiled, f"frames dynamo could not compile: {backend.uncompiled}"
    assert backend.graphs == graphs, f"{graphs} graphs at {STEPS} steps, {backend.graphs - graphs} more at {STEPS - 2}"
    assert calls == passes.calls, f"{passes.calls} UNet passes, {calls} of them in compiled graphs"
    for name, got, want in zip(("inverted latents", "move", "drag"), result, plain):
        assert torch.isfinite(got).all(), name
        assert (got - want).abs().max() <= TOLERANCE, f"{name}: max diff {(got - want).abs().max():.3g}"
