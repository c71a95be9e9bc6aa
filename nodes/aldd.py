"""AlDD Drag Scheduler: GoodDrag's alternating drag and denoising; DragDiffusion is its one-chunk preset."""
import dataclasses

import torch
from comfy_api.latest import io, ui

from ..kernels import aldd, ddim, plan, preview
from ..kernels.errors import ArgumentError
from ..kernels.points import DragPoints
from . import host, types
from .errors import DragEditInputError, DragEditNode, from_argument

NAME = "GoodDrag AlDD Drag Scheduler"
PRESETS = {"gooddrag": aldd.GOODDRAG, "gooddrag fast": aldd.GOODDRAG_FAST, "dragdiffusion": aldd.DRAGDIFFUSION}
CUSTOM = "custom"
DEFAULTS = aldd.GOODDRAG.settings
LABELS = {   # input -> the name the node shows, used in its errors too
    "drag_steps": "drag_steps (T2)",
    "drags_per_step": "drags_per_step (B)",
    "grad_steps_per_drag": "grad_steps_per_drag (J)",
    "max_no_change": "early stop",
}


def _settings(preset, variant, strength, numbers):
    """A preset's settings, or for custom the widgets' numbers with the switches of the loss variant's method;
    the strength is the memory bank's (where its inversion stopped)."""
    if preset != CUSTOM:
        return dataclasses.replace(PRESETS[preset].settings, strength=strength)
    try:
        return dataclasses.replace(PRESETS[variant].settings, strength=strength, **numbers)
    except ArgumentError as err:
        raise from_argument(NAME, err, LABELS,
                            fix="Use a positive value (GoodDrag: lr 0.02, DragDiffusion: lr 0.01)") from None


def _check_points(points, bank):
    """The points must belong to the inverted image: same aspect, to within one latent cell (VAE Encode crops)."""
    width, height = points.image_size
    h, w = bank.latent_shape[-2:]
    if abs(height * w / width - h) > 1:
        raise DragEditInputError(NAME, "points", f"were drawn on a {width}x{height} image but the memory bank "
                                 f"holds the latent of a {w * host.LATENT_DOWNSCALE}x{h * host.LATENT_DOWNSCALE} "
                                 "image", "Connect the Drag Points of the image you inverted")


