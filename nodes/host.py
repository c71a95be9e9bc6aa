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

import comfy.model_management
import comfy.model_patcher
import comfy.samplers
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


def load_demo_model(path):
    """(MODEL, CLIP, VAE) of the project's demo model file (tools/train_demo.py).

    The UNet is SD-1.x in topology but small, so ComfyUI's detection (which keys SD15 on 320 channels) cannot
    find it: its config travels in the file's metadata and is built as an SD15 model config, so every topology
    check and patch of the pack applies unchanged. The model is unconditional: its cross-attention weights are not
    in the file and are zero here, so the text context has no effect, and the CLIP is SD-1.5's text encoder with
    all weights zero, a placeholder that keeps CLIPTextEncode in the graph. The VAE is a TAESD-layout autoencoder
    that ComfyUI's VAE class reads as it is.
    """
    import json

    import comfy.sd
    import comfy.supported_models

    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    unet_config = json.loads(metadata[DEMO_UNET_CONFIG_KEY])
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")})
    model_config.set_inference_dtype(torch.float32, None)
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



# --- Identity LoRA (issue 14: GoodDrag / DragDiffusion's per-image LoRA) ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class IdentityLoRA:
    """A fitted LoRA: per target weight key ("diffusion_model.<module>.weight") its (up [out, r], down [r, in]),
    float32 on the CPU, applied as W + (alpha / rank) up @ down; with the recipe, seed and losses it came from."""

    pairs: dict
    alpha: float
    recipe: object
    seed: int
    losses: torch.Tensor


def prediction_type(model, node: str, input_name: str = "model") -> str:
    """'eps' or 'v': the model's own prediction target, which the LoRA's loss uses (kernels.lora). The class that
    defines the model's denoising formula decides (ComfyUI's X0, LCM and EDM subclass EPS or V_PREDICTION), and
    the schedule must be discrete (integer timesteps, as the papers' t ~ U[0, 1000))."""
    import comfy.model_sampling

    sampling = model.get_model_object("model_sampling")
    owner = next((c for c in type(sampling).__mro__ if "calculate_denoised" in c.__dict__), None)
    kind = {comfy.model_sampling.EPS: "eps", comfy.model_sampling.V_PREDICTION: "v"}.get(owner)
    if kind is None or not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        seen = owner.__name__ if owner is not None else type(sampling).__name__
        raise DragEditInputError(node, input_name, f"predicts with {seen} on a {type(sampling).__mro__[1].__name__} "
                                 "schedule", f"Use an epsilon or v-prediction model: {SUPPORTED_FAMILIES}")
    return kind


def lora_target_modules(model, node: str, input_name: str = "model") -> list:
    """(module name, module) of every attention projection the recipe fits (kernels.lora.is_target), by name."""
    from ..kernels.lora import is_target

    targets = [(name, module) for name, module in model.model.named_modules()
               if is_target(name) and hasattr(module, "weight_function") and getattr(module, "weight", None) is not None]
    if not targets:
        raise DragEditInputError(node, input_name, "has no attention projections attn1/attn2.to_q/to_k/to_v/to_out",
                                 f"Use one of the supported models: {SUPPORTED_FAMILIES}")
    return targets


def vae_posterior(vae, image, node: str, input_name: str = "image"):
    """(mean, std) [1, C, h, w] of the VAE posterior of IMAGE [1, H, W, C], in LATENT space (before the model's
    scale factor). `mean` is what VAE Encode gives (a KL VAE's posterior mode); std is None for a VAE whose
    encoder is deterministic (TAESD and other non-KL autoencoders)."""
    from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer
    from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    if image.ndim != 4 or image.shape[0] != 1:
        raise DragEditInputError(node, input_name, f"holds a batch of {image.shape[0]} images",
                                 "Fit the LoRA to one image, the one you edit: pick it with Image From Batch")
    pixels = image[..., :3]
    mean = vae.encode(pixels)
    first = vae.first_stage_model
    if not (isinstance(getattr(first, "regularization", None), DiagonalGaussianRegularizer)
            and hasattr(first, "quant_conv")):
        return mean, None
    comfy.model_management.load_models_gpu([vae.patcher])
    x = vae.process_input(vae.vae_encode_crop_pixels(pixels).movedim(-1, 1)).to(vae.device, vae.vae_dtype)
    moments = first.quant_conv(first.encoder(x))
    return mean, DiagonalGaussianDistribution(moments.float()).std.to(mean.device)


