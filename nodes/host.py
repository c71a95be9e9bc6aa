"""The only module that touches ComfyUI internals: model families, the pack's UNet passes, patches, progress.

Every UNet pass the pack runs goes through ComfyUI's own sampling path: a CFGGuider holds the MODEL and the
CONDITIONING and the pack's loop runs as that guider's sampler (`sample`), so the conditioning is processed as a
KSampler processes it (SDXL's pooled and size embedding, hooks, ControlNets) and every patch stacked on the MODEL
applies: weight patches (LoRA), block and attention patches (FreeU), sampler-level ones (sampler_cfg_function such
as RescaleCFG, post-CFG functions such as PAG, model_function_wrapper) and the wrapper system (TorchCompileModel).
Kernels see the UNet as callables on the VP latent z at integer t (docs/CONTRACTS.md); `Passes` builds them, and the
one per-run state object `Run` tells the pack's patches which pass is running. The MODEL is never modified: the pack's
patches go on clones or into the run's own model_options (style.md §4.4).
"""
import contextlib
import dataclasses
import hashlib
import math

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
import comfy.supported_models
import comfy.utils
from comfy_api.torch_helpers.torch_compile import TORCH_COMPILE_KWARGS
import latent_preview

from ..kernels import bank_attention, schedule
from ..kernels.features import FeatureRecorder, FeatureTap, StopForward
from .errors import DragEditInputError

LATENT_DOWNSCALE = 8   # every supported family's VAE
RUN_KEY = "dragedit"   # transformer_options key of the run state; also the key of the pack's wrappers
PREVIEWS_PER_RUN = 12  # x̂0 previews a loop sends at most: a JPEG costs a device sync and a decode


# ------------------------------------------------------------------------------------------------- model families