class DragEditAlDDScheduler(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditAlDDScheduler",
            display_name=NAME,
            category="DragEdit",
            description="Drags handle points to their targets (GoodDrag, ICLR 2025; DragDiffusion, CVPR 2024). "
                        "Starting from the inverted latent, it alternates B drags (J gradient steps of motion "
                        "supervision each, then point tracking) with one DDIM step, for T2 timesteps, then denoises "
                        "the edit next to the source with MasaCtrl attention (the edit reads the source's decoder "
                        "self-attention) to keep its identity. The latent is optimized in the VP space the papers "
                        "use. GoodDrag's defaults run 210 forward+backward UNet passes: about a minute on an A100.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 1.x / 2.x model the image was inverted with."),
                types.MemoryBank.Input("memory_bank",
                                       tooltip="From DDIM Inversion of the image: strength 0.75 for GoodDrag "
                                               "(dragging starts at t=741 of 50 steps), 0.7 for DragDiffusion "
                                               "(t=681). Its steps set the schedule; its attention layers are not "
                                               "needed (layers 'none' is enough)."),
                io.Conditioning.Input("positive", tooltip="The prompt used for the inversion (GoodDrag: empty). "
                                                          "No CFG: both papers run at guidance 1."),
                types.DragPoints.Input("points", tooltip="Handle -> target pairs from Drag Points, drawn on the "
                                                         "inverted image; several pairs move together."),
                types.Features.Input("features", tooltip="The features supervised and tracked: Feature Extractor "
                                                         "preset 'GoodDrag / DragDiffusion' (output 8, H/2)."),
                io.Combo.Input("preset", options=[*PRESETS, CUSTOM], default=next(iter(PRESETS)),
                               tooltip="gooddrag: T2 7, B 10, J 3, lr 0.02, early stop 5 (bench values), tracking "
                                       "after each drag, MasaCtrl once dragging ends; the official code fits an "
                                       "Identity LoRA first (70 steps: connect one to the model). gooddrag fast: "
                                       "T2 4, B 5, J 2, lr 0.03 (40 gradient steps instead of 210), for 25 DDIM "
                                       "steps. dragdiffusion: one timestep (T2 1) of 80 single-step drags, lr 0.01, "
                                       "no early stop, tracking before each step, MasaCtrl on every step; expects "
                                       "the Identity LoRA (80 steps), without which its paper reports a large MD "
                                       "increase. custom: the widgets below, with the tracking and MasaCtrl "
                                       "switches of the motion variant's method."),
                io.Int.Input("drag_steps", display_name=LABELS["drag_steps"], default=DEFAULTS.drag_steps, min=1,
                             max=1000, tooltip="custom: timesteps with dragging, from the first inverted one "
                                               "(GoodDrag 7: t=741..621; DragDiffusion 1). At most the inverted "
                                               "steps; GoodDrag's README keeps it below 12."),
                io.Int.Input("drags_per_step", display_name=LABELS["drags_per_step"],
                             default=DEFAULTS.drags_per_step, min=1, max=1000,
                             tooltip="custom: drags (each followed by point tracking) per timestep before its DDIM "
                                     "step. GoodDrag 10, DragDiffusion 80."),
                io.Int.Input("grad_steps_per_drag", display_name=LABELS["grad_steps_per_drag"],
                             default=DEFAULTS.grad_steps_per_drag, min=1, max=100,
                             tooltip="custom: Adam steps on the latent per drag. GoodDrag 3, DragDiffusion 1. "
                                     "T2·B·J UNet forward+backward passes at most (GoodDrag 210)."),
                io.Float.Input("lr", default=DEFAULTS.lr, min=1e-9, max=1.0, step=0.001,
                               tooltip="custom: Adam learning rate on the VP latent; a fresh Adam per timestep. "
                                       "GoodDrag 0.02, DragDiffusion 0.01; its README keeps it below 0.05."),
                io.Int.Input("max_no_change", display_name=LABELS["max_no_change"], default=DEFAULTS.max_no_change,
                             min=0, max=1000,
                             tooltip="custom: stop dragging after this many trackings in a row (across timesteps) "
                                     "moved no handle; 0 = never. GoodDrag bench 5 (UI 10)."),
                io.Combo.Input("masactrl_layers", options=[host.MASACTRL_BY_RESOLUTION, host.MASACTRL_WHOLE_DECODER],
                               default=host.MASACTRL_BY_RESOLUTION,
                               tooltip="Which decoder self-attentions read the source during the denoising "
                                       "(MasaCtrl). By resolution: the decoder below image / 32, as the official "
                                       "SD-1.5 code (output blocks 6-11; on SDXL output 3-5). Whole decoder: every "
                                       "decoder self-attention (what third-party SDXL ports do)."),
                io.Boolean.Input("keep_outside", default=True,
                                 tooltip="On: after every step the latent outside the mask is set back to the "
                                         "source's, as ComfyUI's latent noise mask does, so the rest of the image "
                                         "stays as it was (not in the papers; no mask, or an empty one: nothing is "
                                         "held). Off: the official loop, where only the lambda term holds it, "
                                         "during the drags."),
                types.Motion.Input("motion", optional=True,
                                   tooltip="Motion Supervision settings; replaces the preset's loss (gooddrag: "
                                           "r1 4, beta 4, lambda 0.1; dragdiffusion: r1 1, lambda 0.1)."),
                types.Tracker.Input("tracker", optional=True,
                                    tooltip="Point Tracker settings; replaces the preset's (r2 12 for gooddrag, 3 "
                                            "for dragdiffusion; window clamped to the map)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Editable region (1 = may change), any size. Outside it the latent is kept on "
                                      "the source path (keep_outside, and the motion loss's lambda term). None or "
                                      "all zeros: the whole image may change (Motion Supervision's empty_mask can "
                                      "make the lambda term hold it all instead)."),
                io.Image.Input("image", optional=True,
                               tooltip="For the preview: the image the points were drawn on (blank without it)."),
            ],
            outputs=[
                io.Latent.Output("edited_latent", display_name="latent",
                                 tooltip="The edited image's latent: connect VAE Decode."),
                types.DragPoints.Output("final_points", display_name="points",
                                        tooltip="Where the handles ended up (tracked), with the same targets, in "
                                                "image px."),
                io.Image.Output("preview", tooltip="The drag arrows and each handle's tracked path (yellow, ending "
                                                   "at its last position) on the image."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, memory_bank, positive, points, features, preset, drag_steps, drags_per_step,
                grad_steps_per_drag, lr, max_no_change, masactrl_layers, keep_outside, motion=None, tracker=None,
                mask=None, image=None) -> io.NodeOutput:
        fam = host.family(model, NAME)
        host.check_features(features, fam, NAME)
        positive = host.conditioning(positive, model, NAME, "positive")
        try:
            memory_bank.check_compatible(host.model_fingerprint(model), memory_bank.latent_shape)
        except ArgumentError as err:
            raise DragEditInputError(NAME, "memory_bank", err.detail, "Invert the image with this MODEL") from None
        _check_points(points, memory_bank)
        width, height = points.image_size
        if image is not None and tuple(image.shape[1:3]) != (height, width):
            raise DragEditInputError(NAME, "image", f"is {image.shape[2]}x{image.shape[1]} but the points were "
                                     f"drawn on a {width}x{height} image", "Connect the image the points were drawn on")
        method = aldd.GOODDRAG if preset == CUSTOM else PRESETS[preset]
        motion = method.motion if motion is None else motion
        tracker = method.tracker if tracker is None else tracker
        num_steps, strength = plan.schedule_of(memory_bank.timesteps)
        settings = _settings(preset, motion.variant, strength, dict(
            drag_steps=drag_steps, drags_per_step=drags_per_step, grad_steps_per_drag=grad_steps_per_drag, lr=lr,
            max_no_change=max_no_change))
        try:
            steps = settings.plan(num_steps)
        except ArgumentError:
            left = len(memory_bank.timesteps)
            more = "invert more steps (DDIM Inversion strength 0.75 of 50 steps leaves 38)"
            if preset == CUSTOM:
                raise DragEditInputError(NAME, LABELS["drag_steps"], f"is {drag_steps} but the memory bank holds "
                                         f"only {left} inverted steps", f"Use at most {left}, or {more}") from None
            raise DragEditInputError(NAME, "memory_bank", f"holds {left} inverted steps, fewer than the {preset} "
                                     f"preset's {settings.drag_steps} drag timesteps", more.capitalize()) from None
        editable = None if mask is None else mask.reshape(-1, *mask.shape[-2:])[:1].clone()
        image_hw = (8 * memory_bank.latent_shape[-2], 8 * memory_bank.latent_shape[-1])
        policy = None

        def loop(passes, _):
            nonlocal policy
            z = memory_bank.latent(memory_bank.timesteps[0]).to(passes.device)
            policy = aldd.AlDDPolicy(
                lambda z_, t, need_eps: passes.features(z_, t, features, need_eps), steps, passes.alphas_cumprod,
                points.handles, points.targets, points.image_size, settings=settings, motion=motion,
                tracker=tracker, mask=editable, keep_outside=keep_outside, sup_size=features.target_size(image_hw),
                loss_scaling=host.needs_loss_scaling(model),
                callback=lambda info: progress(dict(done=info["grad_step"])))
            progress = host.Progress(model, policy.total + len(steps), cls.hidden.unique_id)
            return ddim.denoise(passes.eps, torch.cat([z, z]), steps, passes.alphas_cumprod, policy,
                                lambda info: progress(dict(info, done=policy.total + info["index"] + 1)))

        both = host.sample(model, loop, torch.zeros(memory_bank.latent_shape), positive,
                           sigmas=host.sigmas_of(memory_bank.alphas_cumprod, [*memory_bank.timesteps, -1]),
                           attn1=[host.MasaCtrlPatch(fam.masactrl_layers(masactrl_layers))], grad=True)
        final = DragPoints.from_tensors(policy.final_handles_xy(), points.targets, points.image_size)
        canvas = torch.zeros(1, height, width, 3) if image is None else image
        shown = preview.draw_drag(canvas, points.handles, points.targets, trajectories=list(policy.trajectory_xy()))
        return io.NodeOutput({"samples": both[1:]}, final, shown, ui=ui.PreviewImage(shown, cls=cls))


NODES = [DragEditAlDDScheduler]
