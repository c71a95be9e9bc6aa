"""Drag Feature Extractor: which decoder features the energies and the tracker read, with a PCA preview."""
import torch
from comfy_api.latest import io, ui

from ..kernels import features
from ..kernels.errors import ArgumentError
from . import host, types
from .errors import DragEditInputError, DragEditNode, from_argument

NAME = "Drag Feature Extractor (DragonDiffusion, GoodDrag)"
PRESETS = {   # preset -> the family's features
    "DragonDiffusion": lambda fam: features.dragon_tap(fam.dragon_taps, fam.name),
    "GoodDrag / DragDiffusion": lambda fam: features.gooddrag_tap(fam.gooddrag_tap, fam.name),
}
CUSTOM = "custom"


def parse_custom_tap(blocks: str, weights: str, resize: str, scale: float, fam: host.Family) -> features.FeatureTap:
    """A FeatureTap from the custom widgets; DragEditInputError names the widget at fault."""
    try:
        block_ids = tuple(int(b) for b in blocks.replace(" ", "").split(",") if b)
    except ValueError:
        raise DragEditInputError(NAME, "blocks", f"'{blocks}' is not a comma-separated list of output block numbers",
                                 f"Write {fam.name} output block numbers such as "
                                 f"{', '.join(map(str, fam.dragon_taps))}") from None
    if not block_ids or any(not 0 <= b <= fam.last_tap for b in block_ids):
        raise DragEditInputError(NAME, "blocks", f"'{blocks}' names no output block or one outside 0..{fam.last_tap}",
                                 f"Use {fam.name} output blocks 0..{fam.last_tap}")
    try:
        weight_list = tuple(float(w) for w in weights.replace(" ", "").split(",") if w) if weights.strip() else None
    except ValueError:
        raise DragEditInputError(NAME, "weights", f"'{weights}' is not a comma-separated list of numbers",
                                 "Write one weight per block, e.g. 0.5, 0.5, or leave it empty") from None
    try:
        return features.FeatureTap(blocks=block_ids, modes=(resize,) * len(block_ids), scale=scale,
                                   weights=weight_list, family=fam.name)
    except ArgumentError as err:
        raise from_argument(NAME, err, {"modes": "resize"}, {
            "blocks": f"Write each {fam.name} output block once, e.g. {', '.join(map(str, fam.dragon_taps))}",
            "modes": f"Choose one of {', '.join(features.RESIZE_MODES)}",
            "weights": "Give one finite weight >= 0 per block, or leave weights empty for the method's own",
        }) from None


class DragEditFeatureExtractor(DragEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditFeatureExtractor",
            display_name=NAME,
            category="DragEdit",
            description="Chooses the UNet decoder features that energy guidance, motion supervision and the point "
                        "tracker compare: DragonDiffusion's two layers (multi-scale), GoodDrag's one, or a custom "
                        "list; the presets resolve to the model's family (SD 1.x/2.x: output blocks 5 + 8 and 8; "
                        "SDXL: 2 + 5 and 5; the pack's demo model: 7 + 8 and 8). Connect a memory bank to preview "
                        "the features (PCA to RGB) at one step and see which parts of the image the model thinks "
                        "correspond.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose decoder is read (its family sets the blocks)."),
                io.Combo.Input("preset", options=[*PRESETS, CUSTOM], default=next(iter(PRESETS)),
                               tooltip="DragonDiffusion: two decoder layers, nearest-resized to image / 4, the "
                                       "method's own layer weights. GoodDrag / DragDiffusion: one decoder layer, "
                                       "bilinear to image / 2. custom: the widgets below."),
                io.String.Input("blocks", default="5, 8",
                                tooltip="custom: output block numbers (SD 1.x/2.x 0-10, SDXL 0-7)."),
                io.String.Input("weights", default="",
                                tooltip="custom: one weight per block for the energies (empty: the method's own)."),
                io.Combo.Input("resize", options=list(features.RESIZE_MODES), default="nearest",
                               tooltip="custom: how each map is resized to the feature grid."),
                io.Float.Input("scale", default=0.25, min=0.0625, max=1.0, step=0.0625,
                               tooltip="custom: feature grid size as a fraction of the image (image / 4 = 0.25)."),
                types.MemoryBank.Input("memory_bank", optional=True,
                                       tooltip="For the preview: the inverted image whose features to show."),
                io.Conditioning.Input("positive", optional=True, tooltip="For the preview: the prompt."),
                io.Int.Input("preview_step", default=25, min=0, max=1000,
                             tooltip="For the preview: the inverted step (0 = noisiest) to read the features at."),
            ],
            outputs=[
                types.Features.Output("features", tooltip="The feature tap for guidance, supervision, tracking."),
                io.Image.Output("preview", tooltip="PCA of each tapped layer, side by side (blank without a bank)."),
            ],
        )

    @classmethod
    def execute(cls, model, preset, blocks, weights, resize, scale, memory_bank=None, positive=None,
                preview_step=25) -> io.NodeOutput:
        fam = host.family(model, NAME)
        tap = PRESETS[preset](fam) if preset != CUSTOM else parse_custom_tap(blocks, weights, resize, scale, fam)
        if memory_bank is None:
            return io.NodeOutput(tap, torch.zeros(1, 64, 64, 3))
        positive = host.conditioning(positive, model, NAME, "positive") if positive is not None else None
        if positive is None:
            raise DragEditInputError(NAME, "positive", "is not connected",
                                     "The preview runs the UNet: connect the prompt used for the inversion")
        t = memory_bank.timesteps[min(preview_step, len(memory_bank.timesteps) - 1)]
        shown = []

        def loop(passes, _):
            z_t = memory_bank.latent(t).to(passes.device)
            shown.extend(passes.features(z_t, t, tap)[1])
            return z_t

        host.sample(model, loop, torch.zeros(memory_bank.latent_shape), positive)
        image = torch.cat([features.pca_rgb(f[0].float()) for f in shown], dim=1)[None].float().cpu()
        return io.NodeOutput(tap, image, ui=ui.PreviewImage(image, cls=cls))


NODES = [DragEditFeatureExtractor]