@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the methods read from a model family, by ComfyUI output-block index.

    decoder_transformers: (output block, number of transformer blocks, downscale vs the latent) of every decoder
    block with self-attention; a layer key is ("output", block, index), index the transformer's place in its block
    (SDXL's blocks hold 10 or 2).
    bank_blocks: the output blocks a memory bank keeps by default (all decoder self-attentions where that fits a
    12 GB card with the model; see bench/bank_size.py). masactrl_blocks: setting -> output blocks whose
    self-attention reads the source in GoodDrag's MasaCtrl denoising. dragon_taps / gooddrag_tap: the feature layers
    of each method (DragonDiffusion's "second and third decoder layers", GoodDrag's third; dragondiffusion.md §2).
    """
    name: str
    output_blocks: int
    decoder_transformers: tuple[tuple[int, int, int], ...]
    bank_blocks: tuple[int, ...]
    masactrl_blocks: tuple[tuple[str, tuple[int, ...]], ...]
    dragon_taps: tuple[int, int]
    gooddrag_tap: int

    @property
    def decoder_blocks(self) -> tuple[int, ...]:
        return tuple(block for block, _, _ in self.decoder_transformers)

    def layers(self, blocks=None) -> tuple:
        """Layer keys ("output", block, index) of the decoder self-attentions in `blocks` (default: all)."""
        blocks = self.decoder_blocks if blocks is None else blocks
        return tuple(("output", block, index) for block, count, _ in self.decoder_transformers if block in blocks
                     for index in range(count))

    def downscale(self, layer) -> int:
        """How much smaller than the latent a layer's token grid is (1, 2 or 4)."""
        return next(down for block, _, down in self.decoder_transformers if block == layer[1])

    @property
    def masactrl_settings(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.masactrl_blocks)

    def masactrl_layers(self, setting: str) -> tuple:
        return self.layers(dict(self.masactrl_blocks)[setting])

    @property
    def last_tap(self) -> int:
        """The last output block whose output an output_block_patch sees (it runs before the next block)."""
        return self.output_blocks - 2


MASACTRL_BY_RESOLUTION = "by resolution (family default)"
MASACTRL_WHOLE_DECODER = "whole decoder"
_SD1_LAYOUT = dict(
    output_blocks=12, decoder_transformers=tuple((k, 1, 4 if k < 6 else 2 if k < 9 else 1) for k in range(3, 12)), bank_blocks=tuple(range(3, 12)),
    masactrl_blocks=((MASACTRL_BY_RESOLUTION, tuple(range(6, 12))), (MASACTRL_WHOLE_DECODER, tuple(range(3, 12)))),
    dragon_taps=(5, 8), gooddrag_tap=8)
SD1 = Family("SD 1.x", **_SD1_LAYOUT)
SD2 = Family("SD 2.x", **_SD1_LAYOUT)
# The pack's demo model (tools/train_demo.py): SD 1.x's layout and block numbers, at 128 px, where its objects cover
# about 4x4 latent cells (SD-1.5's at 512 px about 20x20). Output 5 is computed at latent/4, where such an object is
# one cell, so DragonDiffusion reads output 7 (computed at latent/2) + 8 instead of 5 + 8: the moved object keeps
# more of its colour and a resize reaches more of the asked scale (bench.drag_accuracy; README: the demo model).
DEMO = Family("SD 1.x", **{**_SD1_LAYOUT, "dragon_taps": (7, 8)})
# SDXL's decoder: output 0-2 at latent/4 (10 transformers each), 3-5 at latent/2 (2 each), 6-8 without attention.
# The bank keeps output 3-5 by default: 31.5 MB per step at 1024², against 110 MB for all 36 layers (5.5 GB for 50
# steps would not fit a 12 GB card beside the 5 GB UNet); bench/bank_size.py measures the reconstruction cost.
# MasaCtrl by resolution is output 3-5: SD-1.5's choice (output 6-11) is the decoder below latent/4, which keeps the
# coarse layout free to follow the drag while texture and identity come from the source; in SDXL that is output 3-5.
# Third-party SDXL MasaCtrl ports use the whole decoder, the other setting.
SDXL = Family("SDXL", output_blocks=9, decoder_transformers=((0, 10, 4), (1, 10, 4), (2, 10, 4), (3, 2, 2), (4, 2, 2), (5, 2, 2)),
              bank_blocks=(3, 4, 5),
              masactrl_blocks=((MASACTRL_BY_RESOLUTION, (3, 4, 5)), (MASACTRL_WHOLE_DECODER, (0, 1, 2, 3, 4, 5))),
              dragon_taps=(2, 5), gooddrag_tap=5)
# ComfyUI model config class name (comfy/supported_models.py) -> family. Adding a family is one entry here.
FAMILIES = {"SD15": SD1, "DemoSD15": DEMO, "SD20": SD2, "SD21UnclipL": SD2, "SD21UnclipH": SD2, "SDXL": SDXL}
SUPPORTED = "SD 1.x, SD 2.x (eps or v) and SDXL checkpoints and their fine-tunes"
_UNSUPPORTED_WHY = {
    "SD15_instructpix2pix": "an instruct-pix2pix model (its UNet also reads the input image)",
    "SDXL_instructpix2pix": "an instruct-pix2pix model (its UNet also reads the input image)",
    "SDXLRefiner": "the SDXL refiner (a decoder without the base model's layout)",
}


def family(model, node: str, input_name: str = "model") -> Family:
    """The model's family, checked against its live modules, its input channels and its sampling; a clear error
    naming what the model is and what is supported for anything else (inpainting, instruct-pix2pix, EDM or flow
    sampling, SD3, Flux, ...)."""
    base = getattr(model, "model", None)
    config_name = type(getattr(base, "model_config", None)).__name__
    fam = FAMILIES.get(config_name)
    if fam is None:
        why = _UNSUPPORTED_WHY.get(config_name, f"a {config_name} model")
        raise DragEditInputError(node, input_name, f"is {why}", f"Load one of the supported models: {SUPPORTED}")
    unet = getattr(base, "diffusion_model", None)
    channels = _input_channels(unet)
    if channels != 4:
        raise DragEditInputError(node, input_name, f"is a {fam.name} model with {channels} input channels (an "
                                 "inpainting or instruct-pix2pix model)", "Load the base (4-channel) model")
    blocks = getattr(unet, "output_blocks", ())
    if len(blocks) != fam.output_blocks or any(_transformer_count(blocks[k]) != n for k, n, _ in fam.decoder_transformers):
        raise DragEditInputError(node, input_name, f"is a {config_name} model without the {fam.name} decoder layout",
                                 f"Load one of the supported models: {SUPPORTED}")
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) or \
            not isinstance(sampling, comfy.model_sampling.EPS) or \
            isinstance(sampling, comfy.model_sampling.EDM):
        raise DragEditInputError(node, input_name, f"samples with {_sampling_name(sampling)} (no discrete VP "
                                 "timestep table: EDM or flow matching)", "Use a model with discrete eps or v sampling, or "
                                 "remove the ModelSampling patch")
    return fam


def _sampling_name(sampling) -> str:
    """What a model_sampling object is: ComfyUI composes it of a schedule and a prediction class under one local
    name (ModelSamplingAdvanced, ModelSampling), so the two bases say it, e.g. ModelSamplingDiscreteFlow + CONST."""
    bases = type(sampling).__bases__
    return " + ".join(b.__name__ for b in bases) if len(bases) > 1 else type(sampling).__name__


def _input_channels(unet) -> int:
    """Channels the UNet's first convolution reads, from the live module: what runs, whatever the config says."""
    return unet.input_blocks[0][0].weight.shape[1]


def _transformer_count(block) -> int:
    return sum(len(layer.transformer_blocks) for layer in block if hasattr(layer, "transformer_blocks"))


