"""Energy Guidance (move, resize, appearance, paste, drag): an edit's masks, geometry and weights -> DRAG_GUIDANCE.

One node per mode because their inputs differ (dragondiffusion.md §3); all build the kernel's EnergyGuidance with
the §7 defaults and the §9 fixes, and the Guided Sampler runs it. Masks are drawn on the image being edited, so
their size sets the working size (latent = image / 8) and offsets are in that image's pixels.
"""
import torch
from comfy_api.latest import io

from ..kernels import energy, masks
from ..kernels.errors import ArgumentError
from . import types
from .errors import DragEditInputError, DragEditNode, from_argument

CATEGORY = "DragEdit"
WEIGHT_TIPS = {
    "w_edit": "Weight of the edit term, which pulls the features where the object should be towards the "
              "object's own",
    "w_content": "Weight of the content term, which keeps everything outside the edit as it was",
    "w_contrast": "Weight of the contrast term, which pushes the area the object leaves away from the object",
    "w_inpaint": "Weight of the inpainting term, which pulls the area the object leaves towards the reference "
                 "region",
}
DRAG_INPAINT_TIP = "Weight of the push term, which moves the handle area away from its old content"
FIXES = {
    "mask": "Connect a non-empty MASK at the size of the image it marks, e.g. painted in Load Image's mask editor, "
            "made with Image Color To Mask, or Drag Points' mask",
    "reference_mask": "Draw the reference region on the same image as the object mask, or leave it unconnected",
    "mask_base": "Connect a non-empty MASK of the object in the base image (image size)",
    "mask_replace": "Connect a non-empty MASK of the object in the replace image, drawn on that image",
    "offset": "Use a smaller offset: part of the object must stay inside the image",
    "scale": "Use a scale > 0 that keeps the object inside the image (1 keeps its size)",
    "handles": "Place every handle and target inside the image on the Drag Points canvas",
    "targets": "Place every handle and target inside the image on the Drag Points canvas",
}
WEIGHT_FIX = "Use a finite weight >= 0 (0 drops the term)"
INPUT_NAMES = {"offset": "offset_x, offset_y", "handles": "points", "targets": "points"}   # kernel argument -> input


def _title(mode: str) -> str:
    return f"DragonDiffusion Energy Guidance ({mode})"


def _weight_inputs(mode: str, names, tips=None) -> list:
    """The §7 default of each weight, as widgets with the paper's value in the tooltip."""
    defaults = energy.DEFAULTS[mode].weights
    tips = {**WEIGHT_TIPS, **(tips or {})}
    return [io.Float.Input(name, default=getattr(defaults, name), min=0.0, max=100.0, step=0.05,
                           tooltip=f"{tips[name]}. Paper default {getattr(defaults, name):g} for {mode}.")
            for name in names]


def _energy_scale_input(mode: str):
    default = energy.DEFAULTS[mode].energy_scale
    return io.Float.Input("energy_scale", default=default, min=0.0, max=20000.0, step=50.0,
                          tooltip=f"s_E, how strongly the energy gradient steers sampling (the official UI slider x "
                                  f"1000). Paper default {default:g} for {mode}; 0 turns guidance off (the regional "
                                  f"SDE of schedule D+ still runs).")


def _faithful_input():
    return io.Boolean.Input("faithful_bugs", default=False,
                            tooltip="Off: the fixed geometry (objects past the border are clipped, resizing is "
                                    "about the object's centre, no z_T offset mismatch). On: the official code's "
                                    "behaviour, bugs included (dragondiffusion.md §9), for comparisons.")


def _keep_latent_mean_input():
    return io.Boolean.Input("keep_latent_mean", default=True,
                            tooltip="On: the object's starting noise, copied to its target, is taken back evenly "
                                    "from the rest of z_T, and each guidance step is taken back evenly from the "
                                    "cells it does not edit, so neither shifts the image's mean colour (not in "
                                    "the paper; without it the whole image can shift colour). Off: the official "
                                    "copy and step.")