class _LoRAFitSampler(comfy.samplers.Sampler):
    """A ComfyUI Sampler whose `sample` fits the LoRA instead of sampling (the shape of TrainLoraNode's
    TrainSampler): run through CFGGuider.sample, every call is ComfyUI's own conditioning and patch path
    (calc_cond_batch, model_options, wrappers), so whatever the MODEL carries applies, on every family."""

    def __init__(self, fit):
        self.fit = fit

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        from comfy_extras.nodes_train import process_cond_list  # clones the conds' inference tensors

        process_cond_list(model_wrap.conds)
        base = model_wrap.inner_model
        with grad_scope():
            train_sigmas = base.model_sampling.sigmas.detach().to(noise.device, torch.float32).clone()
            self.losses = self.fit(lambda x, sigma: model_wrap(x, sigma, **extra_args), train_sigmas, base)
        return torch.zeros_like(noise)


def fit_identity_lora(model, z_mean, z_std, positive, recipe, seed: int, node: str, node_id=None):
    """(MODEL with the LoRA as weight patches, IdentityLoRA): the recipe of kernels.lora on the VP latent posterior
    (z_mean, z_std [1, C, h, w], z_std may be None).

    Reused from ComfyUI 0.3.75, as TrainLoraNode uses them: weight adapters (comfy.weight_adapter.LoRAAdapter and its
    trainable LoraDiff, hung on a clone with add_weight_wrapper, which also makes the weights autograd-safe) and
    CFGGuider.sample with a Sampler of ours, for the conditioning and patches. Not reused: TrainSampler itself (an
    x0 MSE under bf16 autocast with timesteps from percent_to_sigma, not the papers' epsilon MSE at integer t).
    The result is `model.clone()` with LoRAAdapter weight patches (add_patches, what LoraLoader adds), so stock
    nodes see it and a saved file reloads to the same weights; the input MODEL is not modified.
    """
    from comfy.weight_adapter import LoRAAdapter

    from ..kernels import lora

    prediction = prediction_type(model, node)
    targets = lora_target_modules(model, node)
    generator = torch.Generator().manual_seed(seed)
    alpha = float(recipe.rank)   # scale alpha / rank = 1: diffusers' LoRA layers of both official codes
    trainer = _autograd_safe_clone(model)
    adapters = {}
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        for name, module in targets:
            out_features, in_features = module.weight.shape[0], module.weight.shape[1:].numel()
            up, down = lora.init_pair(out_features, in_features, recipe.rank, generator)
            adapters[f"{name}.weight"] = train = LoRAAdapter(set(), (up, down, alpha, None, None, None)).to_train()
            trainer.add_weight_wrapper(f"{name}.weight", train)
    params = [p for train in adapters.values() for p in (train.lora_up.weight, train.lora_down.weight)]
    if positive is None:   # no text: an all-zero context of the model's width
        positive = [[torch.zeros(1, 77, model.model.model_config.unet_config["context_dim"]), {}]]
    progress = Progress(model, recipe.steps, node_id)

    def fit(denoised_fn, sigmas, base):
        dtype = base.manual_cast_dtype or base.get_dtype()
        scaler = torch.amp.GradScaler("cuda") if sigmas.device.type == "cuda" and dtype == torch.float16 else None
        return lora.fit(denoised_fn, params, z_mean.to(sigmas.device), z_std, sigmas, recipe, prediction, seed,
                        grad_scaler=scaler, callback=lambda info: progress(dict(done=info["step"] + 1)))

    sampler = _LoRAFitSampler(fit)
    guider = comfy.samplers.CFGGuider(trainer)
    guider.inner_set_conds({"positive": positive})
    latent = model.model.process_latent_out(z_mean.detach().float().cpu()).expand(recipe.batch_size, -1, -1, -1)
    with torch.inference_mode(False):
        comfy.model_management.load_models_gpu([trainer], memory_required=1e20, force_full_load=True)
        guider.sample(torch.zeros_like(latent), latent.clone(), sampler, torch.ones(2), seed=seed)
    pairs = {key: (train.lora_up.weight.detach().float().cpu().clone(),
                   train.lora_down.weight.detach().float().cpu().clone()) for key, train in adapters.items()}
    return apply_identity_lora(model, pairs, alpha), IdentityLoRA(pairs, alpha, recipe, seed, sampler.losses)