def layer_channels(model, layers) -> dict:
    """Channels of each decoder self-attention input ("output", block, index): its transformer's width."""
    blocks = model.model.diffusion_model.output_blocks
    channels = {}
    for _, block, index in layers:
        transformer = next(layer for layer in blocks[block] if hasattr(layer, "transformer_blocks"))
        channels[("output", block, index)] = transformer.transformer_blocks[index].norm1.normalized_shape[0]
    return channels


def check_features(tap: FeatureTap, fam: Family, node: str, input_name: str = "features"):
    """Features resolved for another family (its block numbers mean other layers) are refused."""
    if tap.family != fam.name:
        raise DragEditInputError(node, input_name, f"were made for a {tap.family} model, this is a {fam.name} model",
                                 "Connect a Drag Feature Extractor fed by this model")


def model_fingerprint(model) -> str:
    """Identifies the UNet weights a memory bank was made with (so a bank from another model is refused).

    Hashes the model family and a few values of the first and last convolution: cheap, stable across reloads of
    the same checkpoint, different for other checkpoints.
    """
    unet = model.model.diffusion_model
    digest = hashlib.sha1(type(model.model.model_config).__name__.encode())
    for w in (unet.input_blocks[0][0].weight, unet.out[-1].weight):
        digest.update(w.detach().flatten()[:4096].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- patches

class Run:
    """The per-run state the pack's patches read, at transformer_options["dragedit"]: one object per run.

    phase: the pass running now, "denoise", "invert", "renoise" or "estimate" (the features of the DragonDiffusion
    estimator and GoodDrag's drag step: no bank attention, no MasaCtrl, no image prompt). step: the PlanStep being
    evaluated, so patches know t as a Python int and never read sigma back from the device. features: the
    FeatureRecorder of an estimate pass. ComfyUI deep-copies model_options; the run is shared, not copied.
    """

    def __init__(self):
        self.phase = None
        self.step = None
        self.features = None

    def __deepcopy__(self, memo):
        return self


class _Patch:
    """Base for the pack's patches: clone() deep-copies model_options, so a patch is shared, not copied
    (comfyhost gotcha 7)."""

    def __deepcopy__(self, memo):
        return self


def layer_key(extra_options) -> tuple:
    """("output", block, index) of the transformer an attention patch is called in."""
    block = extra_options.get("block")
    return (block[0], block[1], extra_options.get("block_index", 0)) if block is not None else None


class BankAttentionPatch(_Patch):
    """attn1_patch of Visual Cross-Attention: the decoder self-attention reads keys/values from a memory bank.

    context: a cross_attention.BankContext (the mode's tokens from the bank's entries). In the pack's samplers the
    run prepares every pass before it runs (`prepare`): the plan's `bank_attention` flag decides (DragonDiffusion:
    move/drag from step 5, appearance/paste to step 35 of 50), or `steps`, a set of bank timesteps, overrides it,
    and the step's bank entries are copied into step slots, device tensors that keep their storage from pass to
    pass, so the forward reads no Python step number and a compiled or captured pass sees the same inputs on every
    step (issue 12). It acts on "denoise" passes only, never in the estimator or time travel's re-noise. In a
    stock sampler (no run) it acts on `steps` (default: every bank step), finding t from sigma once per UNet call.
    """

    def __init__(self, layers, context, nearest_t, steps=None):
        self.layers, self.context, self.nearest_t, self.steps = frozenset(layers), context, nearest_t, steps
        self._last_sigmas = self._last_t = None
        self.active = False   # whether the pass the run prepared reads the bank
        self._slots, self._slot_key = {}, None

    def prepare(self, step, device) -> None:
        """Before a denoise pass of the pack's samplers at `step`: decide whether the bank acts, and if so fill the
        step slots with the bank's entries at step.t (once per step: time travel's repeats reuse them)."""
        self.active = step.bank_attention if self.steps is None else step.t in self.steps
        if not self.active or self._slot_key == (step.t, device):
            return
        for layer in self.layers:
            entries = self.context.entries(step.t, layer)
            slots = self._slots.get(layer)
            if slots is None or slots[0].device != device:
                self._slots[layer] = tuple(entry.to(device, copy=True) for entry in entries)
            else:
                for slot, entry in zip(slots, entries):
                    slot.copy_(entry, non_blocking=True)
        self._slot_key = (step.t, device)

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        layer = layer_key(extra_options)
        if layer not in self.layers:
            return n, context_attn1, value_attn1
        run = extra_options.get(RUN_KEY)
        if run is not None:
            if run.phase != "denoise" or not self.active:
                return n, context_attn1, value_attn1
            entries = self._slots[layer]
        else:
            t = self._t_of(extra_options["sigmas"])
            if self.steps is not None and t not in self.steps:
                return n, context_attn1, value_attn1
            entries = self.context.entries(t, layer)
        ctx, val = self.context(layer, n, entries)
        return n, ctx, val

    def _t_of(self, sigmas):
        """The bank timestep of a stock sampler's sigma: one device read per UNet call, shared by every layer."""
        if sigmas is not self._last_sigmas:
            self._last_sigmas, self._last_t = sigmas, self.nearest_t(float(sigmas[0]))
        return self._last_t


class RecordPatch(_Patch):
    """attn1_patch of the inversion: keeps each kept layer's self-attention input of the pass, which `drain(t)` then
    hands to `record(t, layer, n)`. The forward only fills a dict that is empty when it starts, and never reads the
    step's t, so a compiled inversion pass is one graph for every step (issue 12)."""

    def __init__(self, layers, record):
        self.layers, self.record = frozenset(layers), record
        self.captured = {}

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        run = extra_options.get(RUN_KEY)
        layer = layer_key(extra_options)
        if run is not None and run.phase == "invert" and layer in self.layers:
            self.captured[layer] = n
        return n, context_attn1, value_attn1

    def drain(self, t: int) -> None:
        """After the inversion pass at t: record what it captured."""
        for layer, n in self.captured.items():
            self.record(t, layer, n)
        self.captured.clear()


class MasaCtrlPatch(_Patch):
    """attn1_patch of GoodDrag's denoising: on the plan's MasaCtrl steps, every item of the [source, edit] batch
    attends to the source's keys and values in `layers` (gooddrag.md §1), so the source branch is unchanged."""

    def __init__(self, layers):
        self.layers = frozenset(layers)

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        run = extra_options.get(RUN_KEY)
        if run is None or run.phase != "denoise" or not run.step.bank_attention or \
                layer_key(extra_options) not in self.layers:
            return n, context_attn1, value_attn1
        ctx, val = bank_attention.source_context(n)
        return n, ctx, val


class TapPatch(_Patch):
    """output_block_patch: ComfyUI calls it before output block k, so `h` is block k-1's output; an estimate pass's
    recorder keeps the tapped ones (and stops the forward after the last, kernels.features.StopForward)."""

    def __call__(self, h, hsp, transformer_options):
        run = transformer_options.get(RUN_KEY)
        if run is not None and run.features is not None:
            run.features.observe(transformer_options["block"][1], h)
        return h, hsp


# ------------------------------------------------------------------------------------------------- the pack's passes

def grad_scope():
    """Autograd inside a ComfyUI node: the executor runs nodes under inference_mode (comfyhost gotcha 5)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def make_autograd_safe(patcher) -> int:
    """Replace the loaded UNet's inference-tensor parameters by normal copies, once per run; returns the count.

    Weights loaded under the executor's inference_mode are inference tensors, which autograd refuses to save for
    backward. A copy made outside inference mode is a normal tensor with the same values, so the model stays what it
    was for every other node; later runs find nothing to copy, and no pass copies a weight (ComfyUI's identity
    weight wrappers, the other way, copy every weight on every pass). Parameters parked off the load device (low
    VRAM) are cast per forward by comfy.ops, already as normal tensors, and are left alone. Every parameter is made
    requires_grad=False: the methods differentiate with respect to the latent only.
    """
    device = patcher.load_device
    copied = 0
    with torch.inference_mode(False):
        for module in patcher.model.diffusion_model.modules():
            for name, param in module._parameters.items():
                if param is None:
                    continue
                if param.is_inference() and (param.device == device or device.type == "cpu"):
                    module._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
                    copied += 1
                elif param.requires_grad:
                    param.requires_grad_(False)
    return copied


class Passes:
    """The UNet passes of one run, each as ComfyUI's own samplers run them, on the VP latent z at integer t.

    Built by `sample` inside the guider, after the model is loaded: `guider` holds the processed conditioning,
    `options` the run's model_options (the MODEL's patches, the pack's patches and the run state). eps(z, step)
    sets the run's phase and step, then runs the CFG prediction (sampling_function through the guider, with every
    sampler-level patch) or the cond-only one (calc_cond_batch), and converts denoised x0 to eps:
    x = z sqrt(1 + sigma^2), eps = (x - x0) / sigma (ε- and v-models alike). Sigmas come from the model's own
    table on the device, indexed by the Python int t, so nothing is read back to the CPU.
    """

    def __init__(self, guider, options, run: Run, seed: int):
        self.guider, self.options, self.run, self.seed = guider, options, run, seed
        self.base = guider.inner_model
        self.device = guider.model_patcher.load_device
        sigmas = self.base.model_sampling.sigmas.detach()
        self.sigmas = sigmas.to(self.device, torch.float32).clone()
        self.alphas_cumprod = schedule.alphas_cumprod_from_sigmas(sigmas.cpu())
        attn1 = options.get("transformer_options", {}).get("patches", {}).get("attn1_patch", [])
        self.bank_patches = [patch for patch in attn1 if isinstance(patch, BankAttentionPatch)]
        # A compiled MODEL (TorchCompileModel) runs estimate passes whole: the exception that stops an eager forward
        # after the last tap cannot leave a compiled graph, and dynamo would run the pass eagerly instead (issue 12).
        self.truncate = TORCH_COMPILE_KWARGS not in options

    def _x_sigma(self, z, t: int):
        sigma = self.sigmas[t:t + 1].expand(z.shape[0])
        return z * (1.0 + sigma * sigma).sqrt()[:, None, None, None], sigma

    def _denoised(self, x, sigma, cfg: bool):
        if cfg:
            return self.guider(x, sigma, model_options=self.options, seed=self.seed)
        return comfy.samplers.calc_cond_batch(self.base, [self.guider.conds["positive"]], x, sigma, self.options)[0]

    def eps(self, z, step, cfg: bool = False) -> torch.Tensor:
        """eps [B, 4, h, w] at step.t for the pass `step.phase`; cfg: the guider's CFG (negative and scale)."""
        self.run.phase, self.run.step = step.phase, step
        if step.phase == "denoise":
            for patch in self.bank_patches:
                patch.prepare(step, self.device)
        x, sigma = self._x_sigma(z, step.t)
        return (x - self._denoised(x, sigma, cfg)) / sigma[:, None, None, None]

    def features(self, z, t: int, tap: FeatureTap, need_eps: bool = False):
        """(eps or None, [features]) of one cond-only estimate pass at t: the tapped decoder outputs resized as the
        tap says. Without need_eps the forward stops after the last tap (the official estimator's saving, §2),
        unless the model is compiled (eps is then computed and dropped)."""
        recorder = FeatureRecorder(tap, self.image_hw(z), truncate=self.truncate and not need_eps)
        self.run.phase, self.run.step, self.run.features = "estimate", None, recorder
        x, sigma = self._x_sigma(z, t)
        eps = None
        try:
            denoised = self._denoised(x, sigma, cfg=False)
            eps = (x - denoised) / sigma[:, None, None, None]
        except StopForward:
            pass
        finally:
            self.run.features = None
        return (eps if need_eps else None), recorder.features()

    @staticmethod
    def image_hw(z) -> tuple[int, int]:
        """Image size (H, W) in pixels of a latent [B, 4, h, w]."""
        return z.shape[-2] * LATENT_DOWNSCALE, z.shape[-1] * LATENT_DOWNSCALE


