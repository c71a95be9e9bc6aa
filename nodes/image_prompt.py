"""DiffEditor's image prompt: the loader of the official ip_sd15_64.bin and the node that turns image(s) into the
64 IP tokens the Guided Sampler injects into every cross-attention (dragondiffusion.md §6 "Image prompt")."""
from comfy_api.latest import io

from ..kernels import image_prompt
from . import host, types
from .errors import DragEditNode

LOADER_NAME = "DiffEditor Image Prompt Loader"
NAME = "DiffEditor Image Prompt"


class DragEditImagePromptLoader(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditImagePromptLoader",
            display_name=LOADER_NAME,
            category="DragEdit",
            description="Loads DiffEditor's image-prompt weights (ip_sd15_64.bin, 197 MB, from "
                        "huggingface.co/Adapter/DragonDiffusion, into ComfyUI/models/ipadapter): a Resampler that "
                        "turns CLIP ViT-H/14 image features into 64 tokens, and per cross-attention layer its own "
                        "key/value projections. Read safely (tensors only, no code in the file runs) and checked "
                        "key by key against the official layout.",
            inputs=[io.Combo.Input("ip_adapter_file", options=host.ip_adapter_files(),
                                   tooltip="A file in models/ipadapter: DiffEditor's ip_sd15_64.bin (.bin or "
                                           ".safetensors with the same keys). Other IP-Adapter files do not fit.")],
            outputs=[types.ImagePromptModel.Output("ip_adapter", tooltip="The Resampler and the per-layer weights.")],
        )

    @classmethod
    def execute(cls, ip_adapter_file) -> io.NodeOutput:
        return io.NodeOutput(host.load_image_prompt_model(ip_adapter_file, LOADER_NAME, "ip_adapter_file"))


class DragEditImagePrompt(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditImagePrompt",
            display_name=NAME,
            category="DragEdit",
            description="DiffEditor's image prompt: the image's CLIP ViT-H/14 features (penultimate layer, the image "
                        "squashed to 256 x 256) through the Resampler give 64 tokens; the Guided Sampler adds their "
                        "attention, times scale, to every cross-attention at steps 10-19 of 50 (never in the "
                        "estimator or the time-travel re-noise). Uncond tokens come from all-zero pixel values, as "
                        "the official code. Appearance / paste: the second image's tokens go through the image-prompt "
                        "path; the official code also appends the base image's tokens to the text tokens, which "
                        "looks unintended and is off here (faithful_bugs restores it).",
            inputs=[
                types.ImagePromptModel.Input("ip_adapter", tooltip="From DiffEditor Image Prompt Loader."),
                io.Image.Input("image", tooltip="The image being edited (the base image). Its tokens are the "
                                                "prompt in move, resize and drag."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Load CLIP Vision with CLIP-ViT-H-14-laion2B-s32B-b79K (1280 wide), the "
                                            "IP-Adapter image encoder."),
                io.Image.Input("image_replace", optional=True,
                               tooltip="Appearance / paste: the second image (the appearance or the object to "
                                       "paste); its tokens are the prompt."),
                io.Float.Input("scale", default=image_prompt.IP_SCALE, min=0.0, max=2.0, step=0.01,
                               tooltip="Weight of the image-prompt attention (official: 0.1; 0.05 for faces; 0 "
                                       "turns it off, i.e. DragonDiffusion)."),
                io.Boolean.Input("faithful_bugs", default=False,
                                 tooltip="Appearance / paste only: also append the base image's 64 tokens to the "
                                         "text tokens of every cross-attention at every step, as the official code "
                                         "does (dragondiffusion.md §9 item 7). Off: the base image's tokens are "
                                         "not used."),
            ],
            outputs=[types.ImagePrompt.Output("image_prompt",
                                              tooltip="For the Guided Sampler's image_prompt input.")],
        )

    @classmethod
    def execute(cls, ip_adapter, image, scale, faithful_bugs, clip_vision=None, image_replace=None) -> io.NodeOutput:
        base = [ip_adapter.tokens(h) for h in host.clip_vision_hidden_states(clip_vision, image, NAME, "image")]
        if image_replace is None:
            cond, uncond = base
            text_tokens = None
        else:
            cond, uncond = (ip_adapter.tokens(h) for h in
                            host.clip_vision_hidden_states(clip_vision, image_replace, NAME, "image_replace"))
            text_tokens = tuple(base) if faithful_bugs else None
        return io.NodeOutput(image_prompt.ImagePrompt(cond, uncond, ip_adapter.layers, scale, text_tokens,
                                                      two_images=image_replace is not None))


NODES = [DragEditImagePromptLoader, DragEditImagePrompt]
