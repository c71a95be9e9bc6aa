"""Guided Sampler: DragonDiffusion ('D') / DiffEditor ('D+') sampling from the inverted z_T with energy guidance.

The one loop of kernels/ddim.py with the DragonPolicy: the host only supplies the UNet as eps_fn (CFG, the MODEL's
patches such as memory-bank attention) and as the truncated feature estimator (no bank attention), plus progress.
"""
import dataclasses

import torch
from comfy_api.latest import io

from ..kernels import ddim, energy, plan
from ..kernels.errors import ArgumentError
from ..kernels.guidance import DragonPolicy
from . import host, types
from .errors import DragEditInputError, DragEditNode

NAME = "DragonDiffusion / DiffEditor Guided Sampler"
SCHEDULES = ("D+", "D")
TWO_IMAGE_MODES = ("appearance", "paste")


def _image(latent_shape) -> str:
    h, w = latent_shape[-2:]
    return f"{8 * w}x{8 * h} image"


def _check_inputs(model, memory_bank, memory_bank_replace, guidance, features):
    """Every mismatch between the inputs, as the user's error, before the UNet runs."""
    host.check_features(features, host.family(model, NAME), NAME)
    fingerprint = host.model_fingerprint(model)
    latent_shape = (4, *guidance.latent_size)
    banks = [("memory_bank", memory_bank)]
    if guidance.mode in TWO_IMAGE_MODES:
        if memory_bank_replace is None:
            raise DragEditInputError(NAME, "memory_bank_replace", "is not connected",
                                     f"The {guidance.mode} edit needs the second image's bank: invert it with "
                                     f"another DDIM Inversion (same model, steps and size)")
        banks.append(("memory_bank_replace", memory_bank_replace))
    for input_name, bank in banks:
        try:
            bank.check_compatible(fingerprint, latent_shape)
        except ArgumentError as err:
            if err.argument == "model":
                raise DragEditInputError(NAME, input_name, "was made with another model",
                                         "Invert the image with the model connected here") from None
            if input_name == "memory_bank":
                raise DragEditInputError(NAME, "guidance", f"was drawn on a {_image(latent_shape)} but memory_bank "
                                         f"holds a {_image(bank.latent_shape)}",
                                         "Draw the masks and points on the image you inverted") from None
            raise DragEditInputError(NAME, input_name, f"holds a {_image(bank.latent_shape)} but the base image is "
                                     f"a {_image(latent_shape)}: the two images differ in size",
                                     "Resize the second image to the base image's size (e.g. Upscale Image) before "
                                     "VAE Encode") from None
        if bank.timesteps != memory_bank.timesteps:
            raise DragEditInputError(NAME, input_name, f"was inverted with {len(bank.timesteps)} steps, the base "
                                     f"image with {len(memory_bank.timesteps)}",
                                     "Invert both images with the same steps and strength 1.0")
    h, w = guidance.latent_size
    if features.target_size((8 * h, 8 * w)) != (2 * h, 2 * w):
        raise DragEditInputError(NAME, "features", f"reads features at {features.scale:g} x the image size",
                                 "Use the DragonDiffusion preset of the Drag Feature Extractor (image / 4)")


def _with_image_prompt(model, prompt, mode):
    """The MODEL with the image prompt's patches; its images must be the mode's: the edited image alone (move,
    resize, drag) or with the second image, whose tokens are the prompt (appearance, paste)."""
    if mode in TWO_IMAGE_MODES and not prompt.two_images:
        raise DragEditInputError(NAME, "image_prompt", f"was made from one image, but the {mode} edit is prompted "
                                 "with the second image", "Connect the second image to DiffEditor Image Prompt's "
                                 "image_replace")
    if mode not in TWO_IMAGE_MODES and prompt.two_images:
        raise DragEditInputError(NAME, "image_prompt", f"was made with a second image, but the {mode} edit is "
                                 "prompted with the edited image", "Disconnect image_replace on DiffEditor Image "
                                 "Prompt")
    return host.image_prompt_model(model, prompt, NAME)