class _PackSampler(comfy.samplers.Sampler):
    """The pack's loop as a ComfyUI sampler: `guider.sample` calls it with the model loaded and the conds processed,
    inside every OUTER_SAMPLE and SAMPLER_SAMPLE wrapper, as it would call KSampler's."""

    def __init__(self, loop, run: Run, grad: bool):
        self.loop, self.run, self.grad = loop, run, grad
        self.weights_copied = 0

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.grad:
            self.weights_copied = make_autograd_safe(guider.model_patcher)
        _conds_to_device(guider.conds, guider.model_patcher.load_device)
        passes = Passes(guider, extra_args["model_options"], self.run, extra_args.get("seed"))
        return self.loop(passes, latent_image)


def _conds_to_device(conds, device):
    """The run's processed conditioning moved to the device once: ComfyUI's samplers copy it on every pass."""
    for entries in conds.values():
        for entry in entries:
            for cond in entry.get("model_conds", {}).values():
                if isinstance(getattr(cond, "cond", None), torch.Tensor):
                    cond.cond = cond.cond.to(device)


def sample(model, loop, latent, positive, negative=None, cfg: float = 1.0, seed: int = 0, sigmas=None,
           attn1=(), grad: bool = False) -> torch.Tensor:
    """Run `loop(passes, z0) -> x` as the sampler of a CFGGuider on `model`; returns the result as an unscaled
    LATENT samples tensor [B, 4, h, w] on ComfyUI's intermediate device.

    latent: the LATENT samples the run is about ([1, 4, h, w]; it sizes the conditioning, e.g. SDXL's size
    embedding); loop receives it as VP z0 (scaled, on the device; zeros stay zeros). negative None: cond-only
    passes. sigmas: the run's schedule, which ComfyUI gives patches as `sample_sigmas`. attn1: the pack's own
    attention patches for this run, added with the feature tap and the Run to a copy of the MODEL's options.
    grad: the loop takes gradients through the UNet (weights are made autograd-safe once, after loading).
    """
    run = Run()
    guider = comfy.samplers.CFGGuider(model)
    conds = {"positive": positive} if negative is None else {"positive": positive, "negative": negative}
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    options = comfy.model_patcher.create_model_options_clone(model.model_options)
    to = options.setdefault("transformer_options", {})
    patches = to.setdefault("patches", {})
    patches["attn1_patch"] = list(patches.get("attn1_patch", [])) + list(attn1)
    patches["output_block_patch"] = list(patches.get("output_block_patch", [])) + [TapPatch()]
    to[RUN_KEY] = run
    guider.model_options = options
    sampler = _PackSampler(loop, run, grad)
    with torch.inference_mode(False), torch.no_grad(), _compiled_pass_types():
        latent = latent.detach().clone().float()
        sigmas = torch.zeros(2) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32).clone()
        out = guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, seed=seed)
    return out.to(comfy.model_management.intermediate_device())