def _offset_inputs() -> list:
    return [io.Int.Input(f"offset_{axis}", default=0, min=-16384, max=16384, step=1,
                         tooltip=f"{'Horizontal' if axis == 'x' else 'Vertical'} move in image pixels "
                                 f"({'right' if axis == 'x' else 'down'} is positive). Link Drag Points' "
                                 f"offset_{axis} to take it from the canvas arrow.")
            for axis in ("x", "y")]


def _scale_input():
    return io.Float.Input("scale", default=1.0, min=0.05, max=10.0, step=0.05,
                          tooltip="Resize factor about the object's centre (official default 1, range 0-10). "
                                  "Link Drag Points' scale to take it from a second canvas arrow.")


def _object_mask_input(name: str, what: str, size: str = "Its size sets the working size (latent = size / 8)"):
    return io.Mask.Input(name, tooltip=f"{what} (1 = object), at the size of the image it is drawn on, e.g. "
                                       f"painted in Load Image's mask editor. {size}.")


def _reference_mask_input():
    return io.Mask.Input("reference_mask", optional=True,
                         tooltip="Optional region the vacated area is filled from (the official reference region); "
                                 "unconnected or empty: everything outside the object and its target.")


def _guidance_output():
    return types.Guidance.Output("guidance", tooltip="The edit for the Guided Sampler: masks on the feature grid "
                                                     "(image / 4), weights and energy scale.")


def _schema(node_id: str, mode: str, description: str, inputs: list, outputs: list) -> io.Schema:
    return io.Schema(node_id=node_id, display_name=_title(mode), category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs)


def _latent_size(mode: str, input_name: str, image_size) -> tuple:
    """(h, w) of the latent an image of image_size (W, H) encodes to (the VAE crops to multiples of 8)."""
    width, height = image_size
    if height < 24 or width < 24:
        raise DragEditInputError(_title(mode), input_name, f"is drawn on a {width}x{height} image",
                                 "Use an image of at least 24x24 pixels")
    return height // 8, width // 8


def _mask_size(mask) -> tuple:
    """(W, H) of a MASK [B, H, W]."""
    return mask.shape[-1], mask.shape[-2]


def _build(mode: str, build, *args, seen: dict = None, **kwargs):
    """Call a kernel builder; its ArgumentError becomes the node's DragEditInputError (INPUT_NAMES maps the
    argument to the input, FIXES gives the fix). seen replaces the kernel's wording where it speaks in
    feature-grid pixels the user never sees."""
    try:
        return build(*args, **kwargs)
    except ArgumentError as err:
        if seen and err.argument in seen:
            err = ArgumentError(err.argument, seen[err.argument])
        raise from_argument(_title(mode), err, INPUT_NAMES, FIXES, WEIGHT_FIX) from None


def _moved_out(mask, offset_x: int, offset_y: int, scale: float = 1.0) -> str:
    width, height = _mask_size(mask)
    scaled = "" if scale == 1.0 else f" at scale {scale:g}"
    return f"({offset_x}, {offset_y}) px{scaled} moves the object wholly out of the {width}x{height} image"


