"""The only module that touches ComfyUI internals: topology table, patches, the UNet as callables, progress.

Kernels see the UNet as `eps_fn(z, step)`, `features_fn(z, t)` and `forward_fn(z, t)` on the VP latent z
(docs/CONTRACTS.md). This module builds those from a ModelPatcher clone, once per run, and hands progress,
interruption and previews back to ComfyUI. Everything the pack changes in a model is a patch on a clone,
a patch object of this module (style.md §4.4); the host's MODEL object is never modified.
"""
import contextlib
import dataclasses
import hashlib

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import latent_preview

from ..kernels import schedule
from ..kernels.features import FeatureRecorder, StopForward
from .errors import DragEditInputError

LATENT_DOWNSCALE = 8  # the SD-family VAEs of every supported topology


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where a model family keeps what the methods read: decoder self-attentions and tappable output blocks."""

    family: str
    decoder_self_attention: tuple  # ("output", k) block ids with a transformer (attn1 = self-attention)
    source_attention: tuple        # the subset where MasaCtrl attends to the source (GoodDrag, gooddrag.md §1)
    output_blocks: int             # output block count; taps are on blocks 0..output_blocks-2 (see features.py)


_SD1_LIKE = dict(decoder_self_attention=tuple(("output", k) for k in range(3, 12)),
                 source_attention=tuple(("output", k) for k in range(6, 12)), output_blocks=12)
# model_config class name (comfy/supported_models.py) -> topology; SD 2.x shares SD 1.x's block layout.
TOPOLOGIES = {
    "SD15": Topology("SD 1.x", **_SD1_LIKE),
    "SD20": Topology("SD 2.x", **_SD1_LIKE),
    "SD21UnclipL": Topology("SD 2.x", **_SD1_LIKE),
    "SD21UnclipH": Topology("SD 2.x", **_SD1_LIKE),
}
SUPPORTED_FAMILIES = "SD 1.x (SD 1.4/1.5 and fine-tunes) and SD 2.x checkpoints"


def topology(model, node: str, input_name: str = "model") -> Topology:
    """The model's topology, checked against its live modules; a clear error for any other family."""
    config_name = type(model.model.model_config).__name__
    topo = TOPOLOGIES.get(config_name)
    unet = getattr(model.model, "diffusion_model", None)
    blocks = getattr(unet, "output_blocks", None)
    if topo is not None and blocks is not None and len(blocks) == topo.output_blocks:
        missing = [k for _, k in topo.decoder_self_attention
                   if not any(hasattr(layer, "transformer_blocks") for layer in blocks[k])]
        if not missing:
            return topo
    raise DragEditInputError(node, input_name, f"is a {config_name} model without SD-1.x decoder blocks",
                             f"Load one of the supported models: {SUPPORTED_FAMILIES}")


