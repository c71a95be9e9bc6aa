"""What an edit dispatches, counted on the CPU (issue 12): UNet passes, ATen ops per pass against a plain ComfyUI
forward of the same model measured in the same run, host syncs inside the loops, weight copies, weight gradients
and weight (re)patches per edit. Counts, not seconds: they do not depend on this machine's speed or load.

    .dev/venv/bin/python -m bench.cpu_counts [--steps 50] [--drag-budget paper|small]

Runs a DiffEditor (D+) move and a GoodDrag edit through the real nodes on the CI test model (SD-1.5 block
layout, random weights) at a 64x64 image. The same script, copied into a checkout of an older version, gives the
"before" column (it only uses the nodes' schemas and kernels.ddim.denoise, which every version has).
"""
import argparse
import collections
import types

import torch

from bench.support import encode, load_model, widget_defaults
from tests.support.comfy_inproc import run_node
from tests.support.dispatch import OpCounter, PassCounter
from tests.support.pack import load_pack

load_pack()
from comfyui_dragedit.kernels import ddim  # noqa: E402  (the pack imports under this name once loaded)
from comfyui_dragedit.kernels.points import DragPoints  # noqa: E402

SIZE = 64


class LoopCounter:
    """Counts what kernels.ddim.denoise dispatches after the policy's one-time start, over every call."""

    def __init__(self, weights):
        self.counter = OpCounter(weights)
        self._original = ddim.denoise

    def __enter__(self):
        counter, original = self.counter, self._original

        def counted(eps_fn, z, steps, alphas_cumprod, policy=None, callback=None):
            entered = False
            if policy is not None and hasattr(policy, "start"):
                start = policy.start

                def start_then_count(plan, z_):
                    nonlocal entered
                    start(plan, z_)
                    counter.__enter__()
                    entered = True
                policy.start = start_then_count
            else:
                counter.__enter__()
                entered = True
            try:
                return original(eps_fn, z, steps, alphas_cumprod, policy, callback)
            finally:
                if entered:
                    counter.__exit__(None, None, None)

        ddim.denoise = counted
        return self.counter

    def __exit__(self, *exc):
        ddim.denoise = self._original


def _inputs(node, **given):
    """Widget defaults of the node as this version declares them, overridden by `given` where it has the input."""
    info = node.GET_NODE_INFO_V1()["input"]
    names = {**info["required"], **info.get("optional", {})}
    return {**widget_defaults(node), **{k: v for k, v in given.items() if k in names}}


def _features(nodes, model, which):
    node = nodes.features
    spec = node.GET_NODE_INFO_V1()["input"]["required"]["preset"]
    presets = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    preset = next(p for p in presets if p.startswith(which))
    return run_node(node, **_inputs(node, model=model, preset=preset)).result[0]


def _nodes():
    from comfyui_dragedit.nodes import aldd, cross_attention, energy_guidance, features, guided_sampler, inversion

    return types.SimpleNamespace(inversion=inversion.DragEditDDIMInversion,
                                 vca=cross_attention.DragEditVisualCrossAttention,
                                 move=energy_guidance.DragEditEnergyGuidanceMove,
                                 features=features.DragEditFeatureExtractor,
                                 sampler=guided_sampler.DragEditGuidedSampler, aldd=aldd.DragEditAlDDScheduler)


def plain_forward_ops(model, cond, uncond) -> int:
    """ATen ops of one stock KSampler step (CFG 4, batch of 2) on the unpatched model: the baseline per pass."""
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, uncond)
    guider.set_cfg(4.0)
    seen = []

    def one_step(m, x, sigmas, extra_args, callback, disable):
        counter = OpCounter()
        with counter:
            m(x, sigmas[0] * x.new_ones([1]), **extra_args)
        seen.append(counter.total)
        return x

    with torch.inference_mode(False), torch.no_grad():
        guider.sample(torch.zeros(1, 4, SIZE // 8, SIZE // 8), torch.randn(1, 4, SIZE // 8, SIZE // 8),
                      comfy.samplers.KSAMPLER(one_step), torch.tensor([1.6, 0.0]), seed=0)
    return seen[0]


class Patches:
    """Counts weight patching (LoRA keys written to the device) and weight unpatching during an edit."""

    def __init__(self):
        import comfy.model_patcher
        self.cls = comfy.model_patcher.ModelPatcher
        self.counts = collections.Counter()

    def __enter__(self):
        patch, unpatch, counts = self.cls.patch_weight_to_device, self.cls.unpatch_model, self.counts
        self._saved = patch, unpatch

        def patch_counted(self_, key, *args, **kwargs):
            counts["weights patched"] += key in self_.patches
            return patch(self_, key, *args, **kwargs)

        def unpatch_counted(self_, device_to=None, unpatch_weights=True):
            counts["weight unpatches"] += bool(unpatch_weights)
            return unpatch(self_, device_to, unpatch_weights)

        self.cls.patch_weight_to_device, self.cls.unpatch_model = patch_counted, unpatch_counted
        return counts

    def __exit__(self, *exc):
        self.cls.patch_weight_to_device, self.cls.unpatch_model = self._saved


def _with_lora(model):
    """The model with a LoRA-like weight patch on 3 keys, as LoraLoader leaves it: reloads then cost patching."""
    patched = model.clone()
    for key in [k for k in patched.model.state_dict() if ".attn2.to_k.weight" in k][:3]:
        patched.add_patches({key: (torch.zeros_like(patched.model.state_dict()[key]),)}, 1.0)
    return patched


def dragon_edit(nodes, model, cond, uncond, steps):
    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, SIZE // 8, SIZE // 8) * 0.8}
    bank = run_node(nodes.inversion, **_inputs(nodes.inversion, model=model, latent=latent, positive=cond,
                                                steps=steps)).result[0]
    patched = run_node(nodes.vca, **_inputs(nodes.vca, model=model, memory_bank=bank, mode="replace")).result[0]
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:40, 8:32] = 1
    guidance = run_node(nodes.move, **_inputs(nodes.move, mask=mask, offset_x=16, offset_y=8)).result[0]
    return run_node(nodes.sampler, **_inputs(nodes.sampler, model=patched, memory_bank=bank, guidance=guidance,
                                             features=_features(nodes, model, "DragonDiffusion"), positive=cond,
                                             negative=uncond, schedule="D+")).result[0]


