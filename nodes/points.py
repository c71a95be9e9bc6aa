"""Drag Points: the canvas-backed points_json STRING and an IMAGE -> DRAG_POINTS, move arrow, editable MASK, preview.

The canvas (web/js/drag_points.js) is only a view over points_json, so workflows and API prompts carry the
points as that one string; it is parsed here, once, and downstream nodes get the frozen DragPoints.
"""
import torch
from comfy_api.latest import io, ui

from ..kernels import masks, preview
from ..kernels import points as kpoints
from ..kernels.errors import ArgumentError
from . import types
from .errors import DragEditInputError

NAME = "Drag Points Editor"
INPUT = "points_json"
BACKGROUND_KEY = "dragedit_background"
FIX = ('Edit the points on the canvas (Clear starts over), or write {"version":1,"image_size":[W,H],'
       '"pairs":[[hx,hy,tx,ty],...]} in image pixels')


def _input_error(err: ArgumentError) -> DragEditInputError:
    return DragEditInputError(NAME, INPUT, err.detail, FIX)


def _editable_region(mask, painted, height: int, width: int):
    """(region float [1, H, W], given): the union of the MASK input (resized to the image) and the region painted
    on the canvas, or everything when neither is given.

    LoadImage sends a 64x64 zero mask for an image without alpha: all zeros counts as no mask (masks.py).
    """
    regions = []
    if mask is not None and bool(mask.any()):
        first = mask[0] if mask.dim() == 3 else mask
        regions.append(masks.resize(first, (height, width)).to(torch.float32))
    if painted is not None:
        regions.append(painted)
    if not regions:
        return torch.ones(1, height, width), False
    return torch.stack(regions).amax(dim=0)[None], True


class DragEditPoints(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditPoints",
            display_name=NAME,
            category="DragEdit",
            description="Click handle -> target pairs on the image and paint the editable region (canvas below: "
                        "it shows an upstream Load Image at once, any other image after a run). Gives the points for drag editing (GoodDrag, DragDiffusion, DragonDiffusion drag), the "
                        "first arrow as a move offset (and a second one as a resize factor) for move and paste, "
                        "the editable-region mask and a preview with the arrows drawn.",
            inputs=[
                io.Image.Input("image", tooltip="The image to edit; the canvas shows its first frame after a run."),
                io.String.Input(INPUT, default=kpoints.EMPTY_JSON, multiline=True,
                                tooltip="The points, written by the canvas: {\"version\":1,\"image_size\":[W,H],"
                                        "\"pairs\":[[hx,hy,tx,ty],...]} in image pixels (x right, y down). API "
                                        "users may send [[hx,hy],[tx,ty],...] instead. Points drawn on another "
                                        "image size are rescaled to this image."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Editable region (1 = may change), e.g. painted in Load Image's mask editor. "
                                      "Resized to the image and joined with the region painted on the canvas "
                                      "(Brush); neither (or all zeros) means the whole image."),
            ],
            outputs=[
                types.DragPoints.Output("points", display_name="points",
                                        tooltip="Handle -> target pairs in image pixels."),
                io.Int.Output("offset_x", display_name="offset_x",
                              tooltip="Move/paste: the first arrow's horizontal shift, image px (right is positive)."),
                io.Int.Output("offset_y", display_name="offset_y",
                              tooltip="Move/paste: the first arrow's vertical shift, image px (down is positive)."),
                io.Float.Output("scale", display_name="scale",
                                tooltip="Move/paste resize factor: 1.0 with one arrow; with a second arrow, the "
                                        "distance between the two targets over the distance between the two handles."),
                io.Mask.Output("editable_mask", display_name="mask",
                               tooltip="The editable region at the image size: the mask input and the canvas's "
                                       "painted region together (all ones without either)."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="The image with the editable region tinted and the numbered arrows drawn "
                                        "(red handle, blue target)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, points_json=None):
        """Syntax and structure at queue time (a red outline); a linked points_json arrives as None."""
        if points_json is None:
            return True
        try:
            kpoints.parse_points_json(points_json, INPUT)
        except ArgumentError as err:
            return str(_input_error(err))
        return True

    @classmethod
    def execute(cls, image, points_json, mask=None) -> io.NodeOutput:
        # The first frame goes to temp/ under a key of our own, so the frontend does not also draw it as a preview.
        background = {BACKGROUND_KEY: ui.PreviewImage(image[:1]).values}
        height, width = image.shape[1:3]
        try:
            parsed = kpoints.parse_points_json(points_json, INPUT)
        except ArgumentError as err:
            raise _input_error(err) from None
        if not parsed.pairs:
            # Not an error yet: the first run is how the canvas gets its image. Consumers are blocked with the fix.
            blocked = DragEditInputError(NAME, INPUT, "has no handle -> target pair",
                                         "Click a handle, then its target, on the Drag Points canvas")
            return io.NodeOutput(*(None,) * 6, ui=background, block_execution=str(blocked))
        try:
            points = kpoints.points_for_image(parsed, (width, height), INPUT)
            offset_x, offset_y = points.move_offset()
            scale = points.move_scale()
        except ArgumentError as err:
            raise _input_error(err) from None
        region, given = _editable_region(mask, kpoints.painted_region(parsed, (width, height)), height, width)
        shown = preview.draw_drag(image, points.handles, points.targets, mask=region if given else None)
        return io.NodeOutput(points, offset_x, offset_y, scale, region, shown, ui=background)


NODES = [DragEditPoints]