# Graphs the pack's passes need per model and image size, with room to spare: a D+ move and a GoodDrag edit use 11
# (inversions with and without a bank, CFG denoise with and without it, the estimator, time travel's re-noise,
# GoodDrag's reference, drag and denoise passes with and without MasaCtrl; tests/host/test_compile.py).
PASS_TYPES = 16


def _compiled_pass_types():
    """Dynamo settings for the pack's passes under torch.compile (TorchCompileModel): each pass type keeps a
    static-shape graph of its own, as a CUDA graph needs. Automatic dynamic shapes would turn the batch into a
    symbol after a CFG pass (2) and a cond-only one (1), and on such a graph (torch 2.13) the feature tap's capture
    is lost; dynamo's default of 8 graphs per code object would send the passes after the 8th type to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # its name before 2.6
    return config.patch(automatic_dynamic_shapes=False, **{name: max(getattr(config, name), 8 + PASS_TYPES)})


def sigmas_of(alphas_cumprod, timesteps) -> list[float]:
    """ComfyUI sigmas of a list of timesteps (t = -1: the final alpha_bar), for `sample`'s schedule."""
    return [schedule.sigma_from_alpha_bar(schedule.alpha_bar_at(alphas_cumprod, t)) for t in timesteps]


def model_alphas_cumprod(model) -> torch.Tensor:
    """The model's alpha_bar table, float64 [1000] on the CPU."""
    return schedule.alphas_cumprod_from_sigmas(model.get_model_object("model_sampling").sigmas.detach().cpu())


