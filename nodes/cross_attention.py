"""Visual Cross-Attention: a MODEL clone whose decoder self-attention reads keys/values from a memory bank."""
from comfy_api.latest import io

from ..kernels import bank_attention
from . import host, types
from .errors import DragEditInputError

NAME = "DragonDiffusion Visual Cross-Attention"
MODES = ("replace", "concat", "masked")


def _mask_2d(mask, input_name):
    if mask is None:
        raise DragEditInputError(NAME, input_name, "is not connected",
                                 "Mode 'masked' needs mask_base and mask_replace (image-sized MASKs)")
    m = mask[0] if mask.ndim == 3 else mask
    return m.detach().float().cpu().clone()


def bank_attention_fn(bank, mode, active_t, bank_replace=None, mask_base=None, mask_replace=None):
    """The patch body: (n, extra_options) -> (context, value) on active steps of the bank's layers, else None."""
    layers = frozenset(bank.layers)
    token_indices = {}

    def indices(num_tokens):
        if num_tokens not in token_indices:
            grid = bank_attention.token_grid(num_tokens, tuple(bank.latent_shape[-2:]))
            token_indices[num_tokens] = bank_attention.masked_token_indices(mask_base, mask_replace, grid)
        return token_indices[num_tokens]

    def fn(n, extra_options):
        block = extra_options.get("block")
        if block not in layers or "sigmas" not in extra_options:
            return None
        t = bank.nearest_t(float(extra_options["sigmas"][0]))
        if t not in active_t:
            return None
        n_ref = bank.attention_input(t, block)
        if n_ref.shape[1:] != n.shape[1:]:
            raise DragEditInputError(NAME, "memory_bank", f"holds {n_ref.shape[1]} tokens at {block} but the "
                                     f"sampler runs {n.shape[1]}", "Sample a latent of the inverted image's size")
        if mode == "replace":
            return bank_attention.replace_context(n, n_ref)
        if mode == "concat":
            return bank_attention.concat_context(n, n_ref)
        base_idx, rep_idx = indices(n.shape[1])
        return bank_attention.masked_context(n, n_ref, bank_replace.attention_input(t, block), base_idx, rep_idx)

    return fn


class DragEditVisualCrossAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditVisualCrossAttention",
            display_name=NAME,
            category="DragEdit",
            description="Patches a clone of MODEL so the decoder self-attention (output blocks 3-11) takes its keys "
                        "and values from a memory bank: 'replace' (DragonDiffusion move), 'concat' (content drag) or "
                        "'masked' (appearance / paste: the base image's tokens outside mask_base plus the other "
                        "image's tokens inside mask_replace). Works with stock samplers: with the DDIM schedule "
                        "and add_noise off, a KSampler on the inverted latent reconstructs the image.",
            inputs=[
                io.Model.Input("model", tooltip="The model the bank was made with."),
                types.MemoryBank.Input("memory_bank", tooltip="From DDIM Inversion (the base image)."),
                io.Combo.Input("mode", options=list(MODES), default="replace",
                               tooltip="replace: keys/values from the bank only; concat: own plus bank tokens; "
                                       "masked: two banks, selected by masks."),
                io.Int.Input("start_step", default=0, min=0, max=1000,
                             tooltip="First step (0 = the noisiest inverted step) with bank attention. Papers: "
                                     "move/drag from step 5, appearance/paste from 0."),
                io.Int.Input("end_step", default=1000, min=0, max=1000,
                             tooltip="Last step with bank attention (clamped to the bank). Papers: to the end "
                                     "for move/drag, step 35 for appearance/paste."),
                types.MemoryBank.Input("memory_bank_replace", optional=True,
                                       tooltip="Mode 'masked': the bank of the second image."),
                io.Mask.Input("mask_base", optional=True,
                              tooltip="Mode 'masked': region of the base image whose tokens are dropped."),
                io.Mask.Input("mask_replace", optional=True,
                              tooltip="Mode 'masked': region of the second image whose tokens are used."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model", tooltip="A patched clone; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, memory_bank, mode, start_step, end_step, memory_bank_replace=None, mask_base=None,
                mask_replace=None) -> io.NodeOutput:
        host.topology(model, NAME)
        fingerprint = host.model_fingerprint(model)
        banks = [("memory_bank", memory_bank)]
        masks = {}
        if mode == "masked":
            if memory_bank_replace is None:
                raise DragEditInputError(NAME, "memory_bank_replace", "is not connected",
                                         "Mode 'masked' needs the second image's bank from another DDIM Inversion")
            banks.append(("memory_bank_replace", memory_bank_replace))
            masks = {"mask_base": _mask_2d(mask_base, "mask_base"), "mask_replace": _mask_2d(mask_replace, "mask_replace")}
            if memory_bank_replace.timesteps != memory_bank.timesteps:
                raise DragEditInputError(NAME, "memory_bank_replace", "was inverted with other steps/strength",
                                         "Invert both images with the same steps and strength")
        for input_name, bank in banks:
            try:
                bank.check_compatible(fingerprint, memory_bank.latent_shape)
            except ValueError as err:
                raise DragEditInputError(NAME, input_name, str(err).split(": ", 1)[-1],
                                         "Invert the image with the same model and image size") from None
            if not bank.layers:
                raise DragEditInputError(NAME, input_name, "holds no attention layers",
                                         "Set layers to 'decoder self-attention' on DDIM Inversion")
        if start_step > end_step:
            raise DragEditInputError(NAME, "start_step", f"({start_step}) is after end_step ({end_step})",
                                     "Use start_step <= end_step")
        active_t = frozenset(memory_bank.timesteps[start_step:end_step + 1])
        patched = model.clone()
        patched.set_model_attn1_patch(host.BankAttentionPatch(
            bank_attention_fn(memory_bank, mode, active_t, memory_bank_replace, **masks)))
        return io.NodeOutput(patched)


NODES = [DragEditVisualCrossAttention]
