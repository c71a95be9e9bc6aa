"""Point Tracker: how the AlDD Drag Scheduler re-finds each handle after motion supervision moved the content."""
import torch
from comfy_api.latest import io, ui

from ..kernels import aldd, preview, tracker
from ..kernels.errors import ArgumentError
from . import types
from .errors import DragEditInputError, DragEditNode, from_argument

NAME = "GoodDrag Point Tracker"


class DragEditPointTracker(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditPointTracker",
            display_name=NAME,
            category="DragEdit",
            description="Point tracking for the AlDD Drag Scheduler: after each drag, every handle moves to the "
                        "position within r2 feature px whose features are nearest (L1) to the ORIGINAL handle's "
                        "features at the same timestep. Connect an image and the Drag Points to preview the search "
                        "windows (1 feature px = 2 image px with the GoodDrag features).",
            inputs=[
                io.Int.Input("r2", default=tracker.GOODDRAG_R2, min=1, max=64,
                             tooltip="Search radius in feature px; the window is (2·r2+1)² px. GoodDrag 12 "
                                     "(25×25, 48 image px across), DragDiffusion 3."),
                io.Boolean.Input("clamp", default=True,
                                 tooltip="On: the window is cut at the feature-map edge and positions are mapped "
                                         "back from the cut window (DragDiffusion; the fix). Off: GoodDrag's "
                                         "unclamped arithmetic, which the official code gets wrong near the "
                                         "top/left edge; here its result is clipped into the map."),
                io.Image.Input("image", optional=True, tooltip="For the preview: the image the points were drawn on."),
                types.DragPoints.Input("points", optional=True,
                                       tooltip="For the preview: the drag, e.g. from Drag Points."),
            ],
            outputs=[
                types.Tracker.Output("tracker", tooltip="The tracker settings for the AlDD Drag Scheduler."),
                io.Image.Output("preview", tooltip="The points' arrows and each handle's search window at the start, "
                                                   "on the image (a blank canvas without one); blank 64×64 without "
                                                   "points."),
            ],
        )

    @classmethod
    def execute(cls, r2, clamp, image=None, points=None) -> io.NodeOutput:
        try:
            spec = tracker.TrackerSpec(r2=r2, clamp=clamp)
        except ArgumentError as err:
            raise from_argument(NAME, err) from None
        if points is None:
            return io.NodeOutput(spec, torch.zeros(1, 64, 64, 3))
        width, height = points.image_size
        if image is None:
            image = torch.zeros(1, height, width, 3)
        elif tuple(image.shape[1:3]) != (height, width):
            raise DragEditInputError(NAME, "image", f"is {image.shape[2]}x{image.shape[1]} but the points were "
                                     f"drawn on a {width}x{height} image", "Connect the image the points were drawn on")
        windows = aldd.search_windows_xy(r2, points.handles, points.image_size)
        shown = preview.draw_drag(image, points.handles, points.targets, boxes=windows)
        return io.NodeOutput(spec, shown, ui=ui.PreviewImage(shown, cls=cls))


NODES = [DragEditPointTracker]
