"""Visual Cross-Attention: a MODEL clone whose decoder self-attention reads keys/values from a memory bank."""
from comfy_api.latest import io

from ..kernels import bank_attention
from ..kernels.errors import ArgumentError
from . import host, types
from .errors import DragEditInputError, DragEditNode

NAME = "DragonDiffusion Visual Cross-Attention"
MODES = ("replace", "concat", "masked")
STEP_RANGES = ("method's steps", "custom")


def _mask_2d(mask, input_name):
    if mask is None:
        raise DragEditInputError(NAME, input_name, "is not connected",
                                 "Mode 'masked' needs mask_base and mask_replace (image-sized MASKs)")
    m = mask[0] if mask.ndim == 3 else mask
    return m.detach().float().cpu().clone()


class BankContext:
    """The mode's keys/values from one bank (or two, for 'masked'), for host.BankAttentionPatch: `entries(t, layer)`
    are the bank tensors a step needs, which the patch keeps in its step slots; calling it gives (context, value)
    of `n` from those entries. Masked mode's token indices are made here, once per layer (the loop never syncs on
    a data-dependent shape)."""

    def __init__(self, bank, mode, bank_replace=None, mask_base=None, mask_replace=None):
        self.bank, self.mode, self.bank_replace = bank, mode, bank_replace
        self.indices = {}
        if mode == "masked":
            latent_hw = tuple(bank.latent_shape[-2:])
            for layer in bank.layers:
                grid = bank_attention.token_grid(bank.attention_input(bank.timesteps[0], layer).shape[1], latent_hw)
                self.indices[layer] = bank_attention.masked_token_indices(mask_base, mask_replace, grid, bank.device)

    def entries(self, t: int, layer) -> tuple:
        """The bank entries of `layer` at t: (n_ref,), or (n_base, n_replace) in masked mode."""
        if self.mode == "masked":
            return self.bank.attention_input(t, layer), self.bank_replace.attention_input(t, layer)
        return (self.bank.attention_input(t, layer),)

    def __call__(self, layer, n, entries):
        n_ref = entries[0]
        if n_ref.shape[1:] != n.shape[1:]:
            raise DragEditInputError(NAME, "memory_bank", f"holds {n_ref.shape[1]} tokens at {layer} but the "
                                     f"sampler runs {n.shape[1]}", "Sample a latent of the inverted image's size")
        if self.mode == "replace":
            return bank_attention.replace_context(n, n_ref)
        if self.mode == "concat":
            return bank_attention.concat_context(n, n_ref)
        return bank_attention.masked_context(n, n_ref, entries[1], *self.indices[layer])


class DragEditVisualCrossAttention(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditVisualCrossAttention",
            display_name=NAME,
            category="DragEdit",
            description="Patches a clone of MODEL so the decoder self-attention takes its keys and values from a "
                        "memory bank (DragonDiffusion's visual cross-attention): 'replace' (move), 'concat' (content "
                        "drag) or 'masked' (appearance / paste: the base image's tokens outside mask_base plus the "
                        "other image's tokens inside mask_replace). Works with stock samplers: with the DDIM "
                        "schedule and add_noise off, a KSampler on the inverted latent reconstructs the image.",
            inputs=[
                io.Model.Input("model", tooltip="The model the bank was made with."),
                types.MemoryBank.Input("memory_bank", tooltip="From DDIM Inversion (the base image)."),
                io.Combo.Input("mode", options=list(MODES), default="replace",
                               tooltip="replace: keys/values from the bank only; concat: own plus bank tokens; "
                                       "masked: two banks, selected by masks."),
                io.Combo.Input("step_range", options=list(STEP_RANGES), default=STEP_RANGES[0],
                               tooltip="method's steps: the Guided Sampler's plan decides, as the official code "
                                       "(move/drag from step 5, appearance/paste on steps 0-35 of 50; scaled to "
                                       "other step counts); a stock sampler uses every step. custom: start_step to "
                                       "end_step, in every sampler."),
                io.Int.Input("start_step", default=0, min=0, max=1000,
                             tooltip="custom range: first step (0 = the noisiest inverted step) with bank "
                                     "attention."),
                io.Int.Input("end_step", default=1000, min=0, max=1000,
                             tooltip="custom range: last step with bank attention (clamped to the bank)."),
                types.MemoryBank.Input("memory_bank_replace", optional=True,
                                       tooltip="Mode 'masked': the bank of the second image."),
                io.Mask.Input("mask_base", optional=True,
                              tooltip="Mode 'masked': region of the base image whose tokens are dropped."),
                io.Mask.Input("mask_replace", optional=True,
                              tooltip="Mode 'masked': region of the second image whose tokens are used."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="A patched clone; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, memory_bank, mode, step_range, start_step, end_step, memory_bank_replace=None,
                mask_base=None, mask_replace=None) -> io.NodeOutput:
        fam = host.family(model, NAME)
        fingerprint = host.model_fingerprint(model)
        banks = [("memory_bank", memory_bank)]
        masks = {}
        if mode == "masked":
            if memory_bank_replace is None:
                raise DragEditInputError(NAME, "memory_bank_replace", "is not connected",
                                         "Mode 'masked' needs the second image's bank from another DDIM Inversion")
            banks.append(("memory_bank_replace", memory_bank_replace))
            masks = {"mask_base": _mask_2d(mask_base, "mask_base"),
                     "mask_replace": _mask_2d(mask_replace, "mask_replace")}
            if memory_bank_replace.timesteps != memory_bank.timesteps:
                raise DragEditInputError(NAME, "memory_bank_replace", "was inverted with other steps/strength",
                                         "Invert both images with the same steps and strength")
        for input_name, bank in banks:
            try:
                bank.check_compatible(fingerprint, memory_bank.latent_shape)
            except ArgumentError as err:
                raise DragEditInputError(NAME, input_name, err.detail,
                                         "Invert the image with the same model and image size") from None
            if not bank.layers:
                raise DragEditInputError(NAME, input_name, "holds no attention layers",
                                         "Set layers to 'family default' on DDIM Inversion")
            if not set(bank.layers) <= set(fam.layers()):
                raise DragEditInputError(NAME, input_name, f"holds layers that are not {fam.name} decoder layers",
                                         "Invert the image with this model")
        if step_range == STEP_RANGES[1] and start_step > end_step:
            raise DragEditInputError(NAME, "start_step", f"({start_step}) is after end_step ({end_step})",
                                     "Use start_step <= end_step")
        steps = None if step_range == STEP_RANGES[0] else frozenset(memory_bank.timesteps[start_step:end_step + 1])
        patched = model.clone()
        patched.set_model_attn1_patch(host.BankAttentionPatch(
            memory_bank.layers, BankContext(memory_bank, mode, memory_bank_replace, **masks), memory_bank.nearest_t,
            steps))
        return io.NodeOutput(patched)


NODES = [DragEditVisualCrossAttention]