def apply_identity_lora(model, pairs: dict, alpha: float):
    """`model.clone()` with each (up, down) as a LoRAAdapter weight patch, strength 1 (as LoraLoader adds them)."""
    from comfy.weight_adapter import LoRAAdapter

    patched = model.clone()
    applied = patched.add_patches({key: LoRAAdapter(set(), (up, down, alpha, None, None, None))
                                   for key, (up, down) in pairs.items()}, 1.0)
    missing = set(pairs) - set(applied)
    if missing:
        raise RuntimeError(f"LoRA patches not applied to {sorted(missing)[:3]}")
    return patched


def lora_file_names(model, keys) -> dict:
    """Weight key -> the LoRA file's module name: kohya's `lora_unet_<diffusers name>` (read by ComfyUI's
    LoraLoader, A1111 and diffusers) where ComfyUI maps the key to a diffusers name, else ComfyUI's generic
    `diffusion_model.<module>` (which its LoraLoader reads too)."""
    diffusers = {f"diffusion_model.{comfy_key}": name for name, comfy_key in
                 comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()}
    return {key: ("lora_unet_" + diffusers[key][:-len(".weight")].replace(".", "_")) if key in diffusers
            else key[:-len(".weight")] for key in keys}


def lora_save_path(filename_prefix: str, node: str, input_name: str = "save_name") -> str:
    """The next free `<prefix>_NNNNN_.safetensors` under ComfyUI's first `loras` folder (numbered like SaveLoRA's
    files), checked before any work is done."""
    import os

    import folder_paths

    loras = folder_paths.get_folder_paths("loras")[0]
    try:
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, loras)
    except Exception:  # ComfyUI raises a bare Exception for a prefix that leaves the folder
        raise DragEditInputError(node, input_name, f"'{filename_prefix}' points outside models/loras",
                                 "Use a name or a sub-folder path inside models/loras, without '..'") from None
    return os.path.join(folder, f"{filename}_{counter:05}_.safetensors")


def save_identity_lora(model, fitted: IdentityLoRA, path: str) -> None:
    """Writes the LoRA in kohya's format (lora_up / lora_down / alpha per module), which LoraLoaderModelOnly reads
    back to the same weights."""
    import json
    import os

    import safetensors.torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    names = lora_file_names(model, fitted.pairs)
    tensors = {}
    for key, (up, down) in fitted.pairs.items():
        tensors[f"{names[key]}.lora_up.weight"] = up.contiguous()
        tensors[f"{names[key]}.lora_down.weight"] = down.contiguous()
        tensors[f"{names[key]}.alpha"] = torch.tensor(fitted.alpha)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(fitted.recipe.rank),
                "ss_network_alpha": str(fitted.alpha),
                "dragedit.identity_lora": json.dumps(dict(dataclasses.asdict(fitted.recipe), seed=fitted.seed,
                                                          final_loss=float(fitted.losses[-1])))}
    safetensors.torch.save_file(tensors, path, metadata=metadata)


# --- Image prompt (issue 14: DiffEditor's IP-Adapter variant) --------------------------------------------------------

IP_ADAPTER_FOLDER = "ipadapter"   # models/ipadapter: the folder IPAdapter_plus registers for the same kind of file


def ip_adapter_files() -> list:
    """The files in ComfyUI's `ipadapter` model folder (registered here when no other pack has)."""
    import os

    import folder_paths

    if IP_ADAPTER_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[IP_ADAPTER_FOLDER] = (
            [os.path.join(folder_paths.models_dir, IP_ADAPTER_FOLDER)], folder_paths.supported_pt_extensions)
    return folder_paths.get_filename_list(IP_ADAPTER_FOLDER)


