"""DDIM Inversion (Memory Bank): the image's DDIM trajectory plus its decoder self-attention inputs."""
from comfy_api.latest import io

from ..kernels import ddim
from ..kernels.memory_bank import Z0, BankRecorder
from . import host, types
from .errors import DragEditInputError

NAME = "DDIM Inversion + Memory Bank (DragonDiffusion, GoodDrag)"
LAYER_PRESETS = ("decoder self-attention", "none")
BANK_DEVICES = ("offload (CPU)", "compute device (GPU)")


class DragEditDDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditDDIMInversion",
            display_name=NAME,
            category="DragEdit",
            description="Inverts an image latent with DDIM (the eps at the destination t, as DragonDiffusion and "
                        "GoodDrag do) and keeps a memory bank: every step's latent and the self-attention inputs of "
                        "the 9 decoder layers, which the edit nodes and Visual Cross-Attention read back. The "
                        "LATENT output is the noisiest latent, ready for a stock sampler with add_noise off.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 1.x / 2.x model to invert with (the same one edits later)."),
                io.Latent.Input("latent", tooltip="VAE Encode of the image to edit (one image)."),
                io.Conditioning.Input("positive", tooltip="Text conditioning for the inversion: the prompt used "
                                      "for editing too (GoodDrag: empty prompt; DragonDiffusion: a short caption)."),
                io.Int.Input("steps", default=50, min=2, max=1000,
                             tooltip="DDIM steps of the full schedule (papers: 50, t = 981..1)."),
                io.Float.Input("strength", default=1.0, min=0.02, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to invert: 1.0 for DragonDiffusion, 0.75 for "
                                       "GoodDrag (t=741 of 50 steps), 0.7 for DragDiffusion (t=681)."),
                io.Combo.Input("layers", options=list(LAYER_PRESETS), default=LAYER_PRESETS[0],
                               tooltip="Which self-attention inputs to keep: the decoder's (output blocks 3-11, "
                                       "needed for visual cross-attention) or none (latents only, smaller)."),
                io.Combo.Input("bank_device", options=list(BANK_DEVICES), default=BANK_DEVICES[0],
                               tooltip="Where the bank lives: CPU memory (as the official code) or the GPU "
                                       "(faster, ~14 MB per step at 512² in fp16)."),
            ],
            outputs=[
                types.MemoryBank.Output("memory_bank", tooltip="Per-step latents and decoder self-attention inputs."),
                io.Latent.Output("inverted_latent", display_name="latent", tooltip="The inverted (noisiest) latent in ComfyUI sigma space."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, strength, layers, bank_device) -> io.NodeOutput:
        topo = host.topology(model, NAME)
        z0 = host.latent_to_z(model, latent, NAME)
        cond = host.conditioning_tensor(positive, NAME, "positive")
        if round(strength * steps) < 1:
            raise DragEditInputError(NAME, "strength", f"{strength} of {steps} steps inverts no step",
                                     "Raise strength or steps")
        runner = host.UNetRunner(model)
        device = host.offload_device() if bank_device == BANK_DEVICES[0] else runner.device
        kept = topo.decoder_self_attention if layers == LAYER_PRESETS[0] else ()
        recorder = BankRecorder(layers=kept, device=device)
        current = {}
        record = host.RecordPatch(kept, lambda block, n: recorder.record(current["t"], block, n))
        options = runner.transformer_options(bank_attention=False, attn1=[record])

        def eps_fn(z, step):
            current["t"] = step.t
            return runner.eps_cfg(z, step.t, cond, None, 1.0, options)

        progress = host.Progress(model, round(strength * steps), cls.hidden.unique_id)

        def on_step(info):
            recorder.record_latent(info["t"], info["z"])
            progress(info)

        z0 = z0.to(runner.device)
        recorder.record_latent(Z0, z0)
        latents = ddim.invert(eps_fn, z0, runner.alphas_cumprod, steps, strength, callback=on_step)
        bank = recorder.finish(runner.alphas_cumprod, host.model_fingerprint(model))
        inverted = host.z_to_latent(model, latents[-1], bank.sigma(bank.timesteps[0]))
        return io.NodeOutput(bank, {**latent, **inverted})


NODES = [DragEditDDIMInversion]
