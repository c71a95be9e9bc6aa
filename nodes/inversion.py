"""DDIM Inversion + Memory Bank: the image's DDIM trajectory plus its decoder self-attention inputs."""
from comfy_api.latest import io

from ..kernels import ddim, plan, schedule
from ..kernels.errors import ArgumentError
from ..kernels.memory_bank import Z0, BankRecorder, bank_bytes_per_step
from . import host, types
from .errors import DragEditInputError, DragEditNode

NAME = "DDIM Inversion + Memory Bank (DragonDiffusion, GoodDrag)"
LAYER_SETS = ("family default", "all decoder self-attention", "none")
BANK_DEVICES = ("auto", "offload (CPU)", "compute device (GPU)")


class DragEditDDIMInversion(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditDDIMInversion",
            display_name=NAME,
            category="DragEdit",
            description="Inverts an image latent with DDIM (the eps at the destination t, as DragonDiffusion and "
                        "GoodDrag do) and keeps a memory bank: every step's latent and the decoder self-attention "
                        "inputs, which the edit nodes and Visual Cross-Attention read back. The LATENT output is the "
                        "noisiest latent, ready for a stock sampler with add_noise off.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 1.x / 2.x / SDXL model to invert with (the same one edits "
                                                "later)."),
                io.Latent.Input("latent", tooltip="VAE Encode of the image to edit (one image)."),
                io.Conditioning.Input("positive", tooltip="Text conditioning for the inversion: the prompt used "
                                      "for editing too (GoodDrag: empty prompt; DragonDiffusion: a short caption)."),
                io.Int.Input("steps", default=50, min=2, max=schedule.MAX_DDIM_STEPS,
                             tooltip="DDIM steps of the full schedule (papers: 50, t = 981..1). The edit nodes follow "
                                     "the bank's steps and rescale the papers' step indices: 25 is the fast preset "
                                     "(about half the time)."),
                io.Float.Input("strength", default=1.0, min=0.02, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to invert: 1.0 for DragonDiffusion, 0.75 for "
                                       "GoodDrag (t=741 of 50 steps), 0.7 for DragDiffusion (t=681)."),
                io.Combo.Input("layers", options=list(LAYER_SETS), default=LAYER_SETS[0],
                               tooltip="Which decoder self-attention inputs to keep for Visual Cross-Attention: the "
                                       "family default (SD 1.x/2.x: all 9 layers, as the official code; SDXL: the "
                                       "6 layers of output blocks 3-5, 1.6 GB for 50 steps at 1024², instead of "
                                       "all 36, 5.5 GB), every decoder layer, or none (latents only: GoodDrag)."),
                io.Combo.Input("bank_device", options=list(BANK_DEVICES), default=BANK_DEVICES[0],
                               tooltip="Where the bank lives: auto = on the GPU when it fits in its free memory "
                                       "(no copy per step), else CPU memory (as the official code)."),
            ],
            outputs=[
                types.MemoryBank.Output("memory_bank", tooltip="Per-step latents and decoder self-attention inputs."),
                io.Latent.Output("inverted_latent", display_name="latent",
                                 tooltip="The inverted (noisiest) latent in ComfyUI sigma space."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, strength, layers, bank_device) -> io.NodeOutput:
        fam = host.family(model, NAME)
        samples = host.latent_samples(latent, NAME)
        positive = host.conditioning(positive, model, NAME, "positive")
        try:
            steps_plan = plan.ddim_plan(steps, strength)
        except ArgumentError as err:
            raise DragEditInputError(NAME, "strength", f"{strength} of {steps} steps inverts no step",
                                     "Raise strength or steps") from err
        kept = {LAYER_SETS[0]: fam.layers(fam.bank_blocks), LAYER_SETS[1]: fam.layers(), LAYER_SETS[2]: ()}[layers]
        device = cls._bank_device(model, fam, samples, kept, len(steps_plan), bank_device)
        recorder = BankRecorder(layers=kept, device=device)
        record = host.RecordPatch(kept, recorder.record)
        progress = host.Progress(model, len(steps_plan), cls.hidden.unique_id)
        alphas_cumprod = host.model_alphas_cumprod(model)

        def loop(passes, z0):
            recorder.record_latent(Z0, z0)

            def on_step(info):
                recorder.record_latent(info["t"], info["z"])
                progress(info)

            def eps(z, step):
                out = passes.eps(z, step)
                record.drain(step.t)
                return out

            z_T = ddim.invert(eps, z0, passes.alphas_cumprod, steps, strength, callback=on_step)[-1]
            return schedule.x_from_z(z_T, host.sigmas_of(passes.alphas_cumprod, [steps_plan[0].t])[0])

        inverted = host.sample(model, loop, samples, positive,
                               sigmas=host.sigmas_of(alphas_cumprod, [s.t for s in reversed(steps_plan)]),
                               attn1=[record])
        bank = recorder.finish(alphas_cumprod, host.model_fingerprint(model))
        return io.NodeOutput(bank, {**latent, "samples": inverted})

    @staticmethod
    def _bank_device(model, fam, samples, kept, num_steps: int, choice: str):
        if choice == BANK_DEVICES[1]:
            return host.offload_device()
        if choice == BANK_DEVICES[2]:
            return model.load_device
        h, w = samples.shape[-2:]
        channels = host.layer_channels(model, kept)
        per_step = bank_bytes_per_step((h, w), [(fam.downscale(layer), channels[layer]) for layer in kept])
        return host.bank_device(model, per_step * num_steps)


NODES = [DragEditDDIMInversion]