def load_image_prompt_model(name: str, node: str, input_name: str):
    """kernels.image_prompt.ImagePromptModel of a file in the ipadapter folder, read safely and checked key by key."""
    import folder_paths

    from ..kernels import image_prompt
    from ..kernels.errors import ArgumentError

    ip_adapter_files()
    fix = ("Download DiffEditor's ip_sd15_64.bin (huggingface.co/Adapter/DragonDiffusion, models/) into "
           f"ComfyUI/models/{IP_ADAPTER_FOLDER}")
    path = folder_paths.get_full_path(IP_ADAPTER_FOLDER, name)
    if path is None:
        raise DragEditInputError(node, input_name, f"'{name}' is not in models/{IP_ADAPTER_FOLDER}", fix)
    try:
        state_dict = image_prompt.read_state_dict(path)
    except ArgumentError as err:
        raise DragEditInputError(node, input_name, f"'{name}' {err.detail}", fix) from None
    try:
        return image_prompt.ImagePromptModel.from_state_dict(state_dict)
    except ArgumentError as err:
        raise DragEditInputError(node, input_name, f"'{name}' is not DiffEditor's image-prompt file ({err.detail})",
                                 fix) from None


def clip_vision_hidden_states(clip_vision, image, node: str, input_name: str):
    """(cond, uncond) CLIP ViT-H/14 penultimate hidden states [1, 257, 1280] of IMAGE [1, H, W, C], as the official
    code feeds its Resampler: the image squashed to 256 x 256, then CLIP's 224 px preprocessing; uncond from
    all-zero pixel values (the normalised input, not a black image: dragondiff.py get_image_embeds)."""
    import comfy.clip_vision

    from ..kernels import image_prompt

    if clip_vision is None:
        raise DragEditInputError(node, "clip_vision", "is not connected",
                                 "Load CLIP-ViT-H-14-laion2B-s32B-b79K (the IP-Adapter image encoder) with Load CLIP "
                                 "Vision and connect it")
    width = clip_vision.model.vision_model.embeddings.patch_embedding.weight.shape[0]
    if width != image_prompt.CLIP_WIDTH:
        raise DragEditInputError(node, "clip_vision", f"is {width} wide, not ViT-H/14's {image_prompt.CLIP_WIDTH}",
                                 "Load CLIP-ViT-H-14-laion2B-s32B-b79K (the IP-Adapter image encoder); ViT-L/14 "
                                 "and ViT-bigG do not fit the image-prompt weights")
    if image.ndim != 4 or image.shape[0] != 1:
        raise DragEditInputError(node, input_name, f"holds a batch of {image.shape[0]} images",
                                 "Connect one image (Image From Batch picks one)")
    size = image_prompt.IMAGE_SIZE
    squashed = torch.nn.functional.interpolate(image[..., :3].movedim(-1, 1).float(), size=(size, size),
                                               mode="bicubic", antialias=True).movedim(1, -1).clamp(0, 1)
    pixels = comfy.clip_vision.clip_preprocess(squashed.to(clip_vision.load_device), size=clip_vision.image_size,
                                               mean=clip_vision.image_mean, std=clip_vision.image_std, crop=True)
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    states = []
    for values in (pixels.float(), torch.zeros_like(pixels, dtype=torch.float32)):
        hidden = clip_vision.model(pixel_values=values, intermediate_output=-2)[1]
        states.append(hidden.float().to(comfy.model_management.intermediate_device()))
    return tuple(states)


def cross_attention_layers(model, node: str, input_name: str = "model") -> list:
    """ComfyUI attn2 patch keys (block, id, transformer index) of every cross-attention in diffusers' order (input
    blocks, output blocks, then the middle block), the order of the image-prompt file; with their widths."""
    unet = model.model.diffusion_model
    layers = []
    for block_name, blocks in (("input", unet.input_blocks), ("output", unet.output_blocks),
                               ("middle", [unet.middle_block])):
        for block_id, block in enumerate(blocks):
            for layer in block:
                for index, transformer in enumerate(getattr(layer, "transformer_blocks", ())):
                    if getattr(transformer, "attn2", None) is not None:
                        layers.append(((block_name, block_id, index), transformer.attn2.to_q.weight.shape[0]))
    return layers