class DragEditGuidedSampler(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditGuidedSampler",
            display_name=NAME,
            category="DragEdit",
            description="Samples the edit from the inverted latent with energy guidance: DragonDiffusion ('D', "
                        "guidance at every step of the first 30 of 50) or DiffEditor ('D+', fewer guided steps, "
                        "time travel and a regional SDE inside the edit). The gradient of the energy enters the "
                        "x0 estimate only, gated by the edit mask. The object's starting noise is copied to its "
                        "target first. The steps are the memory bank's (invert with strength 1.0). With an "
                        "image_prompt (DiffEditor's IP-Adapter variant), its tokens enter every cross-attention at "
                        "steps 10-19 of 50; without one, sampling runs as the official code at ip_scale 0.",
            inputs=[
                io.Model.Input("model", tooltip="The model, normally Visual Cross-Attention's patched clone (its "
                                                "bank steps: move/drag from step 5, appearance/paste to step 35 "
                                                "of 50)."),
                types.MemoryBank.Input("memory_bank", tooltip="DDIM Inversion of the image to edit (the base "
                                                              "image), full strength; its steps set the schedule."),
                types.Guidance.Input("guidance", tooltip="The edit, from one of the Energy Guidance nodes."),
                types.Features.Input("features", tooltip="The decoder features the energies compare: Feature "
                                                         "Extractor's DragonDiffusion preset (output blocks 5 and "
                                                         "8 at image / 4)."),
                io.Conditioning.Input("positive", tooltip="The prompt used for the inversion (official: a short "
                                                          "caption such as 'a photo of a cup')."),
                io.Conditioning.Input("negative", tooltip="The CFG negative (official: the empty prompt)."),
                io.Float.Input("cfg", default=4.0, min=1.0, max=30.0, step=0.5,
                               tooltip="Classifier-free guidance scale. Paper defaults: 4 (move, resize, drag, "
                                       "paste), 5 (appearance)."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the regional SDE noise (schedule D+); the rest is deterministic. "
                                     "Official: 42."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="D+",
                               tooltip="D+ (DiffEditor, the official default): guided at steps 0-9 and even steps "
                                       "10-28, time travel x3 at 22-28, regional SDE at 11-19. D (DragonDiffusion): "
                                       "guided at every step below 30. Step numbers are of 50 and scale with the "
                                       "bank's steps."),
                io.Float.Input("sde_strength", default=energy.MOVE_DEFAULTS.sde_strength, min=0.0, max=1.0,
                               step=0.05, tooltip="D+ only: the regional SDE's eta inside the edit region (0 = "
                                                  "deterministic). Paper default 0.4."),
                types.MemoryBank.Input("memory_bank_replace", optional=True,
                                       tooltip="Appearance and paste: DDIM Inversion of the second image (same "
                                               "model, steps and size)."),
                types.ImagePrompt.Input("image_prompt", optional=True,
                                        tooltip="DiffEditor's image prompt (DiffEditor Image Prompt node; SD 1.5 "
                                                "only): added to every cross-attention at steps 10-19 of 50 (scaled "
                                                "with the bank's steps), never in the estimator or time travel's "
                                                "re-noise. Not connected: no image prompt (DragonDiffusion)."),
            ],
            outputs=[io.Latent.Output("edited_latent", display_name="latent",
                                      tooltip="The edited latent, for VAE Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, memory_bank, guidance, features, positive, negative, cfg, seed, schedule, sde_strength,
                memory_bank_replace=None, image_prompt=None) -> io.NodeOutput:
        _check_inputs(model, memory_bank, memory_bank_replace, guidance, features)
        if image_prompt is not None:
            model = _with_image_prompt(model, image_prompt, guidance.mode)
        positive = host.conditioning(positive, model, NAME, "positive")
        negative = host.conditioning(negative, model, NAME, "negative")
        steps = plan.dragon_plan(schedule, guidance.mode, len(memory_bank.timesteps), sde_strength,
                                 guidance=guidance.energy_scale != 0,
                                 num_train_timesteps=len(memory_bank.alphas_cumprod))
        if tuple(s.t for s in steps) != memory_bank.timesteps:
            raise DragEditInputError(NAME, "memory_bank", f"starts at t={memory_bank.timesteps[0]}, not at the "
                                     f"noisiest step t={steps[0].t}",
                                     "Invert with strength 1.0: DragonDiffusion edits from the full schedule")
        if features.weights is not None and guidance.layer_weights is None:
            guidance = dataclasses.replace(guidance, layer_weights=features.weights)
        two_images = guidance.mode in TWO_IMAGE_MODES
        guided_t = sorted({s.t for s in steps if s.guided})
        progress = host.Progress(model, len(steps), cls.hidden.unique_id)

        def loop(passes, _):
            device = passes.device
            base = {t: memory_bank.latent(t).to(device) for t in (steps[0].t, *guided_t)}
            replace = {t: memory_bank_replace.latent(t).to(device) for t in (steps[0].t, *guided_t)} \
                if two_images else None
            policy = DragonPolicy(
                guidance.to(device), lambda z, t: passes.features(z, t, features)[1], base.__getitem__,
                passes.alphas_cumprod, source=replace.__getitem__ if two_images else None, seed=seed,
                sde_strength_outside=energy.DEFAULTS[guidance.mode].sde_strength_outside)
            z_T = energy.copy_noise(guidance, base[steps[0].t], replace[steps[0].t] if two_images else None)

            def eps_fn(z, step):   # time travel's re-noise: cond only, no CFG, no bank (dragondiffusion.md §6)
                return passes.eps(z, step, cfg=step.phase == "denoise")

            return ddim.denoise(eps_fn, z_T, steps, passes.alphas_cumprod, policy, callback=progress)

        samples = host.sample(model, loop, torch.zeros(memory_bank.latent_shape), positive, negative, cfg=cfg,
                              seed=seed, sigmas=host.sigmas_of(memory_bank.alphas_cumprod, [*memory_bank.timesteps, -1]),
                              grad=any(s.guided for s in steps))
        return io.NodeOutput({"samples": samples})


NODES = [DragEditGuidedSampler]
