"""Motion Supervision: which loss the AlDD Drag Scheduler minimizes to pull each handle's features toward its target."""
from comfy_api.latest import io

from ..kernels import motion
from ..kernels.errors import ArgumentError
from . import types
from .errors import DragEditNode, from_argument

NAME = "GoodDrag Motion Supervision"
LABELS = {"lam": "lambda"}   # input -> the name the node shows, used in its errors too
EMPTY_MASK = {
    "no region (no latent term)": False,
    "freeze all (GoodDrag code)": True,
}


class DragEditMotionSupervision(DragEditNode):
    @classmethod
    def define_schema(cls):
        spec = motion.GOODDRAG_MOTION
        return io.Schema(
            node_id="DragEditMotionSupervision",
            display_name=NAME,
            category="DragEdit",
            description="The motion-supervision loss for the AlDD Drag Scheduler. 'gooddrag' (information-"
                        "preserving): the feature patch one step ahead of each handle is pulled toward the ORIGINAL "
                        "features at the ORIGINAL handle, so details do not drift over many steps. 'dragdiffusion': "
                        "toward the current features at the current handle, one feature pixel per step. Both add "
                        "λ times the change of the latent outside the editable mask. Distances are in feature "
                        "pixels: 1 feature px = 2 image px with the GoodDrag features (H/2).",
            inputs=[
                io.Combo.Input("variant", options=list(motion.VARIANTS), default=spec.variant,
                               tooltip="gooddrag: target = original features at the original handle, step up to "
                                       "beta, weight (2·r1)². dragdiffusion: target = current features at the "
                                       "current handle, unit step, weight (2·r1+1)²."),
                io.Int.Input("r1", default=spec.r1, min=1, max=64,
                             tooltip="Patch radius in feature px; the patch is (2·r1+1)² px. GoodDrag 4 (9×9), "
                                     "DragDiffusion 1 (3×3)."),
                io.Float.Input("beta", default=spec.beta, min=0.5, max=64.0, step=0.5,
                               tooltip="gooddrag only: the longest step per update, feature px (GoodDrag 4 = 8 "
                                       "image px). dragdiffusion always steps 1 px."),
                io.Float.Input("reach", default=spec.reach, min=0.1, max=16.0, step=0.1,
                               tooltip="How close (feature px) a handle must come to its target to count as "
                                       "arrived. Handles and targets sit on whole feature px (2 image px), so the "
                                       "default 1 asks for the target's own feature pixel; both official codes "
                                       f"use {motion.OFFICIAL_REACH:g}, which counts the 8 around it as arrived "
                                       "and so never makes a drag of one feature pixel, such as a small "
                                       "object's edge in a resize."),
                io.Float.Input("lam", display_name=LABELS["lam"], default=spec.lam, min=0.0, max=10.0, step=0.01,
                               tooltip="Weight of the latent term λ·Σ|Δz_{t-1}·(1-mask)| that keeps the region "
                                       "outside the editable mask unchanged. GoodDrag bench 0.1 (its UI 0.2), "
                                       "DragDiffusion 0.1; 0 turns it off."),
                io.Combo.Input("empty_mask", options=list(EMPTY_MASK), default=next(iter(EMPTY_MASK)),
                               tooltip="What a missing or all-zero mask means. 'no region' (default, DragDiffusion "
                                       "since Dec 2023): nothing was marked, so there is no latent term and the "
                                       "whole image may change. 'freeze all': GoodDrag's code, where an empty mask "
                                       "keeps the whole latent on its original path (handles often fall short)."),
            ],
            outputs=[types.Motion.Output("motion", tooltip="The loss settings for the AlDD Drag Scheduler.")],
        )

    @classmethod
    def execute(cls, variant, r1, beta, reach, lam, empty_mask) -> io.NodeOutput:
        try:
            spec = motion.MotionSupervision(variant, r1=r1, beta=beta, reach=reach, lam=lam,
                                            regularize_empty_mask=EMPTY_MASK[empty_mask])
        except ArgumentError as err:
            raise from_argument(NAME, err, LABELS) from None
        return io.NodeOutput(spec)


NODES = [DragEditMotionSupervision]