def needs_loss_scaling(model) -> bool:
    """Whether backward runs through an fp16 UNet on CUDA, where both official codes scale the loss."""
    base = model.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    return dtype == torch.float16 and model.load_device.type == "cuda"


def offload_device():
    """Where ComfyUI parks models off the GPU (the CPU, normally): a memory bank's home when it does not fit."""
    return comfy.model_management.unet_offload_device()


def bank_device(model, nbytes: int):
    """The memory bank's device: the model's compute device when the bank fits in its free memory with room for the
    passes (a bank on the GPU costs no copy per pass and allows graph capture), else the offload device."""
    device = model.load_device
    if device.type == "cpu":
        return device
    free = comfy.model_management.get_free_memory(device)
    return device if nbytes * 2 < free else offload_device()


# ------------------------------------------------------------------------------------------------ inputs and outputs

def conditioning(cond, model, node: str, input_name: str):
    """A CONDITIONING checked for content: the list ComfyUI's samplers take, with text encodings as wide as the
    model's cross-attention reads (the live module's width): an SD-1.x CLIP's on an SD 2.x or SDXL model is refused
    here, not in a matrix product deep in the first pass."""
    if not isinstance(cond, list) or not cond or not isinstance(cond[0], (list, tuple)) or \
            not isinstance(cond[0][0], torch.Tensor):
        raise DragEditInputError(node, input_name, "holds no conditioning", "Connect a CLIP Text Encode output")
    attn2 = next((m.attn2 for m in model.model.diffusion_model.modules() if hasattr(m, "attn2")), None)
    wanted = None if attn2 is None else attn2.to_k.in_features
    for tensor, _ in cond:
        if wanted is not None and tensor.shape[-1] != wanted:
            raise DragEditInputError(node, input_name, f"is a {tensor.shape[-1]}-wide text encoding; this model's "
                                     f"cross-attention reads {wanted}-wide ones",
                                     "Encode the prompt with the CLIP of the checkpoint this MODEL comes from")
    return cond