class DragEditEnergyGuidanceMove(DragEditNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "DragEditEnergyGuidanceMove", "move",
            "DragonDiffusion object moving: the masked object moves by (offset_x, offset_y) pixels while the rest "
            "stays, and the area it leaves is inpainted. Pair with Visual Cross-Attention in 'replace' mode (from "
            "step 5 of 50) and the Guided Sampler. Clipped at the border unless faithful_bugs.",
            [_object_mask_input("mask", "The object to move"), *_offset_inputs(), _reference_mask_input(),
             *_weight_inputs("move", ("w_edit", "w_content", "w_contrast", "w_inpaint")),
             _energy_scale_input("move"), _faithful_input(), _keep_latent_mean_input()],
            [_guidance_output()])

    @classmethod
    def execute(cls, mask, offset_x, offset_y, w_edit, w_content, w_contrast, w_inpaint, energy_scale,
                faithful_bugs, keep_latent_mean, reference_mask=None) -> io.NodeOutput:
        weights = _build("move", energy.EnergyWeights, w_edit, w_content, w_contrast, w_inpaint)
        return io.NodeOutput(_build(
            "move", energy.move, mask, (offset_x, offset_y), _latent_size("move", "mask", _mask_size(mask)),
            reference_mask=reference_mask, weights=weights, energy_scale=energy_scale, faithful_bugs=faithful_bugs,
            keep_latent_mean=keep_latent_mean, seen={"offset": _moved_out(mask, offset_x, offset_y)}))


class DragEditEnergyGuidanceResize(DragEditNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "DragEditEnergyGuidanceResize", "resize",
            "DragonDiffusion object resizing: the masked object is scaled about its own centre, optionally also "
            "moved by (offset_x, offset_y) pixels; the rest stays and freed area is inpainted. Same energies and "
            "defaults as move. Link Drag Points' offset_x, offset_y and scale to set it with two canvas arrows.",
            [_object_mask_input("mask", "The object to resize"), _scale_input(), *_offset_inputs(),
             _reference_mask_input(),
             *_weight_inputs("move", ("w_edit", "w_content", "w_contrast", "w_inpaint")),
             _energy_scale_input("move"), _faithful_input(), _keep_latent_mean_input()],
            [_guidance_output()])

    @classmethod
    def execute(cls, mask, scale, offset_x, offset_y, w_edit, w_content, w_contrast, w_inpaint, energy_scale,
                faithful_bugs, keep_latent_mean, reference_mask=None) -> io.NodeOutput:
        weights = _build("resize", energy.EnergyWeights, w_edit, w_content, w_contrast, w_inpaint)
        return io.NodeOutput(_build(
            "resize", energy.resize, mask, scale, _latent_size("resize", "mask", _mask_size(mask)),
            offset=(offset_x, offset_y), reference_mask=reference_mask, weights=weights, energy_scale=energy_scale,
            faithful_bugs=faithful_bugs, keep_latent_mean=keep_latent_mean,
            seen={"offset": _moved_out(mask, offset_x, offset_y, scale)}))


class DragEditEnergyGuidanceAppearance(DragEditNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "DragEditEnergyGuidanceAppearance", "appearance",
            "DragonDiffusion appearance replacing: the object in mask_base takes the look of the object in "
            "mask_replace (another image of the same size), compared by mean features, so the two may differ in "
            "shape and place. Needs both images' memory banks on the Guided Sampler; pair with Visual "
            "Cross-Attention in 'masked' mode (steps 0-35 of 50).",
            [_object_mask_input("mask_base", "The object whose appearance changes, in the base image"),
             _object_mask_input("mask_replace", "The object to take the appearance from, in the replace image",
                                "That image must have the base image's size"),
             *_weight_inputs("appearance", ("w_edit", "w_content")), _energy_scale_input("appearance")],
            [_guidance_output()])

    @classmethod
    def execute(cls, mask_base, mask_replace, w_edit, w_content, energy_scale) -> io.NodeOutput:
        (width, height), (other_width, other_height) = _mask_size(mask_base), _mask_size(mask_replace)
        if (other_width, other_height) != (width, height):
            raise DragEditInputError(
                _title("appearance"), "mask_replace",
                f"is {other_width}x{other_height} but mask_base is {width}x{height}: the two images differ in size",
                "Resize the replace image to the base image's size (e.g. Upscale Image) before drawing its mask and "
                "encoding it")
        weights = _build("appearance", energy.EnergyWeights, w_edit, w_content)
        return io.NodeOutput(_build(
            "appearance", energy.appearance, mask_base, mask_replace,
            _latent_size("appearance", "mask_base", (width, height)), weights=weights, energy_scale=energy_scale))