def model_fingerprint(model) -> str:
    """Identifies the UNet weights a memory bank was made with (so a bank from another model is refused).

    Hashes the model family and a few values of the first and last convolution: cheap, stable across reloads of
    the same checkpoint, different for other checkpoints.
    """
    unet = model.model.diffusion_model
    first = unet.input_blocks[0][0].weight
    last = unet.out[-1].weight
    digest = hashlib.sha1(type(model.model.model_config).__name__.encode())
    for w in (first, last):
        digest.update(w.detach().flatten()[:4096].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


class _Patch:
    """Base for the pack's patches: ModelPatcher.clone() deep-copies model_options, so a patch is shared, not copied
    (comfyhost gotcha 7), and the estimator can tell the pack's own patches apart from other packs'."""

    bank_attention = False

    def __deepcopy__(self, memo):
        return self


class BankAttentionPatch(_Patch):
    """attn1_patch that feeds memory-bank self-attention inputs into the decoder self-attention (visual cross-attention).

    `fn(n, extra_options) -> (context, value)` or None (inactive): built by the node from kernels.bank_attention.
    """

    bank_attention = True

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        kv = self.fn(n, extra_options)
        if kv is None:
            return n, context_attn1, value_attn1
        return n, kv[0], kv[1]


class RecordPatch(_Patch):
    """attn1_patch that hands each decoder self-attention input to a recorder: `record(block, n)`."""

    def __init__(self, layers, record):
        self.layers, self.record = frozenset(layers), record

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        block = extra_options.get("block")
        if block in self.layers:
            self.record(block, n)
        return n, context_attn1, value_attn1


class TapPatch(_Patch):
    """output_block_patch: ComfyUI calls it before output block k (so `h` is block k-1's output): observe(k, h)."""

    def __init__(self, observe):
        self.observe = observe

    def __call__(self, h, hsp, transformer_options):
        self.observe(transformer_options["block"][1], h)
        return h, hsp


def offload_device():
    """Where ComfyUI parks models off the GPU (the CPU, normally): the memory bank's default home."""
    return comfy.model_management.unet_offload_device()


def grad_scope():
    """Autograd inside a ComfyUI node: the executor runs nodes under inference_mode (comfyhost gotcha 5)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def _autograd_safe_clone(model):
    """Clone whose weights are copied per forward (identity wrappers), so autograd can save them.

    Weights loaded under inference_mode are inference tensors that autograd refuses to save for backward;
    comfy.ops copies a wrapped weight per forward, and the copy made outside inference mode is a normal tensor
    (the mechanism ComfyUI's own TrainLoraNode relies on). Nothing of the shared model is mutated.
    """
    clone = model.clone()
    for name, module in clone.model.named_modules():
        for kind in ("weight", "bias"):
            if hasattr(module, f"{kind}_function") and getattr(module, kind, None) is not None:
                clone.add_weight_wrapper(f"{name}.{kind}", _identity)
    return clone


def _identity(w):
    return w


def conditioning_tensor(conditioning, node: str, input_name: str):
    """The cross-attention context [1, 77, C] of a CONDITIONING (its first entry)."""
    if not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise DragEditInputError(node, input_name, "is empty", "Connect a CLIP Text Encode output")
    return conditioning[0][0][:1]


class UNetRunner:
    """The host's UNet for one run, loaded once, called by the kernels on VP z at integer t.

    Calls go through BaseModel.apply_model with explicit transformer_options (direct calls skip the patcher's
    options, comfyhost gotcha 6), so every patch on the MODEL applies, and ε/v-prediction and dtype casting are the
    model's own business: eps = (x - denoised) / sigma with x = z·sqrt(1 + sigma²).
    """

    def __init__(self, model, grad: bool = False):
        self.patcher = _autograd_safe_clone(model) if grad else model
        comfy.model_management.load_models_gpu([self.patcher])
        self.base = self.patcher.model
        self.device = self.patcher.load_device
        sigmas = self.patcher.get_model_object("model_sampling").sigmas
        with torch.inference_mode(False):
            self.sigmas = sigmas.detach().to(self.device, torch.float32).clone()
        self.alphas_cumprod = schedule.alphas_cumprod_from_sigmas(sigmas.detach().cpu())

    def transformer_options(self, bank_attention: bool = True, attn1=(), output_block=()):
        """A fresh copy of the MODEL's transformer_options plus extra patches; bank attention dropped on request
        (the DragonDiffusion estimator must see no bank, dragondiffusion.md §10)."""
        options = comfy.model_patcher.create_model_options_clone(self.patcher.model_options)
        to = options.get("transformer_options", {})
        patches = dict(to.get("patches", {}))
        own_attn1 = [p for p in patches.get("attn1_patch", []) if bank_attention or not getattr(p, "bank_attention", False)]
        patches["attn1_patch"] = own_attn1 + list(attn1)
        patches["output_block_patch"] = list(patches.get("output_block_patch", [])) + list(output_block)
        to["patches"] = patches
        return to

    def grad_scaler(self):
        """A GradScaler when backward runs through an fp16 UNet on CUDA (both official codes use one), else None."""
        dtype = self.base.manual_cast_dtype or self.base.get_dtype()
        if self.device.type == "cuda" and dtype == torch.float16:
            return torch.amp.GradScaler("cuda")
        return None

    def sigma_of(self, t: int, batch: int) -> torch.Tensor:
        return self.sigmas[t].expand(batch)

    def denoise_call(self, z, t: int, context, transformer_options, cond_or_uncond):
        """eps [B,4,h,w] for VP z [B,4,h,w] at integer t, one UNet pass (batch order given by cond_or_uncond)."""
        sigma = self.sigma_of(t, z.shape[0])
        x = schedule.x_from_z(z, sigma[:, None, None, None])
        to = dict(transformer_options, sigmas=sigma, cond_or_uncond=list(cond_or_uncond))
        denoised = self.base.apply_model(x, sigma, c_crossattn=context.to(self.device), transformer_options=to)
        return schedule.eps_from_denoised(x, denoised, sigma[:, None, None, None])

    def eps_cfg(self, z, t: int, cond, uncond, cfg: float, transformer_options):
        """Classifier-free guided eps; uncond first in the batch as ComfyUI does, the uncond pass dropped at cfg 1."""
        batch = z.shape[0]
        if uncond is None or cfg == 1.0:
            return self.denoise_call(z, t, cond.expand(batch, -1, -1), transformer_options, [0] * batch)
        eps = self.denoise_call(torch.cat([z, z]), t,
                                torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)]),
                                transformer_options, [1] * batch + [0] * batch)
        eps_u, eps_c = eps.chunk(2)
        return eps_u + cfg * (eps_c - eps_u)


    def image_hw(self, z) -> tuple[int, int]:
        """Image size (H, W) in pixels of a latent [B, 4, h, w]."""
        return z.shape[-2] * LATENT_DOWNSCALE, z.shape[-1] * LATENT_DOWNSCALE

    def features_fn(self, tap, cond, truncate: bool = True):
        """`features_fn(z, t) -> [features]` of kernels: the tapped decoder outputs, resized as `tap` says.

        The estimator: no bank attention (dragondiffusion.md §10), conditioned on `cond` only, and with truncate
        the forward stops after the last tapped block (the official estimator's saving, §2).
        """
        current = {}
        options = self.transformer_options(bank_attention=False, output_block=[TapPatch(
            lambda k, h: current["recorder"].observe(k, h))])

        def fn(z, t):
            current["recorder"] = recorder = FeatureRecorder(tap, self.image_hw(z), truncate)
            try:
                self.denoise_call(z, t, cond.expand(z.shape[0], -1, -1), options, [0] * z.shape[0])
            except StopForward:
                pass
            return recorder.features()

        return fn

    def forward_fn(self, tap, cond):
        """`forward_fn(z, t) -> (eps, [features])` of kernels: one full forward giving both (GoodDrag's drag step)."""
        current = {}
        options = self.transformer_options(bank_attention=False, output_block=[TapPatch(
            lambda k, h: current["recorder"].observe(k, h))])

        def fn(z, t):
            current["recorder"] = recorder = FeatureRecorder(tap, self.image_hw(z), truncate=False)
            eps = self.denoise_call(z, t, cond.expand(z.shape[0], -1, -1), options, [0] * z.shape[0])
            return eps, recorder.features()

        return fn


class Progress:
    """Progress bar, interruption and an x̂0 preview for a long loop, driven by the kernels' callback."""

    def __init__(self, model, total: int, node_id=None):
        self.total = total
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def __call__(self, info: dict):
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        x0_hat = info.get("x0_hat")
        if self.previewer is not None and x0_hat is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0_hat[-1:].detach())
        self.bar.update_absolute(min(info.get("done", info.get("i", 0) + 1), self.total), self.total, preview)

    @staticmethod
    def check_interrupted():
        comfy.model_management.throw_exception_if_processing_interrupted()


def latent_to_z(model, latent: dict, node: str, input_name: str = "latent") -> torch.Tensor:
    """VP z0 [1,4,h,w] (the 0.18215-scaled latent) from a LATENT dict; a normal (non-inference) fp32 tensor."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != 4:
        raise DragEditInputError(node, input_name, f"has shape {tuple(samples.shape) if samples is not None else None}",
                                 "Connect a 4-channel SD latent (VAE Encode of your image)")
    if samples.shape[0] != 1:
        raise DragEditInputError(node, input_name, f"holds a batch of {samples.shape[0]}",
                                 "Edit one image at a time: use a single-image latent")
    with torch.inference_mode(False):
        return model.model.process_latent_in(samples.detach().clone().float())


def z_to_latent(model, z: torch.Tensor, sigma: float = 0.0) -> dict:
    """A LATENT dict for stock nodes: sigma-space x = z·sqrt(1+sigma²), unscaled VAE space (process_latent_out)."""
    x = schedule.x_from_z(z.detach().float(), sigma)
    return {"samples": model.model.process_latent_out(x).cpu()}


DEMO_UNET_CONFIG_KEY = "dragedit.unet_config"  # safetensors metadata written by tools/train_demo.py
DEMO_LATENT_RGB_KEY = "dragedit.latent_rgb"     # {"factors": 4x3, "bias": 3}, fitted by tools/train_demo.py


class DemoLatentFormat(comfy.latent_formats.SD15):
    """SD-1.5's latent scale (the demo autoencoder's vae_scale/shift are set so that its latents take it) with the
    latent-to-RGB preview factors and bias fitted on the demo autoencoder, so live previews (the pack's samplers
    and ComfyUI's KSampler) show its true colours; no TAESD preview decoder, since SD's would misread these
    latents."""

    def __init__(self, factors, bias):
        super().__init__()
        self.latent_rgb_factors = [list(map(float, row)) for row in factors]
        self.latent_rgb_factors_bias = list(map(float, bias))
        self.taesd_decoder_name = None


def load_demo_model(path):
    """(MODEL, CLIP, VAE) of the project's demo model file (tools/train_demo.py).

    The UNet is SD-1.x in topology but small, so ComfyUI's detection (which keys SD15 on 320 channels) cannot
    find it: its config travels in the file's metadata and is built as an SD15 model config, so every topology
    check and patch of the pack applies unchanged. The model is unconditional: its cross-attention weights are not
    in the file and are zero here, so the text context has no effect, and the CLIP is SD-1.5's text encoder with
    all weights zero, a placeholder that keeps CLIPTextEncode in the graph. The VAE is a TAESD-layout autoencoder
    that ComfyUI's VAE class reads as it is; the model's latent format carries preview colours fitted on it.
    """
    import json

    import comfy.sd
    import comfy.supported_models

    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    unet_config = json.loads(metadata[DEMO_UNET_CONFIG_KEY])
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")})
    model_config.set_inference_dtype(torch.float32, None)
    model_config.latent_format = DemoLatentFormat(**json.loads(metadata[DEMO_LATENT_RGB_KEY]))
    model = model_config.get_model(sd, "model.diffusion_model.", device=comfy.model_management.unet_offload_device())
    sd.update({"model.diffusion_model." + name: torch.zeros_like(value)
               for name, value in model.diffusion_model.state_dict().items() if ".attn2." in name})
    model.load_model_weights(sd, "model.diffusion_model.")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {"first_stage_model.": ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd)
    clip = comfy.sd.CLIP(model_config.clip_target(state_dict={}), parameters=0)
    with torch.no_grad():
        for param in clip.cond_stage_model.parameters():
            param.zero_()
    return patcher, clip, vae
