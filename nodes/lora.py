"""Identity LoRA: GoodDrag / DragDiffusion's per-image LoRA, fitted before dragging, as a MODEL for every node."""
from comfy_api.latest import io

from ..kernels import lora
from ..kernels.errors import ArgumentError
from . import host
from .errors import DragEditInputError, DragEditNode, from_argument

NAME = "GoodDrag / DragDiffusion Identity LoRA"
FIXES = {
    "steps": "Use at least 1 step (GoodDrag 70, DragDiffusion 80)",
    "rank": "Use a rank of at least 1 (both papers: 16)",
    "batch_size": "Use a batch of at least 1 (both papers: 4)",
    "lr": "Use a positive learning rate (both papers: 0.0005)",
}


class DragEditIdentityLoRA(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditIdentityLoRA",
            display_name=NAME,
            category="DragEdit",
            description="Fits a LoRA to the image before dragging, as GoodDrag and DragDiffusion do, so inversion and "
                        "denoising keep the image's identity (DragDiffusion's paper reports a 'catastrophic increase "
                        "in MD' without it). Rank-16 LoRA on to_q/to_k/to_v/to_out of every attention layer, AdamW "
                        "lr 5e-4, batch 4 of the image, the model's own noise-prediction loss at random timesteps. "
                        "The output MODEL carries the LoRA as ordinary weight patches: connect it to DDIM Inversion "
                        "and the drag nodes (or any stock sampler); the input MODEL is unchanged. About 25 s on an "
                        "A100 at 512x512 (DragDiffusion's paper).",
            inputs=[
                io.Model.Input("model", tooltip="The SD model to edit with (SD 1.x / 2.x)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="VAE Encode of the image to edit (one image). ComfyUI's LATENT holds the "
                                        "posterior's mean only, so the batch repeats it; connect image + vae "
                                        "instead to sample the VAE posterior per item as the papers do."),
                io.Image.Input("image", optional=True,
                               tooltip="The image to edit (one image), with vae: the latent is sampled from the "
                                       "VAE's posterior for every batch item (the papers' recipe; TAESD-type "
                                       "VAEs have no posterior, so their latent is repeated)."),
                io.Vae.Input("vae", optional=True, tooltip="With image: the VAE that encodes it."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="The edit's prompt (GoodDrag: CLIP Text Encode of ''; DragDiffusion: "
                                              "the image's caption). Not connected: an all-zero text context, "
                                              "which is not the encoding of ''."),
                io.Int.Input("steps", default=lora.GOODDRAG_STEPS, min=1, max=10000,
                             tooltip="AdamW steps: GoodDrag 70, DragDiffusion 80 (its paper: at least 80)."),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank (both papers: 16)."),
                io.Float.Input("lr", default=5e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate, constant (both papers: 0.0005; betas 0.9/0.999, "
                                       "weight decay 0.01)."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Copies of the image per step, each with its own noise and timestep (both "
                                     "papers: 4). Lower it if the GPU runs out of memory."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the LoRA's initialisation, noise, timesteps and posterior samples "
                                     "(official: 0); the same seed gives the same LoRA."),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="Empty: not saved. Otherwise a file prefix under models/loras (e.g. "
                                        "'dragedit/identity'): the LoRA is written as <prefix>_00001_.safetensors, "
                                        "which Load LoRA (model only) reads to the same weights."),
            ],
            outputs=[io.Model.Output("lora_model", display_name="model",
                                     tooltip="A clone of MODEL with the LoRA applied as weight patches.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, steps, rank, lr, batch_size, seed, latent=None, image=None, vae=None, positive=None,
                save_name="") -> io.NodeOutput:
        try:
            recipe = lora.LoRARecipe(steps=steps, rank=rank, lr=lr, batch_size=batch_size)
        except ArgumentError as err:
            raise from_argument(NAME, err, fixes=FIXES) from None
        host.family(model, NAME)
        save_path = host.lora_save_path(save_name, NAME) if save_name and save_name.strip() else None
        if latent is not None and image is not None:
            raise DragEditInputError(NAME, "latent", "and image are both connected",
                                     "Connect one: image + vae (posterior samples, as the papers) or latent")
        std = None
        if image is not None:
            if vae is None:
                raise DragEditInputError(NAME, "vae", "is not connected", "Connect the VAE that encodes image")
            mean, std = host.vae_posterior(vae, image, NAME)
            latent = {"samples": mean}
        elif latent is None:
            raise DragEditInputError(NAME, "latent", "is not connected",
                                     "Connect the image to edit: image + vae, or VAE Encode's latent")
        samples = host.latent_samples(latent, NAME, "image" if image is not None else "latent")
        if positive is not None:
            positive = host.conditioning(positive, model, NAME, "positive")
        patched, fitted = host.fit_identity_lora(model, samples, std, positive, recipe, seed, NAME,
                                                 cls.hidden.unique_id)
        if save_path is not None:
            host.save_identity_lora(model, fitted, save_path)
        return io.NodeOutput(patched)


NODES = [DragEditIdentityLoRA]