class DragEditEnergyGuidancePaste(DragEditNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "DragEditEnergyGuidancePaste", "paste",
            "DiffEditor object pasting: the object masked in the replace image is placed into the base image, "
            "moved by (offset_x, offset_y) pixels and scaled about its centre. The two images must have the same "
            "size. Connect mask_base / mask_replace to Visual Cross-Attention in 'masked' mode (steps 0-35 of 50) "
            "and both memory banks to the Guided Sampler.",
            [_object_mask_input("mask", "The object to paste, drawn on the replace image"), *_offset_inputs(),
             _scale_input(), *_weight_inputs("paste", ("w_edit", "w_content")), _energy_scale_input("paste"),
             _faithful_input()],
            [_guidance_output(),
             io.Mask.Output("destination_mask", display_name="mask_base",
                            tooltip="Where the object lands in the base image (image size): Visual "
                                    "Cross-Attention's mask_base."),
             io.Mask.Output("source_mask", display_name="mask_replace",
                            tooltip="The object's pixels in the replace image that are pasted (image size): Visual "
                                    "Cross-Attention's mask_replace.")])

    @classmethod
    def execute(cls, mask, offset_x, offset_y, scale, w_edit, w_content, energy_scale,
                faithful_bugs) -> io.NodeOutput:
        weights = _build("paste", energy.EnergyWeights, w_edit, w_content)
        guidance = _build(
            "paste", energy.paste, mask, (offset_x, offset_y), _latent_size("paste", "mask", _mask_size(mask)),
            scale=scale, weights=weights, energy_scale=energy_scale, faithful_bugs=faithful_bugs,
            seen={"offset": _moved_out(mask, offset_x, offset_y, scale)})
        width, height = _mask_size(mask)
        base, replace = (masks.resize(guidance.masks[k], (height, width)).to(torch.float32)[None]
                         for k in ("base", "replace"))
        return io.NodeOutput(guidance, base, replace)


class DragEditEnergyGuidanceDrag(DragEditNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "DragEditEnergyGuidanceDrag", "drag",
            "DragonDiffusion content dragging: the 3x3 feature patch (12x12 px) at each handle moves to its target "
            "in one pass (no point tracking), inside the editable region; the rest stays. Pair with Visual "
            "Cross-Attention in 'concat' mode (from step 5 of 50). Points and mask from the Drag Points node.",
            [types.DragPoints.Input("points", tooltip="Handle -> target pairs in image pixels, from Drag Points; "
                                                      "the image they were drawn on sets the working size."),
             io.Mask.Input("mask", optional=True,
                           tooltip="Editable region (1 = may change), e.g. Drag Points' mask output. Unconnected "
                                   "or empty: the whole image (faithful_bugs: no edit gradient at all, as the "
                                   "official code)."),
             *_weight_inputs("drag", ("w_edit", "w_content", "w_inpaint"), {"w_inpaint": DRAG_INPAINT_TIP}),
             _energy_scale_input("drag"), _faithful_input(), _keep_latent_mean_input()],
            [_guidance_output()])

    @classmethod
    def execute(cls, points, w_edit, w_content, w_inpaint, energy_scale, faithful_bugs, keep_latent_mean,
                mask=None) -> io.NodeOutput:
        weights = _build("drag", energy.EnergyWeights, w_edit, w_content, w_inpaint=w_inpaint)
        return io.NodeOutput(_build(
            "drag", energy.drag, points.handles, points.targets, _latent_size("drag", "points", points.image_size),
            mask=mask, weights=weights, energy_scale=energy_scale, faithful_bugs=faithful_bugs,
            keep_latent_mean=keep_latent_mean))


NODES = [DragEditEnergyGuidanceMove, DragEditEnergyGuidanceResize, DragEditEnergyGuidanceAppearance,
         DragEditEnergyGuidancePaste, DragEditEnergyGuidanceDrag]
