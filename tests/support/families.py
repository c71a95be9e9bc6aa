"""Random-weight models of each model family, built in-process from ComfyUI's own model config classes.

No weights are ever downloaded. Each model is its family's `comfy.supported_models` class (SDXL, SD20,
SD21UnclipH, SD15) given the family's real unet_config (ComfyUI's own, model_detection.py) with only the width
reduced: the block layout, transformer depths, ADM width, context width and linear-in-transformer are the real
ones, so every block index, layer key and conditioning path the pack reads is the one a real checkpoint has. The
models are built as `host.load_demo_model` builds the demo UNet: config -> get_model -> ModelPatcher, here with
torch's default init and a small last convolution (tiny_sd15.TEST_OUT_SCALE: a gentle eps, so DDIM inversion
round-trips as a trained model's does).

Full width for benchmarks on a GPU: `build("sdxl", width=320)` is the real SDXL base UNet (2.57B parameters).
"""
import torch

from tests.support.tiny_sd15 import TEST_OUT_SCALE, init_default_weights

# ComfyUI 0.3.75 comfy/model_detection.py unet_config_from_diffusers_unet: SDXL, SD21, SD21_uncliph, SD15
_COMMON = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
               in_channels=4, use_temporal_attention=False, use_temporal_resblock=False)
SDXL_UNET = dict(_COMMON, num_classes="sequential", adm_in_channels=2816, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])
SD21_UNET = dict(_COMMON, adm_in_channels=None, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=True, context_dim=1024, num_head_channels=64,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
SD21_UNCLIPH_UNET = dict(SD21_UNET, num_classes="sequential", adm_in_channels=2048)
SD15_UNET = dict(_COMMON, adm_in_channels=None, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])

# name -> (config class name, unet_config, model type, test width). The widths keep SDXL's and SD2's 64-channel
# heads whole (SDXL has no attention at its first level; SD2 has, at 64 channels).
LAYOUTS = {
    "sdxl": ("SDXL", SDXL_UNET, "EPS", 32),
    "sd2": ("SD20", SD21_UNET, "EPS", 64),
    "sd2_v": ("SD20", SD21_UNET, "V_PREDICTION", 64),
    "sd21_unclip": ("SD21UnclipH", SD21_UNCLIPH_UNET, "V_PREDICTION", 64),
    "sd15_inpaint": ("SD15", dict(SD15_UNET, in_channels=9), "EPS", 32),
    "sd15_ip2p": ("SD15_instructpix2pix", dict(SD15_UNET, in_channels=8), "EPS", 32),
}
# name -> (cross-attention width, pooled width): what the family's CLIPTextEncode gives
TEXT_WIDTHS = {"sdxl": (2048, 1280), "sd2": (1024, 1024), "sd2_v": (1024, 1024), "sd21_unclip": (1024, 1024),
               "sd15_inpaint": (768, 768), "sd15_ip2p": (768, 768)}
UNCLIP_IMAGE_WIDTH = 1024   # SD 2.1 unCLIP-H reads a CLIP ViT-H image embedding


def unet_config(name: str, width: int | None = None) -> dict:
    """The family's unet_config with model_channels = width (default: the test width; 320 = the real model)."""
    _, config, _, test_width = LAYOUTS[name]
    return dict(config, model_channels=test_width if width is None else width)


def build(name: str, seed: int = 0, width: int | None = None, dtype=torch.float32, device=None):
    """A ModelPatcher of the family `name` at random weights, as ComfyUI's loader would return it."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class_name, _, model_type, _ = LAYOUTS[name]
    config = getattr(comfy.supported_models, class_name)(unet_config(name, width))
    config.set_inference_dtype(dtype, None)
    offload = comfy.model_management.unet_offload_device() if device is None else device
    kind = getattr(comfy.model_base.ModelType, model_type)
    if config.noise_aug_config is not None:
        model = comfy.model_base.SD21UNCLIP(config, config.noise_aug_config, model_type=kind, device=offload)
    elif class_name == "SDXL":
        model = comfy.model_base.SDXL(config, model_type=kind, device=offload)
    elif class_name == "SD15_instructpix2pix":
        model = comfy.model_base.SD15_instructpix2pix(config, model_type=kind, device=offload)
    else:
        model = comfy.model_base.BaseModel(config, model_type=kind, device=offload)
        if config.inpaint_model():
            model.set_inpaint()
    torch.manual_seed(seed)
    unet = model.diffusion_model
    init_default_weights(unet.modules())
    with torch.no_grad():
        unet.out[-1].weight.mul_(TEST_OUT_SCALE)
        unet.out[-1].bias.mul_(TEST_OUT_SCALE)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def conditioning(name: str, seed: int = 0, scale: float = 1.0) -> list:
    """A CONDITIONING as the family's CLIPTextEncode gives it: cross-attention [1, 77, C] and pooled_output
    [1, P] (SDXL: 2048 and 1280, read into the ADM vector with the size embedding), at random values."""
    context, pooled = TEXT_WIDTHS[name]
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, context, generator=g) * scale, {"pooled_output": torch.randn(1, pooled, generator=g)}]]


def with_pooled(cond: list, pooled: torch.Tensor) -> list:
    """The same CONDITIONING with another pooled_output."""
    return [[c, {**extra, "pooled_output": pooled}] for c, extra in cond]


def with_image(cond: list, seed: int, strength: float = 1.0, noise_augmentation: float = 0.0) -> list:
    """`cond` through ComfyUI's unCLIPConditioning node with a CLIP vision output (what CLIPVisionEncode gives)
    holding a random image embedding: an unCLIP model reads it into its ADM input y."""
    import comfy.clip_vision
    import nodes

    vision = comfy.clip_vision.Output()
    vision["image_embeds"] = torch.randn(1, UNCLIP_IMAGE_WIDTH, generator=torch.Generator().manual_seed(seed))
    return nodes.unCLIPConditioning().apply_adm(cond, vision, strength, noise_augmentation)[0]
