"""Feature Extractor: which decoder features the energies and the tracker read, with a PCA preview."""
import torch
from comfy_api.latest import io, ui

from ..kernels import features
from . import host, types
from .errors import DragEditInputError

NAME = "Drag Feature Extractor (DragonDiffusion, GoodDrag)"
PRESETS = {
    "DragonDiffusion (output 5 + 8, nearest, H/4)": features.DRAGON_TAP,
    "GoodDrag / DragDiffusion (output 8, bilinear, H/2)": features.GOODDRAG_TAP,
}
CUSTOM = "custom"


def parse_custom_tap(blocks: str, weights: str, mode: str, scale: float) -> features.FeatureTap:
    """A FeatureTap from the custom widgets; ValueError names the widget."""
    try:
        block_ids = tuple(int(b) for b in blocks.replace(" ", "").split(",") if b)
    except ValueError:
        raise ValueError(f"blocks: '{blocks}' is not a comma-separated list of output block numbers") from None
    try:
        weight_list = tuple(float(w) for w in weights.replace(" ", "").split(",") if w) if weights.strip() else ()
    except ValueError:
        raise ValueError(f"weights: '{weights}' is not a comma-separated list of numbers") from None
    weight_list = weight_list or tuple(1.0 / max(len(block_ids), 1) for _ in block_ids)
    return features.FeatureTap(blocks=block_ids, modes=(mode,) * len(block_ids), scale=scale, weights=weight_list)


class DragEditFeatureExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragEditFeatureExtractor",
            display_name=NAME,
            category="DragEdit",
            description="Chooses the UNet decoder features that energy guidance, motion supervision and the point "
                        "tracker compare: DragonDiffusion's two layers (multi-scale), GoodDrag's one, or a custom "
                        "list. Connect a memory bank to preview the features (PCA to RGB) at one step and see which "
                        "parts of the image the model thinks correspond.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose decoder is read (checked for the blocks)."),
                io.Combo.Input("preset", options=[*PRESETS, CUSTOM], default=next(iter(PRESETS)),
                               tooltip="The paper's layers, or 'custom' to use the widgets below."),
                io.String.Input("blocks", default="5, 8", tooltip="custom: output block numbers (0-10)."),
                io.String.Input("weights", default="", tooltip="custom: one weight per block (empty: equal)."),
                io.Combo.Input("resize", options=list(features.RESIZE_MODES), default="nearest",
                               tooltip="custom: how each map is resized to the feature grid."),
                io.Float.Input("scale", default=0.25, min=0.0625, max=1.0, step=0.0625,
                               tooltip="custom: feature grid size as a fraction of the image (H/4 = 0.25)."),
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
    def validate_inputs(cls, preset, blocks, weights, resize, scale):
        if preset == CUSTOM:
            try:
                parse_custom_tap(blocks, weights, resize, scale)
            except ValueError as err:
                return f"DragEdit {NAME}: {err}"
        return True

    @classmethod
    def execute(cls, model, preset, blocks, weights, resize, scale, memory_bank=None, positive=None,
                preview_step=25) -> io.NodeOutput:
        topo = host.topology(model, NAME)
        try:
            tap = PRESETS[preset] if preset != CUSTOM else parse_custom_tap(blocks, weights, resize, scale)
        except ValueError as err:
            name, _, seen = str(err).partition(": ")
            raise DragEditInputError(NAME, name, seen, "Fix the custom widgets") from None
        if tap.last_block >= topo.output_blocks - 1:
            raise DragEditInputError(NAME, "blocks", f"taps block {tap.last_block}",
                                     f"Use output blocks 0..{topo.output_blocks - 2}")
        if memory_bank is None:
            return io.NodeOutput(tap, torch.zeros(1, 64, 64, 3))
        if positive is None:
            raise DragEditInputError(NAME, "positive", "is not connected",
                                     "The preview runs the UNet: connect the prompt used for the inversion")
        t = memory_bank.timesteps[min(preview_step, len(memory_bank.timesteps) - 1)]
        runner = host.UNetRunner(model)
        cond = host.conditioning_tensor(positive, NAME, "positive")
        feats = runner.features_fn(tap, cond)(memory_bank.latent(t).to(runner.device), t)
        image = torch.cat([features.pca_rgb(f[0].float()) for f in feats], dim=1)[None].float().cpu()
        return io.NodeOutput(tap, image, ui=ui.PreviewImage(image, cls=cls))


NODES = [DragEditFeatureExtractor]