def gooddrag_edit(nodes, model, cond, steps, budget):
    torch.manual_seed(0)
    latent = {"samples": torch.randn(1, 4, SIZE // 8, SIZE // 8) * 0.8}
    bank = run_node(nodes.inversion, **_inputs(nodes.inversion, model=model, latent=latent, positive=cond,
                                                steps=steps, strength=0.75, layers="none")).result[0]
    custom = dict(preset="custom", drag_steps=7, drags_per_step=10, grad_steps_per_drag=3, lr=1e-6,
                  max_no_change=0) if budget == "paper" else \
        dict(preset="custom", drag_steps=2, drags_per_step=2, grad_steps_per_drag=3, lr=1e-6, max_no_change=0)
    points = DragPoints(((16.0, 16.0, 48.0, 48.0),), (SIZE, SIZE))
    return run_node(nodes.aldd, **_inputs(nodes.aldd, model=model, memory_bank=bank, positive=cond, points=points,
                                          features=_features(nodes, model, "GoodDrag"), **custom)).result[0]


def measure(label, edit, model, plain_ops):
    counter = PassCounter()
    counted_model = counter.attach(model)
    params = list(model.model.diffusion_model.parameters())
    with LoopCounter(params) as ops, Patches() as patches:
        edit(counted_model)
    passes = max(counter.calls, 1)
    syncs = sum(ops.syncs.values())
    grads = sum(p.grad is not None for p in model.model.diffusion_model.parameters())
    print(f"{label}")
    print(f"  UNet passes in the loops          {counter.calls} ({counter.with_grad} with a graph)")
    print(f"  ATen ops per pass                 {ops.total / passes:.0f}  (plain ComfyUI step: {plain_ops}; "
          f"ratio {ops.total / passes / plain_ops:.2f})")
    print(f"  host syncs in the loops           {syncs}  {dict(ops.syncs) if syncs else ''}")
    print(f"  weight copies in the loops        {ops.weight_copies}  ({ops.weight_copies / passes:.1f} per pass)")
    print(f"  weights patched / unpatched       {patches['weights patched']} / {patches['weight unpatches']}  "
          f"(3 LoRA keys; a reload per node call patches them again)")
    print(f"  UNet parameters with a .grad      {grads} of {len(params)}", flush=True)


def report(which: str, steps: int, drag_budget: str = "small"):
    """The counts of one method's edit ("dragon" or "gooddrag"), printed; the other benches call this."""
    model, clip, _ = load_model("test")
    cond, uncond = encode(clip, "a photo of a ball"), encode(clip, "")
    nodes = _nodes()
    plain = plain_forward_ops(model, cond, uncond)
    lora = _with_lora(model)
    if which == "dragon":
        measure(f"DiffEditor move (D+), {steps} steps, defaults", lambda m: dragon_edit(nodes, m, cond, uncond, steps),
                lora, plain)
    else:
        measure(f"GoodDrag, {steps} steps ({drag_budget} drag budget)",
                lambda m: gooddrag_edit(nodes, m, cond, steps, drag_budget), lora, plain)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (papers: 50)")
    ap.add_argument("--drag-budget", choices=("paper", "small"), default="small",
                    help="GoodDrag's drags: the paper's 7x10x3 or 2x2x3 (the counts per pass are the same)")
    args = ap.parse_args()
    print(f"CI test model (SD-1.5 block layout), {SIZE}x{SIZE} image, torch {torch.__version__}; counts inside "
          f"kernels.ddim.denoise (after the policy's start)")
    report("dragon", args.steps)
    report("gooddrag", args.steps, args.drag_budget)


if __name__ == "__main__":
    main()