def latent_samples(latent, node: str, input_name: str = "latent") -> torch.Tensor:
    """The [1, 4, h, w] samples of a LATENT (unscaled VAE space); a clear error for anything else."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != 4:
        shape = "nothing" if samples is None else f"shape {tuple(samples.shape)}"
        raise DragEditInputError(node, input_name, f"holds {shape}",
                                 "Connect a 4-channel SD latent (VAE Encode of your image)")
    if samples.shape[0] != 1:
        raise DragEditInputError(node, input_name, f"holds a batch of {samples.shape[0]}",
                                 "Edit one image at a time: use a single-image latent")
    if not bool(torch.isfinite(samples).all()):
        raise DragEditInputError(node, input_name, "contains NaN or inf", "Encode a valid image")
    return samples


class Progress:
    """Progress bar (counting up), interruption and x̂0 previews for a loop, driven by the kernels' callback.

    Previews decode with the model's own latent format at the image's size, every `total / PREVIEWS_PER_RUN`
    steps and on the last, so they cost a small fraction of the run.
    """

    def __init__(self, model, total: int, node_id=None, image_hw=None):
        self.total = total
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.every = max(1, math.ceil(total / PREVIEWS_PER_RUN))
        self.image_hw = image_hw

    def __call__(self, info: dict):
        comfy.model_management.throw_exception_if_processing_interrupted()
        done = min(info["done"] if "done" in info else info["index"] + 1, self.total)
        x0_hat = info.get("x0_hat")
        preview = None
        if self.previewer is not None and x0_hat is not None and (done % self.every == 0 or done == self.total):
            preview = self._preview(x0_hat[-1:].detach())
        self.bar.update_absolute(done, self.total, preview)

    def _preview(self, x0):
        image = self.previewer.decode_latent_to_preview(x0)
        height, width = self.image_hw or (x0.shape[-2] * LATENT_DOWNSCALE, x0.shape[-1] * LATENT_DOWNSCALE)
        if image.size != (width, height):
            image = image.resize((width, height), resample=2)   # PIL bilinear
        return "JPEG", image, max(width, height)

    @staticmethod
    def check_interrupted():
        comfy.model_management.throw_exception_if_processing_interrupted()


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


class DemoSD15(comfy.supported_models.SD15):
    """SD15's model config under its own name, so family() finds the demo model's row (DEMO) in FAMILIES."""


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

    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    unet_config = json.loads(metadata[DEMO_UNET_CONFIG_KEY])
    model_config = DemoSD15(unet_config)
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
                                 "schedule", f"Use an epsilon or v-prediction model: {SUPPORTED}")
    return kind


def lora_target_modules(model, node: str, input_name: str = "model") -> list:
    """(module name, module) of every attention projection the recipe fits (kernels.lora.is_target), by name."""
    from ..kernels.lora import is_target

    targets = [(name, module) for name, module in model.model.named_modules()
               if is_target(name) and hasattr(module, "weight_function") and getattr(module, "weight", None) is not None]
    if not targets:
        raise DragEditInputError(node, input_name, "has no attention projections attn1/attn2.to_q/to_k/to_v/to_out",
                                 f"Use one of the supported models: {SUPPORTED}")
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


def _clone_conds(conds):
    """The run's processed conditioning as normal tensors: gradients into LoRA weights that read the text (attn2's
    to_k / to_v) save it for backward, and the CLIP output is an inference tensor (comfyhost gotcha 5)."""
    for entries in conds.values():
        for entry in entries:
            for cond in entry.get("model_conds", {}).values():
                if isinstance(getattr(cond, "cond", None), torch.Tensor):
                    cond.cond = cond.cond.detach().clone()


def fit_identity_lora(model, latent, std, positive, recipe, seed: int, node: str, node_id=None):
    """(MODEL with the LoRA as weight patches, IdentityLoRA): the recipe of kernels.lora on the posterior of the
    image's latent (LATENT samples `latent` [1, C, h, w] and its std, or None), through the pack's `sample` path.

    Reused from ComfyUI 0.3.75, as its TrainLoraNode uses them: the weight adapters (comfy.weight_adapter's
    LoRAAdapter, and its trainable LoraDiff hung on a clone with add_weight_wrapper) and CFGGuider.sample with a
    sampler of ours (here the pack's `sample`), so the conditioning and every patch on the MODEL apply as in a
    KSampler, on every family. Not reused: TrainSampler itself, whose loss is an x0 MSE under bf16 autocast at
    timesteps from percent_to_sigma, not the papers' epsilon (or v) MSE at integer t ~ U[0, 1000). The result is
    `model.clone()` with LoRAAdapter weight patches (add_patches, what LoraLoader adds), so stock nodes see it and
    a saved file reloads to the same weights; the input MODEL is not modified.
    """
    from comfy.weight_adapter import LoRAAdapter

    from ..kernels import lora

    prediction = prediction_type(model, node)
    targets = lora_target_modules(model, node)
    generator = torch.Generator().manual_seed(seed)
    alpha = float(recipe.rank)   # scale alpha / rank = 1: diffusers' LoRA layers of both official codes
    trainer = model.clone()
    adapters = {}
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        for name, module in targets:
            out_features, in_features = module.weight.shape[0], module.weight.shape[1:].numel()
            up, down = lora.init_pair(out_features, in_features, recipe.rank, generator)
            adapters[f"{name}.weight"] = train = LoRAAdapter(set(), (up, down, alpha, None, None, None)).to_train()
            trainer.add_weight_wrapper(f"{name}.weight", train)
        params = [p for train in adapters.values() for p in (train.lora_up.weight, train.lora_down.weight)]
        z_std = None if std is None else \
            model.model.process_latent_in((latent + std).float()) - model.model.process_latent_in(latent.float())
    if positive is None:   # no text: an all-zero context of the model's width
        if model.model.adm_channels:
            raise DragEditInputError(node, "positive", f"is not connected, and a {family(model, node).name} model's "
                                     "conditioning carries more than the text tokens (the pooled text embedding)",
                                     "Connect CLIP Text Encode of the edit's prompt (GoodDrag: '')")
        positive = [[torch.zeros(1, 77, model.model.model_config.unet_config["context_dim"]), {}]]
    progress = Progress(model, recipe.steps, node_id)
    scaler = torch.amp.GradScaler("cuda") if needs_loss_scaling(model) else None
    losses = {}

    def loop(passes, z0):
        with grad_scope():
            _clone_conds(passes.guider.conds)
            conds = passes.guider.conds["positive"]

            def denoised_fn(x, sigma):
                return comfy.samplers.calc_cond_batch(passes.base, [conds], x, sigma, passes.options)[0]

            losses["value"] = lora.fit(denoised_fn, params, z0, z_std, passes.sigmas, recipe, prediction, seed,
                                       grad_scaler=scaler, callback=lambda info: progress(dict(done=info["step"] + 1)))
        return z0

    sample(trainer, loop, latent, positive, seed=seed, grad=True)
    pairs = {key: (train.lora_up.weight.detach().float().cpu().clone(),
                   train.lora_down.weight.detach().float().cpu().clone()) for key, train in adapters.items()}
    return apply_identity_lora(model, pairs, alpha), IdentityLoRA(pairs, alpha, recipe, seed, losses["value"])


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
    files), checked before any work is done; surrounding spaces are dropped, control characters refused."""
    import os

    import folder_paths

    loras = folder_paths.get_folder_paths("loras")[0]
    if any(ord(c) < 32 or ord(c) == 127 for c in filename_prefix):
        raise DragEditInputError(node, input_name, f"{filename_prefix!r} holds a control character",
                                 "Use a plain name or sub-folder path inside models/loras")
    filename_prefix = filename_prefix.strip()
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


class ImagePromptPatch(_Patch):
    """attn2 replace of one cross-attention: its text attention (or the replace patch found there, kept) plus
    scale x the image-prompt term, in the pack's denoise passes on plan steps with `image_prompt` only: never in
    the inversion, the time-travel re-noise, the estimator or a stock sampler (dragondiffusion.md §6,
    attention_processor.py:L248-260)."""

    def __init__(self, prompt, w_k, w_v, inner=None):
        self.prompt, self.w_k, self.w_v, self.inner = prompt, w_k, w_v, inner
        self._on_device = {}

    def _tensors(self, like):
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
        run = extra_options.get(RUN_KEY)
        if run is None or run.phase != "denoise" or not run.step.image_prompt:
            return out
        w_k, w_v, cond, uncond = self._tensors(q)
        tokens = image_prompt.batch_tokens(cond, uncond, extra_options["cond_or_uncond"], q.shape[0])
        return out + self.prompt.scale * image_prompt.image_prompt_term(q, tokens, w_k, w_v, heads, attend)


class TextTokenLeakPatch(_Patch):
    """attn2_patch of the faithful two-image mode: the base image's IP tokens appended to the text context of every
    cross-attention, in every denoise and re-noise pass (the official 128-token context, §9 item 7)."""

    def __init__(self, cond, uncond):
        self.cond, self.uncond = cond, uncond

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        from ..kernels import image_prompt

        run = extra_options.get(RUN_KEY)
        if run is None or run.phase not in ("denoise", "renoise"):
            return n, context_attn2, value_attn2
        tokens = image_prompt.batch_tokens(self.cond, self.uncond, extra_options["cond_or_uncond"],
                                           context_attn2.shape[0]).to(context_attn2)
        return n, torch.cat([context_attn2, tokens], 1), torch.cat([value_attn2, tokens], 1)


def image_prompt_model(model, prompt, node: str, input_name: str = "image_prompt"):
    """A clone of the MODEL with the image prompt on every cross-attention (attn2 replace patches that keep any
    replace patch already there, and the faithful leak's attn2_patch); a clear error when the model's
    cross-attentions are not the ones the file was trained for (SD 1.5's 16)."""
    from ..kernels import image_prompt

    layers = cross_attention_layers(model, node)
    widths = tuple(width for _, width in layers)
    if widths != image_prompt.SD15_CROSS_ATTENTION_WIDTHS:
        raise DragEditInputError(node, input_name, f"holds weights for SD 1.5's 16 cross-attentions, but the model has "
                                 f"{len(widths)} of widths {sorted(set(widths))}",
                                 "Use the image prompt with an SD 1.5 checkpoint (ip_sd15_64.bin is for SD 1.5)")
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for (key, _), (w_k, w_v) in zip(layers, prompt.layers):
        inner = existing.get(key, existing.get(key[:2]))
        patched.set_model_attn2_replace(ImagePromptPatch(prompt, w_k, w_v, inner), *key)
    if prompt.text_tokens is not None:
        patched.set_model_attn2_patch(TextTokenLeakPatch(*prompt.text_tokens))
    return patched
