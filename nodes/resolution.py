"""Working Resolution: the official demo's resize before editing, as a node the examples put after Load Image."""
import torch
from comfy_api.latest import io

from ..kernels import resolution as kernel
from ..kernels.errors import ArgumentError
from .errors import DragEditInputError, DragEditNode, from_argument

NAME = "Drag Working Resolution"


class DragEditWorkingResolution(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditWorkingResolution",
            display_name=NAME,
            category="DragEdit",
            description="Resizes the image (and its mask) to the working resolution the official DragonDiffusion "
                        "demo edits at: an area of about resolution², each side a multiple of 64 (512x512 -> "
                        "768x768 at the default). The edit nodes work at whatever size they get; this node makes "
                        "that size the method's. Points drawn on the original image are rescaled by Drag Points.",
            inputs=[
                io.Image.Input("image", tooltip="The image to edit (one or more frames, all resized alike)."),
                io.Int.Input("resolution", default=768, min=64, max=4096, step=64,
                             tooltip="Side of the square with the target area, px. Official DragonDiffusion demo "
                                     "768 (slider 428-1024); GoodDrag and DragDiffusion edit at 512; SDXL at "
                                     "1024."),
                io.Mask.Input("mask", optional=True, tooltip="A mask drawn on the image, resized alike (nearest)."),
            ],
            outputs=[
                io.Image.Output("resized_image", display_name="image", tooltip="The image at the working size."),
                io.Mask.Output("resized_mask", display_name="mask",
                               tooltip="The mask at the working size (empty when none was connected)."),
            ],
        )

    @classmethod
    def execute(cls, image, resolution, mask=None) -> io.NodeOutput:
        height, width = image.shape[1:3]
        try:
            size = kernel.working_size(height, width, resolution)
        except ArgumentError as err:
            raise from_argument(NAME, err, fix="Connect an image and use a resolution of at least 64") from None
        if mask is not None:
            mask = mask if mask.ndim == 3 else mask[None]
            if tuple(mask.shape[-2:]) != (height, width) and mask.any():
                raise DragEditInputError(NAME, "mask", f"is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
                                         f"{width}x{height}", "Connect the mask drawn on this image")
            mask = kernel.resize_mask(mask, size)
        else:
            mask = torch.zeros(1, *size)
        return io.NodeOutput(kernel.resize_image(image, size), mask)


NODES = [DragEditWorkingResolution]