def _run_step(extra_options):
    """The PlanStep being evaluated, from the run's context at transformer_options["dragedit"] (None outside a
    DragEdit run)."""
    return getattr(extra_options.get("dragedit"), "step", None)


class ImagePromptPatch(_Patch):
    """attn2 replace of one cross-attention: its text attention (or the replace patch found there, kept) plus
    scale x the image-prompt term, on plan steps with `image_prompt` in the denoise phase only, so never in the
    inversion, the time-travel re-noise or the estimator (dragondiffusion.md §6, attention_processor.py:L248-260)."""

    image_prompt = True

    def __init__(self, prompt, w_k, w_v, inner=None):
        self.prompt, self.w_k, self.w_v, self.inner = prompt, w_k, w_v, inner
        self._on_device = {}

    def _weights(self, like):
        key = (like.device, like.dtype)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(like) for t in (self.w_k, self.w_v, self.prompt.cond, self.prompt.uncond))
        return self._on_device[key]

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        from ..kernels import image_prompt

        heads = extra_options["n_heads"]

        def attend(q_, k_, v_, heads_):
            return attention.optimized_attention(q_, k_, v_, heads_, attn_precision=extra_options.get("attn_precision"))

        out = self.inner(q, k, v, extra_options) if self.inner is not None else attend(q, k, v, heads)
        step = _run_step(extra_options)
        if step is None or not step.image_prompt or step.phase != "denoise":
            return out
        w_k, w_v, cond, uncond = self._weights(q)
        tokens = image_prompt.batch_tokens(cond, uncond, extra_options["cond_or_uncond"], q.shape[0])
        return out + self.prompt.scale * image_prompt.image_prompt_term(q, tokens, w_k, w_v, heads, attend)


class TextTokenLeakPatch(_Patch):
    """attn2_patch of the faithful two-image mode: the base image's IP tokens appended to the text context of every
    cross-attention, on every sampling and re-noise call (the official 128-token context, §9 item 7)."""

    image_prompt = True

    def __init__(self, cond, uncond):
        self.cond, self.uncond = cond, uncond

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        from ..kernels import image_prompt

        step = _run_step(extra_options)
        if step is None or step.phase not in ("denoise", "renoise"):
            return n, context_attn2, value_attn2
        tokens = image_prompt.batch_tokens(self.cond, self.uncond, extra_options["cond_or_uncond"],
                                           context_attn2.shape[0]).to(context_attn2)
        return n, torch.cat([context_attn2, tokens], 1), torch.cat([value_attn2, tokens], 1)


def with_image_prompt(transformer_options: dict, model, prompt, node: str, input_name: str = "image_prompt") -> dict:
    """A copy of transformer_options with the image prompt on every cross-attention of the model; a clear error
    when the model's cross-attentions are not the ones the file was trained for (SD 1.5's 16)."""
    from ..kernels import image_prompt

    layers = cross_attention_layers(model, node)
    widths = tuple(width for _, width in layers)
    if widths != image_prompt.SD15_CROSS_ATTENTION_WIDTHS:
        raise DragEditInputError(node, input_name, f"holds weights for SD 1.5's 16 cross-attentions, but the model has "
                                 f"{len(widths)} of widths {sorted(set(widths))}",
                                 "Use the image prompt with an SD 1.5 checkpoint (ip_sd15_64.bin is for SD 1.5)")
    options = dict(transformer_options)
    replace = dict(options.get("patches_replace", {}))
    attn2 = dict(replace.get("attn2", {}))
    for (key, _), (w_k, w_v) in zip(layers, prompt.layers):
        attn2[key] = ImagePromptPatch(prompt, w_k, w_v, inner=attn2.get(key, attn2.get(key[:2])))
    replace["attn2"] = attn2
    options["patches_replace"] = replace
    if prompt.text_tokens is not None:
        patches = dict(options.get("patches", {}))
        patches["attn2_patch"] = list(patches.get("attn2_patch", [])) + [TextTokenLeakPatch(*prompt.text_tokens)]
        options["patches"] = patches
    return options
